//! Reed-Solomon erasure coding over ISA-L (docs/ARCHITECTURE.md: Data path): a systematic code
//! with a Cauchy generator matrix, so any `k` of the `k + m` fragments of a
//! stripe rebuild the others. All fragments passed in one call have the same
//! length; callers zero-pad short fragments (the stripe math does that).

mod isal;

use std::os::raw::c_int;

/// Why an encode or decode was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("invalid code k={k} m={m}: need k >= 1, m >= 1 and k + m <= 255")]
    InvalidConfig { k: usize, m: usize },
    #[error("expected {expected} fragments, got {actual}")]
    FragmentCount { expected: usize, actual: usize },
    #[error("fragment {index} is {actual_bytes} bytes, expected {expected_bytes}")]
    LengthMismatch {
        index: usize,
        expected_bytes: usize,
        actual_bytes: usize,
    },
    #[error("fragments of {len_bytes} bytes are too long for ISA-L (max {max_bytes})")]
    TooLong { len_bytes: usize, max_bytes: usize },
    #[error("only {present} fragments present, {needed} needed to decode")]
    TooFewFragments { present: usize, needed: usize },
    #[error("fragment index {index} out of range (code width {width})")]
    BadIndex { index: usize, width: usize },
    #[error("decode matrix for fragments {sources:?} is singular")]
    Singular { sources: Vec<usize> },
}

/// A `k + m` Reed-Solomon code. Immutable after construction, so one value
/// is shared by every stripe of a configuration (Send + Sync).
pub struct ReedSolomon {
    k: usize,
    m: usize,
    /// (k + m) x k generator matrix, row-major; the top k rows are identity.
    matrix: Vec<u8>,
    /// ISA-L expanded tables for the m parity rows (32 * k * m bytes).
    encode_tables: Vec<u8>,
}

impl std::fmt::Debug for ReedSolomon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReedSolomon(k={}, m={})", self.k, self.m)
    }
}

impl ReedSolomon {
    pub fn new(k: usize, m: usize) -> Result<Self, CodecError> {
        if k == 0 || m == 0 || k + m > 255 {
            return Err(CodecError::InvalidConfig { k, m });
        }
        let width = k + m;
        let mut matrix = vec![0u8; width * k];
        // SAFETY: `matrix` holds width * k bytes, as the call requires.
        unsafe { isal::gf_gen_cauchy1_matrix(matrix.as_mut_ptr(), width as c_int, k as c_int) };
        let mut encode_tables = vec![0u8; 32 * k * m];
        // SAFETY: the parity rows are m x k coefficients; tables hold 32*k*m.
        unsafe {
            isal::ec_init_tables(
                k as c_int,
                m as c_int,
                matrix[k * k..].as_mut_ptr(),
                encode_tables.as_mut_ptr(),
            )
        };
        Ok(Self {
            k,
            m,
            matrix,
            encode_tables,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn m(&self) -> usize {
        self.m
    }

    /// Computes the `m` parity fragments of `k` equally long data fragments.
    pub fn encode(&self, data: &[&[u8]], parity: &mut [&mut [u8]]) -> Result<(), CodecError> {
        check_count(self.k, data.len())?;
        check_count(self.m, parity.len())?;
        let len = data[0].len();
        for (index, d) in data.iter().enumerate() {
            check_len(index, len, d.len())?;
        }
        for (i, p) in parity.iter().enumerate() {
            check_len(self.k + i, len, p.len())?;
        }
        let len_c = check_c_len(len)?;
        if len == 0 {
            return Ok(());
        }
        // ISA-L takes `unsigned char **` for its inputs but only reads them.
        let mut sources: Vec<*mut u8> = data.iter().map(|d| d.as_ptr() as *mut u8).collect();
        let mut outputs: Vec<*mut u8> = parity.iter_mut().map(|p| p.as_mut_ptr()).collect();
        // SAFETY: k source and m output pointers, each valid for `len` bytes;
        // outputs are distinct &mut slices; the tables are only read.
        unsafe {
            isal::ec_encode_data(
                len_c,
                self.k as c_int,
                self.m as c_int,
                self.encode_tables.as_ptr() as *mut u8,
                sources.as_mut_ptr(),
                outputs.as_mut_ptr(),
            )
        };
        Ok(())
    }

    /// Rebuilds the fragments listed in `wanted` from any `k` of those marked
    /// `present`. `fragments` holds all `k + m` fragments (indices 0..k data,
    /// k..k+m parity), equally long; the contents of absent ones are ignored
    /// except for the wanted ones, which are overwritten. Wanted fragments
    /// that are already present are left alone.
    pub fn reconstruct(
        &self,
        fragments: &mut [&mut [u8]],
        present: &[bool],
        wanted: &[usize],
    ) -> Result<(), CodecError> {
        let width = self.k + self.m;
        check_count(width, fragments.len())?;
        check_count(width, present.len())?;
        let len = fragments[0].len();
        for (index, f) in fragments.iter().enumerate() {
            check_len(index, len, f.len())?;
        }
        let len_c = check_c_len(len)?;
        let mut targets: Vec<usize> = Vec::with_capacity(wanted.len());
        for &w in wanted {
            if w >= width {
                return Err(CodecError::BadIndex { index: w, width });
            }
            if !present[w] && !targets.contains(&w) {
                targets.push(w);
            }
        }
        let sources: Vec<usize> = (0..width).filter(|&i| present[i]).take(self.k).collect();
        if sources.len() < self.k {
            return Err(CodecError::TooFewFragments {
                present: sources.len(),
                needed: self.k,
            });
        }
        if targets.is_empty() || len == 0 {
            return Ok(());
        }
        let k = self.k;
        // Rows of the generator for the chosen sources, inverted: maps the
        // source fragments back to the data fragments.
        let mut chosen = Vec::with_capacity(k * k);
        for &s in &sources {
            chosen.extend_from_slice(&self.matrix[s * k..(s + 1) * k]);
        }
        let mut inverse = vec![0u8; k * k];
        // SAFETY: both matrices are k x k.
        let rc = unsafe {
            isal::gf_invert_matrix(chosen.as_mut_ptr(), inverse.as_mut_ptr(), k as c_int)
        };
        if rc != 0 {
            return Err(CodecError::Singular { sources });
        }
        // One decode row per target: data rows come straight from the
        // inverse; parity rows are the generator row times the inverse.
        let mut decode = vec![0u8; targets.len() * k];
        for (r, &t) in targets.iter().enumerate() {
            let row = &mut decode[r * k..(r + 1) * k];
            if t < k {
                row.copy_from_slice(&inverse[t * k..(t + 1) * k]);
            } else {
                let generator = &self.matrix[t * k..(t + 1) * k];
                for (j, out) in row.iter_mut().enumerate() {
                    let mut acc = 0u8;
                    for (l, &g) in generator.iter().enumerate() {
                        // SAFETY: pure table lookup.
                        acc ^= unsafe { isal::gf_mul(g, inverse[l * k + j]) };
                    }
                    *out = acc;
                }
            }
        }
        let mut tables = vec![0u8; 32 * k * targets.len()];
        // SAFETY: decode is targets x k; tables 32 * k * targets bytes.
        unsafe {
            isal::ec_init_tables(
                k as c_int,
                targets.len() as c_int,
                decode.as_mut_ptr(),
                tables.as_mut_ptr(),
            )
        };
        let pointers: Vec<*mut u8> = fragments.iter_mut().map(|f| f.as_mut_ptr()).collect();
        let mut source_ptrs: Vec<*mut u8> = sources.iter().map(|&s| pointers[s]).collect();
        let mut target_ptrs: Vec<*mut u8> = targets.iter().map(|&t| pointers[t]).collect();
        // SAFETY: every pointer comes from a distinct &mut slice of `len`
        // bytes; targets are not present, so never also a source.
        unsafe {
            isal::ec_encode_data(
                len_c,
                k as c_int,
                targets.len() as c_int,
                tables.as_mut_ptr(),
                source_ptrs.as_mut_ptr(),
                target_ptrs.as_mut_ptr(),
            )
        };
        Ok(())
    }
}

fn check_count(expected: usize, actual: usize) -> Result<(), CodecError> {
    if expected == actual {
        Ok(())
    } else {
        Err(CodecError::FragmentCount { expected, actual })
    }
}

fn check_len(index: usize, expected_bytes: usize, actual_bytes: usize) -> Result<(), CodecError> {
    if expected_bytes == actual_bytes {
        Ok(())
    } else {
        Err(CodecError::LengthMismatch {
            index,
            expected_bytes,
            actual_bytes,
        })
    }
}

fn check_c_len(len_bytes: usize) -> Result<c_int, CodecError> {
    c_int::try_from(len_bytes).map_err(|_| CodecError::TooLong {
        len_bytes,
        max_bytes: c_int::MAX as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn encoded(rs: &ReedSolomon, len: usize) -> Vec<Vec<u8>> {
        let mut frags: Vec<Vec<u8>> = (0..rs.k()).map(|i| pattern(len, i as u64 + 1)).collect();
        let mut parity = vec![vec![0u8; len]; rs.m()];
        {
            let data: Vec<&[u8]> = frags.iter().map(|f| f.as_slice()).collect();
            let mut par: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
            rs.encode(&data, &mut par).unwrap();
        }
        frags.extend(parity);
        frags
    }

    /// All subsets of 0..n with at most `max` members.
    fn subsets(n: usize, max: usize) -> Vec<Vec<usize>> {
        (0u32..(1 << n))
            .filter(|mask| mask.count_ones() as usize <= max)
            .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect())
            .collect()
    }

    fn every_loss_recovers(k: usize, m: usize, len: usize) {
        let rs = ReedSolomon::new(k, m).unwrap();
        let original = encoded(&rs, len);
        let mut cases = 0;
        for lost in subsets(k + m, m) {
            let mut frags = original.clone();
            for &l in &lost {
                frags[l].fill(0xAA);
            }
            let present: Vec<bool> = (0..k + m).map(|i| !lost.contains(&i)).collect();
            let mut views: Vec<&mut [u8]> = frags.iter_mut().map(|f| f.as_mut_slice()).collect();
            rs.reconstruct(&mut views, &present, &lost).unwrap();
            assert_eq!(frags, original, "k={k} m={m} lost {lost:?}");
            cases += 1;
        }
        assert!(cases > k + m);
    }

    #[test]
    fn k4m2_recovers_every_loss_of_up_to_two() {
        every_loss_recovers(4, 2, 4096 + 13);
    }

    #[test]
    fn k8m3_recovers_every_loss_of_up_to_three() {
        every_loss_recovers(8, 3, 1000);
    }

    #[test]
    fn tiny_and_odd_lengths() {
        for len in [1, 15, 31, 33, 64] {
            every_loss_recovers(4, 2, len);
        }
    }

    #[test]
    fn parity_is_not_trivial() {
        let rs = ReedSolomon::new(4, 2).unwrap();
        let frags = encoded(&rs, 256);
        assert_ne!(frags[4], frags[5]);
        assert!(frags[4].iter().any(|&b| b != 0));
    }

    #[test]
    fn too_many_lost_is_an_error() {
        let rs = ReedSolomon::new(4, 2).unwrap();
        let mut frags = encoded(&rs, 128);
        let present = [true, false, true, false, false, true];
        let mut views: Vec<&mut [u8]> = frags.iter_mut().map(|f| f.as_mut_slice()).collect();
        assert_eq!(
            rs.reconstruct(&mut views, &present, &[1, 3, 4]),
            Err(CodecError::TooFewFragments {
                present: 3,
                needed: 4
            })
        );
    }

    #[test]
    fn mismatched_input_is_an_error() {
        let rs = ReedSolomon::new(4, 2).unwrap();
        let a = vec![0u8; 8];
        let b = vec![0u8; 9];
        let mut p0 = vec![0u8; 8];
        let mut p1 = vec![0u8; 8];
        let err = rs
            .encode(&[&a, &a, &b, &a], &mut [&mut p0, &mut p1])
            .unwrap_err();
        assert!(matches!(err, CodecError::LengthMismatch { index: 2, .. }));
        let err = rs
            .encode(&[&a, &a, &a], &mut [&mut p0, &mut p1])
            .unwrap_err();
        assert_eq!(
            err,
            CodecError::FragmentCount {
                expected: 4,
                actual: 3
            }
        );
        assert!(ReedSolomon::new(0, 2).is_err());
        assert!(ReedSolomon::new(250, 6).is_err());
    }
}
