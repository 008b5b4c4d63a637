//! Raw declarations of the ISA-L erasure-code functions. `isal-sys` builds and
//! links the whole static ISA-L but binds only its compression API, so the
//! few EC entry points the codec needs are declared here by hand (signatures
//! from `isa-l/include/erasure_code.h`, ISA-L 2.31).

use std::os::raw::{c_int, c_uchar};

// Pulls in the static library that defines the symbols below.
use isal_sys as _;

extern "C" {
    /// Fills `a` (`m` rows x `k` columns, row-major) with an identity on top
    /// of a Cauchy matrix; `m` is the total row count (data + parity).
    pub fn gf_gen_cauchy1_matrix(a: *mut c_uchar, m: c_int, k: c_int);
    /// Inverts the `n` x `n` matrix `input` (destroyed) into `out`; non-zero
    /// when singular.
    pub fn gf_invert_matrix(input: *mut c_uchar, out: *mut c_uchar, n: c_int) -> c_int;
    /// Expands `rows` x `k` coefficients into `gftbls` (32 * k * rows bytes).
    pub fn ec_init_tables(k: c_int, rows: c_int, a: *mut c_uchar, gftbls: *mut c_uchar);
    /// `coding[r] = sum_j coeff[r][j] * data[j]` over `len` bytes.
    pub fn ec_encode_data(
        len: c_int,
        k: c_int,
        rows: c_int,
        gftbls: *mut c_uchar,
        data: *mut *mut c_uchar,
        coding: *mut *mut c_uchar,
    );
    /// Product in GF(2^8) with ISA-L's polynomial.
    pub fn gf_mul(a: c_uchar, b: c_uchar) -> c_uchar;
}
