//! The client side of the verbs transport: a pool of idle connections per
//! node address (each runs one request at a time, like TCP's), one
//! registered buffer pool per device, and the same CRC policy as TCP
//! ([`crate::crc`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::rdmacm::communication_manager::{ConnectionParameter, EventType, PortSpace};
use torchfs_proto::fragment::{
    decode_response, encode_verbs_request, FragmentKey, FragmentRequest, FragmentResponse,
    RemoteBuffer,
};

use super::cm::Events;
use super::pool::{BufferPool, Slot};
use super::queue::{Op, QueuePairConn};
use super::VerbsError;
use crate::{crc, Transport, TransportError};

#[derive(Clone, Debug)]
pub struct VerbsOptions {
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Idle connections kept per node address.
    pub idle_connections_max: usize,
    /// Bytes of each registered buffer: the largest fragment (plus one
    /// probe byte) that moves over verbs.
    pub slot_bytes: usize,
    /// Registered buffers per device: requests in flight beyond it wait.
    pub slots: usize,
}

impl Default for VerbsOptions {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 5_000,
            idle_connections_max: 8,
            slot_bytes: (4 << 20) + 4096,
            slots: 16,
        }
    }
}

/// A protection domain and its buffer pool, per device.
struct Device {
    ctx: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    pool: Arc<BufferPool>,
}

/// An established connection. The queue pair is dropped before the slot
/// lent to the request in flight, so a timed-out request's buffer never
/// goes back to the pool while the node could still write into it.
struct Conn {
    qp: QueuePairConn,
    lent: Option<Slot>,
    _events: Events,
}

/// How long this host's verbs stay off after its buffers could not be
/// registered (a local problem, the same for every node).
const UNUSABLE_MS: u64 = 30_000;

pub struct VerbsTransport {
    opts: VerbsOptions,
    devices: Mutex<Vec<Arc<Device>>>,
    /// Set when registering the buffer pool failed: verbs are off until then.
    unusable_until: Mutex<Option<std::time::Instant>>,
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
}

impl VerbsTransport {
    pub fn new(opts: VerbsOptions) -> Self {
        Self {
            opts,
            devices: Mutex::new(Vec::new()),
            unusable_until: Mutex::new(None),
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Whether verbs are off on this host for now (its buffers could not
    /// be registered); callers use TCP meanwhile.
    pub fn unusable(&self) -> bool {
        let mut until = self
            .unusable_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match *until {
            Some(t) if std::time::Instant::now() < t => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// The largest fragment this transport moves.
    pub fn fragment_bytes_max(&self) -> usize {
        self.opts.slot_bytes.saturating_sub(1)
    }

    fn device(&self, ctx: &Arc<DeviceContext>) -> Result<Arc<Device>, VerbsError> {
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = devices.iter().find(|d| Arc::ptr_eq(&d.ctx, ctx)) {
            return Ok(d.clone());
        }
        let pd = ctx.alloc_pd().map_err(|e| VerbsError::Setup {
            step: "allocate protection domain",
            message: e.to_string(),
        })?;
        let pool = match BufferPool::register(&pd, self.opts.slot_bytes, self.opts.slots) {
            Ok(pool) => pool,
            Err(e) => {
                let until = std::time::Instant::now() + Duration::from_millis(UNUSABLE_MS);
                *self
                    .unusable_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(until);
                tracing::warn!("RDMA verbs off on this host for {UNUSABLE_MS} ms: {e}");
                return Err(e);
            }
        };
        let device = Arc::new(Device {
            ctx: ctx.clone(),
            pd,
            pool,
        });
        devices.push(device.clone());
        Ok(device)
    }

    async fn connect(&self, addr: SocketAddr) -> Result<(Conn, Arc<Device>), VerbsError> {
        let timeout = Duration::from_millis(self.opts.connect_timeout_ms);
        let failed = |message: String| VerbsError::Connect { addr, message };
        let events = Events::new()?;
        let id = events
            .channel
            .create_id(PortSpace::Tcp)
            .map_err(|e| failed(format!("create id: {e}")))?;
        id.resolve_addr(None, addr, timeout)
            .map_err(|e| failed(format!("resolve address: {e}")))?;
        expect(&events, EventType::AddressResolved, addr).await?;
        tracing::trace!("verbs: {addr}: address resolved");
        id.resolve_route(timeout)
            .map_err(|e| failed(format!("resolve route: {e}")))?;
        expect(&events, EventType::RouteResolved, addr).await?;
        tracing::trace!("verbs: {addr}: route resolved");
        let ctx = id
            .get_device_context()
            .ok_or_else(|| failed("no RDMA device routes to it".into()))?;
        let device = self.device(&ctx)?;
        let mut qp = QueuePairConn::new(id.clone(), &ctx, &device.pd).await?;
        {
            let mut param = ConnectionParameter::default();
            param.setup_qp_number(qp.qp_number());
            id.connect(param)
                .map_err(|e| failed(format!("connect: {e}")))?;
        }
        tracing::trace!("verbs: {addr}: connecting queue pair {}", qp.qp_number());
        expect(&events, EventType::ConnectResponse, addr).await?;
        tracing::trace!("verbs: {addr}: connected");
        qp.ready()?;
        id.establish()
            .map_err(|e| failed(format!("establish: {e}")))?;
        Ok((
            Conn {
                qp,
                lent: None,
                _events: events,
            },
            device,
        ))
    }

    async fn checkout(
        &self,
        addr: SocketAddr,
    ) -> Result<(Conn, Arc<Device>, bool), TransportError> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.get_mut(&addr).and_then(Vec::pop)
        };
        if let Some(conn) = idle {
            let ctx = conn.qp.id.get_device_context();
            let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(d) = devices
                .iter()
                .find(|d| ctx.as_ref().is_some_and(|c| Arc::ptr_eq(&d.ctx, c)))
            {
                return Ok((conn, d.clone(), true));
            }
        }
        let timeout_ms = self.opts.connect_timeout_ms;
        match tokio::time::timeout(Duration::from_millis(timeout_ms), self.connect(addr)).await {
            Ok(Ok((conn, device))) => Ok((conn, device, false)),
            Ok(Err(e)) => Err(TransportError::Connect {
                addr,
                source: std::io::Error::other(e.to_string()),
            }),
            // A connection that could not be set up in time is a connect
            // failure (TCP may still reach the node), not a slow request.
            Err(_) => Err(TransportError::Connect {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no verbs connection within {timeout_ms} ms"),
                ),
            }),
        }
    }

    fn checkin(&self, addr: SocketAddr, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let pool = idle.entry(addr).or_default();
        if pool.len() < self.opts.idle_connections_max {
            pool.push(conn);
        }
    }

    /// Runs one request; `bulk` is the bytes a put sends or the number of
    /// bytes a get asks for. Returns the response and, for a get, the slot
    /// holding the bytes. Retries once on a fresh connection when a pooled
    /// one failed (it went stale while idle: a restarted node).
    async fn run(
        &self,
        addr: SocketAddr,
        request: &FragmentRequest,
        put: Option<&[u8]>,
        get_bytes: u32,
    ) -> Result<(FragmentResponse, Option<Slot>), TransportError> {
        let timeout_ms = self.opts.request_timeout_ms;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let timed_out = || TransportError::Timeout { addr, timeout_ms };
        let (mut conn, mut device, mut pooled) =
            tokio::time::timeout_at(deadline, self.checkout(addr))
                .await
                .map_err(|_| timed_out())??;
        loop {
            let result = tokio::time::timeout_at(
                deadline,
                exchange(&mut conn, &device, request, put, get_bytes),
            )
            .await;
            match result {
                Ok(Ok(response)) => {
                    let slot = conn.lent.take();
                    self.checkin(addr, conn);
                    return Ok((response, slot));
                }
                Ok(Err(e)) if pooled => {
                    tracing::debug!(
                        "verbs: pooled connection to {addr} failed ({e}); reconnecting"
                    );
                    drop(conn);
                    (conn, device) = tokio::time::timeout_at(deadline, self.connect(addr))
                        .await
                        .map_err(|_| timed_out())?
                        .map_err(|e| TransportError::Connect {
                            addr,
                            source: std::io::Error::other(e.to_string()),
                        })?;
                    pooled = false;
                }
                Ok(Err(e)) => {
                    return Err(TransportError::Io {
                        addr,
                        source: std::io::Error::other(e.to_string()),
                    })
                }
                // Dropping `conn` destroys the queue pair before the slot
                // it holds returns to the pool.
                Err(_) => return Err(timed_out()),
            }
        }
    }
}

async fn expect(events: &Events, wanted: EventType, addr: SocketAddr) -> Result<(), VerbsError> {
    let event = events.next().await?;
    let (got, status) = (event.event_type(), event.status());
    drop(event);
    if got == wanted {
        return Ok(());
    }
    Err(VerbsError::Connect {
        addr,
        message: format!(
            "expected {wanted:?}, got {got:?} (status {status}: {})",
            std::io::Error::from_raw_os_error(status.abs())
        ),
    })
}

/// One request on `conn`: bulk bytes through a slot lent to the connection.
async fn exchange(
    conn: &mut Conn,
    device: &Device,
    request: &FragmentRequest,
    put: Option<&[u8]>,
    get_bytes: u32,
) -> Result<FragmentResponse, VerbsError> {
    let bulk_bytes = put.map_or(get_bytes as usize, <[u8]>::len);
    let buffer = if bulk_bytes > 0 {
        let mut slot = device.pool.acquire().await;
        if let Some(data) = put {
            slot.as_mut_slice()[..data.len()].copy_from_slice(data);
        }
        let buffer = RemoteBuffer {
            addr: slot.addr(),
            rkey: slot.rkey(),
            length: bulk_bytes as u32,
        };
        conn.lent = Some(slot);
        buffer
    } else {
        RemoteBuffer {
            addr: 0,
            rkey: 0,
            length: 0,
        }
    };
    conn.qp.post_recv()?;
    conn.qp.post_send(&encode_verbs_request(request, buffer))?;
    conn.qp.wait(Op::Send).await?;
    let received = conn.qp.wait(Op::Recv).await?;
    decode_response(conn.qp.received(received.byte_len)).map_err(|e| VerbsError::Post {
        op: "decode response",
        message: e.to_string(),
    })
}

impl Transport for VerbsTransport {
    async fn put(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let length = crc::fragment_len(key, data.len(), self.fragment_bytes_max())?;
        let request = FragmentRequest::Put {
            key,
            length,
            crc32c: crc32c::crc32c(data),
        };
        let (response, _slot) = self.run(addr, &request, Some(data), 0).await?;
        match response {
            FragmentResponse::Ok { length: 0 } => Ok(()),
            other => Err(crc::refused(addr, key, other)),
        }
    }

    async fn get(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        expected_crc32c: u32,
        buf: &mut [u8],
    ) -> Result<(), TransportError> {
        let wanted = crc::fragment_len(key, buf.len(), self.fragment_bytes_max())?;
        let (request, probe) = crc::get_request(key, offset, wanted, expected_crc32c);
        let asked = wanted + u32::from(probe);
        let (response, slot) = self.run(addr, &request, None, asked).await?;
        let length = crc::reply_length(addr, key, offset, wanted, probe, response)?;
        if let Some(slot) = slot {
            buf.copy_from_slice(&slot.as_slice()[..buf.len()]);
        }
        let whole = crc::is_whole(offset, wanted, length);
        crc::check_whole(addr, key, whole, expected_crc32c, buf)
    }

    async fn delete(&self, addr: SocketAddr, key: FragmentKey) -> Result<(), TransportError> {
        let request = FragmentRequest::Delete { key };
        match self.run(addr, &request, None, 0).await?.0 {
            FragmentResponse::Ok { length: 0 } => Ok(()),
            other => Err(crc::refused(addr, key, other)),
        }
    }
}
