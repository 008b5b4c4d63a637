//! Why a storage node could not start or stopped ([`DataplaneError`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::faults;

/// Why a storage node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("data dir {dir} is not writable ({source}): create it with write permission for this user, or choose another data dir")]
    DataDirNotWritable {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {dir} belongs to node {found}, not node {configured}: start with node id {found}, or use another data dir")]
    NodeIdMismatch {
        dir: PathBuf,
        found: u64,
        configured: u64,
    },
    #[error("{path}: {message}")]
    NodeIdFile { path: PathBuf, message: String },
    #[error("cannot determine the capacity of {dir} ({source}): set capacity_bytes")]
    Capacity {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("bad fragment log setting: {0}")]
    LogConfig(String),
    #[error("scanning shard directory {dir}: {source}")]
    Scan {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("port {port} on {ip} is already in use (shard {shard}): stop what holds it or choose another base port (0 picks free ports)")]
    PortInUse {
        ip: std::net::IpAddr,
        port: u16,
        shard: usize,
    },
    #[error("listen on {addr} (shard {shard}): {source}")]
    Bind {
        addr: SocketAddr,
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard}: executor: {message}")]
    Executor { shard: usize, message: String },
    #[error("cannot reach metad at {addrs} within {timeout_ms} ms: is it running? ({message})")]
    MetadUnreachable {
        addrs: String,
        timeout_ms: u64,
        message: String,
    },
    #[error("metad refused to register this node: {message}")]
    MetadRefused { message: String },
    #[error("control plane: {message}")]
    Control { message: String },
    #[error("RDMA verbs listener on {addr}: {message}")]
    Verbs { addr: SocketAddr, message: String },
    #[error("bad TORCHFS_DISK_FAULTS: {0}")]
    DiskFaults(#[from] faults::DiskFaultsError),
}
