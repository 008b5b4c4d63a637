//! CRC32C arithmetic on checksums alone, without the bytes: the CRC of a
//! concatenation from the CRCs of its parts (what a fragment's chunk table
//! needs to answer for the whole-fragment CRC that metad holds).
//!
//! A CRC is a polynomial over GF(2) (bit-reflected here, as CRC32C is).
//! Appending `n` bytes to a message multiplies its CRC by `x^(8n)` modulo
//! the CRC polynomial and adds (XORs) the CRC of the appended bytes:
//! `crc(A ++ B) = crc(A) * x^(8|B|) + crc(B)`. The pre- and post-inversion
//! of CRC32C cancel out in that identity, so it holds for the CRCs that
//! `crc32c::crc32c` returns. This is zlib's `crc32_combine` (Mark Adler's
//! `multmodp`/`x2nmodp` form), which costs one 32-step multiply per
//! combine once the shift for a length is known. The `crc32c` crate has a
//! `crc32c_combine` too, but it rebuilds 32x32 matrix operators on every
//! call (microseconds each), too slow to run over a chunk table per get;
//! it serves as the test oracle here.

/// CRC32C (Castagnoli) polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;
/// The polynomial 1 (x^0) in the reflected representation.
const ONE: u32 = 1 << 31;

/// `a * b` modulo the CRC polynomial.
const fn multiply(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut m = ONE;
    while m != 0 {
        if a & m != 0 {
            product ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// `x^(2^k)` modulo the CRC polynomial, for k in 0..67: enough for
/// `x^(8n)` with any u64 `n` (k runs from 3 to 66).
const X_POW_2K: [u32; 67] = {
    let mut table = [0u32; 67];
    table[0] = ONE >> 1; // x^1
    let mut k = 1;
    while k < 67 {
        table[k] = multiply(table[k - 1], table[k - 1]);
        k += 1;
    }
    table
};

/// Appending this many bytes to a message, as an operator on its CRC
/// (multiplication by `x^(8 * len_bytes)`). Build once, apply many times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shift(u32);

impl Shift {
    pub fn by_bytes(len_bytes: u64) -> Self {
        // x^(8n) = x^(n * 2^3): one multiply per set bit of n.
        let mut op = ONE;
        let mut n = len_bytes;
        let mut k = 3;
        while n != 0 {
            if n & 1 != 0 {
                op = multiply(X_POW_2K[k], op);
            }
            n >>= 1;
            k += 1;
        }
        Self(op)
    }

    /// The part of `crc(A ++ B)` that comes from `crc = crc(A)`, when `B`
    /// is this shift's length.
    pub fn apply(self, crc: u32) -> u32 {
        multiply(self.0, crc)
    }
}

/// CRC32C of `A ++ B` from `crc(A)`, `crc(B)` and `|B|`.
pub fn combine(crc_a: u32, crc_b: u32, len_b_bytes: u64) -> u32 {
    Shift::by_bytes(len_b_bytes).apply(crc_a) ^ crc_b
}

/// CRC32C of a fragment of `length_bytes` cut into chunks of
/// `chunk_bytes` (the last one shorter), from the chunks' CRCs. `crcs`
/// must hold one CRC per chunk: `length_bytes.div_ceil(chunk_bytes)`.
pub fn combine_chunks(crcs: &[u32], chunk_bytes: u32, length_bytes: u64) -> u32 {
    let Some((first, rest)) = crcs.split_first() else {
        return 0; // CRC32C of no bytes.
    };
    let full = Shift::by_bytes(u64::from(chunk_bytes));
    let mut whole = *first;
    for (i, crc) in rest.iter().enumerate() {
        let start_bytes = (i as u64 + 1) * u64::from(chunk_bytes);
        let len_bytes = (length_bytes - start_bytes).min(u64::from(chunk_bytes));
        let shift = if len_bytes == u64::from(chunk_bytes) {
            full
        } else {
            Shift::by_bytes(len_bytes)
        };
        whole = shift.apply(whole) ^ crc;
    }
    whole
}

/// The whole CRC after replacing the CRC of one part, `old` by `new`, when
/// `bytes_after` bytes follow that part: the CRC is linear in each part's
/// CRC, so only the difference moves. Says what a fragment's CRC is with a
/// damaged chunk as read, without reading the other chunks.
pub fn substitute(whole: u32, old: u32, new: u32, bytes_after: u64) -> u32 {
    whole ^ Shift::by_bytes(bytes_after).apply(old ^ new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    #[test]
    fn combine_matches_crc_of_concatenation() {
        for (a_len, b_len) in [(0, 0), (0, 5), (5, 0), (1, 1), (3, 4096), (65_536, 65_536)] {
            let (a, b) = (bytes(a_len, 1), bytes(b_len, 2));
            let whole = crc32c::crc32c(&[a.clone(), b.clone()].concat());
            let combined = combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b_len as u64);
            assert_eq!(combined, whole, "{a_len} + {b_len}");
            assert_eq!(
                combined,
                crc32c::crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b_len),
                "the crate's (slow) combine agrees"
            );
        }
    }

    #[test]
    fn combine_chunks_matches_crc_of_whole() {
        for (len, chunk) in [
            (0usize, 4096u32),
            (1, 4096),
            (4095, 4096),
            (4096, 4096),
            (4097, 4096),
            (100_000, 4096),
            (1 << 20, 65_536),
            ((1 << 20) - 7, 65_536),
        ] {
            let data = bytes(len, len as u32);
            let crcs: Vec<u32> = data.chunks(chunk as usize).map(crc32c::crc32c).collect();
            assert_eq!(
                combine_chunks(&crcs, chunk, len as u64),
                crc32c::crc32c(&data),
                "{len} bytes in chunks of {chunk}"
            );
        }
    }

    #[test]
    fn substitute_is_the_crc_with_the_part_replaced() {
        let data = bytes(3 * 4096 + 100, 9);
        let mut damaged = data.clone();
        damaged[4096 + 17] ^= 0x40;
        let old = crc32c::crc32c(&data[4096..8192]);
        let new = crc32c::crc32c(&damaged[4096..8192]);
        let after = (data.len() - 8192) as u64;
        assert_eq!(
            substitute(crc32c::crc32c(&data), old, new, after),
            crc32c::crc32c(&damaged)
        );
    }

    #[test]
    fn shift_by_zero_is_identity_and_shifts_compose() {
        assert_eq!(Shift::by_bytes(0).apply(0xdead_beef), 0xdead_beef);
        let crc = 0x1234_5678;
        assert_eq!(
            Shift::by_bytes(7).apply(Shift::by_bytes(1000).apply(crc)),
            Shift::by_bytes(1007).apply(crc)
        );
    }
}
