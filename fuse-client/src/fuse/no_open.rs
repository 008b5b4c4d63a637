//! Read-only mounts run in the kernel's no-open mode: the first `open` of
//! a file is answered ENOSYS, and from then on the kernel opens and closes
//! files by itself (no open, release or, once `flush` has answered ENOSYS
//! too, flush request), keeps their pages across opens, and sends reads
//! with file handle 0. A warm epoch over a read-only mount costs no round
//! trip per file: what ext4 does from its page cache, the kernel does here.
//!
//! Reads of handle 0 go through one core handle per inode, kept here:
//! opened at the inode's first read, and opened again once older than the
//! attribute TTL unless the file is immutable (a frozen dataset's), so a
//! file changed elsewhere is read at its new layout within the TTL (the
//! kernel drops its pages of it then too: `FUSE_AUTO_INVAL_DATA`).
//! Bounded: past [`HANDLES_MAX`] the oldest eighth is released.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The file handle of every read a read-only mount gets (no open made one).
pub(super) const NO_OPEN_FH: u64 = 0;

/// Handles kept at most (one per inode read lately).
pub(super) const HANDLES_MAX: usize = 65_536;

struct Held {
    fh: u64,
    opened: Instant,
}

/// The core handle of each inode read through handle 0.
#[derive(Default)]
pub(super) struct InodeHandles {
    by_ino: Mutex<HashMap<u64, Held>>,
}

impl InodeHandles {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        // The map is whole after any panic: each change is one call.
        self.by_ino.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The handle of `ino`, unless none is kept or it was opened longer
    /// than `fresh_for` ago (None: any age will do).
    pub fn get(&self, ino: u64, fresh_for: Option<Duration>) -> Option<u64> {
        let by_ino = self.lock();
        let held = by_ino.get(&ino)?;
        match fresh_for {
            Some(ttl) if held.opened.elapsed() >= ttl => None,
            _ => Some(held.fh),
        }
    }

    /// Keeps `fh` as the handle of `ino`; returns the handles no longer
    /// kept (the one it replaces, and the oldest past [`HANDLES_MAX`]) for
    /// the caller to release. A read still using one of them fails with a
    /// bad handle and is retried with the new one.
    pub fn insert(&self, ino: u64, fh: u64) -> Vec<u64> {
        self.insert_bounded(ino, fh, HANDLES_MAX)
    }

    fn insert_bounded(&self, ino: u64, fh: u64, max: usize) -> Vec<u64> {
        let mut by_ino = self.lock();
        let held = Held {
            fh,
            opened: Instant::now(),
        };
        let mut dropped: Vec<u64> = by_ino
            .insert(ino, held)
            .map(|old| old.fh)
            .into_iter()
            .collect();
        if by_ino.len() > max {
            // Batches of an eighth: a sort per max/8 inserts.
            let mut ages: Vec<(Instant, u64)> =
                by_ino.iter().map(|(ino, h)| (h.opened, *ino)).collect();
            ages.sort_unstable();
            let evict = (max / 8).max(1);
            for (_, old_ino) in ages.into_iter().take(evict) {
                if let Some(old) = by_ino.remove(&old_ino) {
                    dropped.push(old.fh);
                }
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_kept_until_it_is_older_than_asked() {
        let handles = InodeHandles::default();
        assert_eq!(handles.get(7, None), None);
        assert!(handles.insert(7, 1).is_empty());
        assert_eq!(handles.get(7, None), Some(1));
        assert_eq!(handles.get(7, Some(Duration::from_secs(60))), Some(1));
        assert_eq!(handles.get(7, Some(Duration::ZERO)), None);
        // Reopened: the old handle is the caller's to release.
        assert_eq!(handles.insert(7, 2), vec![1]);
        assert_eq!(handles.get(7, None), Some(2));
    }

    #[test]
    fn past_the_bound_the_oldest_are_released() {
        let handles = InodeHandles::default();
        let mut dropped = Vec::new();
        for ino in 0..20u64 {
            dropped.extend(handles.insert_bounded(ino, 100 + ino, 16));
            std::thread::sleep(Duration::from_millis(1));
        }
        // Over 16 at the 17th: the 2 oldest go; again at the 19th.
        assert_eq!(dropped, vec![100, 101, 102, 103]);
        assert_eq!(handles.get(0, None), None);
        assert_eq!(handles.get(3, None), None);
        for ino in 4..20u64 {
            assert_eq!(handles.get(ino, None), Some(100 + ino));
        }
    }
}
