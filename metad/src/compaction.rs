//! When a voter snapshots its state machine (and so purges the log behind
//! it).
//!
//! A snapshot encodes every inode, so taking one every fixed number of
//! entries costs each write more as the namespace grows (at 30,000 files,
//! a snapshot every 1,000 entries was a fifth of the leader's CPU). Here a
//! snapshot is due once the entries applied since the last one reach the
//! configured floor or an eighth of the number of inodes, whichever is more
//! (capped at [`SNAPSHOT_LOGS_MAX`] so the log stays bounded): each write
//! then pays for encoding at most [`INODES_PER_LOG`] inodes, however large
//! the namespace. openraft's own policy is off
//! (`SnapshotPolicy::Never`); this task asks for each snapshot.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;

use crate::store::{MetaRaft, SmData};

/// Inodes a snapshot encodes per entry since the last one, at most.
pub const INODES_PER_LOG: u64 = 8;

/// Most entries between two snapshots, however large the namespace: at a
/// few hundred bytes an entry, a few hundred MiB of log to replay.
pub const SNAPSHOT_LOGS_MAX: u64 = 1_000_000;

/// How long a requested snapshot may take before it is asked for again
/// (openraft drops a request while one is being built, and a build can fail).
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// Entries applied since the last snapshot at which the next is due.
pub fn snapshot_due_after(floor_logs: u64, inodes: u64) -> u64 {
    floor_logs
        .max(1)
        .max((inodes / INODES_PER_LOG).min(SNAPSHOT_LOGS_MAX))
}

/// Watches what this voter applied and asks for a snapshot when one is
/// due. Ends when Raft shuts down.
pub async fn run(raft: MetaRaft, sm: Arc<RwLock<SmData>>, floor_logs: u64) {
    let mut metrics = raft.metrics();
    // The snapshot index a request was made at, and when.
    let mut asked: Option<(u64, Instant)> = None;
    loop {
        let (applied, snapshot) = {
            let m = metrics.borrow_watched();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let inodes = sm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .state
            .file_count();
        let due = applied.saturating_sub(snapshot) >= snapshot_due_after(floor_logs, inodes);
        let pending =
            asked.is_some_and(|(at, when)| at == snapshot && when.elapsed() < RETRY_AFTER);
        if due && !pending {
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::debug!("ask for a snapshot: {e}");
                return;
            }
            asked = Some((snapshot, Instant::now()));
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_namespaces_snapshot_at_the_floor_large_ones_at_their_size() {
        assert_eq!(snapshot_due_after(1000, 10), 1000);
        assert_eq!(snapshot_due_after(1000, 8_000), 1000);
        assert_eq!(snapshot_due_after(1000, 80_000), 10_000);
        assert_eq!(snapshot_due_after(1000, 50_000_000_000), SNAPSHOT_LOGS_MAX);
        assert_eq!(snapshot_due_after(0, 0), 1);
    }
}
