//! Repair and scrub of files (docs/ARCHITECTURE.md: Data path, repair):
//! the layout metad holds for a file, its stripes handed to the storage
//! client (a few at once) to check and rebuild in place, within a
//! bandwidth bound. `torchfs repair` walks the tree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use torchfs_proto::meta::Ino;
use torchfs_rdma::Transport;
use torchfs_storage_client::io::StripeRepair;

use super::client::Client;
use super::error::ClientError;
use super::meta::MetaService;

/// Stripes of one file checked and rebuilt at once.
const REPAIR_STRIPES_IN_FLIGHT: usize = 4;

/// A bound on repair traffic: the bytes a rebuild moves (k fragment
/// columns read, one fragment written) per second, on average since the
/// start.
pub struct RepairBandwidth {
    bytes_per_s: u64,
    started: Instant,
    moved: AtomicU64,
}

impl RepairBandwidth {
    pub fn new(bytes_per_s: u64) -> Self {
        Self {
            bytes_per_s: bytes_per_s.max(1),
            started: Instant::now(),
            moved: AtomicU64::new(0),
        }
    }

    /// Counts `bytes` moved and waits until the average is within bound.
    async fn spend(&self, bytes: u64) {
        let moved = self.moved.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(moved as f64 / self.bytes_per_s as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Checks every stored fragment of file `ino` and rebuilds the missing
    /// or corrupt ones where the map places them. `verify_whole` reads each
    /// fragment whole (a scrub); otherwise only its existence and whole CRC
    /// are checked (after nodes were lost). `bandwidth` bounds the rebuild
    /// traffic.
    pub async fn repair_file(
        &self,
        ino: Ino,
        verify_whole: bool,
        bandwidth: Option<&RepairBandwidth>,
    ) -> Result<StripeRepair, ClientError> {
        let (_, layout) = self.inner.frozen.layout(&self.inner.meta, ino).await?;
        let k = u64::from(layout.config.k);
        let storage = &self.inner.storage;
        let repairs = layout.stripes.iter().map(|entry| async {
            let r = storage
                .repair_stripe(ino, &layout.config, entry, verify_whole)
                .await?;
            if let Some(b) = bandwidth {
                b.spend(r.rebuilt_bytes * (k + 1)).await;
            }
            Ok::<_, ClientError>(r)
        });
        let mut results = stream::iter(repairs).buffer_unordered(REPAIR_STRIPES_IN_FLIGHT);
        let mut total = StripeRepair::default();
        while let Some(r) = results.next().await {
            let r = r?;
            total.checked += r.checked;
            total.rebuilt += r.rebuilt;
            total.rebuilt_bytes += r.rebuilt_bytes;
            total.failed += r.failed;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bandwidth_bound_holds_the_average() {
        let b = RepairBandwidth::new(10_000_000);
        let t = Instant::now();
        for _ in 0..4 {
            b.spend(500_000).await;
        }
        // 2 MB at 10 MB/s: at least 0.2 s.
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
