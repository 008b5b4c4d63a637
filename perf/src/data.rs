//! Deterministic test data: file contents, dataset file lists with a size
//! distribution, and shuffled read orders. Everything derives from the run's
//! seed, so every target gets the same bytes, the same files and the same
//! order, and a content check can recompute what a file should hold.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Content repeats with this period; long enough that no filesystem here
/// could deduplicate or compress it, small enough to generate per process.
pub const PERIOD_BYTES: usize = 8 << 20;

/// `len` pseudo-random bytes (xorshift64*): incompressible, reproducible.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A mixing function (splitmix64) for per-file offsets into the pattern.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The bytes every file is cut from: byte `p` of file `id` is
/// `period[(start(id) + p) % PERIOD]`. Stored twice over so any slice up to
/// one period long is contiguous (no copy to write it).
pub struct Content {
    doubled: Vec<u8>,
}

impl Content {
    pub fn new(seed: u64) -> Content {
        let mut doubled = pattern(PERIOD_BYTES, mix(seed));
        doubled.extend_from_within(..);
        Content { doubled }
    }

    fn start(id: u64) -> usize {
        (mix(id) % PERIOD_BYTES as u64) as usize
    }

    /// File `id`'s bytes from `offset`, at most `len_max` of them (and never
    /// more than one period: callers loop).
    pub fn slice(&self, id: u64, offset: u64, len_max: usize) -> &[u8] {
        let begin = (Self::start(id) + (offset % PERIOD_BYTES as u64) as usize) % PERIOD_BYTES;
        &self.doubled[begin..begin + len_max.min(PERIOD_BYTES)]
    }

    /// Whether `data` is what file `id` holds at `offset`.
    pub fn matches(&self, id: u64, offset: u64, data: &[u8]) -> bool {
        let mut done = 0;
        while done < data.len() {
            let want = self.slice(id, offset + done as u64, data.len() - done);
            if data[done..done + want.len()] != *want {
                return false;
            }
            done += want.len();
        }
        true
    }
}

/// One file of a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Relative to the workload's directory on the target.
    pub path: String,
    pub bytes: u64,
    /// Selects its content.
    pub id: u64,
}

/// Files per subdirectory (class directories, as in ImageNet's layout).
pub const FILES_PER_DIR: usize = 1000;

/// `count` files named `dNNN/fNNNNNN`, sizes log-normal around
/// `median_bytes` with `sigma` (0: all equal), reproducible from `seed`.
pub fn dataset(count: usize, median_bytes: u64, sigma: f64, seed: u64) -> Vec<FileSpec> {
    let mut rng = StdRng::seed_from_u64(mix(seed ^ 0xda7a));
    (0..count)
        .map(|i| {
            let bytes = if sigma > 0.0 {
                // Box-Muller: one standard normal per file.
                let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
                let u2: f64 = rng.gen();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                ((median_bytes as f64) * (sigma * z).exp()).round().max(1.0) as u64
            } else {
                median_bytes
            };
            FileSpec {
                path: format!("d{:03}/f{:06}", i / FILES_PER_DIR, i),
                bytes,
                id: mix(seed) ^ i as u64,
            }
        })
        .collect()
}

/// The subdirectories a dataset's paths need, in creation order.
pub fn dirs_of(files: &[FileSpec]) -> Vec<String> {
    let mut dirs: Vec<String> = files
        .iter()
        .filter_map(|f| f.path.rsplit_once('/').map(|(d, _)| d.to_string()))
        .collect();
    dirs.dedup();
    dirs
}

/// A shuffled order of `n` items for (seed, epoch): what a sampler with
/// shuffle=True and that seed would produce, identical for every target.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = StdRng::seed_from_u64(mix(seed ^ mix(epoch)));
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_reproducible_and_checkable() {
        let a = Content::new(7);
        let b = Content::new(7);
        assert_eq!(a.slice(3, 100, 4096), b.slice(3, 100, 4096));
        assert_ne!(a.slice(3, 0, 64), a.slice(4, 0, 64));
        // A slice across the period boundary still matches piecewise.
        let offset = PERIOD_BYTES as u64 - 10;
        let mut data = a.slice(9, offset, 10).to_vec();
        data.extend_from_slice(a.slice(9, offset + 10, 20));
        assert!(a.matches(9, offset, &data));
        data[15] ^= 1;
        assert!(!a.matches(9, offset, &data));
    }

    #[test]
    fn datasets_have_the_asked_shape() {
        let fixed = dataset(2500, 100 << 10, 0.0, 1);
        assert_eq!(fixed.len(), 2500);
        assert!(fixed.iter().all(|f| f.bytes == 100 << 10));
        assert_eq!(fixed[1234].path, "d001/f001234");
        assert_eq!(dirs_of(&fixed), vec!["d000", "d001", "d002"]);
        let spread = dataset(5000, 100 << 10, 0.5, 1);
        let mut sizes: Vec<u64> = spread.iter().map(|f| f.bytes).collect();
        sizes.sort();
        let median = sizes[sizes.len() / 2] as f64;
        assert!((median / (100 << 10) as f64 - 1.0).abs() < 0.1, "{median}");
        assert!(sizes[0] < sizes[sizes.len() - 1] / 4);
        assert_eq!(spread, dataset(5000, 100 << 10, 0.5, 1));
    }

    #[test]
    fn permutations_are_reproducible_and_complete() {
        let p = permutation(1000, 5, 0);
        assert_eq!(p, permutation(1000, 5, 0));
        assert_ne!(p, permutation(1000, 5, 1));
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    }
}
