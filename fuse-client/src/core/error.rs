//! Why client operations fail, and the errno each failure gives a POSIX
//! front-end.

use torchfs_proto::fragment::FragmentErrorCode;
use torchfs_proto::meta::{Ino, MetaError, MetaReply};
use torchfs_storage_client::StorageError;

use super::cache::PlanError;
use crate::codec::CodecError;
use crate::stripe::StripeError;

/// An open file, as handed to front-ends.
pub type FileHandle = u64;

/// Why a client operation failed; [`ClientError::errno`] is what a POSIX
/// front-end returns.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("metadata service at {addrs:?} unreachable: {source}")]
    MetaUnreachable {
        addrs: Vec<String>,
        source: MetaError,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("metad answered {request} with an unexpected reply: {reply}")]
    UnexpectedReply {
        request: &'static str,
        reply: String,
    },
    #[error("file handle {fh} is not open")]
    BadHandle { fh: FileHandle },
    #[error("file handle {fh} is not open for writing")]
    NotWritable { fh: FileHandle },
    #[error("inode {ino} is a directory")]
    IsDir { ino: Ino },
    #[error("inode {ino} is not a regular file")]
    NotFile { ino: Ino },
    /// Stripe I/O failed (storage nodes, the cluster map, decoding).
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("inode {ino}: {source}")]
    Layout { ino: Ino, source: StripeError },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("inode {ino}: {tries} commits in a row conflicted with other clients' writes")]
    CommitConflict { ino: Ino, tries: u32 },
    #[error("offset {offset} + {len_bytes} bytes is past the largest file size")]
    TooLarge { offset: u64, len_bytes: u64 },
    #[error("plan rejected: {0}")]
    Plan(#[from] PlanError),
    #[error("torchfs control file: {reason}")]
    Control { reason: &'static str },
    #[error(transparent)]
    FrozenTable(#[from] FrozenTableError),
    #[error("cache disk tier at {dir}: {source}")]
    CacheDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether a newer cluster map could make the failed operation pass: the
    /// node was unreachable or unknown, not refusing the request itself.
    pub fn may_pass_with_newer_map(&self) -> bool {
        matches!(self, ClientError::Storage(e) if e.may_pass_with_newer_map())
    }

    /// The errno (Linux numbering) a POSIX front-end should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Meta(e) | ClientError::MetaUnreachable { source: e, .. } => e.errno(),
            ClientError::BadHandle { .. } | ClientError::NotWritable { .. } => libc::EBADF,
            ClientError::IsDir { .. } => libc::EISDIR,
            ClientError::NotFile { .. } => libc::EINVAL,
            ClientError::Storage(StorageError::NoPlacement { .. }) => libc::ENOSPC,
            // A storage node whose disk is full refused the fragment.
            ClientError::Storage(StorageError::Transport { source, .. })
                if source.code() == Some(FragmentErrorCode::NoSpace) =>
            {
                libc::ENOSPC
            }
            ClientError::TooLarge { .. } => libc::EFBIG,
            ClientError::Plan(PlanError::TooLarge { .. }) => libc::EFBIG,
            ClientError::Plan(_) => libc::EINVAL,
            ClientError::Control { .. } => libc::EPERM,
            ClientError::UnexpectedReply { .. }
            | ClientError::Storage(_)
            | ClientError::Layout { .. }
            | ClientError::CacheDir { .. }
            | ClientError::CommitConflict { .. }
            | ClientError::FrozenTable(_)
            | ClientError::Codec(_) => libc::EIO,
        }
    }
}

/// Why a frozen tree's pages do not make a table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrozenTableError {
    #[error("frozen entry {name:?} (inode {ino}) names parent {parent}, which is not a directory listed before it")]
    Orphan { ino: Ino, parent: Ino, name: String },
    #[error("entry {name:?} (inode {ino}) of frozen tree {root} is not frozen")]
    NotFrozen { root: Ino, ino: Ino, name: String },
    #[error("frozen tree {root} has more than {entries_max} entries (frozen_entries_max)")]
    TooLarge { root: Ino, entries_max: usize },
}

/// A reply of the wrong kind for `request`, as an error.
pub(crate) fn unexpected(request: &'static str, reply: MetaReply) -> ClientError {
    let mut text = format!("{reply:?}");
    // Replies can carry whole layouts; keep errors readable.
    text.truncate(200);
    ClientError::UnexpectedReply {
        request,
        reply: text,
    }
}
