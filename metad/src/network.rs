//! Raft messages to peer voters over Cap'n Proto (`interface Raft`, payloads
//! are bincode of openraft's types).
//!
//! openraft wants `Send` network futures while capnp-rpc is `!Send`, so this
//! is an actor: [`PeerClient`] (Send, used by openraft) serializes a request
//! and passes it over a channel to the RPC thread, where [`PeerPool`] owns
//! one capnp connection per peer and answers over a oneshot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::rpc_twoparty_capnp::Side;
use futures::future::{FutureExt, LocalBoxFuture, Shared};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};
use torchfs_proto::metadata_capnp as mc;
use torchfs_proto::rpc::two_party;

use crate::store::TypeConfig;

#[derive(Clone, Copy, Debug)]
pub(crate) enum PeerMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
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
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            tx: self.tx.clone(),
        }
    }
}

pub(crate) struct PeerClient {
    target: u64,
    addr: String,
    tx: mpsc::Sender<PeerCall>,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl PeerClient {
    async fn call<Req, Resp, E>(
        &self,
        method: PeerMethod,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        // A payload that does not (de)serialize is a network error to
        // openraft; say which call and peer it was.
        let codec = |e: bincode::Error, what: &str| {
            let e = AnyError::new(&e)
                .add_context(|| format!("{what} {method:?} to voter {}", self.target));
            RPCError::Network(NetworkError::new(&e))
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
        let gone = || {
            RPCError::Network(NetworkError::new(&std::io::Error::other(
                "metad RPC thread stopped",
            )))
        };
        self.tx.send(call).await.map_err(|_| gone())?;
        let answer = match tokio::time::timeout(option.hard_ttl(), rx).await {
            Err(_) => {
                return Err(RPCError::Network(NetworkError::new(&std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{method:?} to voter {} timed out after {:?}",
                        self.target,
                        option.hard_ttl()
                    ),
                ))))
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
            Err(PeerFailure::Network(e)) => {
                return Err(RPCError::Network(NetworkError::new(
                    &std::io::Error::other(e),
                )))
            }
        };
        let result: Result<Resp, RaftError<u64, E>> =
            bincode::deserialize(&bytes).map_err(|e| codec(e, "decode the reply of"))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        self.call(PeerMethod::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        self.call(PeerMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.call(PeerMethod::Vote, &rpc, &option).await
    }
}

type Connecting = Shared<LocalBoxFuture<'static, Result<mc::raft::Client, String>>>;

struct Conn {
    id: u64,
    addr: String,
    client: Connecting,
}

/// Lives on the RPC thread: one connection per peer, reused by all calls,
/// dropped (and remade on the next call) when a call fails.
pub(crate) struct PeerPool {
    conns: RefCell<HashMap<u64, Conn>>,
    next_id: Cell<u64>,
    connect_timeout: Duration,
}

impl PeerPool {
    pub(crate) fn new(connect_timeout: Duration) -> Rc<Self> {
        Rc::new(Self {
            conns: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            connect_timeout,
        })
    }

    /// Serves calls until the channel closes (all `PeerClient`s dropped).
    pub(crate) async fn serve(self: Rc<Self>, mut rx: mpsc::Receiver<PeerCall>) {
        while let Some(call) = rx.recv().await {
            let pool = self.clone();
            tokio::task::spawn_local(async move {
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
        // The three methods share a shape (payload in, payload out) but not
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
    tokio::task::spawn_local(async move {
        let _ = rpc.await;
        if let Some(p) = pool2.upgrade() {
            p.forget(target, id);
        }
    });
    Ok(service.raft_request().send().pipeline.get_raft())
}
