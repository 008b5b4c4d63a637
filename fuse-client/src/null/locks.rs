//! Byte-range locks of the null backend, with metad's semantics: per owner
//! (client id and kernel lock owner), a lock replaces the owner's locks
//! over its range and an unlock trims them; a read lock conflicts with
//! another owner's write lock, a write lock with any. The owner's adjacent
//! ranges are not merged (metad merges them): conflicts come out the same.

use std::collections::HashMap;

use torchfs_proto::meta::{errno, FileLock, Ino, LockKind, MetaError, LOCKS_PER_INODE_MAX};

#[derive(Default)]
pub(super) struct Locks {
    held: HashMap<Ino, Vec<FileLock>>,
}

fn check_range(lock: &FileLock) -> Result<(), MetaError> {
    if lock.start > lock.end {
        return Err(MetaError::fs(
            errno::EINVAL,
            format!("lock range {}..={} is empty", lock.start, lock.end),
        ));
    }
    Ok(())
}

impl Locks {
    /// F_GETLK: the first held lock that keeps `probe` from being taken.
    pub(super) fn get(&self, ino: Ino, probe: &FileLock) -> Result<Option<FileLock>, MetaError> {
        check_range(probe)?;
        if probe.kind == LockKind::Unlock {
            return Ok(None);
        }
        Ok(self
            .held
            .get(&ino)
            .and_then(|held| held.iter().find(|h| probe.conflicts_with(h)))
            .copied())
    }

    /// F_SETLK: EAGAIN on a conflict, ENOLCK past the per-inode bound,
    /// ENOENT when locking an inode that does not `exist` (an unlock needs
    /// none: a close after the inode went).
    pub(super) fn set(&mut self, ino: Ino, lock: &FileLock, exists: bool) -> Result<(), MetaError> {
        check_range(lock)?;
        let held = self.held.get(&ino).map(Vec::as_slice).unwrap_or(&[]);
        if lock.kind != LockKind::Unlock {
            if !exists {
                return Err(MetaError::fs(errno::ENOENT, format!("no inode {ino}")));
            }
            if let Some(h) = held.iter().find(|h| lock.conflicts_with(h)) {
                return Err(MetaError::fs(
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
            return Err(MetaError::fs(
                errno::ENOLCK,
                format!("inode {ino} would hold {} locks", next.len()),
            ));
        }
        if next.is_empty() {
            self.held.remove(&ino);
        } else {
            self.held.insert(ino, next);
        }
        Ok(())
    }

    pub(super) fn drop_inode(&mut self, ino: Ino) {
        self.held.remove(&ino);
    }

    /// Releases every lock of clients whose lease ended.
    pub(super) fn release_clients(&mut self, client_ids: &[u64]) {
        if client_ids.is_empty() {
            return;
        }
        self.held.retain(|_, held| {
            held.retain(|l| !client_ids.contains(&l.client_id));
            !held.is_empty()
        });
    }
}

/// `held` with `lock` applied for its owner: the owner's ranges it covers
/// are cut out (keeping what lies outside it), then it is added unless it
/// is an unlock.
fn applied(held: &[FileLock], lock: &FileLock) -> Vec<FileLock> {
    let mut out = Vec::with_capacity(held.len() + 2);
    for h in held {
        let same_owner = h.client_id == lock.client_id && h.owner == lock.owner;
        if !same_owner || !h.overlaps(lock) {
            out.push(*h);
            continue;
        }
        // Overlapping, so h.start < lock.start implies lock.start > 0, and
        // h.end > lock.end implies lock.end < u64::MAX: no overflow.
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
        out.push(*lock);
    }
    out
}
