//! A bound on repair traffic: the bytes a rebuild moves (k fragment
//! columns read, one fragment written) per second, on average since the
//! start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    pub async fn spend(&self, bytes: u64) {
        let moved = self.moved.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let due = Duration::from_secs_f64(moved as f64 / self.bytes_per_s as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bound_holds_the_average() {
        let b = RepairBandwidth::new(10_000_000);
        let t = Instant::now();
        for _ in 0..4 {
            b.spend(500_000).await;
        }
        // 2 MB at 10 MB/s: at least 0.2 s, whatever the chunking.
        assert!(
            t.elapsed() >= Duration::from_millis(195),
            "{:?}",
            t.elapsed()
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
