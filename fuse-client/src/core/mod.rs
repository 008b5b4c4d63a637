//! The client core: everything a front-end (FUSE, the preload library, the
//! Python batch API) needs to serve POSIX calls, and nothing of any
//! front-end. It caches metadata with TTLs, keeps per-inode write buffers,
//! encodes and uploads stripes, reads (degraded if need be) and commits
//! layouts on flush (close-to-open, docs/ARCHITECTURE.md: Data path and Metadata).
//!
//! Layout of the module:
//! - [`meta_cache`]: attribute and dentry cache with TTLs.
//! - [`file`]: per-inode state (layout, dirty stripe buffers, uploaded
//!   entries): the pure logic of buffering, read-modify-write and truncation.
//! - [`handles`]: open file handles and the per-inode state they share.
//! - [`cache`]: the epoch cache (plans, prefetching, memory and disk
//!   tiers, Belady/LRU eviction) in front of the read path.
//! - [`control`]: the `.torchfs/` control files (plan intake, stats).
//! - [`frozen`]: tables of frozen dataset versions, loaded once, that
//!   answer metadata calls inside them without metad.
//! - [`lease`]: this client's lease with metad (open inodes kept alive
//!   after unlink) and the deletion of garbage metad hands out.
//! - [`locks`]: fcntl and flock locks held in metad (across mounts).
//! - `namespace`, `read`, `write`, `xattrs`: the operations; `upload`
//!   (stripe buffers to storage, deletes of replaced ones) and `commit`
//!   (commits over a base, merges with other writers) under `write`.
//!
//! Stripe I/O (the cluster map, fragment puts and gets, degraded reads,
//! deletes) is the storage client's (`torchfs_storage_client::StorageClient`),
//! below this core; the core refreshes the map it works from.

pub mod cache;
mod commit;
pub mod control;
mod file;
pub mod frozen;
mod handles;
mod lease;
mod locks;
mod meta_cache;
mod namespace;
mod open;
mod read;
mod repair;
mod statahead;
#[cfg(test)]
mod tests;
mod upload;
mod write;
#[cfg(test)]
mod writers_tests;
mod xattrs;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use torchfs_proto::client::{Answer, MetaClient, MetaClientOptions};
use torchfs_proto::fragment::FragmentErrorCode;
use torchfs_proto::meta::{ChangedDir, Ino, MetaError, MetaReply, MetaRequest};
use torchfs_rdma::endpoint::TransportMode;
use torchfs_rdma::verbs::VerbsOptions;
use torchfs_rdma::{MultiTransport, TcpOptions, Transport};

use crate::codec::CodecError;
use crate::stripe::StripeError;
use torchfs_storage_client::{StorageClient, StorageError};

pub use cache::{CacheConfig, ReadBuf};
use cache::{EpochCache, PlanError};
use control::ControlHandles;
use frozen::{FrozenState, FrozenTableError};
use handles::Handles;
pub use locks::LockSpec;
use meta_cache::MetaCache;
pub use namespace::{NewMode, Owner};
pub use repair::RepairBandwidth;

/// An open file, as handed to front-ends.
pub type FileHandle = u64;

/// Entries the attribute and dentry caches hold at most (each).
const META_CACHE_ENTRIES_MAX: usize = 200_000;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Client addresses ("host:port") of the metad voters.
    pub metad: Vec<String>,
    pub attr_ttl_ms: u64,
    pub entry_ttl_ms: u64,
    /// Unuploaded stripe buffers kept per open file (each up to k*unit
    /// bytes); past it, partial stripes are uploaded early.
    pub dirty_stripes_max: usize,
    /// How often the cluster map is refreshed in the background.
    pub map_refresh_ms: u64,
    pub transport: TcpOptions,
    /// TCP, RDMA verbs, or verbs where both ends have it (`--transport`).
    pub transport_mode: TransportMode,
    /// The epoch cache (memory and disk tiers, prefetching).
    pub cache: CacheConfig,
    /// How often a loaded frozen tree's root is rechecked with metad (an
    /// unfreeze is seen within this long).
    pub frozen_check_ms: u64,
    /// Inodes a frozen tree may have to be loaded as a table (0: never
    /// load tables); larger trees are served by metad as usual.
    pub frozen_entries_max: usize,
    /// How often the lease (the inodes open here) is renewed with metad;
    /// at least three times per lease whatever this says.
    pub keep_alive_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            metad: vec!["127.0.0.1:7401".to_string()],
            attr_ttl_ms: 1_000,
            entry_ttl_ms: 1_000,
            dirty_stripes_max: 8,
            map_refresh_ms: 2_000,
            transport: TcpOptions::default(),
            transport_mode: TransportMode::Auto,
            cache: CacheConfig::default(),
            frozen_check_ms: 1_000,
            frozen_entries_max: 1_000_000,
            keep_alive_ms: 1_000,
        }
    }
}

/// Why a client operation failed; [`ClientError::errno`] is what a POSIX
/// front-end returns.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("metadata service at {addrs:?} unreachable: {source}")]
    MetaUnreachable {
        addrs: Vec<String>,
        source: MetaError,
    },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("metad answered {request} with an unexpected reply: {reply}")]
    UnexpectedReply {
        request: &'static str,
        reply: String,
    },
    #[error("file handle {fh} is not open")]
    BadHandle { fh: FileHandle },
    #[error("file handle {fh} is not open for writing")]
    NotWritable { fh: FileHandle },
    #[error("inode {ino} is a directory")]
    IsDir { ino: Ino },
    #[error("inode {ino} is not a regular file")]
    NotFile { ino: Ino },
    /// Stripe I/O failed (storage nodes, the cluster map, decoding).
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("inode {ino}: {source}")]
    Layout { ino: Ino, source: StripeError },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("inode {ino}: {tries} commits in a row conflicted with other clients' writes")]
    CommitConflict { ino: Ino, tries: u32 },
    #[error("offset {offset} + {len_bytes} bytes is past the largest file size")]
    TooLarge { offset: u64, len_bytes: u64 },
    #[error("plan rejected: {0}")]
    Plan(#[from] PlanError),
    #[error("torchfs control file: {reason}")]
    Control { reason: &'static str },
    #[error(transparent)]
    FrozenTable(#[from] FrozenTableError),
    #[error("cache disk tier at {dir}: {source}")]
    CacheDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether a newer cluster map could make the failed operation pass: the
    /// node was unreachable or unknown, not refusing the request itself.
    pub fn may_pass_with_newer_map(&self) -> bool {
        matches!(self, ClientError::Storage(e) if e.may_pass_with_newer_map())
    }

    /// The errno (Linux numbering) a POSIX front-end should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Meta(e) | ClientError::MetaUnreachable { source: e, .. } => e.errno(),
            ClientError::BadHandle { .. } | ClientError::NotWritable { .. } => libc::EBADF,
            ClientError::IsDir { .. } => libc::EISDIR,
            ClientError::NotFile { .. } => libc::EINVAL,
            ClientError::Storage(StorageError::NoPlacement { .. }) => libc::ENOSPC,
            // A storage node whose disk is full refused the fragment.
            ClientError::Storage(StorageError::Transport { source, .. })
                if source.code() == Some(FragmentErrorCode::NoSpace) =>
            {
                libc::ENOSPC
            }
            ClientError::TooLarge { .. } => libc::EFBIG,
            ClientError::Plan(PlanError::TooLarge { .. }) => libc::EFBIG,
            ClientError::Plan(_) => libc::EINVAL,
            ClientError::Control { .. } => libc::EPERM,
            ClientError::UnexpectedReply { .. }
            | ClientError::Storage(_)
            | ClientError::Layout { .. }
            | ClientError::CacheDir { .. }
            | ClientError::CommitConflict { .. }
            | ClientError::FrozenTable(_)
            | ClientError::Codec(_) => libc::EIO,
        }
    }
}

/// The metadata service as the core sees it. [`MetaClient`] is the real one;
/// tests substitute an in-memory one.
pub trait MetaService: Send + Sync + 'static {
    fn call(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply, MetaError>> + Send;

    /// [`Self::call`], answered with the attributes of the directories a
    /// namespace write changed (none from a service that does not say).
    fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> impl Future<Output = Result<Answer, MetaError>> + Send {
        let call = self.call(req);
        async move { call.await.map(|reply| (reply, Vec::new())) }
    }

    /// A runtime on which calls cost no thread hop, if the service has one.
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }
}

impl MetaService for MetaClient {
    fn call(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply, MetaError>> + Send {
        MetaClient::call(self, req)
    }

    fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> impl Future<Output = Result<Answer, MetaError>> + Send {
        MetaClient::call_dirs(self, req)
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(MetaClient::runtime(self).clone())
    }
}

/// The client core. Cheap to clone (an `Arc` inside); Send + Sync. The type
/// parameters exist so tests can run it over in-memory metadata and
/// storage; front-ends use the defaults via [`Client::connect`].
pub struct Client<M: MetaService = MetaClient, T: Transport = MultiTransport> {
    inner: Arc<Inner<M, T>>,
}

impl<M: MetaService, T: Transport> Clone for Client<M, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<M, T: Transport> {
    config: ClientConfig,
    meta: M,
    /// Stripe I/O: the cluster map, the transport, in-flight bounds.
    storage: Arc<StorageClient<T>>,
    /// The runtime the client was made on: background data work (fragment
    /// deletes) goes there, whichever runtime the request runs on.
    runtime: tokio::runtime::Handle,
    cache: Mutex<MetaCache>,
    statahead: Mutex<statahead::Statahead>,
    handles: Handles,
    /// Wakes the background map refresher early (after a transport failure).
    map_refresh: Arc<Notify>,
    data_cache: EpochCache,
    control: ControlHandles,
    frozen: FrozenState,
    /// Requests sent to metad for file operations (not the background
    /// cluster-map refresh).
    meta_requests: AtomicU64,
    /// This client's id in metad's lease table (random, never 0).
    lease_id: u64,
    locks: Mutex<locks::LockTable>,
}

impl Client {
    /// Connects to metad (the voters in `config.metad`) and fetches the
    /// cluster map; fails with [`ClientError::MetaUnreachable`] when no
    /// voter answers within the metadata client's retry window.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let meta = MetaClient::new(config.metad.clone(), MetaClientOptions::default()).map_err(
            |source| ClientError::MetaUnreachable {
                addrs: config.metad.clone(),
                source,
            },
        )?;
        let verbs = VerbsOptions {
            // A first connection also registers the buffer pool.
            connect_timeout_ms: config.transport.connect_timeout_ms.max(5_000),
            request_timeout_ms: config.transport.request_timeout_ms,
            idle_connections_max: config.transport.idle_connections_max,
            ..VerbsOptions::default()
        };
        let transport = MultiTransport::new(config.transport_mode, config.transport.clone(), verbs);
        Client::with_parts(config, meta, transport).await
    }
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Builds a client over the given metadata service and transport (tests,
    /// fault injection), fetching the cluster map first. Must run inside a
    /// tokio runtime: it spawns the map refresher.
    pub async fn with_parts(
        config: ClientConfig,
        meta: M,
        transport: T,
    ) -> Result<Self, ClientError> {
        let first_map = match meta.call(MetaRequest::ClusterMap).await {
            Ok(MetaReply::ClusterMap(map)) => map,
            Ok(other) => return Err(unexpected("ClusterMap", other)),
            Err(source) => {
                return Err(ClientError::MetaUnreachable {
                    addrs: config.metad.clone(),
                    source,
                })
            }
        };
        let map_refresh = Arc::new(Notify::new());
        let storage = Arc::new(StorageClient::new(
            transport,
            first_map,
            tokio::runtime::Handle::current(),
            map_refresh.clone(),
        ));
        let cache = MetaCache::new(
            Duration::from_millis(config.attr_ttl_ms),
            Duration::from_millis(config.entry_ttl_ms),
            META_CACHE_ENTRIES_MAX,
        );
        let (data_cache, disk_work) =
            EpochCache::new(config.cache.clone()).map_err(|source| ClientError::CacheDir {
                dir: config.cache.disk_dir.clone().unwrap_or_default(),
                source,
            })?;
        let inner = Arc::new(Inner {
            storage,
            cache: Mutex::new(cache),
            statahead: Mutex::new(statahead::Statahead::new(Duration::from_millis(
                config.entry_ttl_ms,
            ))),
            handles: Handles::default(),
            map_refresh,
            data_cache,
            control: ControlHandles::default(),
            frozen: FrozenState::default(),
            meta_requests: AtomicU64::new(0),
            lease_id: torchfs_proto::client::random_client_id(),
            locks: Mutex::new(locks::LockTable::default()),
            config,
            meta,
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(refresh_map_loop(
            Arc::downgrade(&inner),
            inner.map_refresh.clone(),
        ));
        tokio::spawn(lease::keep_alive_loop(Arc::downgrade(&inner)));
        if inner.data_cache.enabled() {
            tokio::spawn(cache::prefetch_loop(Arc::downgrade(&inner)));
            tokio::spawn(cache::names_loop(Arc::downgrade(&inner)));
        }
        if let Some(work) = disk_work {
            tokio::spawn(cache::disk_loop(Arc::downgrade(&inner), work));
        }
        Ok(Self { inner })
    }

    /// Where a front-end best runs requests that only talk to metad: the
    /// metadata service's own runtime when it has one (no thread hop per
    /// call), else the client's.
    pub fn meta_runtime(&self) -> tokio::runtime::Handle {
        self.inner
            .meta
            .runtime()
            .unwrap_or_else(|| self.inner.runtime.clone())
    }

    async fn meta_call(&self, req: MetaRequest) -> Result<MetaReply, ClientError> {
        self.inner
            .meta_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.inner.meta.call(req).await?)
    }

    /// A namespace write: metad's reply, and the attributes of the
    /// directories it changed, for [`Self::note_dirs`] once the caller has
    /// updated the cache for the change itself.
    async fn meta_call_dirs(
        &self,
        req: MetaRequest,
    ) -> (Result<MetaReply, ClientError>, Vec<ChangedDir>) {
        self.inner
            .meta_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.inner.meta.call_dirs(req).await {
            Ok((reply, dirs)) => (Ok(reply), dirs),
            Err(e) => (Err(e.into()), Vec::new()),
        }
    }

    /// Caches what metad said of the directories a write changed: their
    /// attributes right after it (the kernel asks for a directory's
    /// attributes after each change in it), and whether a directory held
    /// complete still is (see `meta_cache`). Called once the cache holds
    /// the change itself.
    fn note_dirs(&self, dirs: Vec<ChangedDir>) {
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

    /// Fetches the cluster map now; true when it is newer than the one held.
    async fn refresh_map_now(&self) -> bool {
        self.inner.refresh_map().await
    }
}

/// Refetches the cluster map every `map_refresh_ms`, or at once when woken.
/// Holds only a weak reference so that dropping the last `Client` ends it.
async fn refresh_map_loop<M: MetaService, T: Transport>(
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
        match self.meta.call(MetaRequest::ClusterMap).await {
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

fn unexpected(request: &'static str, reply: MetaReply) -> ClientError {
    let mut text = format!("{reply:?}");
    // Replies can carry whole layouts; keep errors readable.
    text.truncate(200);
    ClientError::UnexpectedReply {
        request,
        reply: text,
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded maps stay consistent
/// across panics because every update is a single insert or remove.
fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
