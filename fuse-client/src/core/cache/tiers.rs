//! The two cache tiers: byte accounting for each, and the local-disk
//! tier's files.
//!
//! Memory holds entries as shared buffers (`Arc<Vec<u8>>`: a hit hands the
//! buffer to the front-end without copying it). The disk tier keeps one
//! plain file per entry under `<dir>/torchfs-cache-v1/`, holding exactly the
//! entry's bytes, so an entry that is a whole file can be handed to the
//! kernel for FUSE passthrough as it is. The directory is emptied at mount
//! time: entries are keyed by this client's inode view and layout versions,
//! which a restarted client cannot vouch for.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::belady::Order;

/// Subdirectory of the configured disk-tier directory that torchfs owns.
const DISK_SUBDIR: &str = "torchfs-cache-v1";
const DISK_SUFFIX: &str = "tfc";

/// Byte accounting of one tier. `cached + moving <= budget_bytes` always
/// holds for the disk tier; for memory, bytes in flight count too (see
/// `CacheState::mem_used`).
#[derive(Default)]
pub(crate) struct Tier {
    pub budget_bytes: u64,
    /// Bytes of ready entries (in `order`).
    pub cached_bytes: u64,
    /// Bytes of entries being demoted from memory to disk: still held in
    /// memory, already reserved on disk.
    pub moving_bytes: u64,
    pub order: Order,
}

impl Tier {
    pub fn new(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            ..Self::default()
        }
    }
}

/// The local-disk tier's directory.
#[derive(Debug)]
pub(crate) struct DiskDir {
    dir: PathBuf,
}

impl DiskDir {
    /// Creates `<base>/torchfs-cache-v1` and removes cache files a previous
    /// mount left there (only files this tier names: `*.tfc`).
    pub fn open(base: &Path) -> io::Result<Self> {
        let dir = base.join(DISK_SUBDIR);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == DISK_SUFFIX) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(Self { dir })
    }

    pub fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.{DISK_SUFFIX}"))
    }
}

/// Writes an entry's file (blocking: run off the async workers).
pub(crate) fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::write(path, data)
}

/// Reads `len` bytes at `offset` of an entry's file (blocking).
pub(crate) fn read_file(path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut out = vec![0u8; len];
    file.read_exact_at(&mut out, offset)?;
    Ok(out)
}

/// Removes an entry's file; a file already gone is fine.
pub(crate) fn remove_file(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!("disk tier: remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clears_only_cache_files() {
        let base = tempfile::tempdir().unwrap();
        let d = DiskDir::open(base.path()).unwrap();
        write_file(&d.path_of(7), b"hello").unwrap();
        let keep = base.path().join(DISK_SUBDIR).join("notes.txt");
        std::fs::write(&keep, b"mine").unwrap();
        assert_eq!(read_file(&d.path_of(7), 1, 3).unwrap(), b"ell");
        let d = DiskDir::open(base.path()).unwrap();
        assert!(!d.path_of(7).exists());
        assert!(keep.exists());
        remove_file(&d.path_of(7));
        assert!(read_file(&d.path_of(7), 0, 1).is_err());
    }
}
