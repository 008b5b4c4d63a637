//! Byte-range locks (fcntl F_SETLK/F_GETLK, and flock as whole-file locks)
//! held across mounts. They live in the replicated state, so a new leader
//! has them; the holder is a client (mount) and its kernel lock owner, and
//! the locks of a client whose lease ended are released by the leader's
//! `ReleaseLocks` (a mount that dies does not keep its locks).
//!
//! Semantics are POSIX's per owner: a lock replaces the owner's locks over
//! its range (upgrade, downgrade, split), an unlock trims them, and the
//! owner's adjacent ranges of one kind merge. Locks of one owner never
//! conflict; a read lock conflicts with another owner's write lock, a write
//! lock with any.

use std::collections::BTreeSet;

use torchfs_proto::meta::{errno, FileLock, Ino, LockKind, MetaReply, LOCKS_PER_INODE_MAX};

use super::{fs, Outcome, State};

fn same_owner(a: &FileLock, b: &FileLock) -> bool {
    a.client_id == b.client_id && a.owner == b.owner
}

fn check_range(lock: &FileLock) -> Result<(), torchfs_proto::meta::MetaError> {
    if lock.start > lock.end {
        return Err(fs(
            errno::EINVAL,
            format!("lock range {}..={} is empty", lock.start, lock.end),
        ));
    }
    Ok(())
}

/// `held` with `lock` applied for its owner (nothing else checked).
fn applied(held: &[FileLock], lock: &FileLock) -> Vec<FileLock> {
    let mut out = Vec::with_capacity(held.len() + 2);
    let mut new = *lock;
    for h in held {
        if !same_owner(h, lock) {
            out.push(*h);
            continue;
        }
        // The owner's lock just before or after the new range, of the
        // same kind: one range (POSIX merges them).
        let touches = h.overlaps(&FileLock {
            start: lock.start.saturating_sub(1),
            end: lock.end.saturating_add(1),
            ..*lock
        });
        if lock.kind != LockKind::Unlock && h.kind == lock.kind && touches {
            new.start = new.start.min(h.start);
            new.end = new.end.max(h.end);
            continue;
        }
        if !h.overlaps(lock) {
            out.push(*h);
            continue;
        }
        if h.start < lock.start {
            out.push(FileLock {
                end: lock.start - 1,
                ..*h
            });
        }
        if h.end > lock.end {
            out.push(FileLock {
                start: lock.end + 1,
                ..*h
            });
        }
    }
    if lock.kind != LockKind::Unlock {
        out.push(new);
    }
    out.sort_by_key(|l| (l.start, l.client_id, l.owner));
    out
}

impl State {
    /// F_GETLK: the first held lock that keeps `probe` from being taken.
    pub(super) fn get_lock(&self, ino: Ino, probe: &FileLock) -> Outcome {
        self.inode(ino)?;
        check_range(probe)?;
        let conflict = match probe.kind {
            LockKind::Unlock => None,
            _ => self
                .locks
                .get(&ino)
                .and_then(|held| held.iter().find(|h| probe.conflicts_with(h)))
                .copied(),
        };
        Ok(MetaReply::Lock { conflict })
    }

    /// F_SETLK: EAGAIN on a conflict, ENOLCK past the per-inode bound. An
    /// unlock needs no inode (a close after the inode was freed).
    pub(super) fn set_lock(&mut self, ino: Ino, lock: &FileLock) -> Outcome {
        if lock.kind != LockKind::Unlock {
            self.inode(ino)?;
        }
        check_range(lock)?;
        let held = self.locks.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
        if lock.kind != LockKind::Unlock {
            if let Some(h) = held.iter().find(|h| lock.conflicts_with(h)) {
                return Err(fs(
                    errno::EAGAIN,
                    format!(
                        "inode {ino} bytes {}..={} are locked by pid {} of client {:x}",
                        h.start, h.end, h.pid, h.client_id
                    ),
                ));
            }
        }
        let next = applied(held, lock);
        if next.len() > LOCKS_PER_INODE_MAX {
            return Err(fs(
                errno::ENOLCK,
                format!(
                    "inode {ino} would hold {} locks, at most {LOCKS_PER_INODE_MAX}",
                    next.len()
                ),
            ));
        }
        if next.is_empty() {
            self.locks.remove(&ino);
        } else {
            self.locks.insert(ino, next);
        }
        Ok(MetaReply::Unit)
    }

    /// Releases every lock of the given clients (their leases ended).
    pub(super) fn release_locks(&mut self, client_ids: &[u64]) -> MetaReply {
        self.locks.retain(|_, held| {
            held.retain(|l| !client_ids.contains(&l.client_id));
            !held.is_empty()
        });
        MetaReply::Unit
    }

    /// Drops the locks of a freed inode.
    pub(super) fn drop_locks(&mut self, ino: Ino) {
        self.locks.remove(&ino);
    }

    /// Clients that hold a lock (the leader releases those whose lease ended).
    pub fn lock_holders(&self) -> BTreeSet<u64> {
        self.locks.values().flatten().map(|l| l.client_id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(client_id: u64, owner: u64, kind: LockKind, start: u64, end: u64) -> FileLock {
        FileLock {
            client_id,
            owner,
            pid: 1,
            kind,
            start,
            end,
        }
    }
    use LockKind::{Read as R, Unlock as U, Write as W};

    fn ranges(v: &[FileLock]) -> Vec<(LockKind, u64, u64)> {
        v.iter().map(|l| (l.kind, l.start, l.end)).collect()
    }

    #[test]
    fn an_unlock_in_the_middle_splits_and_a_relock_merges() {
        let held = applied(&[], &l(1, 1, W, 0, 99));
        let held = applied(&held, &l(1, 1, U, 40, 59));
        assert_eq!(ranges(&held), vec![(W, 0, 39), (W, 60, 99)]);
        let held = applied(&held, &l(1, 1, W, 40, 59));
        assert_eq!(ranges(&held), vec![(W, 0, 99)]);
    }

    #[test]
    fn a_downgrade_over_part_of_a_range_keeps_the_rest() {
        let held = applied(&[], &l(1, 1, W, 0, u64::MAX));
        let held = applied(&held, &l(1, 1, R, 10, 19));
        assert_eq!(
            ranges(&held),
            vec![(W, 0, 9), (R, 10, 19), (W, 20, u64::MAX)]
        );
        // Unlock everything: nothing left, and other owners untouched.
        let held = applied(&held, &l(2, 1, R, 0, 5));
        let held = applied(&held, &l(1, 1, U, 0, u64::MAX));
        assert_eq!(held, vec![l(2, 1, R, 0, 5)]);
    }

    #[test]
    fn conflicts_need_another_owner_an_overlap_and_a_writer() {
        let w = l(1, 1, W, 10, 20);
        assert!(!l(1, 1, W, 0, 100).conflicts_with(&w), "same owner");
        assert!(
            l(1, 2, R, 20, 30).conflicts_with(&w),
            "other owner, same client"
        );
        assert!(l(2, 1, R, 0, 10).conflicts_with(&w));
        assert!(!l(2, 1, W, 21, 30).conflicts_with(&w), "no overlap");
        assert!(
            !l(2, 1, R, 0, 5).conflicts_with(&l(1, 1, R, 0, 5)),
            "readers share"
        );
    }
}
