//! Attribute conversion between torchfs (`meta::Attr`) and FUSE.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use torchfs_proto::meta::{Attr, FileKind};

/// Block size reported to `stat()`: one erasure-coding unit would be more
/// honest for throughput but confuses tools that allocate per block.
const BLKSIZE_BYTES: u32 = 4096;

pub(super) fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// The kind a mknod(2) mode asks for (`S_IFMT` bits); None for a type
/// mknod cannot make.
pub(super) fn node_kind(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        libc::S_IFSOCK => FileKind::Socket,
        _ => return None,
    })
}

pub(super) fn ns_to_system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub(super) fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub(super) fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: ns_to_system_time(attr.atime_ns),
        mtime: ns_to_system_time(attr.mtime_ns),
        ctime: ns_to_system_time(attr.ctime_ns),
        crtime: ns_to_system_time(attr.ctime_ns),
        kind: file_type(attr.kind),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: BLKSIZE_BYTES,
        flags: 0,
    }
}

/// A negative entry: inode 0 tells the kernel the name does not exist, and
/// it caches that for the entry TTL (no LOOKUP per probe of a missing name:
/// imports, `git status`, build tools).
pub(super) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE_BYTES,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_both_sides_of_the_epoch() {
        for ns in [0i64, 1, 1_700_000_000_123_456_789, -5_000_000_001] {
            assert_eq!(system_time_ns(ns_to_system_time(ns)), ns);
        }
    }

    #[test]
    fn attr_maps_kind_and_permission_bits() {
        let attr = Attr {
            ino: 42,
            kind: FileKind::Symlink,
            mode: 0o4755,
            uid: 7,
            gid: 8,
            size: 1025,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
            has_xattrs: false,
            frozen: false,
        };
        let fa = file_attr(&attr);
        assert_eq!(fa.kind, FileType::Symlink);
        assert_eq!(fa.perm, 0o4755);
        assert_eq!(fa.blocks, 3);
        assert_eq!(fa.ino, INodeNo(42));
    }
}
