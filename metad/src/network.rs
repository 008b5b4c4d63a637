//! Raft messages to peer voters over Cap'n Proto (`interface Raft`, payloads
//! are bincode of openraft's types; a snapshot travels whole).
//!
//! openraft wants `Send` network futures while capnp-rpc is `!Send`, so this
//! is an actor: [`PeerClient`] (Send, used by openraft) serializes a request
//! and passes it over a channel to [`PeerPool`], a local task on the same
//! thread, which owns one capnp connection per peer and answers over a
//! oneshot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use openraft::error::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, OptionalSend};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use torchfs_proto::metadata_capnp as mc;
use torchfs_proto::rpc::two_party;

use crate::store::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::tasks::LocalTasks;

#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerMethod {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
}

/// One piece of a snapshot on its way to a peer (`installSnapshot`): the
/// state's bytes travel in chunks of at most
/// [`MetadConfig::snapshot_chunk_bytes`](crate::MetadConfig), so no message
/// comes near capnp's 64 MiB message limit, and the last chunk carries what
/// the peer needs to install it.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotChunk {
    /// Random per transfer; a chunk at offset 0 starts a new one.
    pub transfer: u64,
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// On the last chunk only.
    pub last: Option<SnapshotEnd>,
}

/// What the last chunk of a snapshot carries.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotEnd {
    pub vote: Vote,
    pub meta: SnapshotMeta,
}

/// Why a peer call failed before the peer answered.
#[derive(Debug)]
pub(crate) enum PeerFailure {
    /// Could not connect: openraft backs off from unreachable peers.
    Unreachable(String),
    /// Connected, but the call failed (peer died mid-call, bad reply).
    Network(String),
}

pub(crate) struct PeerCall {
    target: u64,
    addr: String,
    method: PeerMethod,
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, PeerFailure>>,
}

/// openraft's network factory: hands out [`PeerClient`]s.
#[derive(Clone)]
pub(crate) struct Network {
    pub tx: mpsc::Sender<PeerCall>,
    pub snapshot_chunk_bytes: usize,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            tx: self.tx.clone(),
            snapshot_chunk_bytes: self.snapshot_chunk_bytes.max(1),
        }
    }
}

pub(crate) struct PeerClient {
    target: u64,
    addr: String,
    tx: mpsc::Sender<PeerCall>,
    snapshot_chunk_bytes: usize,
}

type RpcErr = RPCError<TypeConfig>;

/// A failure of the transport (not of the peer's Raft), as openraft takes it.
fn network_error(e: impl std::error::Error + 'static) -> RpcErr {
    RPCError::Network(NetworkError::new(&e))
}

impl PeerClient {
    /// Sends `req` and waits for the peer's `Result<Resp, RaftError>`.
    async fn call<Req, Resp>(
        &self,
        method: PeerMethod,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcErr>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        // A payload that does not (de)serialize is a network error to
        // openraft; say which call and peer it was.
        let codec = |e: bincode::Error, what: &str| {
            let e = AnyError::new(&e)
                .add_context(|| format!("{what} {method:?} to voter {}", self.target));
            network_error(e)
        };
        let payload = bincode::serialize(req).map_err(|e| codec(e, "encode"))?;
        let (reply, rx) = oneshot::channel();
        let call = PeerCall {
            target: self.target,
            addr: self.addr.clone(),
            method,
            payload,
            reply,
        };
        let gone = || network_error(std::io::Error::other("metad peer pool stopped"));
        self.tx.send(call).await.map_err(|_| gone())?;
        let answer = match tokio::time::timeout(ttl, rx).await {
            Err(_) => {
                return Err(network_error(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{method:?} to voter {} timed out after {ttl:?}",
                        self.target
                    ),
                )))
            }
            Ok(Err(_)) => return Err(gone()),
            Ok(Ok(a)) => a,
        };
        let bytes = match answer {
            Ok(b) => b,
            Err(PeerFailure::Unreachable(e)) => {
                return Err(RPCError::Unreachable(Unreachable::new(
                    &std::io::Error::other(e),
                )))
            }
            Err(PeerFailure::Network(e)) => return Err(network_error(std::io::Error::other(e))),
        };
        let result: Result<Resp, RaftError<TypeConfig>> =
            bincode::deserialize(&bytes).map_err(|e| codec(e, "decode the reply of"))?;
        // Only `Fatal` comes back (the peer's Raft has stopped): to this
        // side that peer is as good as unreachable for now.
        result.map_err(|e| {
            network_error(std::io::Error::other(format!(
                "{method:?} to voter {}: its Raft has stopped: {e}",
                self.target
            )))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        self.call(PeerMethod::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.call(PeerMethod::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.call(PeerMethod::PreVote, &rpc, option.hard_ttl())
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.into_inner();
        let transfer = rand::random::<u64>();
        let mut end = Some(SnapshotEnd {
            vote,
            meta: snapshot.meta,
        });
        let send_all = async {
            let mut offset = 0;
            loop {
                let take = (data.len() - offset).min(self.snapshot_chunk_bytes);
                let last = offset + take == data.len();
                let chunk = SnapshotChunk {
                    transfer,
                    offset: offset as u64,
                    bytes: data[offset..offset + take].to_vec(),
                    last: if last { end.take() } else { None },
                };
                let answer: Option<SnapshotResponse<TypeConfig>> = self
                    .call(PeerMethod::InstallSnapshot, &chunk, option.hard_ttl())
                    .await?;
                offset += take;
                if let (true, Some(resp)) = (last, answer) {
                    return Ok(resp);
                }
                if last {
                    return Err(network_error(std::io::Error::other(format!(
                        "voter {} did not answer the last chunk of a snapshot",
                        self.target
                    ))));
                }
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send_all => r.map_err(StreamingError::from),
        }
    }
}

type Connecting = Shared<LocalBoxFuture<'static, Result<mc::raft::Client, String>>>;

struct Conn {
    id: u64,
    addr: String,
    client: Connecting,
}

/// A local task of the voter: one connection per peer, reused by all calls,
/// dropped (and remade on the next call) when a call fails.
pub(crate) struct PeerPool {
    conns: RefCell<HashMap<u64, Conn>>,
    next_id: Cell<u64>,
    connect_timeout: Duration,
    /// Where calls and connections run (aborted when the voter stops).
    tasks: LocalTasks,
}

impl PeerPool {
    pub(crate) fn new(connect_timeout: Duration, tasks: LocalTasks) -> Rc<Self> {
        Rc::new(Self {
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            connect_timeout,
            tasks,
        })
    }

    /// Serves calls until the channel closes (all `PeerClient`s dropped).
    pub(crate) async fn serve(self: Rc<Self>, mut rx: mpsc::Receiver<PeerCall>) {
        while let Some(call) = rx.recv().await {
            let pool = self.clone();
            self.tasks.spawn(async move {
                let r = pool
                    .call(call.target, &call.addr, call.method, call.payload)
                    .await;
                let _ = call.reply.send(r);
            });
        }
    }

    async fn call(
        self: &Rc<Self>,
        target: u64,
        addr: &str,
        method: PeerMethod,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, PeerFailure> {
        let (id, fut) = self.connection(target, addr);
        let client = fut.await.map_err(PeerFailure::Unreachable)?;
        // The methods share a shape (payload in, payload out) but not
        // a type.
        macro_rules! call {
            ($request:ident) => {{
                let mut r = client.$request();
                r.get().set_payload(&payload);
                let resp = r.send().promise.await?;
                resp.get()?.get_payload()?.to_vec()
            }};
        }
        let result = async {
            Ok::<_, capnp::Error>(match method {
                PeerMethod::AppendEntries => call!(append_entries_request),
                PeerMethod::Vote => call!(vote_request),
                PeerMethod::PreVote => call!(pre_vote_request),
                PeerMethod::InstallSnapshot => call!(install_snapshot_request),
            })
        }
        .await;
        result.map_err(|e| {
            self.forget(target, id);
            PeerFailure::Network(format!("{method:?} to voter {target} at {addr}: {e}"))
        })
    }

    fn connection(self: &Rc<Self>, target: u64, addr: &str) -> (u64, Connecting) {
        let mut conns = self.conns.borrow_mut();
        if let Some(c) = conns.get(&target) {
            if c.addr == addr {
                return (c.id, c.client.clone());
            }
        }
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let fut = connect(
            Rc::downgrade(self),
            self.tasks.clone(),
            target,
            id,
            addr.to_string(),
            self.connect_timeout,
        )
        .boxed_local()
        .shared();
        conns.insert(
            target,
            Conn {
                id,
                addr: addr.to_string(),
                client: fut.clone(),
            },
        );
        (id, fut)
    }

    fn forget(&self, target: u64, id: u64) {
        let mut conns = self.conns.borrow_mut();
        if conns.get(&target).is_some_and(|c| c.id == id) {
            conns.remove(&target);
        }
    }
}

async fn connect(
    pool: std::rc::Weak<PeerPool>,
    tasks: LocalTasks,
    target: u64,
    id: u64,
    addr: String,
    limit: Duration,
) -> Result<mc::raft::Client, String> {
    let forget = || {
        if let Some(p) = pool.upgrade() {
            p.forget(target, id);
        }
    };
    let stream = match tokio::time::timeout(limit, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            forget();
            return Err(format!("connect to voter {target} at {addr}: {e}"));
        }
        Err(_) => {
            forget();
            return Err(format!("connect to voter {target} at {addr}: timed out"));
        }
    };
    let mut rpc = two_party(stream, Side::Client, None);
    let service: mc::service::Client = rpc.bootstrap(Side::Server);
    let pool2 = pool.clone();
    tasks.spawn(async move {
        let _ = rpc.await;
        if let Some(p) = pool2.upgrade() {
            p.forget(target, id);
        }
    });
    Ok(service.raft_request().send().pipeline.get_raft())
}
