//! Locks through the state machine: conflicts answered EAGAIN with nothing
//! changed, GetLock's answer, unlock on a freed inode, release of a lapsed
//! client's locks, and freeing an inode drops its locks.

use super::*;
use torchfs_proto::meta::{FileLock, LockKind};

fn lock(client_id: u64, kind: LockKind, start: u64, end: u64) -> FileLock {
    FileLock {
        client_id,
        owner: 7,
        pid: 100 + client_id as u32,
        kind,
        start,
        end,
    }
}

fn set(t: &mut T, ino: Ino, l: FileLock) -> Outcome {
    t.w(MetaRequest::SetLock { ino, lock: l })
}

fn get(t: &T, ino: Ino, l: FileLock) -> Option<FileLock> {
    match t.r(MetaRequest::GetLock { ino, lock: l }) {
        Ok(MetaReply::Lock { conflict }) => conflict,
        other => panic!("getlock: {other:?}"),
    }
}

#[test]
fn a_conflicting_lock_is_eagain_and_changes_nothing() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f").ino;
    set(&mut t, f, lock(1, LockKind::Write, 0, 99)).unwrap();
    let before = t.st.clone();
    let e = set(&mut t, f, lock(2, LockKind::Read, 50, 50)).unwrap_err();
    assert_eq!(e.errno(), EAGAIN);
    assert_eq!(t.st.locks, before.locks);
    // F_GETLK names the holder; past its range nothing conflicts.
    let c = get(&t, f, lock(2, LockKind::Read, 50, 60)).unwrap();
    assert_eq!((c.client_id, c.pid, c.start, c.end), (1, 101, 0, 99));
    assert_eq!(get(&t, f, lock(2, LockKind::Write, 100, u64::MAX)), None);
    set(&mut t, f, lock(2, LockKind::Write, 100, u64::MAX)).unwrap();
    // The holder unlocks: the other client gets its lock.
    set(&mut t, f, lock(1, LockKind::Unlock, 0, u64::MAX)).unwrap();
    set(&mut t, f, lock(2, LockKind::Read, 50, 50)).unwrap();
    assert_eq!(t.st.lock_holders(), [2].into());
}

#[test]
fn bad_ranges_and_missing_inodes_are_refused() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f").ino;
    let e = set(&mut t, f, lock(1, LockKind::Read, 10, 9)).unwrap_err();
    assert_eq!(e.errno(), EINVAL);
    let e = set(&mut t, 999, lock(1, LockKind::Write, 0, 1)).unwrap_err();
    assert_eq!(e.errno(), ENOENT);
    // An unlock of a freed inode (a close after the unlink) is fine.
    set(&mut t, 999, lock(1, LockKind::Unlock, 0, u64::MAX)).unwrap();
    assert!(t.st.locks.is_empty());
}

#[test]
fn a_lapsed_client_loses_its_locks_and_a_freed_inode_drops_them() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f").ino;
    let g = t.create(ROOT_INO, "g").ino;
    set(&mut t, f, lock(1, LockKind::Write, 0, u64::MAX)).unwrap();
    set(&mut t, g, lock(1, LockKind::Read, 0, 9)).unwrap();
    set(&mut t, g, lock(2, LockKind::Read, 0, 9)).unwrap();
    t.now += 1;
    t.st.apply(&Command {
        now_ns: t.now,
        op: Op::ReleaseLocks {
            client_ids: vec![1],
        },
    })
    .unwrap();
    assert_eq!(t.st.lock_holders(), [2].into());
    set(&mut t, f, lock(3, LockKind::Write, 0, 0)).unwrap();
    // Unlinked (vouched closed here): its locks go with it.
    t.w(MetaRequest::Unlink {
        parent: ROOT_INO,
        name: "g".into(),
    })
    .unwrap();
    assert!(!t.st.locks.contains_key(&g));
    assert_eq!(t.st.lock_holders(), [3].into());
}
