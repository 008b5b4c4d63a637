//! torchfs transport (docs/ARCHITECTURE.md: Design and Data path): the [`Transport`] abstraction that
//! moves fragment bytes between the client core and storage-node shards,
//! the wire framing both ends share ([`frame`]), and the TCP
//! implementation ([`TcpTransport`]).
//!
//! RDMA verbs will be a second `Transport` implementation chosen per peer at
//! connect; the trait therefore speaks only of caller-owned buffers (which an
//! RDMA implementation registers) and never hands out its own.

use std::future::Future;
use std::net::SocketAddr;

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};

pub mod conformance;
pub mod crc;
pub mod endpoint;
pub mod frame;
mod tcp;
pub mod verbs;

pub use tcp::{TcpOptions, TcpTransport};

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
}
