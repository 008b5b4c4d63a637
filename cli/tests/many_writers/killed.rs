//! A mount SIGKILLed while its process writes its half of a file: the other
//! mount's acknowledged (fsynced) half survives byte for byte and the file
//! stays readable, from the surviving mount, a fresh one, and after the
//! page caches are dropped.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::common::{fuse_available, serial, TestCluster};
use crate::patterns::{check_blocks, partition};
use crate::{start_together, verdict, wait_all, Proc, MIB, WRITER_TIMEOUT};

/// A writes `[0, KILLED_SPLIT)`, B streams over `[KILLED_SPLIT,
/// KILLED_TOTAL)`; the split lies inside a stripe, which both share.
const KILLED_SPLIT: u64 = 10 * MIB + 4321;
const KILLED_TOTAL: u64 = 20 * MIB;

#[test]
fn mount_killed_while_writing_leaves_the_other_mounts_bytes() -> Result<()> {
    if !fuse_available("mount_killed_while_writing_leaves_the_other_mounts_bytes") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let mut b = tc.mount_another("mnt-b")?;
    let b_log = b.log.clone();
    let on_a = tc.path("shared");
    std::fs::File::create(&on_a)?;
    let mut problems = Vec::new();
    let mut failed = Vec::new();

    // B keeps writing the second half until it dies.
    let progress = tc.dir.path().join("py/streamer.progress");
    let mut streamer = Proc::spawn(
        &tc,
        "streamer-b",
        "streamer.py",
        &[
            b.path("shared").display().to_string(),
            KILLED_SPLIT.to_string(),
            (KILLED_TOTAL - KILLED_SPLIT).to_string(),
            "1000".into(),
            progress.display().to_string(),
        ],
    )?;
    let fsyncs = || -> u64 {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while fsyncs() < 2 && streamer.running() {
        ensure!(
            Instant::now() < deadline,
            "B's writer did not fsync twice in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Meanwhile A writes and fsyncs the first half: acknowledged.
    let mut rng = StdRng::seed_from_u64(5);
    let mut blocks = partition(&mut rng, KILLED_SPLIT, 1, 1);
    let spec = serde_json::json!({
        "blocks": blocks.iter().map(|bl| [bl.off, bl.len, bl.seed]).collect::<Vec<_>>(),
        "order_seed": 5,
        "fsync_every": 4,
    });
    let mut writer = Proc::spawn(
        &tc,
        "writer-a",
        "pwriter.py",
        &[on_a.display().to_string(), spec.to_string()],
    )?;
    start_together(std::slice::from_mut(&mut writer))?;
    failed.extend(wait_all(std::slice::from_mut(&mut writer), WRITER_TIMEOUT));
    let before = fsyncs();
    if !streamer.running() {
        // A writer of its own region must not fail: a problem, but the
        // kill and the checks below still run.
        problems.push(format!(
            "B's writer exited ({:?}) before B was killed, after {before} fsyncs:\n{}",
            streamer.done,
            streamer.stderr()
        ));
    }

    // B's mount dies in the middle of its writes, then its writer.
    b.kill();
    let reaped = streamer.kill();
    eprintln!(
        "killed B after {before} fsyncs of its writer ({} once it died); writer reaped: {reaped}",
        fsyncs()
    );
    if !reaped {
        problems.push("B's writer was still not gone 30 s after SIGKILL".into());
    }

    blocks.sort_by_key(|bl| bl.off);
    let mut seeds = HashMap::new();
    for (i, bl) in blocks.iter().enumerate() {
        seeds.insert(bl.seed, format!("A's block {i}"));
    }
    for p in 0..1000 {
        seeds.insert(1000 + p, format!("B's pass {p}"));
    }
    let names = ["A's writer".to_string()];
    // A's acknowledged region, byte for byte; B's may hold anything B wrote,
    // or zeros, but must read.
    let check = |what: &str, path: &Path, problems: &mut Vec<String>| {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => {
                problems.push(format!("{what}: stat: {e}"));
                return;
            }
        };
        if size < KILLED_SPLIT {
            problems.push(format!(
                "{what}: size {size}, less than the end of A's acknowledged region \
                 ({KILLED_SPLIT})"
            ));
        }
        match check_blocks(path, &blocks, &seeds, &names) {
            Ok(found) => problems.extend(
                found
                    .into_iter()
                    .filter(|p| !p.starts_with("size "))
                    .map(|p| format!("{what} (file size {size}): {p}")),
            ),
            Err(e) => problems.push(format!("{what}: {e:#}")),
        }
    };
    check("read on mount A", &on_a, &mut problems);
    let c = tc.mount_another("mnt-c")?;
    check("read on a fresh mount C", &c.path("shared"), &mut problems);
    tc.drop_caches();
    check("read on mount A after drop_caches", &on_a, &mut problems);
    verdict(
        "a mount SIGKILLed while writing its half of a file: the other mount's \
         acknowledged half damaged or the file unreadable",
        &problems,
        &failed,
        &[
            ("A", &tc.mount_log()),
            ("B (killed)", &b_log),
            ("C", &c.log),
        ],
    )?;
    eprintln!("killed mount: {:?}", t0.elapsed());
    Ok(())
}
