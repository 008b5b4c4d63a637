//! Why stripe I/O failed, with the numbers that explain it.

use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, NodeId};
use torchfs_rdma::TransportError;

use crate::codec::CodecError;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no placement group for stripe {stripe} of inode {ino}: {nodes} storage nodes registered, {needed} needed")]
    NoPlacement {
        ino: Ino,
        stripe: u64,
        nodes: usize,
        needed: usize,
    },
    #[error("storage node {node} for fragment {key} is down")]
    NodeDown { node: NodeId, key: FragmentKey },
    #[error("storage node {node} (fragment {key}) is not in cluster map epoch {epoch}")]
    UnknownNode {
        node: NodeId,
        key: FragmentKey,
        epoch: u64,
    },
    #[error("storage node {node} address {host}:{port}: {source}")]
    Resolve {
        node: NodeId,
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("fragment {key} on node {node}: {source}")]
    Transport {
        node: NodeId,
        key: FragmentKey,
        source: Box<TransportError>,
    },
    #[error("stripe {stripe} of inode {ino} unreadable: {available} of {needed} fragments available (last error: {last_error})")]
    Unrecoverable {
        ino: Ino,
        stripe: u64,
        available: usize,
        needed: usize,
        last_error: String,
    },
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl StorageError {
    /// Whether a newer cluster map could make the failed operation pass: the
    /// node was unreachable or unknown, not refusing the request itself.
    pub fn may_pass_with_newer_map(&self) -> bool {
        match self {
            StorageError::NodeDown { .. }
            | StorageError::UnknownNode { .. }
            | StorageError::Resolve { .. } => true,
            StorageError::Transport { source, .. } => source.code().is_none(),
            _ => false,
        }
    }
}
