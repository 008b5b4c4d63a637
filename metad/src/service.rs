//! The voter's RPC side: one TCP listener serving `interface Service`
//! (bootstrap capability giving `Metadata` for clients and `Raft` for peer
//! voters), plus the [`PeerPool`] for outgoing Raft calls.
//!
//! capnp-rpc is `!Send`, so all of it runs as local tasks of the voter's
//! `LocalSet`, on the same thread as openraft's core: a request reaches
//! Raft, and Raft a peer, without waking another thread.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::rpc_twoparty_capnp::Side;
use futures::Future;
use openraft::error::RaftError;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::mpsc;
use torchfs_proto::convert::{read_request, read_write_id, write_dirs, write_response};
use torchfs_proto::meta::MetaError;
use torchfs_proto::metadata_capnp as mc;
use torchfs_proto::rpc::two_party;

use crate::network::{PeerCall, PeerPool, SnapshotChunk, SnapshotEnd};
use crate::node::Node;
use crate::store::{Snapshot, TypeConfig};
use crate::tasks::LocalTasks;

/// Handle to the running RPC side.
pub(crate) struct RpcServer {
    tasks: LocalTasks,
}

impl RpcServer {
    /// Starts serving `listener` and the outgoing peer calls from
    /// `peer_rx`. Must be called inside a `LocalSet`.
    pub fn start(
        listener: std::net::TcpListener,
        node: Arc<Node>,
        peer_rx: mpsc::Receiver<PeerCall>,
        connect_timeout: Duration,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let tasks = LocalTasks::default();
        tasks.spawn(PeerPool::new(connect_timeout, tasks.clone()).serve(peer_rx));
        tasks.spawn(accept_loop(listener, node, tasks.clone()));
        Ok(Self { tasks })
    }

    /// Stops serving and waits until the port and connections are closed.
    pub async fn stop(self) {
        self.tasks.stop().await;
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, node: Arc<Node>, tasks: LocalTasks) {
    let service: mc::service::Client = capnp_rpc::new_client(ServiceImpl {
        metadata: capnp_rpc::new_client(MetadataImpl { node: node.clone() }),
        raft: capnp_rpc::new_client(RaftImpl {
            node,
            incoming: RefCell::new(None),
        }),
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // E.g. EMFILE: keep serving the connections we have.
                tracing::warn!("metad accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let rpc = two_party(stream, Side::Server, Some(service.clone().client));
        tasks.spawn(async move {
            if let Err(e) = rpc.await {
                tracing::debug!("metad connection from {peer} ended: {e}");
            }
        });
    }
}

struct ServiceImpl {
    metadata: mc::metadata::Client,
    raft: mc::raft::Client,
}

impl mc::service::Server for ServiceImpl {
    fn metadata(
        self: CapRc<Self>,
        _: mc::service::MetadataParams,
        mut results: mc::service::MetadataResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        results.get().set_metadata(self.metadata.clone());
        futures::future::ready(Ok(()))
    }

    fn raft(
        self: CapRc<Self>,
        _: mc::service::RaftParams,
        mut results: mc::service::RaftResults,
    ) -> impl Future<Output = Result<(), capnp::Error>> + 'static {
        results.get().set_raft(self.raft.clone());
        futures::future::ready(Ok(()))
    }
}

struct MetadataImpl {
    node: Arc<Node>,
}

impl mc::metadata::Server for MetadataImpl {
    async fn execute(
        self: CapRc<Self>,
        params: mc::metadata::ExecuteParams,
        mut results: mc::metadata::ExecuteResults,
    ) -> Result<(), capnp::Error> {
        // A malformed request is answered as `Invalid`, not as a broken
        // call, so the client does not retry it.
        let req = params
            .get()
            .and_then(|p| p.get_request())
            .and_then(|r| Ok((read_request(r)?, read_write_id(r)?)));
        let applied = match req {
            Ok((req, write_id)) => self.node.execute(req, write_id).await,
            Err(e) => Err(MetaError::Invalid(e.to_string())).into(),
        };
        let mut response = results.get().init_response();
        write_response(&applied.outcome, response.reborrow());
        write_dirs(&applied.dirs, response);
        Ok(())
    }
}

struct RaftImpl {
    node: Arc<Node>,
    /// The snapshot being received: its transfer id and the bytes so far.
    incoming: RefCell<Option<(u64, Vec<u8>)>>,
}

impl RaftImpl {
    /// Takes one chunk; the whole snapshot once `chunk` is the last.
    fn take_chunk(
        &self,
        chunk: SnapshotChunk,
    ) -> Result<Option<(SnapshotEnd, Vec<u8>)>, capnp::Error> {
        let mut incoming = self.incoming.borrow_mut();
        if chunk.offset == 0 {
            *incoming = Some((chunk.transfer, Vec::new()));
        }
        let Some((transfer, bytes)) = incoming.as_mut() else {
            return Err(capnp::Error::failed(format!(
                "snapshot chunk at offset {} of transfer {:x} without its start",
                chunk.offset, chunk.transfer
            )));
        };
        if *transfer != chunk.transfer || bytes.len() as u64 != chunk.offset {
            let e = capnp::Error::failed(format!(
                "snapshot chunk at offset {} of transfer {:x}: expected offset {} of transfer {:x}",
                chunk.offset,
                chunk.transfer,
                bytes.len(),
                transfer
            ));
            *incoming = None;
            return Err(e);
        }
        bytes.extend_from_slice(&chunk.bytes);
        Ok(match chunk.last {
            Some(end) => incoming.take().map(|(_, bytes)| (end, bytes)),
            None => None,
        })
    }
}

/// Decodes the payload of a `method` call from a peer.
fn decode<T: DeserializeOwned>(
    payload: capnp::Result<capnp::data::Reader<'_>>,
    method: &str,
) -> Result<T, capnp::Error> {
    let payload = payload?;
    bincode::deserialize(payload).map_err(|e| {
        capnp::Error::failed(format!(
            "bad raft {method} payload ({} bytes): {e}",
            payload.len()
        ))
    })
}

fn encode<T: Serialize>(v: &T, method: &str) -> Result<Vec<u8>, capnp::Error> {
    bincode::serialize(v)
        .map_err(|e| capnp::Error::failed(format!("encode raft {method} reply: {e}")))
}

impl mc::raft::Server for RaftImpl {
    async fn append_entries(
        self: CapRc<Self>,
        params: mc::raft::AppendEntriesParams,
        mut results: mc::raft::AppendEntriesResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_payload(), "append_entries")?;
        let resp = self.node.raft.append_entries(req).await;
        results.get().set_payload(&encode(&resp, "append_entries")?);
        Ok(())
    }

    async fn vote(
        self: CapRc<Self>,
        params: mc::raft::VoteParams,
        mut results: mc::raft::VoteResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_payload(), "vote")?;
        let resp = self.node.raft.vote(req).await;
        results.get().set_payload(&encode(&resp, "vote")?);
        Ok(())
    }

    async fn pre_vote(
        self: CapRc<Self>,
        params: mc::raft::PreVoteParams,
        mut results: mc::raft::PreVoteResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_payload(), "pre_vote")?;
        let resp = self.node.raft.pre_vote(req).await;
        results.get().set_payload(&encode(&resp, "pre_vote")?);
        Ok(())
    }

    async fn install_snapshot(
        self: CapRc<Self>,
        params: mc::raft::InstallSnapshotParams,
        mut results: mc::raft::InstallSnapshotResults,
    ) -> Result<(), capnp::Error> {
        let chunk: SnapshotChunk = decode(params.get()?.get_payload(), "install_snapshot")?;
        // Not the last chunk: `Ok(None)`. The last: the peer Raft's answer
        // (a `Fatal` if this Raft stopped).
        let resp: Result<Option<_>, RaftError<TypeConfig>> = match self.take_chunk(chunk)? {
            None => Ok(None),
            Some((end, bytes)) => {
                let snapshot = Snapshot {
                    meta: end.meta,
                    snapshot: std::io::Cursor::new(bytes),
                };
                self.node
                    .raft
                    .install_full_snapshot(end.vote, snapshot)
                    .await
                    .map(Some)
                    .map_err(RaftError::Fatal)
            }
        };
        results
            .get()
            .set_payload(&encode(&resp, "install_snapshot")?);
        Ok(())
    }
}
