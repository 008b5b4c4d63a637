//! Fault injection (docs/ARCHITECTURE.md: Design: failures are tested on purpose). Without
//! the `testing` feature [`Faults`] is an empty type whose checks compile to
//! nothing. With it, a node's faults are set per data directory (so
//! parallel tests on separate directories do not interfere), in two kinds:
//!
//! - **Switches**, through [`set`], or for a whole process through
//!   `TORCHFS_FAULTS=put_no_space,get_io`: every fragment write fails with
//!   ENOSPC, every read with EIO. [`crate::io::GlommioDisk`] checks them.
//! - **Seeded disk faults** ([`DiskFaults`]), through [`set_disk`], or
//!   `TORCHFS_DISK_FAULTS=seed=N,eio=P,enospc=P,torn=P,bitflip=P,delay=P,delay_ms=MS`
//!   read at node start (a malformed value stops the start): each a
//!   probability per disk operation, applied by `io::FaultyDisk` over the
//!   real disk. An operation's fate is a hash of (seed, node and shard, the
//!   operation, its offset and length, how many times that same operation
//!   was made), not a draw from a shared generator, as the network's
//!   (`torchfs_rdma::faults`): the same requests meet the same faults in
//!   any interleaving, so a run replays from its seed.

use std::io;

/// Why a `TORCHFS_DISK_FAULTS` value (or a [`DiskFaults`] text) was refused.
/// Outside the `testing` feature so that [`crate::DataplaneError`] is the
/// same type in every build.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskFaultsError {
    #[error("{part:?}: expected name=value")]
    NotNameValue { part: String },
    #[error("{name}={value:?}: not a number")]
    NotNumber { name: String, value: String },
    #[error("{name}={value}: a probability is between 0 and 1")]
    NotProbability { name: String, value: String },
    #[error(
        "unknown disk fault {name:?} (known: seed, eio, enospc, torn, bitflip, delay, delay_ms)"
    )]
    Unknown { name: String },
}

/// The environment variable [`DiskFaults`] are read from at node start.
pub const DISK_FAULTS_ENV: &str = "TORCHFS_DISK_FAULTS";

#[cfg(feature = "testing")]
pub use imp::*;

#[cfg(feature = "testing")]
mod imp {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::str::FromStr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use torchfs_rdma::faults::splitmix;

    use super::{DiskFaultsError, DISK_FAULTS_ENV};

    /// What to break.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FaultSet {
        /// Every fragment write fails with ENOSPC (after the temp file exists).
        pub put_no_space: bool,
        /// Every fragment read fails with EIO.
        pub get_io: bool,
    }

    /// Seeded disk faults, each the probability (0 to 1) that one
    /// operation it applies to meets it; drawn independently per kind.
    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    pub struct DiskFaults {
        pub seed: u64,
        /// The operation (open, read, write, fdatasync, directory fsync)
        /// fails with EIO, having done nothing.
        pub eio: f64,
        /// A write (a fragment file, a log record, a log segment made)
        /// fails with ENOSPC, having written nothing.
        pub enospc: f64,
        /// A write stores only a prefix of its buffer, whole 4 KiB blocks
        /// (none, possibly), then fails with EIO: what a crash or a
        /// failing device leaves mid-write.
        pub torn: f64,
        /// A read returns its bytes with one bit flipped; what is stored
        /// stays as it was. On reads only: a flip stored by a write would
        /// be a put acknowledged with bytes it never had, which the store
        /// cannot catch without reading back, while damage at rest is what
        /// the scrub and the CRCs of every get are for (tested by flipping
        /// bytes on disk). TigerBeetle's simulated storage corrupts both
        /// (`read_fault_probability`, `write_fault_probability`); this is
        /// its read side.
        pub bitflip: f64,
        /// The operation waits `delay_ms` first (a glommio timer).
        pub delay: f64,
        pub delay_ms: u64,
    }

    impl FromStr for DiskFaults {
        type Err = DiskFaultsError;

        /// `seed=7,eio=0.01,enospc=0.01,torn=0.01,bitflip=0.01,delay=0.05,delay_ms=5`;
        /// kinds left out are 0, `seed` 0, `delay_ms` 20.
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let mut f = DiskFaults {
                delay_ms: 20,
                ..DiskFaults::default()
            };
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((name, value)) = part.split_once('=') else {
                    return Err(DiskFaultsError::NotNameValue { part: part.into() });
                };
                let (name, value) = (name.trim(), value.trim());
                let not_number = || DiskFaultsError::NotNumber {
                    name: name.into(),
                    value: value.into(),
                };
                let probability = || -> Result<f64, DiskFaultsError> {
                    let p: f64 = value.parse().map_err(|_| not_number())?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(DiskFaultsError::NotProbability {
                            name: name.into(),
                            value: value.into(),
                        });
                    }
                    Ok(p)
                };
                match name {
                    "seed" => f.seed = value.parse().map_err(|_| not_number())?,
                    "delay_ms" => f.delay_ms = value.parse().map_err(|_| not_number())?,
                    "eio" => f.eio = probability()?,
                    "enospc" => f.enospc = probability()?,
                    "torn" => f.torn = probability()?,
                    "bitflip" => f.bitflip = probability()?,
                    "delay" => f.delay = probability()?,
                    _ => return Err(DiskFaultsError::Unknown { name: name.into() }),
                }
            }
            Ok(f)
        }
    }

    impl std::fmt::Display for DiskFaults {
        /// The `TORCHFS_DISK_FAULTS` text that gives these faults.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "seed={},eio={},enospc={},torn={},bitflip={},delay={},delay_ms={}",
                self.seed,
                self.eio,
                self.enospc,
                self.torn,
                self.bitflip,
                self.delay,
                self.delay_ms
            )
        }
    }

    /// A kind of disk operation, as faults see it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum DiskOp {
        /// Opening a file or a directory.
        Open,
        Read,
        /// Writing a file's bytes (a new file, a log record, a new segment).
        Write,
        /// fdatasync of a file, fsync of a directory.
        Sync,
    }

    /// A fault an operation meets.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum DiskFault {
        Eio,
        NoSpace,
        /// Only the first `blocks_kept` 4 KiB blocks are written (fewer
        /// than the write's), then EIO.
        Torn {
            blocks_kept: u64,
        },
        /// Bit `bit` of the bytes read (counted from the first byte's
        /// lowest bit) is flipped.
        BitFlip {
            bit: u64,
        },
    }

    /// What happens to one operation.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct DiskFate {
        /// Held back this long first (0: not).
        pub delay_ms: u64,
        pub fault: Option<DiskFault>,
    }

    /// Salts separating the draws of each kind from one operation's hash.
    const EIO: u64 = 1;
    const ENOSPC: u64 = 2;
    const TORN: u64 = 3;
    const BITFLIP: u64 = 4;
    const DELAY: u64 = 5;
    const WHERE: u64 = 6;

    /// Whether a draw `h` falls under probability `p`.
    fn hit(h: u64, p: f64) -> bool {
        // The top 53 bits as a fraction in [0, 1).
        ((h >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A torn write keeps whole blocks of this many bytes (the O_DIRECT
    /// block, `io::BLOCK_BYTES`; `io/faulty.rs` checks they agree).
    pub const TORN_BLOCK_BYTES: u64 = 4096;

    impl DiskFaults {
        /// The fate of the `attempt`th (from 1) operation `op` of
        /// `len_bytes` at `offset_bytes` in `stream` (a node's shard).
        /// EIO wins over ENOSPC, ENOSPC over a torn write.
        pub fn fate(
            &self,
            stream: u64,
            op: DiskOp,
            offset_bytes: u64,
            len_bytes: u64,
            attempt: u32,
        ) -> DiskFate {
            let mut h = splitmix(self.seed ^ stream);
            for v in [op as u64, offset_bytes, len_bytes, u64::from(attempt)] {
                h = splitmix(h ^ v);
            }
            let draw = |salt: u64| splitmix(h ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let delay_ms = if hit(draw(DELAY), self.delay) {
                self.delay_ms
            } else {
                0
            };
            let blocks = len_bytes / TORN_BLOCK_BYTES;
            let fault = if hit(draw(EIO), self.eio) {
                Some(DiskFault::Eio)
            } else if op == DiskOp::Write && hit(draw(ENOSPC), self.enospc) {
                Some(DiskFault::NoSpace)
            } else if op == DiskOp::Write && blocks > 0 && hit(draw(TORN), self.torn) {
                Some(DiskFault::Torn {
                    blocks_kept: draw(WHERE) % blocks,
                })
            } else if op == DiskOp::Read && len_bytes > 0 && hit(draw(BITFLIP), self.bitflip) {
                Some(DiskFault::BitFlip {
                    bit: draw(WHERE) % (len_bytes * 8),
                })
            } else {
                None
            };
            DiskFate { delay_ms, fault }
        }

        /// The faults `TORCHFS_DISK_FAULTS` names; None when it is unset
        /// or empty.
        pub fn from_env() -> Result<Option<Self>, DiskFaultsError> {
            match std::env::var(DISK_FAULTS_ENV) {
                Ok(text) if !text.trim().is_empty() => text.parse().map(Some),
                _ => Ok(None),
            }
        }
    }

    /// The stream of shard `shard` of node `node_id`: nodes and shards
    /// given one seed still meet different faults (a stripe's fragments
    /// sit at the same offsets of six nodes' logs).
    pub fn stream(node_id: u64, shard: usize) -> u64 {
        splitmix(splitmix(node_id) ^ shard as u64)
    }

    #[derive(Default, Debug)]
    pub(crate) struct Switches {
        pub(crate) put_no_space: AtomicBool,
        pub(crate) get_io: AtomicBool,
        /// Whether `disk` holds faults (read on every operation).
        disk_on: AtomicBool,
        disk: Mutex<Option<DiskFaults>>,
    }

    fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Switches>>> {
        static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Arc<Switches>>>> = OnceLock::new();
        REGISTRY.get_or_init(Default::default)
    }

    /// Switches the faults of the node on `data_dir` (running or not yet
    /// started); takes effect on its next request.
    pub fn set(data_dir: &Path, faults: FaultSet) {
        let switches = super::Faults::for_dir(data_dir).0;
        switches
            .put_no_space
            .store(faults.put_no_space, Ordering::Relaxed);
        switches.get_io.store(faults.get_io, Ordering::Relaxed);
    }

    /// Sets (None: clears) the seeded disk faults of the node on
    /// `data_dir` (running or not yet started), from its next operation.
    pub fn set_disk(data_dir: &Path, faults: Option<DiskFaults>) {
        super::Faults::for_dir(data_dir).set_disk(faults);
    }

    impl super::Faults {
        /// The switches of the node on `data_dir`, seeded from
        /// `TORCHFS_FAULTS` when first created.
        pub fn for_dir(data_dir: &Path) -> Self {
            let mut registry = registry().lock().unwrap_or_else(|p| p.into_inner());
            let switches = registry.entry(data_dir.to_path_buf()).or_insert_with(|| {
                let env = std::env::var("TORCHFS_FAULTS").unwrap_or_default();
                let s = Switches::default();
                for name in env.split(',') {
                    match name.trim() {
                        "put_no_space" => s.put_no_space.store(true, Ordering::Relaxed),
                        "get_io" => s.get_io.store(true, Ordering::Relaxed),
                        _ => {}
                    }
                }
                Arc::new(s)
            });
            Self(switches.clone())
        }

        /// Sets (None: clears) these seeded disk faults.
        pub fn set_disk(&self, faults: Option<DiskFaults>) {
            let mut disk = self.0.disk.lock().unwrap_or_else(|p| p.into_inner());
            *disk = faults;
            self.0.disk_on.store(faults.is_some(), Ordering::Relaxed);
        }

        /// The seeded disk faults in force, if any.
        #[inline]
        pub fn disk(&self) -> Option<DiskFaults> {
            if !self.0.disk_on.load(Ordering::Relaxed) {
                return None;
            }
            *self.0.disk.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_and_refuses_bad_specs() {
            let f: DiskFaults =
                "seed=42, eio=0.01,enospc=0,torn=0.5,bitflip=1,delay=0.25,delay_ms=3"
                    .parse()
                    .unwrap();
            assert_eq!(f.seed, 42);
            assert_eq!((f.eio, f.enospc, f.torn), (0.01, 0.0, 0.5));
            assert_eq!((f.bitflip, f.delay, f.delay_ms), (1.0, 0.25, 3));
            assert_eq!(f.to_string().parse::<DiskFaults>().unwrap(), f);
            let d: DiskFaults = "".parse().unwrap();
            assert_eq!((d.seed, d.eio, d.delay_ms), (0, 0.0, 20));
            for (text, want) in [
                ("eio", "expected name=value"),
                ("eio=x", "not a number"),
                ("seed=-1", "not a number"),
                ("torn=1.5", "between 0 and 1"),
                ("bitflip=-0.1", "between 0 and 1"),
                ("eio=NaN", "between 0 and 1"),
                ("flood=0.1", "unknown disk fault"),
            ] {
                let e = text.parse::<DiskFaults>().unwrap_err().to_string();
                assert!(e.contains(want), "{text}: {e}");
            }
        }

        #[test]
        fn fates_follow_the_seed_and_the_rates() {
            let f: DiskFaults =
                "seed=9,eio=0.1,enospc=0.1,torn=0.1,bitflip=0.1,delay=0.2,delay_ms=4"
                    .parse()
                    .unwrap();
            let fates = |f: &DiskFaults, op| -> Vec<DiskFate> {
                (1..=2000)
                    .map(|i| f.fate(7, op, 4096 * (i % 50), 65536, i as u32))
                    .collect()
            };
            // The same seed gives the same fates; another seed others.
            assert_eq!(fates(&f, DiskOp::Write), fates(&f, DiskOp::Write));
            let other = DiskFaults { seed: 10, ..f };
            assert_ne!(fates(&f, DiskOp::Write), fates(&other, DiskOp::Write));
            let count = |fates: &[DiskFate], pick: fn(&DiskFault) -> bool| {
                fates
                    .iter()
                    .filter(|d| d.fault.as_ref().is_some_and(pick))
                    .count()
            };
            let writes = fates(&f, DiskOp::Write);
            let reads = fates(&f, DiskOp::Read);
            // EIO 10% of everything; ENOSPC and torn 10% of what is left
            // of writes; flips 10% of what is left of reads.
            for (n, what) in [
                (count(&writes, |d| *d == DiskFault::Eio), "eio"),
                (count(&writes, |d| *d == DiskFault::NoSpace), "enospc"),
                (
                    count(&writes, |d| matches!(d, DiskFault::Torn { .. })),
                    "torn",
                ),
                (
                    count(&reads, |d| matches!(d, DiskFault::BitFlip { .. })),
                    "bitflip",
                ),
            ] {
                assert!((120..=260).contains(&n), "{what}: {n} of 2000");
            }
            assert_eq!(count(&reads, |d| *d == DiskFault::NoSpace), 0);
            assert_eq!(
                count(&writes, |d| matches!(d, DiskFault::BitFlip { .. })),
                0
            );
            for d in &writes {
                if let Some(DiskFault::Torn { blocks_kept }) = d.fault {
                    assert!(blocks_kept < 16);
                }
            }
            for d in &reads {
                if let Some(DiskFault::BitFlip { bit }) = d.fault {
                    assert!(bit < 65536 * 8);
                }
            }
            let delayed = writes.iter().filter(|d| d.delay_ms == 4).count();
            assert!((300..=500).contains(&delayed), "{delayed} of 2000 delayed");
            // Nodes and shards meet different faults.
            assert_ne!(stream(1, 0), stream(2, 0));
            assert_ne!(stream(1, 0), stream(1, 1));
        }
    }
}

/// The fault switches one store consults.
#[derive(Clone, Debug, Default)]
pub struct Faults(#[cfg(feature = "testing")] std::sync::Arc<imp::Switches>);

impl Faults {
    #[cfg(not(feature = "testing"))]
    pub fn for_dir(_data_dir: &std::path::Path) -> Self {
        Self::default()
    }

    /// Called before a fragment write.
    #[inline]
    pub fn on_write(&self) -> io::Result<()> {
        #[cfg(feature = "testing")]
        if self
            .0
            .put_no_space
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    /// Called before a fragment read.
    #[inline]
    pub fn on_read(&self) -> io::Result<()> {
        #[cfg(feature = "testing")]
        if self.0.get_io.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
}
