//! The Raft log and the session table hold `MetaRequest` and `MetaReply` as
//! bincode, which encodes a variant by its position and a struct variant's
//! fields in order: both enums are generated from the schema, and a change
//! of either order there would make a data directory written by an earlier
//! build unreadable. These bytes were written by the hand-written enums the
//! generated ones replaced.

use torchfs_proto::meta::{FileKind, FileLock, LockKind, MetaReply, MetaRequest};

fn hex(v: &impl serde::Serialize) -> String {
    bincode::serialize(v)
        .expect("encode")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn log_encoding_of_requests_is_unchanged() {
    let mknod = MetaRequest::Mknod {
        parent: 1,
        name: "p".into(),
        kind: FileKind::Fifo,
        mode: 0o644,
        umask: 0o22,
        uid: 7,
        gid: 8,
        rdev: 9,
    };
    let get_lock = MetaRequest::GetLock {
        ino: 2,
        lock: FileLock {
            client_id: 3,
            owner: 4,
            pid: 5,
            kind: LockKind::Write,
            start: 6,
            end: u64::MAX,
        },
    };
    // Variant 12; parent, name, kind (3), mode, umask, uid, gid, rdev.
    assert_eq!(
        hex(&mknod),
        "0c000000010000000000000001000000000000007003000000a401000012000000070000000800000009000000"
    );
    // Variant 29, then the lock's fields in order.
    assert_eq!(
        hex(&get_lock),
        "1d00000002000000000000000300000000000000040000000000000005000000010000000600000000000000ffffffffffffffff"
    );
    assert_eq!(hex(&MetaRequest::StatFs), "0d000000");
    // Added after the generated enums: variant 30 (appended); parent,
    // name, mode, umask, uid, gid, exclusive, client id.
    let create_open = MetaRequest::CreateOpen {
        parent: 1,
        name: "f".into(),
        mode: 0o644,
        umask: 0,
        uid: 2,
        gid: 3,
        exclusive: true,
        client_id: 4,
    };
    assert_eq!(
        hex(&create_open),
        "1e0000000100000000000000010000000000000066a401000000000000020000000300000001\
         0400000000000000"
    );
}

#[test]
fn log_encoding_of_replies_is_unchanged() {
    let lock = MetaReply::Lock { conflict: None };
    let freed = MetaReply::AttrFreed {
        attr: torchfs_proto::meta::Attr {
            ino: 1,
            kind: FileKind::File,
            mode: 0o600,
            uid: 2,
            gid: 3,
            size: 4,
            nlink: 1,
            atime_ns: 5,
            mtime_ns: 6,
            ctime_ns: 7,
            rdev: 0,
            has_xattrs: true,
            frozen: false,
        },
        freed: vec![],
    };
    // Variant 14 (the last), no conflict.
    assert_eq!(hex(&lock), "0e00000000");
    // Variant 8, the attributes, an empty list.
    assert_eq!(
        hex(&freed),
        "080000000100000000000000000000008001000002000000030000000400000000000000010000000500000000000000060000000000000007000000000000000000000001000000000000000000"
    );
}
