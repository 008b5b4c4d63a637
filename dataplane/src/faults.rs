//! Fault injection (docs/ARCHITECTURE.md: Design: failures are tested on purpose). Without
//! the `testing` feature [`Faults`] is an empty type whose checks compile to
//! nothing. With it, a node's faults are switched per data directory through
//! [`set`] (so parallel tests on separate directories do not interfere), or
//! for a whole process through `TORCHFS_FAULTS=put_no_space,get_io`.

use std::io;

#[cfg(feature = "testing")]
pub use imp::*;

#[cfg(feature = "testing")]
mod imp {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    /// What to break.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FaultSet {
        /// Every fragment write fails with ENOSPC (after the temp file exists).
        pub put_no_space: bool,
        /// Every fragment read fails with EIO.
        pub get_io: bool,
    }

    #[derive(Default, Debug)]
    pub(crate) struct Switches {
        pub(crate) put_no_space: AtomicBool,
        pub(crate) get_io: AtomicBool,
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
