//! RDMA verbs transport (docs/ARCHITECTURE.md: Transports), on `sideway`
//! (rdma-core loaded at run time, so this builds and runs without a
//! device; it only fails to connect). Reliable-connected queue pairs set
//! up through rdma_cm; Cap'n Proto headers go by SEND/RECV; fragment bytes
//! move by RDMA between registered buffers of bounded pools: the node
//! RDMA-READs a put's bytes from the client's buffer and RDMA-WRITEs a
//! get's bytes into it, then SENDs the response.
//!
//! - [`pool`]: the registered buffer pool.
//! - `queue`: one queue pair, its completions and header buffers.
//! - `cm`: rdma_cm events on tokio.
//! - [`client`]: [`VerbsTransport`], the client side of [`crate::Transport`].
//! - [`server`]: [`VerbsListener`], the node side, over a [`FragmentHandler`].

pub mod client;
mod cm;
pub mod pool;
mod queue;
pub mod server;

pub use client::{VerbsOptions, VerbsTransport};
pub use server::{FragmentHandler, ListenerOptions, VerbsListener};

/// Why a verbs operation failed below the fragment protocol.
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    #[error("no RDMA device: {message}")]
    NoDevice { message: String },
    #[error("{step}: {message}")]
    Setup { step: &'static str, message: String },
    #[error("register {total_bytes} bytes of buffers: {message}")]
    Register { total_bytes: usize, message: String },
    #[error("post {op}: {message}")]
    Post { op: &'static str, message: String },
    #[error("{op} completed with {status}")]
    Completion { op: String, status: String },
    #[error("connection to {addr}: {message}")]
    Connect {
        addr: std::net::SocketAddr,
        message: String,
    },
}

/// The RDMA devices this host has, by name (empty when rdma-core is not
/// installed or no device exists).
pub fn devices() -> Vec<String> {
    use sideway::ibverbs::device::DeviceInfo;
    match sideway::ibverbs::device::DeviceList::new() {
        Ok(list) => list.iter().map(|d| d.name()).collect(),
        Err(_) => Vec::new(),
    }
}
