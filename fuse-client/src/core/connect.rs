//! Building a client: connecting to metad, fetching the first cluster map,
//! and starting the background loops (map refresh, lease keep-alive, the
//! epoch cache's prefetcher).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{MetaReply, MetaRequest};
use torchfs_rdma::verbs::VerbsOptions;
use torchfs_rdma::{MultiTransport, Transport};
use torchfs_storage_client::StorageClient;

use super::cache::EpochCache;
use super::client::{refresh_map_loop, Client, Inner};
use super::config::ClientConfig;
use super::control::ControlHandles;
use super::error::{unexpected, ClientError};
use super::frozen::FrozenState;
use super::handles::Handles;
use super::lock_table::LockTable;
use super::meta::{Meta, MetaService};
use super::meta_cache::MetaCache;
use super::statahead::Statahead;
use super::{lease, prefetch};

/// Entries the attribute and dentry caches hold at most (each).
const META_CACHE_ENTRIES_MAX: usize = 200_000;

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
            statahead: Mutex::new(Statahead::new(Duration::from_millis(config.entry_ttl_ms))),
            handles: Handles::default(),
            map_refresh,
            data_cache,
            control: ControlHandles::default(),
            frozen: FrozenState::new(
                Duration::from_millis(config.frozen_check_ms),
                config.frozen_entries_max,
            ),
            locks: LockTable::default(),
            config,
            meta: Meta::new(meta),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(refresh_map_loop(
            Arc::downgrade(&inner),
            inner.map_refresh.clone(),
        ));
        tokio::spawn(lease::keep_alive_loop(Arc::downgrade(&inner)));
        if inner.data_cache.enabled() {
            tokio::spawn(prefetch::prefetch_loop(Arc::downgrade(&inner)));
            tokio::spawn(prefetch::names_loop(Arc::downgrade(&inner)));
        }
        if let Some(work) = disk_work {
            tokio::spawn(prefetch::disk_loop(Arc::downgrade(&inner), work));
        }
        Ok(Self { inner })
    }
}
