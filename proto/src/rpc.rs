//! Cap'n Proto RPC over TCP as every torchfs endpoint sets it up: the
//! "host:port" address check and the two-party connection.

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty, RpcSystem};
use futures::io::{BufReader, BufWriter};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

/// Buffer per direction of an RPC connection: a few typical messages
/// (larger ones, such as snapshot chunks, pass around the buffer).
const RPC_BUFFER_BYTES: usize = 64 << 10;

/// Whether `addr` looks like "host:port": a non-empty host and a port that
/// fits a `u16` (the host is resolved only when connecting).
pub fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

/// A two-party RPC system over `stream`, `side` being this end. A server
/// passes the capability it offers as `bootstrap`; a client passes None
/// and calls `bootstrap(Side::Server)` on the result. Nagle is turned off:
/// the messages are small requests and replies. Both halves are buffered
/// (capnp-rpc flushes after each message): unbuffered, a message costs a
/// `send` for its segment table and one per segment, and a read costs a
/// `recv` for the table and another for the segments; buffered, one `send`
/// per message and one `recv` for as many messages as have arrived. The
/// caller drives the returned future (on a `LocalSet`: it is not `Send`).
pub fn two_party(
    stream: tokio::net::TcpStream,
    side: Side,
    bootstrap: Option<capnp::capability::Client>,
) -> RpcSystem<Side> {
    // Best effort: a socket that refuses it still works, only slower.
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let network = twoparty::VatNetwork::new(
        BufReader::with_capacity(RPC_BUFFER_BYTES, read.compat()),
        BufWriter::with_capacity(RPC_BUFFER_BYTES, write.compat_write()),
        side,
        Default::default(),
    );
    RpcSystem::new(Box::new(network), bootstrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert!(is_host_port("h:1"));
        assert!(is_host_port("[::1]:7000"));
        assert!(!is_host_port("h"));
        assert!(!is_host_port(":80"));
        assert!(!is_host_port("h:99999"));
        assert!(!is_host_port("h:"));
    }
}
