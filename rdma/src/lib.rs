//! torchfs transport (docs/ARCHITECTURE.md: Design and Data path): the [`Transport`] abstraction that
//! moves fragment bytes between the client core and storage-node shards,
//! the wire framing both ends share ([`frame`]), and the TCP
//! implementation ([`TcpTransport`]).
//!
//! [`verbs`] is the RDMA implementation; [`MultiTransport`] holds both and
//! picks per node ([`endpoint`]). The trait speaks only of caller-owned
//! buffers and never hands out its own.

use std::future::Future;
use std::net::SocketAddr;

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};

pub mod conformance;
pub mod crc;
pub mod endpoint;
#[cfg(feature = "testing")]
pub mod faults;
pub mod frame;
mod multi;
mod tcp;
pub mod verbs;

pub use multi::MultiTransport;
pub use tcp::{TcpOptions, TcpTransport};

/// What a transport moved, by kind (`.torchfs/stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    pub tcp_requests: u64,
    /// Fragment bytes sent or asked for over TCP.
    pub tcp_bytes: u64,
    pub verbs_requests: u64,
    pub verbs_bytes: u64,
    /// Requests that went to TCP because verbs could not connect.
    pub verbs_fallbacks: u64,
    /// Nodes currently reached over verbs.
    pub verbs_nodes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("i/o with {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("{addr} refused {key}: {code:?}: {message}")]
    Remote {
        addr: SocketAddr,
        key: FragmentKey,
        code: FragmentErrorCode,
        message: String,
    },
    #[error("protocol error with {addr}: {message}")]
    Protocol { addr: SocketAddr, message: String },
    /// The fragment's bytes do not hash to the CRC32C metad holds: found by
    /// the node (stored data) or by this client (bytes as received).
    #[error("fragment {key} from {addr}: CRC32C mismatch: expected {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        addr: SocketAddr,
        key: FragmentKey,
        expected: u32,
        actual: u32,
    },
    /// The node holds fewer bytes at `offset` than the caller's buffer asks for.
    #[error("fragment {key} from {addr}: asked {requested_bytes} bytes at offset {offset}, it has {available_bytes}")]
    ShortFragment {
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        requested_bytes: u32,
        available_bytes: u32,
    },
    /// A fragment above the wire limit (`FRAGMENT_BYTES_MAX`).
    #[error("fragment {key} of {length_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        key: FragmentKey,
        length_bytes: usize,
        max_bytes: u32,
    },
}

impl TransportError {
    /// The fragment error code this failure amounts to, when the node (or
    /// the client's own check) judged the fragment itself rather than the
    /// path to it. Callers treat `NotFound` and `ChecksumMismatch` alike:
    /// read another fragment of the stripe and report.
    pub fn code(&self) -> Option<FragmentErrorCode> {
        match self {
            TransportError::Remote { code, .. } => Some(*code),
            TransportError::ChecksumMismatch { .. } => Some(FragmentErrorCode::ChecksumMismatch),
            TransportError::ShortFragment { .. } | TransportError::TooLarge { .. } => {
                Some(FragmentErrorCode::BadRequest)
            }
            _ => None,
        }
    }
}

/// Moves fragment bytes between a client and storage-node shards. Bulk
/// bytes go from and into caller-provided buffers.
pub trait Transport: Send + Sync + 'static {
    /// Store `data` as fragment `key` on the shard at `addr`.
    fn put(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        data: &[u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Read `buf.len()` bytes at `offset` of fragment `key` into `buf`. The
    /// node refuses a fragment whose whole CRC32C is not `expected_crc32c`
    /// and checks the CRC of every chunk the range covers.
    fn get(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        expected_crc32c: u32,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    fn delete(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
    ) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// The keys the shard at `addr` stores after `after` (key order), at
    /// most `limit` (orphan collection). Transports that cannot list say
    /// so.
    fn list(
        &self,
        addr: SocketAddr,
        _after: FragmentKey,
        _limit: u32,
    ) -> impl Future<Output = Result<Vec<FragmentKey>, TransportError>> + Send {
        async move {
            Err(TransportError::Protocol {
                addr,
                message: "this transport cannot list keys".into(),
            })
        }
    }
    /// The cluster's nodes and the transports they advertise, whenever
    /// the client's map of them changes.
    fn learn_nodes(&self, _nodes: &[torchfs_proto::meta::NodeStatus]) {}
    /// What this transport moved so far.
    fn counters(&self) -> TransportCounters {
        TransportCounters::default()
    }
}
