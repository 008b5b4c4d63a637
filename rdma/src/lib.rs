//! SKELETON (being written by the dataplane helper): the Transport trait.
use std::future::Future;
use std::net::SocketAddr;

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("i/o with {addr}: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("{addr} refused {key}: {code:?}: {message}")]
    Remote { addr: SocketAddr, key: FragmentKey, code: FragmentErrorCode, message: String },
    #[error("protocol error with {addr}: {message}")]
    Protocol { addr: SocketAddr, message: String },
}

/// Moves fragment bytes between a client and storage-node shards. Bulk
/// bytes go from and into caller-provided buffers.
pub trait Transport: Send + Sync + 'static {
    /// Store `data` as fragment `key` on the shard at `addr`.
    fn put(&self, addr: SocketAddr, key: FragmentKey, data: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Read `buf.len()` bytes at `offset` of fragment `key` into `buf`; the
    /// node verifies the whole fragment against `expected_crc32c`.
    fn get(&self, addr: SocketAddr, key: FragmentKey, offset: u32, expected_crc32c: u32, buf: &mut [u8]) -> impl Future<Output = Result<(), TransportError>> + Send;
    fn delete(&self, addr: SocketAddr, key: FragmentKey) -> impl Future<Output = Result<(), TransportError>> + Send;
}

#[derive(Clone, Debug)]
pub struct TcpOptions {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Idle connections kept per endpoint.
    pub idle_connections_max: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self { connect_timeout_ms: 1_000, request_timeout_ms: 5_000, idle_connections_max: 8 }
    }
}

/// TCP implementation (tokio), one pooled connection per request in flight.
pub struct TcpTransport {}

impl TcpTransport {
    pub fn new(opts: TcpOptions) -> Self {
        let _ = opts;
        todo!()
    }
}

impl Transport for TcpTransport {
    async fn put(&self, addr: SocketAddr, key: FragmentKey, data: &[u8]) -> Result<(), TransportError> {
        let _ = (addr, key, data);
        todo!()
    }
    async fn get(&self, addr: SocketAddr, key: FragmentKey, offset: u32, expected_crc32c: u32, buf: &mut [u8]) -> Result<(), TransportError> {
        let _ = (addr, key, offset, expected_crc32c, buf);
        todo!()
    }
    async fn delete(&self, addr: SocketAddr, key: FragmentKey) -> Result<(), TransportError> {
        let _ = (addr, key);
        todo!()
    }
}
