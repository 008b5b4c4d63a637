//! Domain types of the metadata API: what clients and storage nodes ask metad,
//! and what it answers. `convert` maps them to and from the Cap'n Proto schema
//! (`schema/metadata.capnp`); metad also uses them (serde) inside its Raft log.

use serde::{Deserialize, Serialize};

mod cluster;
pub use cluster::*;

/// Inode number. The root directory is [`ROOT_INO`].
pub type Ino = u64;
/// Storage-node id, unique in a cluster and kept by the node across restarts.
pub type NodeId = u64;
/// Inode of the root directory.
pub const ROOT_INO: Ino = 1;
/// Longest file name accepted (bytes), as on Linux.
pub const NAME_BYTES_MAX: usize = 255;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A named pipe (FIFO): its data never reaches torchfs, the kernel
    /// connects its readers and writers.
    Fifo,
    /// A character device node; `Attr::rdev` names the device.
    CharDevice,
    /// A block device node; `Attr::rdev` names the device.
    BlockDevice,
    /// A socket's name (bind(2) of an AF_UNIX socket); the kernel serves it.
    Socket,
}

impl FileKind {
    /// The kinds `mknod` makes: everything but directories and symlinks.
    pub fn is_node(self) -> bool {
        !matches!(self, FileKind::Dir | FileKind::Symlink)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits only (0o7777); the kind is in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Device number of a character or block device (Linux encoding, as
    /// `makedev`); 0 for every other kind.
    pub rdev: u32,
    /// Whether the inode has extended attributes (ACLs included): a client
    /// holding fresh attributes answers getxattr on an inode without any
    /// with no round trip.
    pub has_xattrs: bool,
    /// Part of a frozen dataset version (docs/ARCHITECTURE.md: Metadata): metad refuses every
    /// change to it, so clients may serve it from a table loaded once.
    pub frozen: bool,
}

/// A directory a write changed, as the reply reports it
/// (`Response.dirs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChangedDir {
    /// Its attributes right after the write applied.
    pub attr: Attr,
    /// Its ctime just before the write changed it (metad keeps a
    /// directory's ctime strictly increasing, so equal means unchanged);
    /// None from an older metad.
    pub ctime_before_ns: Option<i64>,
}

/// How files are cut into stripes: `k` data + `m` parity fragments of
/// `unit_bytes` each (docs/ARCHITECTURE.md: Data path).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StripeConfig {
    pub k: u8,
    pub m: u8,
    pub unit_bytes: u32,
}

impl StripeConfig {
    pub const DEFAULT: StripeConfig = StripeConfig {
        k: 4,
        m: 2,
        unit_bytes: 1 << 20,
    };

    /// File bytes held by one stripe (`k * unit_bytes`).
    pub fn stripe_bytes(&self) -> u64 {
        self.k as u64 * self.unit_bytes as u64
    }

    /// Fragments per stripe (`k + m`).
    pub fn width(&self) -> usize {
        self.k as usize + self.m as usize
    }
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One written stripe of a file. Stripes absent from a layout are holes
/// (all zeros). Fragment keys are `(ino, stripe, generation, index)`; a new
/// write of a stripe gets a new generation, so committed fragments are never
/// overwritten in place.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StripeEntry {
    pub stripe: u64,
    pub generation: u64,
    /// File bytes in the stripe when it was encoded. Data fragment `i` is
    /// stored iff `i * unit < encoded_bytes`; its length is
    /// `min(unit, encoded_bytes - i * unit)`; parity fragments are
    /// `min(unit, encoded_bytes)` long.
    pub encoded_bytes: u32,
    /// Bytes of the stripe still part of the file (a truncation lowers it):
    /// bytes past it read as zeros whatever the fragments hold.
    pub valid_bytes: u32,
    /// CRC32C of each of the k+m fragments; 0 for one that is not stored.
    pub crcs: Vec<u32>,
}

/// The version of a stripe that a client's write was merged into
/// ([`MetaRequest::CommitStripes`]): generation 0 is a hole (no entry).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StripeBase {
    pub generation: u64,
    pub valid_bytes: u32,
}

impl StripeBase {
    /// The version `entry` is (a hole when `None`).
    pub fn of(entry: Option<&StripeEntry>) -> Self {
        entry.map_or(Self::default(), |e| Self {
            generation: e.generation,
            valid_bytes: e.valid_bytes,
        })
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Layout {
    pub config: StripeConfig,
    /// Sorted by `stripe`, no duplicates.
    pub stripes: Vec<StripeEntry>,
}

/// One inode of a frozen tree as [`MetaRequest::ReadFrozen`] lists it: the
/// entry naming it, its attributes, and what reading it needs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FrozenEntry {
    pub parent: Ino,
    pub name: String,
    pub attr: Attr,
    pub body: FrozenBody,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FrozenBody {
    File(Layout),
    Dir,
    Symlink(String),
    /// A FIFO, device node or socket: the attributes are all there is.
    Node,
}

/// A name found in a directory and its inode's attributes
/// ([`MetaRequest::LookupMany`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NamedAttr {
    pub name: String,
    pub attr: Attr,
}

/// A file's attributes and layout ([`MetaRequest::GetLayouts`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    pub attr: Attr,
    pub layout: Layout,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub ino: Ino,
    pub kind: FileKind,
}

/// What a rename does with an existing target (renameat2 flags).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RenameMode {
    /// Replace it (rename(2)).
    #[default]
    Replace,
    /// Fail with EEXIST (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two names; both must exist (RENAME_EXCHANGE).
    Exchange,
}

/// When a set of an extended attribute may happen (setxattr(2) flags).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XattrMode {
    /// Create or replace.
    #[default]
    Any,
    /// Fail with EEXIST if the name exists (XATTR_CREATE).
    Create,
    /// Fail with ENODATA if it does not (XATTR_REPLACE).
    Replace,
}

/// One extended attribute: a name with its namespace prefix (`user.`,
/// `trusted.`, `security.`, `system.posix_acl_*`) and its value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

/// What a [`FileLock`] asks for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Shared (F_RDLCK, flock LOCK_SH).
    Read,
    /// Exclusive (F_WRLCK, flock LOCK_EX).
    Write,
    /// Release the range (F_UNLCK, LOCK_UN).
    Unlock,
}

/// A byte-range lock of one owner: the kernel's lock owner within client
/// (mount) `client_id`. flock locks are whole-file locks owned by the open
/// file. Locks of one owner never conflict with each other; a lock of a
/// client whose lease ends is released.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLock {
    pub client_id: u64,
    pub owner: u64,
    /// The process, for F_GETLK's answer.
    pub pid: u32,
    pub kind: LockKind,
    pub start: u64,
    /// Inclusive; `u64::MAX` reaches to the end of the file, however long.
    pub end: u64,
}

impl FileLock {
    /// Whether the two ranges share a byte.
    pub fn overlaps(&self, other: &FileLock) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// Whether `other` (held) keeps this lock from being taken.
    pub fn conflicts_with(&self, other: &FileLock) -> bool {
        let same_owner = self.client_id == other.client_id && self.owner == other.owner;
        !same_owner
            && self.overlaps(other)
            && (self.kind == LockKind::Write || other.kind == LockKind::Write)
    }
}

/// Locks one inode holds at most (more: ENOLCK).
pub const LOCKS_PER_INODE_MAX: usize = 4096;

/// Longest extended attribute name (bytes), as Linux's XATTR_NAME_MAX.
pub const XATTR_NAME_BYTES_MAX: usize = 255;
/// Largest extended attribute value (bytes), as Linux's XATTR_SIZE_MAX.
pub const XATTR_VALUE_BYTES_MAX: usize = 64 << 10;
/// Names plus values of all of one inode's extended attributes (bytes), so
/// that [`MetaRequest::GetXattrs`] stays one bounded reply.
pub const XATTR_INODE_BYTES_MAX: usize = 256 << 10;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The leader's clock when the request is applied.
    Now,
    Ns(i64),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
/// Capacity as a user sees it: file bytes that fit, after the erasure
/// code's overhead (raw bytes times k/(k+m)), and inodes.
pub struct StatFs {
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// Inodes in use.
    pub files: u64,
    /// Inodes that can still be made.
    pub files_free: u64,
}

/// Inodes a cluster reports it can hold (`statfs` f_files): metad keeps the
/// namespace in memory, and this is the bound torchfs plans for.
pub const FILES_MAX: u64 = 1 << 32;

// `MetaRequest`, `MetaReply` and `MetaRequest::is_write`, generated from the
// schema's `Request` and `Response` unions (proto/build/ops).
include!(concat!(env!("OUT_DIR"), "/meta_ops.rs"));

impl MetaRequest {
    /// The directories this request changes when it succeeds (whose
    /// attributes metad sends back beside the reply, `Response.dirs`).
    pub fn changed_dirs(&self) -> Vec<Ino> {
        match self {
            Self::Create { parent, .. }
            | Self::CreateOpen { parent, .. }
            | Self::Mkdir { parent, .. }
            | Self::Mknod { parent, .. }
            | Self::Symlink { parent, .. }
            | Self::Unlink { parent, .. }
            | Self::Rmdir { parent, .. } => vec![*parent],
            Self::Link { new_parent, .. } => vec![*new_parent],
            Self::Rename {
                parent, new_parent, ..
            } if parent != new_parent => vec![*parent, *new_parent],
            Self::Rename { parent, .. } => vec![*parent],
            _ => Vec::new(),
        }
    }
}

/// Entries one [`MetaRequest::ReadFrozen`] page holds at most.
pub const FROZEN_PAGE_ENTRIES_MAX: u32 = 8192;

/// Names one [`MetaRequest::LookupMany`] may ask: a bounded request and
/// reply (at most ~300 KiB of names), and one read that cannot hold the
/// leader's thread for long.
pub const LOOKUP_NAMES_MAX: usize = 1024;

/// Entries one [`MetaRequest::ReadDirPlus`] answers at most (bounded like
/// [`LOOKUP_NAMES_MAX`]).
pub const READDIR_PLUS_MAX: u32 = 1024;

/// Inodes one [`MetaRequest::GetLayouts`] may ask: a bounded reply (a
/// small file's layout is a few hundred bytes).
pub const LAYOUTS_MAX: usize = 256;

/// Names one write of one client so that metad applies it exactly once
/// however often it is retried (client sessions, Raft thesis §6.3): metad
/// keeps the results of each client's recent writes and answers a retry
/// with the stored result instead of applying it again.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WriteId {
    /// Random per client (one per `MetaClient`); 0 is not a valid id.
    pub client_id: u64,
    /// The client's number for this write, from 1; the same on every retry.
    pub seq: u64,
    /// The lowest seq this client still waits on (at most `seq`): metad may
    /// forget the results of every lower one.
    pub lowest_outstanding_seq: u64,
}

impl WriteId {
    /// Checks the ids are well formed: a non-zero client id, a seq from 1,
    /// and a lowest outstanding seq in 1..=seq (this write is outstanding).
    pub fn check(&self) -> Result<(), MetaError> {
        if self.client_id == 0 {
            return Err(MetaError::Invalid(
                "write id: client id 0 is reserved".into(),
            ));
        }
        if self.lowest_outstanding_seq == 0 || self.lowest_outstanding_seq > self.seq {
            return Err(MetaError::Invalid(format!(
                "write id of client {:#018x}: lowest outstanding seq {} must be in 1..={} (this write's seq)",
                self.client_id, self.lowest_outstanding_seq, self.seq
            )));
        }
        Ok(())
    }
}

/// A freed file whose fragments are still on the storage nodes: an orphan
/// (unlinked while open) reclaimed after its last close, handed to a client
/// to delete.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Garbage {
    pub ino: Ino,
    pub layout: Layout,
}

/// Why metad refused or could not answer a request.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// A POSIX error (`libc` errno value) from the namespace, e.g. ENOENT.
    #[error("{message} (errno {errno})")]
    Fs { errno: i32, message: String },
    /// This voter is not the leader; `leader_addr` is where to go (None when
    /// no leader is known yet).
    #[error("not the leader (leader {leader_id:?} at {leader_addr:?})")]
    NotLeader {
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    /// No quorum, shutting down, or a storage failure: retry later.
    #[error("metadata service unavailable: {0}")]
    Unavailable(String),
    /// The request was malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// metad no longer knows this client's session (it was idle past the
    /// expiry window, or evicted to bound the table), so it cannot tell a
    /// retry from a new write: write `seq` was not applied. `MetaClient`
    /// starts a new session and sends the write again.
    #[error(
        "client session {client_id:#018x} expired or was evicted; write {seq} was not applied (start a new session)"
    )]
    SessionExpired { client_id: u64, seq: u64 },
}

impl MetaError {
    pub fn fs(errno: i32, message: impl Into<String>) -> Self {
        MetaError::Fs {
            errno,
            message: message.into(),
        }
    }

    /// The errno a filesystem front-end should return for this error.
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::Fs { errno, .. } => *errno,
            MetaError::Invalid(_) => errno::EINVAL,
            MetaError::NotLeader { .. }
            | MetaError::Unavailable(_)
            | MetaError::SessionExpired { .. } => errno::EIO,
        }
    }
}

/// The errno values used in [`MetaError::Fs`] (Linux numbering), so crates
/// that do not link libc agree on them.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EAGAIN: i32 = 11;
    pub const E2BIG: i32 = 7;
    pub const EIO: i32 = 5;
    pub const EBUSY: i32 = 16;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOLCK: i32 = 37;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const EOPNOTSUPP: i32 = 95;
}

#[cfg(test)]
mod tests;
