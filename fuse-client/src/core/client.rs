//! The client core's one type, [`Client`], and what it is made of
//! ([`Inner`]): the metadata views, file state and caches below it, and the
//! storage client. The operations are `impl Client` blocks in the files
//! above this one; the parts below know nothing of it.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use torchfs_proto::client::MetaClient;
use torchfs_proto::meta::{ChangedDir, MetaReply, MetaRequest};
use torchfs_rdma::{MultiTransport, Transport};
use torchfs_storage_client::StorageClient;

use super::cache::EpochCache;
use super::config::ClientConfig;
use super::control::ControlHandles;
use super::error::{unexpected, ClientError};
use super::frozen::FrozenState;
use super::handles::Handles;
use super::lock_table::LockTable;
use super::meta::{Meta, MetaService};
use super::meta_cache::MetaCache;
use super::statahead::Statahead;
use super::sync::lock;

/// The client core. Cheap to clone (an `Arc` inside); Send + Sync. The type
/// parameters exist so tests can run it over in-memory metadata and
/// storage; front-ends use the defaults via [`Client::connect`].
pub struct Client<M: MetaService = MetaClient, T: Transport = MultiTransport> {
    pub(super) inner: Arc<Inner<M, T>>,
}

impl<M: MetaService, T: Transport> Clone for Client<M, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<M, T: Transport> {
    pub(super) config: ClientConfig,
    /// metad, at the bottom of the metadata views.
    pub(super) meta: Meta<M>,
    /// Stripe I/O: the cluster map, the transport, in-flight bounds.
    pub(super) storage: Arc<StorageClient<T>>,
    /// The runtime the client was made on: background data work (fragment
    /// deletes) goes there, whichever runtime the request runs on.
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) cache: Mutex<MetaCache>,
    pub(super) statahead: Mutex<Statahead>,
    pub(super) handles: Handles,
    /// Wakes the background map refresher early (after a transport failure).
    pub(super) map_refresh: Arc<Notify>,
    pub(super) data_cache: EpochCache,
    pub(super) control: ControlHandles,
    pub(super) frozen: FrozenState,
    pub(super) locks: LockTable,
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Where a front-end best runs requests that only talk to metad: the
    /// metadata service's own runtime when it has one (no thread hop per
    /// call), else the client's.
    pub fn meta_runtime(&self) -> tokio::runtime::Handle {
        self.inner
            .meta
            .runtime()
            .unwrap_or_else(|| self.inner.runtime.clone())
    }

    pub(super) async fn meta_call(&self, req: MetaRequest) -> Result<MetaReply, ClientError> {
        self.inner.meta.call(req).await
    }

    /// A namespace write: metad's reply, and the attributes of the
    /// directories it changed, for [`Self::note_dirs`] once the caller has
    /// updated the cache for the change itself.
    pub(super) async fn meta_call_dirs(
        &self,
        req: MetaRequest,
    ) -> (Result<MetaReply, ClientError>, Vec<ChangedDir>) {
        self.inner.meta.call_dirs(req).await
    }

    /// Caches what metad said of the directories a write changed: their
    /// attributes right after it (the kernel asks for a directory's
    /// attributes after each change in it), and whether a directory held
    /// complete still is (see `meta_cache`). Called once the cache holds
    /// the change itself.
    pub(super) fn note_dirs(&self, dirs: Vec<ChangedDir>) {
        if dirs.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut cache = lock(&self.inner.cache);
        for ChangedDir {
            attr,
            ctime_before_ns,
        } in dirs
        {
            cache.changed_complete(attr.ino, ctime_before_ns, attr.ctime_ns, now);
            if !attr.frozen {
                cache.put_attr(attr, now);
            }
        }
    }

    /// `.torchfs/stats`: the epoch cache's counters with the storage
    /// client's, metad's and the frozen tables'.
    pub(super) fn stats_text(&self) -> String {
        let inner = &self.inner;
        inner.data_cache.render_stats(
            inner.storage.read_bytes(),
            inner.storage.degraded_writes(),
            inner.meta.requests(),
            inner.storage.transport().counters(),
            inner.frozen.stats(),
        )
    }

    /// Fetches the cluster map now; true when it is newer than the one held.
    pub(super) async fn refresh_map_now(&self) -> bool {
        self.inner.refresh_map().await
    }
}

/// Refetches the cluster map every `map_refresh_ms`, or at once when woken.
/// Holds only a weak reference so that dropping the last `Client` ends it.
pub(super) async fn refresh_map_loop<M: MetaService, T: Transport>(
    inner: Weak<Inner<M, T>>,
    wake: Arc<Notify>,
) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => Duration::from_millis(i.config.map_refresh_ms.max(10)),
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = wake.notified() => {}
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.refresh_map().await;
    }
}

impl<M: MetaService, T: Transport> Inner<M, T> {
    /// Fetches the cluster map and installs it; true when it is newer than
    /// the one held.
    async fn refresh_map(&self) -> bool {
        let before = self.storage.map().epoch;
        match self.meta.call_background(MetaRequest::ClusterMap).await {
            Ok(MetaReply::ClusterMap(map)) => {
                let newer = map.epoch > before;
                self.storage.set_map(map);
                newer
            }
            Ok(other) => {
                let err = unexpected("ClusterMap", other);
                tracing::warn!("cluster map refresh: {err}");
                false
            }
            Err(e) => {
                tracing::warn!("cluster map refresh failed: {e}");
                false
            }
        }
    }
}
