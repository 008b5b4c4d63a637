//! What a client is built with: metad's addresses, cache TTLs, write
//! buffering, the transport and the epoch cache's settings.

use torchfs_rdma::endpoint::TransportMode;
use torchfs_rdma::TcpOptions;

use super::cache::CacheConfig;

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
