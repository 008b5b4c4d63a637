//! Leader-following metadata client.
//!
//! capnp-rpc's `RpcSystem` is not `Send`, while callers live on arbitrary
//! (often multi-thread) tokio runtimes. So every `MetaClient` clone shares
//! one background thread that runs a current-thread runtime with a
//! `LocalSet`; it owns the connections (one per voter, all calls pipelined
//! on it) and the retry loop. `call` only sends a command over a bounded
//! channel and awaits a oneshot reply, which works from any runtime and
//! needs no timer from the caller's. The thread ends when the last clone is
//! dropped.
//!
//! Writes are exactly-once: every `MetaClient` (all its clones) is one
//! client session with a random id, each write gets a sequence number that
//! every retry of it reuses, and metad answers a retry it has already
//! applied from its session table (see `session`). If metad has forgotten
//! the session (idle past its expiry window) it says so without applying
//! the write, and the client sends it again under a new session.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp::Side, twoparty};
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use tokio::sync::{mpsc, oneshot};

use crate::convert::{read_dirs, read_response, write_request, write_write_id};
use crate::meta::{ChangedDir, MetaError, MetaReply, MetaRequest, WriteId};
use crate::metadata_capnp as mc;
use crate::rpc::{is_host_port, two_party};

pub use session::random_client_id;
use session::Session;

mod session;
#[cfg(test)]
mod tests;

#[derive(Clone, Debug)]
pub struct MetaClientOptions {
    /// How long `call` keeps retrying (redirects, elections, dead voters)
    /// before it gives up with `MetaError::Unavailable`. Keep it far below
    /// metad's session expiry (10 minutes): a retry that finds its session
    /// expired cannot be told from a new write.
    pub retry_for_ms: u64,
    /// Per-attempt limit for one RPC.
    pub request_timeout_ms: u64,
}

impl Default for MetaClientOptions {
    fn default() -> Self {
        Self {
            retry_for_ms: 20_000,
            request_timeout_ms: 3_000,
        }
    }
}

/// Commands waiting for the RPC thread; beyond this `call` waits for room.
const QUEUE_DEPTH: usize = 4096;
/// First and largest pause between attempts when no voter could answer.
const BACKOFF_FIRST_MS: u64 = 20;
const BACKOFF_MAX_MS: u64 = 500;
/// Redirects followed back to back before pausing (an election in progress
/// can bounce a request between two voters that each believe the other).
const REDIRECTS_BEFORE_PAUSE: u32 = 3;

struct Command {
    req: MetaRequest,
    /// A write id chosen by the caller (tests replaying a retry); None: the
    /// client numbers writes itself.
    write_id: Option<WriteId>,
    reply: oneshot::Sender<Result<Answer, MetaError>>,
}

/// A reply and the directories the request changed (`Response.dirs`:
/// empty for reads, failures and an older metad).
pub type Answer = (MetaReply, Vec<ChangedDir>);

/// Cheap to clone; Send + Sync; usable from any tokio runtime (the
/// Cap'n Proto RPC system, which is not Send, lives on a thread of its own).
#[derive(Clone)]
pub struct MetaClient {
    tx: Arc<mpsc::Sender<Command>>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for MetaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaClient").finish_non_exhaustive()
    }
}

impl MetaClient {
    /// `addrs`: the client address ("host:port") of every metad voter.
    /// Connects lazily; fails only on an empty or unparsable list.
    pub fn new(addrs: Vec<String>, opts: MetaClientOptions) -> Result<Self, MetaError> {
        if addrs.is_empty() {
            return Err(MetaError::Invalid("no metad addresses given".into()));
        }
        for a in &addrs {
            if !is_host_port(a) {
                return Err(MetaError::Invalid(format!(
                    "metad address {a:?} is not host:port"
                )));
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MetaError::Unavailable(format!("cannot start client runtime: {e}")))?;
        let runtime = rt.handle().clone();
        std::thread::Builder::new()
            .name("torchfs-metaclient".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, actor(rx, addrs, opts));
            })
            .map_err(|e| MetaError::Unavailable(format!("cannot start client thread: {e}")))?;
        Ok(Self {
            tx: Arc::new(tx),
            runtime,
        })
    }

    /// The runtime of the client's own thread. A task spawned there calls
    /// metad without a thread hop each way (the connection lives on that
    /// thread); keep such tasks short, they share it with every call.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Sends `req` to the leader, following redirects and retrying
    /// `Unavailable` and connection failures until `retry_for_ms` passes.
    /// `Fs` and `Invalid` errors come back at once. A write is applied at
    /// most once however many attempts it takes (its write id is the same
    /// on each); one that gives up with `Unavailable` may or may not have
    /// been applied, as with any timeout.
    pub async fn call(&self, req: MetaRequest) -> Result<MetaReply, MetaError> {
        self.call_dirs(req).await.map(|(reply, _)| reply)
    }

    /// [`MetaClient::call`], answered with the attributes of the
    /// directories a namespace write changed.
    pub async fn call_dirs(&self, req: MetaRequest) -> Result<Answer, MetaError> {
        let stopped = || MetaError::Unavailable("metad client thread stopped".into());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                req,
                write_id: None,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// [`MetaClient::call`] with a write id chosen by the caller, sent
    /// unchanged on every attempt (no new session when metad answers
    /// `SessionExpired`): lets a test send "the same write again" as a
    /// retry after a lost answer would.
    #[cfg(any(test, feature = "testing"))]
    pub async fn call_with_write_id(
        &self,
        req: MetaRequest,
        write_id: WriteId,
    ) -> Result<MetaReply, MetaError> {
        let stopped = || MetaError::Unavailable("metad client thread stopped".into());
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command {
                req,
                write_id: Some(write_id),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?.map(|(reply, _)| reply)
    }
}

async fn actor(mut rx: mpsc::Receiver<Command>, addrs: Vec<String>, opts: MetaClientOptions) {
    let state = Rc::new(Actor {
        addrs,
        opts,
        conns: RefCell::new(HashMap::new()),
        leader: RefCell::new(None),
        next_addr: Cell::new(0),
        next_conn_id: Cell::new(0),
        session: RefCell::new(Session::new()),
    });
    while let Some(cmd) = rx.recv().await {
        let state = state.clone();
        tokio::task::spawn_local(async move {
            let result = state.call(cmd.req, cmd.write_id).await;
            let _ = cmd.reply.send(result);
        });
    }
}

type Connecting = Shared<LocalBoxFuture<'static, Result<mc::metadata::Client, String>>>;

struct Conn {
    id: u64,
    client: Connecting,
    disconnect: Rc<RefCell<Option<capnp_rpc::Disconnector<twoparty::VatId>>>>,
}

struct Actor {
    addrs: Vec<String>,
    opts: MetaClientOptions,
    /// One connection per voter address, shared by every call in flight.
    conns: RefCell<HashMap<String, Conn>>,
    /// Where the last answer came from: tried first.
    leader: RefCell<Option<String>>,
    next_addr: Cell<usize>,
    next_conn_id: Cell<u64>,
    /// The session new writes are numbered in.
    session: RefCell<Rc<Session>>,
}

/// Why one attempt failed without an answer from metad.
enum AttemptError {
    Transport(String),
}

impl Actor {
    /// One call: numbers a write (unless the caller chose its id) and sends
    /// it with retries. If metad has forgotten this client's session it did
    /// not apply the write, so it is sent once more under a new session.
    async fn call(
        self: &Rc<Self>,
        req: MetaRequest,
        write_id: Option<WriteId>,
    ) -> Result<Answer, MetaError> {
        if write_id.is_some() || !req.is_write() {
            return self.call_with(&req, || write_id).await;
        }
        let ticket = self.session.borrow().begin();
        let result = self.call_with(&req, || Some(ticket.write_id())).await;
        let Err(MetaError::SessionExpired { client_id, seq }) = result else {
            return result;
        };
        drop(ticket);
        self.renew_session(client_id);
        let ticket = self.session.borrow().begin();
        tracing::info!(
            "metad forgot client session {client_id:#018x} (write {seq}); sending it again as {:?}",
            ticket.write_id()
        );
        self.call_with(&req, || Some(ticket.write_id())).await
    }

    /// Starts a new session unless another call already replaced
    /// `expired_client_id` (every write in flight under it hears the same).
    fn renew_session(&self, expired_client_id: u64) {
        let mut session = self.session.borrow_mut();
        if session.client_id() == expired_client_id {
            *session = Session::new();
        }
    }

    /// Sends `req` to the leader with the write id `write_id()` gives at
    /// each attempt, following redirects and retrying until `retry_for_ms`.
    async fn call_with(
        self: &Rc<Self>,
        req: &MetaRequest,
        write_id: impl Fn() -> Option<WriteId>,
    ) -> Result<Answer, MetaError> {
        let started = Instant::now();
        let retry_for = Duration::from_millis(self.opts.retry_for_ms);
        let attempt_limit = Duration::from_millis(self.opts.request_timeout_ms.max(1));
        let mut backoff = Duration::from_millis(BACKOFF_FIRST_MS);
        let mut target = self.leader.borrow().clone();
        let mut redirects = 0u32;
        let mut last_error;
        loop {
            let addr = target.take().unwrap_or_else(|| self.rotate());
            let attempt = self.attempt(&addr, req, write_id());
            match tokio::time::timeout(attempt_limit, attempt).await {
                Ok(Ok((Ok(reply), dirs))) => {
                    *self.leader.borrow_mut() = Some(addr);
                    return Ok((reply, dirs));
                }
                Ok(Ok((
                    Err(
                        e @ (MetaError::Fs { .. }
                        | MetaError::Invalid(_)
                        | MetaError::SessionExpired { .. }),
                    ),
                    _,
                ))) => {
                    *self.leader.borrow_mut() = Some(addr);
                    return Err(e);
                }
                Ok(Ok((
                    Err(MetaError::NotLeader {
                        leader_addr: Some(leader),
                        ..
                    }),
                    _,
                ))) if leader != addr && redirects < REDIRECTS_BEFORE_PAUSE => {
                    redirects += 1;
                    *self.leader.borrow_mut() = Some(leader.clone());
                    target = Some(leader);
                    continue;
                }
                Ok(Ok((Err(e), _))) => {
                    // Unavailable, or no leader known yet: ask again shortly,
                    // round-robin (the hinted leader first if there is one).
                    if let MetaError::NotLeader {
                        leader_addr: Some(leader),
                        ..
                    } = &e
                    {
                        target = Some(leader.clone());
                    }
                    last_error = format!("{addr}: {e}");
                }
                Ok(Err(AttemptError::Transport(e))) => {
                    self.evict(&addr);
                    last_error = format!("{addr}: {e}");
                }
                Err(_elapsed) => {
                    self.evict(&addr);
                    last_error = format!(
                        "{addr}: no answer within {} ms",
                        self.opts.request_timeout_ms
                    );
                }
            }
            redirects = 0;
            self.leader.borrow_mut().take();
            if started.elapsed() + backoff > retry_for {
                return Err(MetaError::Unavailable(format!(
                    "no metad leader answered within {} ms; last error: {last_error}",
                    self.opts.retry_for_ms
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(BACKOFF_MAX_MS));
        }
    }

    fn rotate(&self) -> String {
        let i = self.next_addr.get();
        self.next_addr.set((i + 1) % self.addrs.len());
        self.addrs[i].clone()
    }

    async fn attempt(
        self: &Rc<Self>,
        addr: &str,
        req: &MetaRequest,
        write_id: Option<WriteId>,
    ) -> Result<(Result<MetaReply, MetaError>, Vec<ChangedDir>), AttemptError> {
        let client = self
            .connection(addr)
            .await
            .map_err(AttemptError::Transport)?;
        let mut request = client.execute_request();
        let mut r = request.get().init_request();
        write_request(req, r.reborrow());
        if let Some(id) = &write_id {
            write_write_id(id, r);
        }
        let t = |e: capnp::Error| AttemptError::Transport(e.to_string());
        let response = request.send().promise.await.map_err(t)?;
        let results = response.get().map_err(t)?;
        if !results.has_response() {
            return Err(AttemptError::Transport("empty response".into()));
        }
        let response = results.get_response().map_err(t)?;
        let outcome = read_response(response).map_err(t)?;
        let dirs = read_dirs(response).map_err(t)?;
        Ok((outcome, dirs))
    }

    /// The (possibly still connecting) connection to `addr`, made on first use.
    async fn connection(self: &Rc<Self>, addr: &str) -> Result<mc::metadata::Client, String> {
        let fut = {
            let mut conns = self.conns.borrow_mut();
            match conns.get(addr) {
                Some(c) => c.client.clone(),
                None => {
                    let id = self.next_conn_id.get();
                    self.next_conn_id.set(id + 1);
                    let disconnect = Rc::new(RefCell::new(None));
                    let fut = connect(
                        self.clone(),
                        addr.to_string(),
                        id,
                        disconnect.clone(),
                        Duration::from_millis(self.opts.request_timeout_ms.max(1)),
                    )
                    .boxed_local()
                    .shared();
                    conns.insert(
                        addr.to_string(),
                        Conn {
                            id,
                            client: fut.clone(),
                            disconnect,
                        },
                    );
                    fut
                }
            }
        };
        fut.await
    }

    /// Drops the connection to `addr` so that the next attempt reconnects
    /// (the voter died, restarted, or hangs).
    fn evict(&self, addr: &str) {
        if let Some(conn) = self.conns.borrow_mut().remove(addr) {
            if let Some(d) = conn.disconnect.borrow_mut().take() {
                tokio::task::spawn_local(async move {
                    let _ = d.await;
                });
            }
        }
    }

    fn forget(&self, addr: &str, id: u64) {
        let mut conns = self.conns.borrow_mut();
        if conns.get(addr).is_some_and(|c| c.id == id) {
            conns.remove(addr);
        }
    }
}

async fn connect(
    actor: Rc<Actor>,
    addr: String,
    id: u64,
    disconnect: Rc<RefCell<Option<capnp_rpc::Disconnector<twoparty::VatId>>>>,
    limit: Duration,
) -> Result<mc::metadata::Client, String> {
    let stream = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            actor.forget(&addr, id);
            return Err(format!("connect: {e}"));
        }
        Err(_) => {
            actor.forget(&addr, id);
            return Err(format!(
                "connect: no answer within {} ms",
                limit.as_millis()
            ));
        }
    };
    let mut rpc = two_party(stream, Side::Client, None);
    let service: mc::service::Client = rpc.bootstrap(Side::Server);
    *disconnect.borrow_mut() = Some(rpc.get_disconnector());
    let weak = Rc::downgrade(&actor);
    let addr2 = addr.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = rpc.await {
            tracing::debug!("metad connection to {addr2} ended: {e}");
        }
        if let Some(actor) = weak.upgrade() {
            actor.forget(&addr2, id);
        }
    });
    // Pipelined: the first execute goes out without waiting for this.
    Ok(service.metadata_request().send().pipeline.get_metadata())
}
