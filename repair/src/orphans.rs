//! Orphan collection: fragments stored that no one needs (an upload that
//! failed or was abandoned, a delete that was lost, the old fragments of a
//! node that came back after it was replaced) are found and deleted.
//!
//! A sweep lists every up node's shards (`List`, over TCP) and asks metad
//! which of the keys are orphans (`CheckOrphans`: no layout holds the
//! stripe at that generation on that node, and no live client holds the
//! file open, which covers uploads in flight). A key is deleted only when
//! two sweeps at least `grace` apart both found it an orphan: an upload
//! whose commit was on its way during the first sweep is referenced by the
//! second.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use torchfs_proto::client::MetaClient;
use torchfs_proto::fragment::{FragmentKey, LIST_KEYS_MAX};
use torchfs_proto::meta::{ClusterMap, FragmentRef, MetaReply, MetaRequest, NodeId, NodeState};
use torchfs_rdma::Transport;
use torchfs_storage_client::map::{resolve, Target};
use torchfs_storage_client::StorageClient;

use crate::{unexpected, RepairError};

/// Keys asked about in one `CheckOrphans`.
const CHECK_BATCH: usize = 1024;

/// The orphans seen by earlier sweeps, and when first.
pub struct Orphans {
    grace: Duration,
    suspects: BTreeMap<(NodeId, FragmentKey), Instant>,
}

/// What one sweep found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub listed: u64,
    pub suspected: u64,
    pub deleted: u64,
}

impl Orphans {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            suspects: BTreeMap::new(),
        }
    }

    /// Lists every up node's fragments and deletes those found orphans by
    /// this sweep and by one at least `grace` before. A node or shard that
    /// cannot be listed now is skipped (its suspects wait); metad failing
    /// stops the sweep.
    pub async fn sweep<T: Transport>(
        &mut self,
        meta: &MetaClient,
        storage: &StorageClient<T>,
        map: &ClusterMap,
    ) -> Result<Swept, RepairError> {
        let mut swept = Swept::default();
        let mut still = BTreeSet::new();
        let now = Instant::now();
        for node in map.nodes.iter().filter(|n| n.state == NodeState::Up) {
            let id = node.info.id;
            for port in &node.info.shard_ports {
                let target = Target {
                    node: id,
                    up: true,
                    host: node.info.host.clone(),
                    port: *port,
                };
                let addr = resolve(&target).await?;
                let keys = match list_all(storage.transport(), addr).await {
                    Ok(keys) => keys,
                    Err(e) => {
                        tracing::info!("orphans: list node {id} shard {addr}: {e}");
                        still.extend(self.suspects.keys().filter(|(n, _)| *n == id).copied());
                        continue;
                    }
                };
                swept.listed += keys.len() as u64;
                for batch in keys.chunks(CHECK_BATCH) {
                    for key in check(meta, id, batch).await? {
                        swept.suspected += 1;
                        let first = *self.suspects.entry((id, key)).or_insert(now);
                        if now.duration_since(first) < self.grace {
                            still.insert((id, key));
                            continue;
                        }
                        match storage.transport().delete(addr, key).await {
                            Ok(()) => {
                                tracing::info!("orphans: deleted {key} on node {id}");
                                swept.deleted += 1;
                            }
                            Err(e) => {
                                tracing::info!("orphans: delete {key} on node {id}: {e}");
                                still.insert((id, key));
                            }
                        }
                    }
                }
            }
        }
        // A suspect not found an orphan again is someone's after all.
        self.suspects.retain(|k, _| still.contains(k));
        Ok(swept)
    }
}

/// Every key the shard at `addr` stores, page by page.
async fn list_all<T: Transport>(
    transport: &T,
    addr: std::net::SocketAddr,
) -> Result<Vec<FragmentKey>, torchfs_rdma::TransportError> {
    let mut keys = Vec::new();
    // Inode 0 is never a file's: the zero key is before every stored one.
    let mut after = FragmentKey {
        ino: 0,
        stripe: 0,
        generation: 0,
        index: 0,
    };
    loop {
        let page = transport.list(addr, after, LIST_KEYS_MAX).await?;
        let Some(last) = page.last() else { break };
        after = *last;
        let full = page.len() >= LIST_KEYS_MAX as usize;
        keys.extend(page);
        if !full {
            break;
        }
    }
    Ok(keys)
}

/// The orphans among `keys` on node `node`, by metad.
async fn check(
    meta: &MetaClient,
    node: NodeId,
    keys: &[FragmentKey],
) -> Result<Vec<FragmentKey>, RepairError> {
    let fragments = keys
        .iter()
        .map(|k| FragmentRef {
            ino: k.ino,
            stripe: k.stripe,
            generation: k.generation,
            index: k.index,
        })
        .collect();
    match meta
        .call(MetaRequest::CheckOrphans { node, fragments })
        .await?
    {
        MetaReply::Fragments(orphans) => Ok(orphans
            .into_iter()
            .map(|f| FragmentKey {
                ino: f.ino,
                stripe: f.stripe,
                generation: f.generation,
                index: f.index,
            })
            .collect()),
        other => Err(unexpected("CheckOrphans", other)),
    }
}
