//! Stripe I/O over a transport (docs/ARCHITECTURE.md: Data path): encode a
//! stripe and put its k+m fragments under a new generation; read ranges of
//! data fragments straight into the caller's buffer, many in parallel, and
//! when a fragment cannot be had (node down, unreachable, timed out,
//! missing, checksum mismatch) fetch the same column of any k others and
//! decode it; delete replaced versions. Bounded: one semaphore caps the
//! fragment requests a client keeps in flight.
//!
//! Writes are degraded when nodes fail: a stripe is stored when k of its
//! k+m fragments are (see [`StorageClient::put_stripe`]); nothing rebuilds
//! the missing ones yet (repair is planned).
//!
//! - `write`: [`StorageClient::put_stripe`], degraded when nodes fail.
//! - `read`: ranged reads and degraded decode ([`plan_degraded`]).
//! - `delete`: deletes of replaced versions.
//! - `repair`: rebuilding missing or corrupt fragments in place.

mod delete;
mod read;
mod repair;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};
use torchfs_proto::meta::{ClusterMap, StripeConfig};
use torchfs_rdma::Transport;

use crate::codec::ReedSolomon;
use crate::error::StorageError;
use crate::map::MapCache;
use crate::stripe;

pub use read::{plan_degraded, DegradedPlan};
pub use repair::StripeRepair;
pub use write::Stored;

/// Fragment requests (get/put/delete) one client keeps in flight at most.
pub const FRAGMENT_REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// How long a stripe buffer holding `encoded_bytes` of file data is once
/// padded for encoding: the last stored data fragment padded to the parity
/// length (a full stripe needs no padding).
pub fn padded_bytes(cfg: &StripeConfig, encoded_bytes: u32) -> usize {
    if encoded_bytes == 0 {
        return 0;
    }
    let unit = cfg.unit_bytes as usize;
    let parity_bytes = stripe::parity_fragment_bytes(cfg, encoded_bytes) as usize;
    (encoded_bytes as usize).div_ceil(unit).saturating_sub(1) * unit + parity_bytes
}

/// Stripe I/O for one client: the cluster map it works from, the
/// transport, the in-flight bound and the codecs. Knows nothing of FUSE,
/// open files or caches.
pub struct StorageClient<T: Transport> {
    map: MapCache,
    transport: T,
    io_slots: Semaphore,
    codecs: Mutex<HashMap<(u8, u8), Arc<ReedSolomon>>>,
    read_bytes: AtomicU64,
    /// Stripes stored with some fragments missing (nodes down).
    degraded_writes: AtomicU64,
    /// Notified when a failure suggests the map is stale; whoever owns the
    /// map's source refreshes it (`set_map`).
    map_stale: Arc<Notify>,
    runtime: tokio::runtime::Handle,
}

impl<T: Transport> StorageClient<T> {
    /// `runtime` runs background deletes; `map_stale` is notified when a
    /// fragment's node looked unreachable or unknown.
    pub fn new(
        transport: T,
        map: ClusterMap,
        runtime: tokio::runtime::Handle,
        map_stale: Arc<Notify>,
    ) -> Self {
        transport.learn_nodes(&map.nodes);
        Self {
            map: MapCache::new(map),
            transport,
            io_slots: Semaphore::new(FRAGMENT_REQUESTS_IN_FLIGHT_MAX),
            codecs: Mutex::new(HashMap::new()),
            read_bytes: AtomicU64::new(0),
            degraded_writes: AtomicU64::new(0),
            map_stale,
            runtime,
        }
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.get()
    }

    /// Installs a newer map (an older one is ignored) and tells the
    /// transport what the nodes advertise.
    pub fn set_map(&self, map: ClusterMap) {
        self.transport.learn_nodes(&map.nodes);
        self.map.set(map);
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Bytes asked of storage nodes by reads so far.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Stripes stored so far with fragments missing (their nodes were down
    /// or unreachable), each still decodable.
    pub fn degraded_writes(&self) -> u64 {
        self.degraded_writes.load(Ordering::Relaxed)
    }

    fn note_stale(&self) {
        self.map_stale.notify_one();
    }

    pub fn codec(&self, cfg: &StripeConfig) -> Result<Arc<ReedSolomon>, StorageError> {
        let mut codecs = self.codecs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rs) = codecs.get(&(cfg.k, cfg.m)) {
            return Ok(rs.clone());
        }
        let rs = Arc::new(ReedSolomon::new(cfg.k as usize, cfg.m as usize)?);
        codecs.insert((cfg.k, cfg.m), rs.clone());
        Ok(rs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_reaches_the_parity_length() {
        let cfg = StripeConfig {
            k: 4,
            m: 2,
            unit_bytes: 100,
        };
        assert_eq!(padded_bytes(&cfg, 0), 0);
        assert_eq!(padded_bytes(&cfg, 30), 30);
        assert_eq!(padded_bytes(&cfg, 250), 300);
        assert_eq!(padded_bytes(&cfg, 400), 400);
    }
}
