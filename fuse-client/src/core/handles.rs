//! Open file handles and the per-inode state they share. All handles of one
//! inode in this client point at one [`OpenFile`], so a read through one
//! handle sees writes made through another before they are flushed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use torchfs_proto::meta::Ino;

use super::cache::Readahead;
use super::error::{ClientError, FileHandle};
use super::file::FileState;
use super::sync::lock;

/// `pending_size` value meaning "no unflushed size".
const NO_PENDING_SIZE: u64 = u64::MAX;
/// Inodes whose last opened version is remembered (past it, all are
/// forgotten: their next opens drop the kernel's pages, which is safe).
const OPENED_VERSIONS_MAX: usize = 1 << 18;

pub(crate) struct OpenFile {
    pub ino: Ino,
    /// Serializes writes, flushes and truncations of the inode; reads hold
    /// it only while planning.
    pub state: tokio::sync::Mutex<FileState>,
    /// The size including unflushed writes, readable without the state
    /// lock (getattr must not wait behind an upload).
    pending_size: AtomicU64,
    /// Sequential-read detection for readahead (files no plan names).
    pub readahead: Mutex<Readahead>,
    /// Woken each time a stripe upload of the file ends (writers over the
    /// in-flight bound and flushes wait on it).
    pub uploads_done: tokio::sync::Notify,
}

impl OpenFile {
    /// Republishes the size after the state changed.
    pub fn publish(&self, state: &FileState) {
        let v = if state.pending() {
            state.size
        } else {
            NO_PENDING_SIZE
        };
        self.pending_size.store(v, Ordering::Release);
    }

    /// The size this client's unflushed writes give the file, if any.
    pub fn pending_size(&self) -> Option<u64> {
        match self.pending_size.load(Ordering::Acquire) {
            NO_PENDING_SIZE => None,
            v => Some(v),
        }
    }
}

struct Handle {
    file: Arc<OpenFile>,
    writable: bool,
    /// The file is at the version the previous open here saw: what the
    /// front-end's page cache holds of it is still current.
    pages_current: bool,
}

#[derive(Default)]
struct Tables {
    handles: HashMap<FileHandle, Handle>,
    /// Open inodes and how many handles each has.
    files: HashMap<Ino, (Arc<OpenFile>, usize)>,
    /// The layout version each inode had at its last open here
    /// (close-to-open, as NFS keeps its page cache: an open that finds the
    /// same version keeps the kernel's pages).
    opened_versions: HashMap<Ino, u64>,
    next_fh: FileHandle,
}

#[derive(Default)]
pub(crate) struct Handles {
    tables: Mutex<Tables>,
}

impl Handles {
    /// Opens a handle on `ino` at layout `version` (as just fetched),
    /// creating the shared state with `make` when the inode is not open
    /// yet. Returns the handle and whether the state was created (false: an
    /// existing one is shared).
    pub fn open(
        &self,
        ino: Ino,
        writable: bool,
        version: u64,
        make: impl FnOnce() -> FileState,
    ) -> (FileHandle, Arc<OpenFile>, bool) {
        let mut t = lock(&self.tables);
        t.next_fh += 1;
        let fh = t.next_fh;
        if t.opened_versions.len() >= OPENED_VERSIONS_MAX && !t.opened_versions.contains_key(&ino) {
            t.opened_versions.clear();
        }
        let pages_current = t.opened_versions.insert(ino, version) == Some(version);
        let (file, created) = match t.files.get_mut(&ino) {
            Some((file, count)) => {
                *count += 1;
                (file.clone(), false)
            }
            None => {
                let file = Arc::new(OpenFile {
                    ino,
                    state: tokio::sync::Mutex::new(make()),
                    pending_size: AtomicU64::new(NO_PENDING_SIZE),
                    readahead: Mutex::new(Readahead::default()),
                    uploads_done: tokio::sync::Notify::new(),
                });
                t.files.insert(ino, (file.clone(), 1));
                (file, true)
            }
        };
        t.handles.insert(
            fh,
            Handle {
                file: file.clone(),
                writable,
                pages_current,
            },
        );
        (fh, file, created)
    }

    pub fn get(&self, fh: FileHandle) -> Result<(Arc<OpenFile>, bool), ClientError> {
        let t = lock(&self.tables);
        let h = t.handles.get(&fh).ok_or(ClientError::BadHandle { fh })?;
        Ok((h.file.clone(), h.writable))
    }

    pub fn writable(&self, fh: FileHandle) -> Result<Arc<OpenFile>, ClientError> {
        match self.get(fh)? {
            (file, true) => Ok(file),
            (_, false) => Err(ClientError::NotWritable { fh }),
        }
    }

    /// Whether the file was at the same version when it was last opened
    /// here before this handle: the front-end may keep the pages it cached.
    pub fn pages_current(&self, fh: FileHandle) -> bool {
        lock(&self.tables)
            .handles
            .get(&fh)
            .is_some_and(|h| h.pages_current)
    }

    /// The shared state of an inode open in this client.
    pub fn file_of(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        lock(&self.tables).files.get(&ino).map(|(f, _)| f.clone())
    }

    /// Every inode open in this client (what its lease lists).
    pub fn open_inos(&self) -> Vec<Ino> {
        lock(&self.tables).files.keys().copied().collect()
    }

    /// Forgets a handle; the inode's state goes with its last handle.
    pub fn close(&self, fh: FileHandle) -> Result<(), ClientError> {
        let mut t = lock(&self.tables);
        let h = t.handles.remove(&fh).ok_or(ClientError::BadHandle { fh })?;
        let ino = h.file.ino;
        if let Some((_, count)) = t.files.get_mut(&ino) {
            *count -= 1;
            if *count == 0 {
                t.files.remove(&ino);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use torchfs_proto::meta::Layout;

    fn empty(ino: Ino) -> FileState {
        FileState::from_layout(ino, 0, Layout::default()).unwrap()
    }

    #[test]
    fn handles_of_one_inode_share_state() {
        let h = Handles::default();
        let (a, fa, created_a) = h.open(5, true, 1, || empty(5));
        let (b, fb, created_b) = h.open(5, false, 1, || panic!("state exists"));
        assert!(created_a && !created_b);
        assert!(Arc::ptr_eq(&fa, &fb));
        assert_ne!(a, b);
        assert!(h.writable(a).is_ok());
        assert_eq!(h.writable(b).err().map(|e| e.errno()), Some(libc::EBADF));
        h.close(a).unwrap();
        assert!(h.file_of(5).is_some());
        assert_eq!(h.open_inos(), vec![5]);
        h.close(b).unwrap();
        assert!(h.file_of(5).is_none());
        assert!(h.open_inos().is_empty());
        assert_eq!(h.get(a).err().map(|e| e.errno()), Some(libc::EBADF));
        assert!(h.close(a).is_err());
    }

    #[test]
    fn pages_stay_current_while_the_version_does() {
        let h = Handles::default();
        let (a, _, _) = h.open(5, false, 7, || empty(5));
        assert!(
            !h.pages_current(a),
            "first open: nothing known of the pages"
        );
        h.close(a).unwrap();
        let (b, _, _) = h.open(5, false, 7, || empty(5));
        assert!(h.pages_current(b));
        h.close(b).unwrap();
        let (c, _, _) = h.open(5, false, 8, || empty(5));
        assert!(!h.pages_current(c), "another client changed the file");
        let (d, _, _) = h.open(5, false, 8, || panic!("state exists"));
        assert!(h.pages_current(d));
    }
}
