//! Failures on purpose, against real processes: storage nodes killed with
//! SIGKILL, a corrupted fragment on disk, the metad leader killed, and the
//! whole cluster stopped and started again.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;

#[test]
fn two_storage_nodes_killed_every_file_still_reads() -> Result<()> {
    if !fuse_available("two_storage_nodes_killed_every_file_still_reads") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    let files = write_sized_files(&tc, "data")?;
    tc.cluster.kill_storage(1)?;
    tc.cluster.kill_storage(4)?;
    tc.drop_caches();
    check_files(&files).context("read with nodes 2 and 5 killed")?;
    // Still right once metad has marked them down, too.
    std::thread::sleep(Duration::from_millis(
        tc.cluster.spec().node_down_after_ms + 1_500,
    ));
    tc.drop_caches();
    check_files(&files).context("read with nodes 2 and 5 marked down")?;
    Ok(())
}

/// Degraded writes: with m = 2 storage nodes killed, new files of every
/// size (and one of several stripes, fsync'd) are written and closed
/// without an error, and read back byte-identical: from a cold mount
/// while the nodes are down, and again once they are back without the
/// fragments they missed (those reads decode).
#[test]
fn two_storage_nodes_killed_writes_and_closes_succeed() -> Result<()> {
    if !fuse_available("two_storage_nodes_killed_writes_and_closes_succeed") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    let before = write_sized_files(&tc, "before")?;
    tc.cluster.kill_storage(0)?;
    tc.cluster.kill_storage(3)?;
    // Written while metad still thinks the nodes are up (puts to them
    // fail) and after it marked them down (puts skip them).
    let mut files = write_sized_files(&tc, "killed").context("write with nodes 1 and 4 killed")?;
    std::thread::sleep(Duration::from_millis(
        tc.cluster.spec().node_down_after_ms + 1_500,
    ));
    files.extend(write_sized_files(&tc, "down").context("write with nodes 1 and 4 marked down")?);
    // 13 MiB at CI size; TORCHFS_DEGRADED_BIG_MIB=500 for the issue's
    // full-size checkpoint.
    let big_mib: usize = std::env::var("TORCHFS_DEGRADED_BIG_MIB")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(13);
    let big = pattern(big_mib << 20, 17);
    let started = std::time::Instant::now();
    {
        let mut f = std::fs::File::create(tc.path("big.bin"))?;
        f.write_all(&big)?;
        f.sync_all()
            .context("fsync of the big file with two nodes down")?;
    }
    println!(
        "{big_mib} MiB written and fsync'd with two nodes down in {:.1?}",
        started.elapsed()
    );
    files.push((tc.path("big.bin"), big));
    let stats = std::fs::read_to_string(tc.path(".torchfs/stats"))?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    let degraded = stats["degraded_writes"].as_u64().unwrap_or(0);
    assert!(degraded > 0, "no degraded write counted: {stats}");

    let cold = tc.mount_another("cold")?;
    let on_cold = |files: &[(PathBuf, Vec<u8>)]| -> Vec<(PathBuf, Vec<u8>)> {
        files
            .iter()
            .map(|(p, d)| {
                (
                    cold.mnt.join(p.strip_prefix(&tc.mnt).unwrap_or(p)),
                    d.clone(),
                )
            })
            .collect()
    };
    check_files(&on_cold(&files)).context("cold read with the two nodes down")?;
    check_files(&on_cold(&before)).context("older files with the two nodes down")?;
    drop(cold);

    tc.cluster.start_storage(0)?;
    tc.cluster.start_storage(3)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    let back = tc.mount_another("back")?;
    let on_back: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|(p, d)| {
            (
                back.mnt.join(p.strip_prefix(&tc.mnt).unwrap_or(p)),
                d.clone(),
            )
        })
        .collect();
    check_files(&on_back).context("read once the nodes are back (without what they missed)")?;
    Ok(())
}

#[test]
fn flipped_byte_in_a_fragment_is_detected_and_read_is_right() -> Result<()> {
    if !fuse_available("flipped_byte_in_a_fragment_is_detected_and_read_is_right") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start()?;
    // One file of less than a stripe unit: data fragment 0 plus m parity
    // fragments are stored, as files (past the fragment log's 256 KiB).
    let data = pattern(300_000, 77);
    std::fs::write(tc.path("small.bin"), &data)?;
    let frags: Vec<PathBuf> = (0..6)
        .flat_map(|i| fragment_files(&tc.cluster.storage_dir(i)))
        .collect();
    let data_frags: Vec<&PathBuf> = frags
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("-00.frag"))
        })
        .collect();
    if data_frags.len() != 1 {
        bail!("expected one data fragment on disk, found {data_frags:?} among {frags:?}");
    }
    // Flip one byte of the fragment's data (after its 4 KiB header block).
    let path = data_frags[0];
    let mut bytes = std::fs::read(path)?;
    bytes[4096 + 12_345] ^= 0x5a;
    std::fs::write(path, &bytes)?;

    tc.drop_caches();
    let got = std::fs::read(tc.path("small.bin"))?;
    assert!(got == data, "degraded read returned wrong bytes");
    let log = std::fs::read_to_string(tc.mount_log())?.to_lowercase();
    assert!(
        log.contains("crc32c mismatch"),
        "the client did not report the checksum mismatch; mount log:\n{log}"
    );
    Ok(())
}

#[test]
fn metad_leader_killed_mount_keeps_working() -> Result<()> {
    if !fuse_available("metad_leader_killed_mount_keeps_working") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    std::fs::write(tc.path("before.txt"), b"before")?;
    let status = tc.cluster.status(Duration::from_secs(10))?;
    let leader = status.leader.context("no leader")?;
    tc.cluster.kill_metad(leader as usize - 1)?;

    // Namespace and data operations go on through the new leader.
    std::fs::create_dir(tc.path("after"))?;
    std::fs::write(tc.path("after/new.bin"), pattern(3 << 20, 5))?;
    tc.drop_caches();
    assert_eq!(std::fs::read(tc.path("before.txt"))?, b"before");
    assert!(std::fs::read(tc.path("after/new.bin"))? == pattern(3 << 20, 5));
    let status = tc.cluster.status(Duration::from_secs(10))?;
    assert!(status.leader.is_some_and(|l| l != leader), "{status:?}");
    Ok(())
}

#[test]
fn whole_cluster_restart_keeps_namespace_and_data() -> Result<()> {
    if !fuse_available("whole_cluster_restart_keeps_namespace_and_data") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    let files = write_sized_files(&tc, "keep")?;
    std::fs::create_dir_all(tc.path("tree/deeper"))?;
    std::os::unix::fs::symlink("../keep", tc.path("tree/link"))?;
    tc.restart_all()?;
    check_files(&files)?;
    assert!(std::fs::metadata(tc.path("tree/deeper"))?.is_dir());
    assert_eq!(
        std::fs::read_link(tc.path("tree/link"))?.to_str(),
        Some("../keep")
    );
    Ok(())
}

#[test]
#[cfg_attr(
    not(feature = "testing"),
    ignore = "needs the `testing` feature (fault injection): cargo test --all-features"
)]
fn full_disk_on_a_storage_node_is_enospc_and_loses_nothing() -> Result<()> {
    if !fuse_available("full_disk_on_a_storage_node_is_enospc_and_loses_nothing") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    let files = write_sized_files(&tc, "before")?;
    // Node 3's disk is "full": every put fails with ENOSPC from then on.
    tc.cluster.kill_storage(2)?;
    tc.cluster
        .start_storage_with_env(2, &[("TORCHFS_FAULTS", "put_no_space")])?;
    tc.cluster.wait_ready(6, Duration::from_secs(30))?;
    // The restarted node listens on new ports: let the mount's map
    // (refreshed every 2 s) learn them, or the mount finds the old ports
    // closed, counts the node as down and writes without it.
    std::thread::sleep(Duration::from_millis(3_000));
    // Every stripe has a fragment on every node (6 nodes, k+m = 6), so any
    // new data reaches node 3 and must fail with ENOSPC, not EIO: at the
    // write, or at the fsync when the full stripe's upload was still in
    // flight when the write returned (as NFS reports it: fsync and close).
    let written = std::fs::File::create(tc.path("after.bin")).and_then(|mut f| {
        f.write_all(&pattern(5 << 20, 9))?;
        f.sync_all()
    });
    let err = written.expect_err("a write to a full disk succeeded");
    let log = std::fs::read_to_string(tc.mount_log())?;
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "{err}; mount log:\n{log}"
    );
    tc.drop_caches();
    check_files(&files).context("files stored before the disk filled")?;
    Ok(())
}
