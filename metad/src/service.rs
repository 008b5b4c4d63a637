//! The voter's RPC thread: one TCP listener serving `interface Service`
//! (bootstrap capability giving `Metadata` for clients and `Raft` for peer
//! voters), plus the [`PeerPool`] for outgoing Raft calls.
//!
//! capnp-rpc is `!Send`, so all of it runs on one dedicated thread with a
//! current-thread runtime and a `LocalSet`; Raft itself runs on the caller's
//! runtime and is reached through its (Send) handle.

use std::sync::Arc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::rpc_twoparty_capnp::Side;
use futures::Future;
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot};
use torchfs_proto::convert::{read_request, read_write_id, write_response};
use torchfs_proto::meta::MetaError;
use torchfs_proto::metadata_capnp as mc;
use torchfs_proto::rpc::two_party;

use crate::network::{PeerCall, PeerPool};
use crate::node::Node;

/// Handle to the running RPC thread.
pub(crate) struct RpcThread {
    stop: Option<oneshot::Sender<()>>,
    done: oneshot::Receiver<()>,
}

impl RpcThread {
    /// Starts serving `listener` and the outgoing peer calls from `peer_rx`.
    pub fn start(
        listener: std::net::TcpListener,
        node: Arc<Node>,
        peer_rx: mpsc::Receiver<PeerCall>,
        connect_timeout: Duration,
    ) -> std::io::Result<Self> {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        listener.set_nonblocking(true)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("metad-rpc-{}", node.id))
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("metad listener: {e}");
                            return;
                        }
                    };
                    tokio::task::spawn_local(PeerPool::new(connect_timeout).serve(peer_rx));
                    tokio::select! {
                        _ = accept_loop(listener, node) => {}
                        _ = stop_rx => {}
                    }
                });
                // Dropping the LocalSet and runtime closes every connection
                // and the listener before we report that we are done.
                drop(local);
                drop(rt);
                let _ = done_tx.send(());
            })?;
        Ok(Self {
            stop: Some(stop),
            done,
        })
    }

    /// Stops serving and waits until the port and connections are closed.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.done).await;
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, node: Arc<Node>) {
    let service: mc::service::Client = capnp_rpc::new_client(ServiceImpl {
        metadata: capnp_rpc::new_client(MetadataImpl { node: node.clone() }),
        raft: capnp_rpc::new_client(RaftImpl { node }),
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
        tokio::task::spawn_local(async move {
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
        let outcome = match req {
            Ok((req, write_id)) => self.node.execute(req, write_id).await,
            Err(e) => Err(MetaError::Invalid(e.to_string())),
        };
        write_response(&outcome, results.get().init_response());
        Ok(())
    }
}

struct RaftImpl {
    node: Arc<Node>,
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

    async fn install_snapshot(
        self: CapRc<Self>,
        params: mc::raft::InstallSnapshotParams,
        mut results: mc::raft::InstallSnapshotResults,
    ) -> Result<(), capnp::Error> {
        let req = decode(params.get()?.get_payload(), "install_snapshot")?;
        let resp = self.node.raft.install_snapshot(req).await;
        results
            .get()
            .set_payload(&encode(&resp, "install_snapshot")?);
        Ok(())
    }
}
