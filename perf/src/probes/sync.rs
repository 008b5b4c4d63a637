//! Commit latency of the disk: 4 KiB written in place into a preallocated
//! file, then `fdatasync`, one after another. A metadata change that must be
//! on disk before it is acknowledged (a Raft log append) cannot commit
//! faster than this, so it bounds creates per second from one thread. The
//! file lives in the work directory, on the disk metad's logs use.

use std::os::unix::fs::FileExt;
use std::time::Instant;

use anyhow::{Context, Result};

use super::TARGET;
use crate::ctx::{Ctx, Metric};

/// Commits per second (`ops/s`, so it bounds one thread's creates).
pub const SYNC_METRIC: &str = "fdatasync 4KiB, 1 thread";
const BLOCK_BYTES: usize = 4096;
const FILE_BYTES: u64 = 64 << 20;

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let metric = Metric::new("disk", SYNC_METRIC, "ops/s");
    let dir = ctx.config.work_dir.join("sync");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("probe.dat");
    let commits = if ctx.config.quick { 100 } else { 1000 };
    for round in 0..ctx.config.repeats {
        ctx.check_interrupted()?;
        match commit_latencies(&path, commits) {
            Ok(mut ms) => {
                ms.sort_by(f64::total_cmp);
                let p50 = ms[ms.len() / 2];
                ctx.sample(&metric, TARGET, 1000.0 / p50);
                ctx.log(format!(
                    "[probe] fdatasync 4 KiB round {}: p50 {p50:.3} ms, p90 {:.3} ms",
                    round + 1,
                    ms[ms.len() * 9 / 10]
                ));
            }
            Err(e) => ctx.failed(&metric, TARGET, &e),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Milliseconds each of `n` commits took.
fn commit_latencies(path: &std::path::Path, n: usize) -> Result<Vec<f64>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    // Allocated and on disk first, so each commit writes data only (no
    // block allocation, no size change for the journal).
    file.write_all_at(&vec![0u8; FILE_BYTES as usize], 0)?;
    file.sync_all()?;
    let block = crate::data::pattern(BLOCK_BYTES, 11);
    let slots = FILE_BYTES / BLOCK_BYTES as u64;
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let started = Instant::now();
        file.write_all_at(&block, (i % slots) * BLOCK_BYTES as u64)?;
        file.sync_data()?;
        out.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}
