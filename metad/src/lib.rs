//! torchfs metadata service (docs/ARCHITECTURE.md: Metadata): an openraft cluster of 1, 3 or 5
//! voters over Cap'n Proto RPC, persisted in log segment files and redb.
//!
//! - [`config`]: [`MetadConfig`] and [`MetadError`].
//! - [`state`]: the namespace state machine (deterministic `apply`).
//! - [`store`]: the Raft log (segment files), vote and snapshots (redb) and the state-machine store.
//! - `clock`: the wall clock that stamps commands (clock jumps are injected there).
//! - `compaction`: when to snapshot (scaled to the namespace's size).
//! - `network`: Raft RPCs to peers (an actor owning the capnp connections).
//! - `node`: request handling (redirects, writes, linearizable reads, liveness).
//! - `service`: the listener and capnp servers; `tasks`: the task set they and `network` share.
//!
//! Entry points: [`run`] (async, inside a tokio `LocalSet`) and
//! [`run_blocking`].

mod clock;
mod compaction;
pub mod config;
mod leases;
mod network;
mod node;
mod service;
pub mod state;
pub mod store;
mod tasks;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::sync::mpsc;

pub use config::{MetadConfig, MetadError};

use crate::network::Network;
use crate::node::Node;
use crate::service::RpcServer;
use crate::store::{LogStore, StateMachineStore};

/// Outgoing Raft calls queued for the peer pool before senders wait.
const PEER_QUEUE_DEPTH: usize = 1024;
/// How long shutdown waits for openraft's tasks to release the database.
const DB_RELEASE_WAIT_MS: u64 = 5000;

/// Runs a voter until `shutdown` resolves.
///
/// Must be awaited inside a tokio `LocalSet` (capnp-rpc is `!Send`), best
/// on a current-thread runtime: then openraft's core, the Cap'n Proto side
/// and the state machine share one thread and pass requests among them
/// without waking another (the log flusher has a thread of its own).
/// The listener is bound first, so a port in use fails at once. The lowest
/// voter id initializes a new cluster; a restarted voter resumes from its
/// data dir.
pub async fn run(
    config: MetadConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetadError> {
    let voters = config.validate()?;
    clock::announce();
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|source| MetadError::Listen {
            addr: config.listen,
            source,
        })?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| MetadError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let db_path = config.data_dir.join("metad.redb");
    let store_err = |reason: String| MetadError::Store {
        path: db_path.clone(),
        reason,
    };
    let db = Arc::new(store::open_db(&db_path).map_err(|e| store_err(e.to_string()))?);
    let log_dir = config.data_dir.join("raft-log");
    let log = LogStore::open(db.clone(), &log_dir).map_err(|e| MetadError::Store {
        path: log_dir.clone(),
        reason: e.to_string(),
    })?;
    let sm =
        StateMachineStore::open(db.clone(), config.stripe).map_err(|e| store_err(e.to_string()))?;
    let sm_data = sm.data.clone();
    let compaction_sm_data = sm.data.clone();

    let raft_config = openraft::Config {
        cluster_name: "torchfs-metad".into(),
        heartbeat_interval: config.heartbeat_interval_ms,
        election_timeout_min: config.election_timeout_min_ms,
        election_timeout_max: config.election_timeout_max_ms,
        // `compaction` asks for snapshots, at intervals that grow with the
        // namespace.
        snapshot_policy: SnapshotPolicy::Never,
        // Keep a few entries behind the snapshot so a briefly lagging
        // follower catches up from the log rather than a full snapshot.
        max_in_snapshot_log_to_keep: (config.snapshot_every_logs / 10).min(100),
        // A restarted leader wins an election again before it serves: the
        // committed index is not made durable with every write, so a leader
        // resuming at once would answer reads from a commit index behind
        // what it had acknowledged (the durability test caught exactly that).
        enable_leader_restore: Some(false),
        // A voter whose store was lost or moved away (what `MetadError::Store`
        // suggests for a corrupt one) comes back with an empty log; without
        // this, openraft's leader panics on seeing that follower's log go
        // backwards, and so does every leader after it. The voter then
        // catches up from a snapshot. (It could also vote again in a term it
        // voted in before: replacing it by a membership change is the safe
        // way, not built yet.)
        allow_log_reversion: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| MetadError::Config {
        reason: e.to_string(),
    })?;

    let (peer_tx, peer_rx) = mpsc::channel(PEER_QUEUE_DEPTH);
    let raft = Raft::new(
        config.id,
        Arc::new(raft_config),
        Network {
            tx: peer_tx,
            snapshot_chunk_bytes: config.snapshot_chunk_bytes,
        },
        log,
        sm,
    )
    .await
    .map_err(|e| MetadError::Raft {
        reason: e.to_string(),
    })?;
    let node = Arc::new(Node::new(
        config.id,
        raft.clone(),
        sm_data,
        voters.clone(),
        Duration::from_millis(config.node_down_after_ms),
        // A quarter of the window in which a quorum that acknowledged the
        // leader refuses other candidates (openraft's leader lease is
        // election_timeout_max): see `node::ReadLease`.
        Duration::from_millis(config.election_timeout_max_ms / 4),
    ));
    let rpc = RpcServer::start(
        listener,
        node.clone(),
        peer_rx,
        Duration::from_millis(config.election_timeout_min_ms),
    )
    .map_err(|source| MetadError::Listen {
        addr: config.listen,
        source,
    })?;
    let compactor = tokio::spawn(compaction::run(
        raft.clone(),
        compaction_sm_data,
        config.snapshot_every_logs,
    ));
    let ticker = tokio::spawn({
        let node = node.clone();
        async move {
            let mut every =
                tokio::time::interval(Duration::from_millis(leases::KEEPALIVE_INTERVAL_MS));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                node.tick().await;
            }
        }
    });

    let result = async {
        let lowest = voters.keys().next().copied();
        let initialized = raft.is_initialized().await.map_err(|e| MetadError::Raft {
            reason: e.to_string(),
        })?;
        if lowest == Some(config.id) && !initialized {
            let members: BTreeMap<u64, BasicNode> = voters
                .iter()
                .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                // Another path (a snapshot or log from peers) got there first.
                tracing::info!("metad {}: initialize skipped: {e}", config.id);
            }
        }
        Ok(())
    }
    .await;
    if result.is_ok() {
        tracing::info!("metad {} serving on {}", config.id, config.listen);
        shutdown.await;
    }

    ticker.abort();
    let _ = ticker.await;
    compactor.abort();
    let _ = compactor.await;
    let _ = raft.shutdown().await;
    rpc.stop().await;
    drop(node);
    drop(raft);
    // openraft's tasks hold the store; let them finish so a restart in the
    // same process can reopen the database.
    let deadline = Instant::now() + Duration::from_millis(DB_RELEASE_WAIT_MS);
    while Arc::strong_count(&db) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    result
}

/// [`run`] on a runtime and `LocalSet` of its own (current-thread), for
/// callers without one.
pub fn run_blocking(
    config: MetadConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| MetadError::Runtime { source })?;
    tokio::task::LocalSet::new().block_on(&rt, run(config, shutdown))
}
