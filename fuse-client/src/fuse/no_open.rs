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
//! Bounded: past [`HANDLES_MAX`] the oldest eighth is released, and a
//! sweep every [`SWEEP_INTERVAL`] releases the handles of files that can
//! change opened longer ago than that (a kept handle holds its file open
//! in metad's eyes: a file deleted elsewhere keeps its data while open).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The file handle of every read a read-only mount gets (no open made one).
pub(super) const NO_OPEN_FH: u64 = 0;

/// Handles kept at most (one per inode read lately).
pub(super) const HANDLES_MAX: usize = 65_536;
/// How often, and past what age, handles of files that can change are
/// released (they are reopened past the attribute TTL anyway).
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

struct Held {
    fh: u64,
    opened: Instant,
}

/// An inode and the handle of it no longer kept, to release.
pub(super) type Dropped = (u64, u64);

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
    pub fn insert(&self, ino: u64, fh: u64) -> Vec<Dropped> {
        self.insert_bounded(ino, fh, HANDLES_MAX)
    }

    fn insert_bounded(&self, ino: u64, fh: u64, max: usize) -> Vec<Dropped> {
        let mut by_ino = self.lock();
        let held = Held {
            fh,
            opened: Instant::now(),
        };
        let mut dropped: Vec<Dropped> = by_ino
            .insert(ino, held)
            .map(|old| (ino, old.fh))
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
                    dropped.push((old_ino, old.fh));
                }
            }
        }
        dropped
    }

    /// Forgets the handles opened longer than `older_than` ago of files
    /// that can change (`immutable` says which cannot, as of now: a file
    /// unfrozen since is swept too); returns them for the caller to
    /// release.
    pub fn take_stale(
        &self,
        older_than: Duration,
        immutable: impl Fn(u64) -> bool,
    ) -> Vec<Dropped> {
        let mut by_ino = self.lock();
        let mut stale = Vec::new();
        by_ino.retain(|ino, held| {
            let keep = held.opened.elapsed() < older_than || immutable(*ino);
            if !keep {
                stale.push((*ino, held.fh));
            }
            keep
        });
        stale
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
        assert_eq!(handles.insert(7, 2), vec![(7, 1)]);
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
        assert_eq!(dropped, vec![(0, 100), (1, 101), (2, 102), (3, 103)]);
        assert_eq!(handles.get(0, None), None);
        assert_eq!(handles.get(3, None), None);
        for ino in 4..20u64 {
            assert_eq!(handles.get(ino, None), Some(100 + ino));
        }
    }

    #[test]
    fn the_sweep_releases_old_handles_of_files_that_can_change_only() {
        let handles = InodeHandles::default();
        handles.insert(1, 11);
        handles.insert(2, 12);
        let frozen = |ino| ino == 2;
        assert!(handles
            .take_stale(Duration::from_secs(60), frozen)
            .is_empty());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            handles.take_stale(Duration::from_millis(1), frozen),
            vec![(1, 11)]
        );
        assert_eq!(handles.get(1, None), None);
        assert_eq!(handles.get(2, None), Some(12));
        // Unfrozen since: swept too.
        assert_eq!(
            handles.take_stale(Duration::from_millis(1), |_| false),
            vec![(2, 12)]
        );
    }
}
