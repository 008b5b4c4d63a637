//! Deletes of stored fragments (replaced versions, failed uploads), best
//! effort: what cannot be deleted now is left for repair/GC.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::StorageClient;
use crate::error::StorageError;
use crate::map::{locate, resolve};
use crate::stripe;

/// Deletes one background cleanup keeps in flight.
const DELETES_IN_FLIGHT_MAX: usize = 16;

impl<T: Transport> StorageClient<T> {
    /// Deletes the stored fragments of `entries`, best effort, in a task of
    /// its own (freed space is reclaimed later; nothing waits on it).
    pub fn delete_in_background(
        self: &Arc<Self>,
        ino: Ino,
        cfg: StripeConfig,
        entries: Vec<StripeEntry>,
    ) {
        if entries.is_empty() {
            return;
        }
        let this = self.clone();
        self.runtime
            .spawn(async move { this.delete_entries(ino, cfg, entries).await });
    }

    /// Deletes the stored fragments of `entries`, best effort: a fragment
    /// that cannot be deleted now is left for repair/GC.
    pub async fn delete_entries(&self, ino: Ino, cfg: StripeConfig, entries: Vec<StripeEntry>) {
        let keys = entries.iter().flat_map(|e| {
            // A config that does not match the entry: try every index.
            let width = e.crcs.len().max(cfg.width());
            (0..width)
                .filter(move |&i| {
                    e.crcs.len() != cfg.width()
                        || stripe::fragment_bytes(&cfg, e.encoded_bytes, i) > 0
                })
                .map(move |i| FragmentKey {
                    ino,
                    stripe: e.stripe,
                    generation: e.generation,
                    index: i as u8,
                })
        });
        stream::iter(keys)
            .for_each_concurrent(DELETES_IN_FLIGHT_MAX, |key| async move {
                if let Err(e) = self.delete_fragment(key).await {
                    tracing::debug!("delete of fragment {key} failed (left for repair/GC): {e}");
                }
            })
            .await;
    }

    async fn delete_fragment(&self, key: FragmentKey) -> Result<(), StorageError> {
        let target = locate(&self.map.get(), key)?;
        let addr = resolve(&target).await?;
        let _slot = self.io_slots.acquire().await;
        self.transport
            .delete(addr, key)
            .await
            .map_err(|source| StorageError::Transport {
                node: target.node,
                key,
                source: Box::new(source),
            })
    }
}
