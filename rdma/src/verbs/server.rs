//! The node side of the verbs transport: an rdma_cm listener on its own
//! thread (a current-thread tokio runtime waiting on the event and
//! completion channels' fds), serving each connection one request at a
//! time through a [`FragmentHandler`], the node's request handling that
//! its TCP listeners share.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::rdmacm::communication_manager::{
    ConnectionParameter, EventType, Identifier, PortSpace,
};
use tokio::sync::{oneshot, Notify};
use torchfs_proto::fragment::{
    decode_verbs_request, encode_response, FragmentErrorCode, FragmentRequest, FragmentResponse,
};

use super::cm::Events;
use super::pool::{BufferPool, Slot};
use super::queue::{Op, QueuePairConn};
use super::VerbsError;

/// Serves fragment requests for the verbs listener.
pub trait FragmentHandler: Send + Sync + 'static {
    /// Serves `request`. A put's bytes are `slot[..length]`; a get writes
    /// its bytes to `slot[..n]` and answers `Ok { length: n }` (n at most
    /// the length asked). A delete gets no slot. The slot comes back.
    fn handle(
        &self,
        request: FragmentRequest,
        slot: Option<Slot>,
    ) -> impl Future<Output = (FragmentResponse, Option<Slot>)> + Send;
}

#[derive(Clone, Debug)]
pub struct ListenerOptions {
    /// Bytes of each registered buffer: the largest request served.
    pub slot_bytes: usize,
    /// Registered buffers: requests in flight beyond it wait.
    pub slots: usize,
    pub backlog: i32,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            slot_bytes: (4 << 20) + 4096,
            slots: 16,
            backlog: 128,
        }
    }
}

/// A running verbs listener; stops when dropped.
pub struct VerbsListener {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl VerbsListener {
    /// Listens on `addr` (an address of an RDMA device's interface, or the
    /// unspecified address; the port must be given). Returns once
    /// listening, or with why it could not.
    pub fn start<H: FragmentHandler>(
        addr: SocketAddr,
        opts: ListenerOptions,
        handler: Arc<H>,
    ) -> Result<Self, VerbsError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("verbs-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(VerbsError::Setup {
                            step: "verbs runtime",
                            message: e.to_string(),
                        }));
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, listen(addr, opts, handler, ready_tx, stop_rx));
            })
            .map_err(|e| VerbsError::Setup {
                step: "verbs thread",
                message: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                addr,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(VerbsError::Setup {
                    step: "verbs listener",
                    message: "its thread exited at start".into(),
                })
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for VerbsListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A protection domain and its pool, per device (set at the first
/// connection: a listener on the unspecified address learns its device
/// from the connect request).
struct Device {
    ctx: Arc<DeviceContext>,
    pd: Arc<ProtectionDomain>,
    pool: Arc<BufferPool>,
}

async fn listen<H: FragmentHandler>(
    addr: SocketAddr,
    opts: ListenerOptions,
    handler: Arc<H>,
    ready: std::sync::mpsc::Sender<Result<(), VerbsError>>,
    mut stop: oneshot::Receiver<()>,
) {
    let bound = (|| {
        let events = Events::new()?;
        let setup = |step: &'static str| {
            move |e: &dyn std::fmt::Display| VerbsError::Setup {
                step,
                message: e.to_string(),
            }
        };
        let id = events
            .channel
            .create_id(PortSpace::Tcp)
            .map_err(|e| setup("create listening id")(&e))?;
        id.bind_addr(addr).map_err(|e| setup("bind")(&e))?;
        id.listen(opts.backlog).map_err(|e| setup("listen")(&e))?;
        Ok::<_, VerbsError>((events, id))
    })();
    let (events, listening) = match bound {
        Ok(b) => {
            let _ = ready.send(Ok(()));
            b
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut devices: Vec<Arc<Device>> = Vec::new();
    // Bound to a device's address, the device is known now: register its
    // buffers before the first client waits on that (pinning takes time).
    if let Some(ctx) = listening.get_device_context() {
        match new_device(&ctx, &opts) {
            Ok(d) => devices.push(d),
            Err(e) => tracing::warn!("verbs listener {addr}: {e}"),
        }
    }
    // Each connection's task waits on this to learn its peer went away.
    let mut closed: HashMap<usize, Arc<Notify>> = HashMap::new();
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            e = events.next() => e,
        };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("verbs listener {addr}: {e}");
                break;
            }
        };
        let (kind, id) = (event.event_type(), event.cm_id());
        // Acknowledged before anything else: an id cannot be destroyed
        // while one of its events is held.
        drop(event);
        tracing::trace!("verbs listener {addr}: {kind:?}");
        let Some(id) = id else { continue };
        let key = Arc::as_ptr(&id) as usize;
        match kind {
            EventType::ConnectRequest => {
                match accept(&id, &opts, &mut devices).await {
                    Ok((qp, pool)) => {
                        let notify = Arc::new(Notify::new());
                        closed.insert(key, notify.clone());
                        let handler = handler.clone();
                        tokio::task::spawn_local(async move {
                            if let Err(e) = serve(qp, pool, &*handler, &notify).await {
                                tracing::debug!("verbs connection closed: {e}");
                            }
                        });
                    }
                    // Dropping the id refuses the request: the client's
                    // connect fails and it falls back or reports.
                    Err(e) => tracing::warn!("verbs listener {addr}: refused a connection: {e}"),
                }
            }
            EventType::Disconnected | EventType::DeviceRemoval => {
                if let Some(n) = closed.remove(&key) {
                    n.notify_one();
                }
            }
            _ => {}
        }
        // Forget connections whose task ended (their id is gone).
        closed.retain(|_, n| Arc::strong_count(n) > 1);
    }
    for n in closed.values() {
        n.notify_one();
    }
}

fn new_device(ctx: &Arc<DeviceContext>, opts: &ListenerOptions) -> Result<Arc<Device>, VerbsError> {
    let pd = ctx.alloc_pd().map_err(|e| VerbsError::Setup {
        step: "allocate protection domain",
        message: e.to_string(),
    })?;
    let pool = BufferPool::register(&pd, opts.slot_bytes, opts.slots)?;
    Ok(Arc::new(Device {
        ctx: ctx.clone(),
        pd,
        pool,
    }))
}

async fn accept(
    id: &Arc<Identifier>,
    opts: &ListenerOptions,
    devices: &mut Vec<Arc<Device>>,
) -> Result<(QueuePairConn, Arc<BufferPool>), VerbsError> {
    let ctx = id
        .get_device_context()
        .ok_or_else(|| VerbsError::NoDevice {
            message: "a connect request with no device".into(),
        })?;
    let device = match devices.iter().find(|d| Arc::ptr_eq(&d.ctx, &ctx)) {
        Some(d) => d.clone(),
        None => {
            let d = new_device(&ctx, opts)?;
            devices.push(d.clone());
            d
        }
    };
    let mut qp = QueuePairConn::new(id.clone(), &ctx, &device.pd).await?;
    qp.ready()?;
    qp.post_recv()?;
    {
        let mut param = ConnectionParameter::default();
        param.setup_qp_number(qp.qp_number());
        id.accept(param).map_err(|e| VerbsError::Setup {
            step: "accept",
            message: e.to_string(),
        })?;
    }
    Ok((qp, device.pool.clone()))
}

fn refuse(code: FragmentErrorCode, message: String) -> FragmentResponse {
    FragmentResponse::Error {
        code,
        message,
        expected: 0,
        actual: 0,
    }
}

/// Serves one connection until the peer goes, its queue pair breaks, or a
/// header cannot be decoded (answered with BadRequest, then closed).
async fn serve<H: FragmentHandler>(
    mut qp: QueuePairConn,
    pool: Arc<BufferPool>,
    handler: &H,
    closed: &Notify,
) -> Result<(), VerbsError> {
    loop {
        let received = tokio::select! {
            _ = closed.notified() => return Ok(()),
            c = qp.wait(Op::Recv) => c?,
        };
        let decoded = decode_verbs_request(qp.received(received.byte_len));
        let (request, remote) = match decoded {
            Ok(d) => d,
            Err(e) => {
                let response = refuse(FragmentErrorCode::BadRequest, e.to_string());
                qp.post_send(&encode_response(&response))?;
                qp.wait(Op::Send).await?;
                return Err(VerbsError::Post {
                    op: "decode request",
                    message: e.to_string(),
                });
            }
        };
        let bulk_bytes = request.bulk_bytes();
        let response = if bulk_bytes as usize > pool.slot_bytes() {
            refuse(
                FragmentErrorCode::BadRequest,
                format!(
                    "{bulk_bytes} bytes exceed this node's verbs buffers of {} bytes",
                    pool.slot_bytes()
                ),
            )
        } else {
            match request {
                FragmentRequest::Put { length, .. } => {
                    let slot = pool.acquire().await;
                    qp.post_rdma(Op::Read, &slot, length, remote.addr, remote.rkey)?;
                    qp.wait(Op::Read).await?;
                    handler.handle(request, Some(slot)).await.0
                }
                FragmentRequest::Get { .. } => {
                    let slot = pool.acquire().await;
                    let (response, slot) = handler.handle(request, Some(slot)).await;
                    match (&response, slot) {
                        (FragmentResponse::Ok { length }, Some(slot))
                            if *length > 0 && *length <= remote.length =>
                        {
                            qp.post_rdma(Op::Write, &slot, *length, remote.addr, remote.rkey)?;
                            qp.wait(Op::Write).await?;
                            response
                        }
                        (FragmentResponse::Ok { length }, _) if *length > 0 => refuse(
                            FragmentErrorCode::Io,
                            format!(
                                "{length} bytes do not fit the client's {} byte buffer",
                                remote.length
                            ),
                        ),
                        _ => response,
                    }
                }
                FragmentRequest::Delete { .. } => handler.handle(request, None).await.0,
                FragmentRequest::List { .. } => refuse(
                    FragmentErrorCode::BadRequest,
                    "key listings go over TCP".to_string(),
                ),
            }
        };
        // The next receive goes up before the response, so the client's
        // next request never finds none posted.
        qp.post_recv()?;
        qp.post_send(&encode_response(&response))?;
        qp.wait(Op::Send).await?;
    }
}
