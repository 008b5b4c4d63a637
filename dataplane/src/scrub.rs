//! Scrub: a background pass over a shard's fragments at rest, each read
//! whole and checked against the CRCs stored with it (`FragmentStore::
//! scrub`), at a bounded rate so it never crowds out requests. A fragment
//! that fails is dropped (a later get or repair check then finds it
//! missing instead of serving bytes that are wrong) and reported to metad
//! through the node's control thread, so the repair service rebuilds it
//! from the others. A fragment is only dropped on a checksum or header
//! failure, never on an I/O error, and no more than a tenth of a pass's
//! fragments (at least 16): a fault that makes good fragments look bad
//! (a bad read path) must not delete a node's data.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::mpsc;
use torchfs_proto::fragment::FragmentKey;

use crate::shard::Shard;
use crate::store::{FragmentStore, StoreError};

/// How a node scrubs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Bytes per second read by the scrub of the whole node (split over
    /// its shards); 0 turns scrubbing off. 20 MB/s by default: a few
    /// percent of a disk, a 4 TB node scrubbed in about two days.
    pub bytes_per_s: u64,
    /// The pause between two passes over a shard.
    pub interval: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        Self {
            bytes_per_s: 20_000_000,
            interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// Fragments a pass may drop at least, whatever its size.
const DROPS_MIN: u64 = 16;

/// Scrubs `shard` pass after pass until the executor stops. Bad fragments
/// go to `bad` (the control thread reports them to metad).
pub(crate) async fn run<S: FragmentStore>(
    shard: Rc<Shard<S>>,
    config: ScrubConfig,
    mut bad: mpsc::Sender<FragmentKey>,
) {
    let bytes_per_s = (config.bytes_per_s / shard.shards.max(1) as u64).max(1);
    loop {
        glommio::timer::sleep(config.interval).await;
        let started = Instant::now();
        let (mut checked, mut checked_bytes, mut dropped) = (0u64, 0u64, 0u64);
        for key in shard.store.list() {
            match shard.store.scrub(key).await {
                Ok((_, length_bytes)) => {
                    checked += 1;
                    checked_bytes += u64::from(length_bytes);
                }
                // Deleted or replaced since the listing.
                Err(StoreError::NotFound { .. }) => {}
                Err(
                    e @ (StoreError::ChecksumMismatch { .. }
                    | StoreError::ChunkChecksumMismatch { .. }
                    | StoreError::CorruptHeader { .. }),
                ) => {
                    checked += 1;
                    if dropped >= DROPS_MIN.max(checked / 10) {
                        tracing::error!(
                            "scrub, shard {}: {e}; kept: {dropped} fragments of {checked} \
                             failed this pass, more than a bad disk explains",
                            shard.index
                        );
                        continue;
                    }
                    tracing::warn!("scrub, shard {}: {e}; dropping it for repair", shard.index);
                    if let Err(e) = shard.store.delete(key).await {
                        tracing::warn!("scrub, shard {}: drop {key}: {e}", shard.index);
                    }
                    dropped += 1;
                    if bad.try_send(key).is_err() {
                        tracing::warn!(
                            "scrub, shard {}: {key} not reported (queue full, or no metad); \
                             a repair pass will find it missing",
                            shard.index
                        );
                    }
                }
                Err(e) => tracing::warn!("scrub, shard {}: {e}", shard.index),
            }
            // Hold the average rate.
            let due = Duration::from_secs_f64(checked_bytes as f64 / bytes_per_s as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                glommio::timer::sleep(due - elapsed).await;
            }
        }
        tracing::info!(
            "scrub, shard {}: {checked} fragments ({checked_bytes} bytes) checked, \
             {dropped} dropped, in {:.1} s",
            shard.index,
            started.elapsed().as_secs_f64()
        );
    }
}
