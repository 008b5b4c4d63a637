//! N to 1: disjoint blocks of one file written concurrently by 4 processes
//! (2 per mount), blocks straddling unit and stripe boundaries, over a few
//! rounds: every block's bytes are there, seen from both mounts, and again
//! from the cluster once the page caches are dropped.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::{fuse_available, serial, TestCluster};
use crate::patterns::{check_blocks, partition};
use crate::{start_together, verdict, wait_all, Proc, MIB, STRIPE, UNIT, WRITER_TIMEOUT};

/// Rounds, and the span of the shared file: 5.5 stripes and a ragged tail.
const DISJOINT_ROUNDS: u64 = 3;
const DISJOINT_TOTAL: u64 = 22 * MIB + 12_345;

#[test]
fn disjoint_blocks_from_four_writers_on_two_mounts_all_land() -> Result<()> {
    if !fuse_available("disjoint_blocks_from_four_writers_on_two_mounts_all_land") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let b = tc.mount_another("mnt-b")?;
    let (on_a, on_b) = (tc.path("shared"), b.path("shared"));
    std::fs::File::create(&on_a)?;

    let writer_names: Vec<String> = (0..4)
        .map(|w| format!("writer {w} (mount {})", if w < 2 { 'A' } else { 'B' }))
        .collect();
    let mut rng = StdRng::seed_from_u64(28);
    let mut seeds = HashMap::new();
    let mut last = Vec::new();
    for round in 1..=DISJOINT_ROUNDS {
        // Round 1 fills the empty file; later rounds overwrite all of it.
        let blocks = partition(&mut rng, DISJOINT_TOTAL, 4, round << 12);
        for (i, bl) in blocks.iter().enumerate() {
            seeds.insert(
                bl.seed,
                format!("round {round} block {i} ({})", writer_names[bl.writer]),
            );
        }
        let straddle = |edge: u64| {
            blocks
                .iter()
                .filter(|bl| bl.off / edge != (bl.off + bl.len - 1) / edge)
                .count()
        };
        eprintln!(
            "round {round}: {} blocks, {} straddle a unit boundary, {} a stripe boundary",
            blocks.len(),
            straddle(UNIT),
            straddle(STRIPE)
        );
        let mut procs = Vec::new();
        for w in 0..writer_names.len() {
            let mine: Vec<[u64; 3]> = blocks
                .iter()
                .filter(|bl| bl.writer == w)
                .map(|bl| [bl.off, bl.len, bl.seed])
                .collect();
            let spec = serde_json::json!({
                "blocks": mine,
                "order_seed": round * 10 + w as u64,
                "fsync_every": 3,
            });
            let path = if w < 2 { &on_a } else { &on_b };
            procs.push(Proc::spawn(
                &tc,
                &format!("r{round}-w{w}"),
                "pwriter.py",
                &[path.display().to_string(), spec.to_string()],
            )?);
        }
        let t = Instant::now();
        start_together(&mut procs)?;
        let failed = wait_all(&mut procs, WRITER_TIMEOUT);
        eprintln!("round {round}: writers done in {:?}", t.elapsed());
        let mut problems = Vec::new();
        let mut on_first = None;
        for (mount, path) in [("A", &on_a), ("B", &on_b)] {
            match check_blocks(path, &blocks, &seeds, &writer_names) {
                Ok(found) if !found.is_empty() && on_first.as_ref() == Some(&found) => {
                    problems.push(format!("read on mount {mount}: the same as on mount A"))
                }
                Ok(found) => {
                    problems.extend(found.iter().map(|p| format!("read on mount {mount}: {p}")));
                    on_first.get_or_insert(found);
                }
                Err(e) => problems.push(format!("mount {mount}: {e:#}")),
            }
        }
        verdict(
            &format!(
                "round {round} of {DISJOINT_ROUNDS}: disjoint blocks written by 4 processes \
                 (2 per mount) did not all land"
            ),
            &problems,
            &failed,
            &[("A", &tc.mount_log()), ("B", &b.log)],
        )?;
        last = blocks;
    }
    // Once more from the cluster itself, not the kernels' page caches.
    tc.drop_caches();
    for (mount, path) in [("A", &on_a), ("B", &on_b)] {
        let problems = check_blocks(path, &last, &seeds, &writer_names)?;
        ensure!(
            problems.is_empty(),
            "after drop_caches, read on mount {mount}:\n{}",
            problems.join("\n")
        );
    }
    eprintln!("disjoint writers: {:?}", t0.elapsed());
    Ok(())
}
