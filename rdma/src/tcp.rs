//! TCP implementation of [`Transport`] (tokio): a pool of idle connections
//! per endpoint, one request in flight per connection, TCP_NODELAY, connect
//! and request timeouts. A connection that saw any error is dropped, never
//! returned to the pool, so a half-read frame cannot poison the next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};
use torchfs_proto::fragment::{
    decode_keys, FragmentKey, FragmentRequest, FragmentResponse, FRAGMENT_BYTES_MAX,
    LISTED_KEY_BYTES, LIST_KEYS_MAX,
};

use crate::frame::{self, FrameIoError};
use crate::{crc, Transport, TransportError};

#[derive(Clone, Debug)]
pub struct TcpOptions {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Idle connections kept per endpoint.
    pub idle_connections_max: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1_000,
            request_timeout_ms: 5_000,
            idle_connections_max: 8,
        }
    }
}

type Conn = Compat<TcpStream>;

/// TCP implementation (tokio), one pooled connection per request in flight.
pub struct TcpTransport {
    opts: TcpOptions,
    /// Idle connections by endpoint. The lock is held only to push or pop,
    /// never across an await.
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

/// Where a connection came from: a pooled one may have been closed by the
/// peer while idle (a restarted node), which earns one retry on a fresh one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Pool,
    Fresh,
}

impl TcpTransport {
    pub fn new(opts: TcpOptions) -> Self {
        Self {
            opts,
            idle: Mutex::new(HashMap::new()),
        }
    }

    fn checkout_idle(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(&addr).and_then(Vec::pop)
    }

    fn checkin(&self, addr: SocketAddr, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let pool = idle.entry(addr).or_default();
        if pool.len() < self.opts.idle_connections_max {
            pool.push(conn);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, TransportError> {
        let timeout_ms = self.opts.connect_timeout_ms;
        let stream =
            match tokio::time::timeout(Duration::from_millis(timeout_ms), TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(source)) => return Err(TransportError::Connect { addr, source }),
                Err(_) => return Err(TransportError::Timeout { addr, timeout_ms }),
            };
        stream
            .set_nodelay(true)
            .map_err(|source| TransportError::Connect { addr, source })?;
        Ok(stream.compat())
    }

    /// Runs `op` on a pooled or fresh connection under the request
    /// timeout; retries once on a fresh connection when a pooled one fails
    /// with an I/O error (it went stale while idle: a restarted node).
    async fn run(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        op: &mut Op<'_>,
    ) -> Result<bool, TransportError> {
        let timeout_ms = self.opts.request_timeout_ms;
        let (mut conn, mut origin) = match self.checkout_idle(addr) {
            Some(conn) => (conn, Origin::Pool),
            None => (self.connect(addr).await?, Origin::Fresh),
        };
        loop {
            let result = tokio::time::timeout(
                Duration::from_millis(timeout_ms),
                exchange(&mut conn, addr, key, op),
            )
            .await;
            match result {
                Ok(Ok(value)) => {
                    self.checkin(addr, conn);
                    return Ok(value);
                }
                Ok(Err(TransportError::Io { .. })) if origin == Origin::Pool => {
                    conn = self.connect(addr).await?;
                    origin = Origin::Fresh;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(TransportError::Timeout { addr, timeout_ms }),
            }
        }
    }
}

/// One request and where its bulk bytes come from or go to.
enum Op<'a> {
    Put {
        request: FragmentRequest,
        data: &'a [u8],
    },
    /// `probe`: one byte more was asked for than `buf` holds (see `get`).
    Get {
        request: FragmentRequest,
        offset: u32,
        probe: bool,
        buf: &'a mut [u8],
    },
    Delete {
        request: FragmentRequest,
    },
    List {
        request: FragmentRequest,
        keys: &'a mut Vec<FragmentKey>,
    },
}

/// One request/response on `conn`. For a get, returns whether `buf` now
/// holds the whole fragment.
async fn exchange(
    conn: &mut Conn,
    addr: SocketAddr,
    key: FragmentKey,
    op: &mut Op<'_>,
) -> Result<bool, TransportError> {
    match op {
        Op::Put { request, data } => {
            frame::write_request(conn, request, data)
                .await
                .map_err(io_err(addr))?;
            match frame::read_response(conn).await.map_err(io_err(addr))? {
                FragmentResponse::Ok { length: 0 } => Ok(false),
                other => Err(crc::refused(addr, key, other)),
            }
        }
        Op::Delete { request } => {
            frame::write_request(conn, request, &[])
                .await
                .map_err(io_err(addr))?;
            match frame::read_response(conn).await.map_err(io_err(addr))? {
                FragmentResponse::Ok { length: 0 } => Ok(false),
                other => Err(crc::refused(addr, key, other)),
            }
        }
        Op::List { request, keys } => {
            frame::write_request(conn, request, &[])
                .await
                .map_err(io_err(addr))?;
            let length = match frame::read_response(conn).await.map_err(io_err(addr))? {
                FragmentResponse::Ok { length } => length as usize,
                other => return Err(crc::refused(addr, key, other)),
            };
            let most = LIST_KEYS_MAX as usize * LISTED_KEY_BYTES;
            if length > most {
                return Err(TransportError::Protocol {
                    addr,
                    message: format!("a key listing of {length} bytes, at most {most}"),
                });
            }
            let mut bytes = vec![0u8; length];
            frame::read_bulk(conn, &mut bytes)
                .await
                .map_err(io_err(addr))?;
            **keys = decode_keys(&bytes).map_err(|e| TransportError::Protocol {
                addr,
                message: e.to_string(),
            })?;
            Ok(false)
        }
        Op::Get {
            request,
            offset,
            probe,
            buf,
        } => {
            let wanted = buf.len() as u32;
            frame::write_request(conn, request, &[])
                .await
                .map_err(io_err(addr))?;
            let response = frame::read_response(conn).await.map_err(io_err(addr))?;
            // A short or oversized reply drops the connection with its
            // unread bytes.
            let length = crc::reply_length(addr, key, *offset, wanted, *probe, response)?;
            frame::read_bulk(conn, buf).await.map_err(io_err(addr))?;
            if length > wanted {
                frame::skip_bulk(conn, u64::from(length - wanted))
                    .await
                    .map_err(io_err(addr))?;
            }
            Ok(crc::is_whole(*offset, wanted, length))
        }
    }
}

fn io_err(addr: SocketAddr) -> impl Fn(FrameIoError) -> TransportError {
    move |e| match e {
        FrameIoError::Io(source) => TransportError::Io { addr, source },
        FrameIoError::Frame(f) => TransportError::Protocol {
            addr,
            message: f.to_string(),
        },
    }
}

impl Transport for TcpTransport {
    async fn put(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let length = crc::fragment_len(key, data.len(), FRAGMENT_BYTES_MAX as usize)?;
        let request = FragmentRequest::Put {
            key,
            length,
            crc32c: crc32c::crc32c(data),
        };
        self.run(addr, key, &mut Op::Put { request, data })
            .await
            .map(drop)
    }

    async fn get(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        expected_crc32c: u32,
        buf: &mut [u8],
    ) -> Result<(), TransportError> {
        let wanted = crc::fragment_len(key, buf.len(), FRAGMENT_BYTES_MAX as usize)?;
        let (request, probe) = crc::get_request(key, offset, wanted, expected_crc32c);
        let whole = self
            .run(
                addr,
                key,
                &mut Op::Get {
                    request,
                    offset,
                    probe,
                    buf: &mut *buf,
                },
            )
            .await?;
        crc::check_whole(addr, key, whole, expected_crc32c, buf)
    }

    async fn delete(&self, addr: SocketAddr, key: FragmentKey) -> Result<(), TransportError> {
        self.run(
            addr,
            key,
            &mut Op::Delete {
                request: FragmentRequest::Delete { key },
            },
        )
        .await
        .map(drop)
    }

    async fn list(
        &self,
        addr: SocketAddr,
        after: FragmentKey,
        limit: u32,
    ) -> Result<Vec<FragmentKey>, TransportError> {
        let mut keys = Vec::new();
        let request = FragmentRequest::List { after, limit };
        self.run(
            addr,
            after,
            &mut Op::List {
                request,
                keys: &mut keys,
            },
        )
        .await?;
        Ok(keys)
    }
}

#[cfg(test)]
mod tests;
