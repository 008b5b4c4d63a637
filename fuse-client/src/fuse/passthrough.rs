//! FUSE passthrough for the epoch cache's disk tier: a read-only open of a
//! file the disk tier holds whole is answered with the tier's file as the
//! backing file, and the kernel then reads it directly (no round trip
//! through this process per read).
//!
//! The kernel puts each inode in one I/O mode at a time: while any open of
//! it uses the page cache ("cached"), a passthrough open fails with EIO,
//! and while passthrough opens are live, every further open must pass
//! through to the same backing file or bypass the page cache
//! (`FOPEN_DIRECT_IO`). This module keeps those rules per inode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use fuser::BackingId;

/// How one open handle was answered.
enum Mode {
    /// Ordinary open through the page cache.
    Cached,
    /// Passthrough; holds the backing id alive while the handle is open.
    Passthrough(#[allow(dead_code)] Arc<BackingId>),
    /// Bypasses the page cache (an open that could not join passthrough).
    Direct,
}

#[derive(Default)]
struct Inode {
    cached_opens: usize,
    backing: Weak<BackingId>,
}

/// Per inode: its opens' modes; per handle: its inode and mode.
type Tables = (HashMap<u64, Inode>, HashMap<u64, (u64, Mode)>);

#[derive(Default)]
pub(super) struct IoModes {
    inner: Mutex<Tables>,
}

/// What `open` should answer.
pub(super) enum OpenAs {
    Cached,
    Direct,
    Passthrough(Arc<BackingId>),
}

impl IoModes {
    /// Decides how to answer an open of `ino` (handle `fh`). `backing` is
    /// asked for a backing id only when passthrough is possible.
    pub(super) fn open(
        &self,
        ino: u64,
        fh: u64,
        read_only: bool,
        backing: impl FnOnce() -> Option<BackingId>,
    ) -> OpenAs {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (inodes, handles) = &mut *guard;
        let inode = inodes.entry(ino).or_default();
        let live = inode.backing.upgrade();
        let (mode, answer) = match live {
            Some(id) if read_only => (Mode::Passthrough(id.clone()), OpenAs::Passthrough(id)),
            Some(_) => (Mode::Direct, OpenAs::Direct),
            None if read_only && inode.cached_opens == 0 => match backing() {
                Some(id) => {
                    let id = Arc::new(id);
                    inode.backing = Arc::downgrade(&id);
                    (Mode::Passthrough(id.clone()), OpenAs::Passthrough(id))
                }
                None => {
                    inode.cached_opens += 1;
                    (Mode::Cached, OpenAs::Cached)
                }
            },
            None => {
                inode.cached_opens += 1;
                (Mode::Cached, OpenAs::Cached)
            }
        };
        handles.insert(fh, (ino, mode));
        answer
    }

    /// Records an open answered with `FOPEN_DIRECT_IO` (it takes no part
    /// in the kernel's per-inode I/O mode).
    pub(super) fn open_direct(&self, ino: u64, fh: u64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.insert(fh, (ino, Mode::Direct));
    }

    /// Forgets a released handle (dropping its backing id reference).
    pub(super) fn release(&self, fh: u64) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (inodes, handles) = &mut *guard;
        let Some((ino, mode)) = handles.remove(&fh) else {
            return;
        };
        if let Mode::Cached = mode {
            if let Some(inode) = inodes.get_mut(&ino) {
                inode.cached_opens = inode.cached_opens.saturating_sub(1);
            }
        }
        drop(mode);
        if inodes
            .get(&ino)
            .is_some_and(|i| i.cached_opens == 0 && i.backing.strong_count() == 0)
        {
            inodes.remove(&ino);
        }
    }
}
