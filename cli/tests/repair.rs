//! Repair against real processes (`torchfs repair`): redundancy lost to
//! degraded writes comes back, so m *other* nodes can then fail; and a
//! scrub finds flipped bytes nobody read and rebuilds them, after which a
//! read needs no degraded decode.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use torchfs_cli::local_cluster::ClusterSpec;

/// Runs `torchfs repair` (with `extra` flags); its summary line.
fn repair(tc: &TestCluster, extra: &[&str]) -> Result<String> {
    let out = Command::new(exe())
        .args(["repair", "--metad", &tc.cluster.metad_addrs().join(",")])
        .args(extra)
        .output()
        .context("run torchfs repair")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    if !out.status.success() {
        bail!("torchfs repair failed ({}):\n{stdout}{stderr}", out.status);
    }
    Ok(stdout)
}

/// The number before `word` in a repair summary (`3 rebuilt`).
fn count_before(summary: &str, word: &str) -> u64 {
    let words: Vec<&str> = summary.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches(',') == word)
        .and_then(|w| w[0].trim_start_matches('(').parse().ok())
        .unwrap_or(0)
}

fn on(mnt: &Path, files: &[(PathBuf, Vec<u8>)], root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|(p, d)| (mnt.join(p.strip_prefix(root).unwrap_or(p)), d.clone()))
        .collect()
}

/// Nodes 1 and 4 miss the writes made while they were down; once back,
/// `torchfs repair` rebuilds what they missed, and then nodes 2 and 5 can
/// die: every file still reads byte-identical. Without the repair those
/// stripes would have only 2 of their 6 fragments left.
#[test]
fn repair_restores_redundancy_so_two_other_nodes_can_fail() -> Result<()> {
    if !fuse_available("repair_restores_redundancy_so_two_other_nodes_can_fail") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    tc.cluster.kill_storage(0)?;
    tc.cluster.kill_storage(3)?;
    let mut files = write_sized_files(&tc, "degraded").context("write with two nodes down")?;
    // TORCHFS_REPAIR_TEST_MIB sizes the big file (a time-to-repair run).
    let big_mib: usize = std::env::var("TORCHFS_REPAIR_TEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let big = pattern(big_mib << 20, 5);
    std::fs::write(tc.path("big.bin"), &big)?;
    files.push((tc.path("big.bin"), big));
    tc.cluster.start_storage(0)?;
    tc.cluster.start_storage(3)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;

    // Unbounded (the default bound is 200 MB/s of repair traffic). The
    // repair service may have put some fragments back already (the writes
    // reported what they left out): between them, something was rebuilt.
    let summary = repair(&tc, &["--bandwidth-mb-s", "0"])?;
    let by_service = tc
        .cluster
        .status(Duration::from_secs(5))?
        .repair
        .bad_rebuilt;
    let rebuilt = count_before(&summary, "rebuilt") + by_service;
    assert!(rebuilt > 0, "nothing rebuilt: {summary}");
    // A second pass finds nothing left to do.
    let again = repair(&tc, &[])?;
    assert_eq!(count_before(&again, "rebuilt"), 0, "{again}");

    tc.cluster.kill_storage(1)?;
    tc.cluster.kill_storage(4)?;
    let cold = tc.mount_another("cold")?;
    check_files(&on(&cold.mnt, &files, &tc.mnt))
        .context("read with nodes 2 and 5 down after the repair")?;
    Ok(())
}

/// Bytes flipped in stored data fragments nobody reads: `torchfs repair
/// --scrub` finds and rebuilds each, and a read afterwards logs no
/// checksum mismatch and no degraded read.
#[test]
fn scrub_finds_flipped_bytes_nobody_read_and_rebuilds_them() -> Result<()> {
    if !fuse_available("scrub_finds_flipped_bytes_nobody_read_and_rebuilds_them") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start()?;
    let (files, data_frags) = flipped_data_fragments(&tc)?;
    // Repair without --scrub checks one chunk: the flips are past it.
    let quick = repair(&tc, &[])?;
    assert_eq!(count_before(&quick, "rebuilt"), 0, "{quick}");
    let scrub = repair(&tc, &["--scrub"])?;
    assert_eq!(
        count_before(&scrub, "rebuilt"),
        data_frags.len() as u64,
        "{scrub}"
    );
    // Read through a fresh mount: right bytes, with no degraded decode.
    read_without_decode(&tc, &files)
}

/// Three files of one unit or less past the fragment log's 256 KiB (each a
/// data fragment 0 file plus two parity files), with a byte flipped in
/// each data fragment behind the storage nodes' back, past its first
/// chunk. The files (as written) and the flipped fragments' paths.
#[allow(clippy::type_complexity)]
fn flipped_data_fragments(tc: &TestCluster) -> Result<(Vec<(PathBuf, Vec<u8>)>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    for i in 0..3 {
        let data = pattern(300_000 + i * 1000, 40 + i as u64);
        std::fs::write(tc.path(&format!("f{i}.bin")), &data)?;
        files.push((tc.path(&format!("f{i}.bin")), data));
    }
    let data_frags: Vec<PathBuf> = (0..6)
        .flat_map(|i| fragment_files(&tc.cluster.storage_dir(i)))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with("-00.frag"))
        })
        .collect();
    if data_frags.len() != files.len() {
        bail!(
            "expected {} data fragment files, found {data_frags:?}",
            files.len()
        );
    }
    for path in &data_frags {
        let mut bytes = std::fs::read(path)?;
        bytes[4096 + 200_000] ^= 0x5a;
        std::fs::write(path, &bytes)?;
    }
    Ok((files, data_frags))
}

/// Two fragment files of one size in one shard directory, none of them
/// in `exclude`: the first's bytes are to be copied onto the second.
fn same_shard_pair(tc: &TestCluster, exclude: &[PathBuf]) -> Result<(PathBuf, PathBuf)> {
    for node in 0..6 {
        let mut by_dir: std::collections::BTreeMap<(PathBuf, u64), Vec<PathBuf>> =
            std::collections::BTreeMap::new();
        for path in fragment_files(&tc.cluster.storage_dir(node)) {
            if exclude.contains(&path) {
                continue;
            }
            let (Some(dir), Ok(meta)) = (path.parent(), std::fs::metadata(&path)) else {
                continue;
            };
            by_dir
                .entry((dir.to_path_buf(), meta.len()))
                .or_default()
                .push(path);
        }
        if let Some(pair) = by_dir.into_values().find(|paths| paths.len() >= 2) {
            return Ok((pair[0].clone(), pair[1].clone()));
        }
    }
    bail!("no two fragment files of one size share a shard directory")
}

/// Reads `files` through a fresh mount: right bytes, and its log shows no
/// degraded decode and no checksum mismatch.
fn read_without_decode(tc: &TestCluster, files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let fresh = tc.mount_another("fresh")?;
    check_files(&on(&fresh.mnt, files, &tc.mnt))?;
    let log = std::fs::read_to_string(&fresh.log)?;
    if log.contains("degraded read") || log.to_lowercase().contains("crc32c mismatch") {
        bail!("reads after the scrub still decoded:\n{log}");
    }
    Ok(())
}

/// The storage nodes' own background scrub: bytes flipped in fragments
/// nobody reads are found, the fragments dropped and reported, and the
/// leader's repair service rebuilds them (counted in `torchfs status`); a
/// read afterwards needs no degraded decode.
#[test]
fn background_scrub_finds_flipped_bytes_and_repair_rebuilds_them() -> Result<()> {
    if !fuse_available("background_scrub_finds_flipped_bytes_and_repair_rebuilds_them") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start_with(|spec| spec.scrub_interval = Duration::from_secs(1), &[])?;
    let (mut files, data_frags) = flipped_data_fragments(&tc)?;
    // A misdirected fragment: another fragment's bytes, with valid CRCs,
    // under a key of the same size in the same shard.
    std::fs::create_dir_all(tc.path("more"))?;
    for i in 0..14u64 {
        let data = pattern(300_000, 200 + i);
        std::fs::write(tc.path(&format!("more/m{i}.bin")), &data)?;
        files.push((tc.path(&format!("more/m{i}.bin")), data));
    }
    let (from, onto) = same_shard_pair(&tc, &data_frags)?;
    std::fs::copy(&from, &onto)?;
    let misdirected = std::fs::read(&from)?;
    // The flipped fragments are found by the scrub; the misdirected one by
    // the scrub or by the service's first pass (each node refuses a
    // fragment whose header names another key), whichever reaches it first.
    let flipped = data_frags.len() as u64;
    let r = wait_for_repair(
        &tc,
        "the scrub found or the repair rebuilt too little",
        |r| {
            r.bad_rebuilt >= flipped
                && std::fs::read(&onto).map_or(true, |bytes| bytes != misdirected)
        },
    )?;
    assert!(r.bad_reported >= flipped, "{r:?}");
    let out = Command::new(exe())
        .args(["status", "--metad", &tc.cluster.metad_addrs().join(",")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fragments corrupt (scrubs) or left out"),
        "{text}"
    );
    read_without_decode(&tc, &files)
}

/// A node restarted (it listens on new ports) just before a write: the
/// mount's map still has the old ports, so the first upload of each stripe
/// leaves that node's fragments out; a newer map places them, the stripe
/// is stored again whole, and a repair afterwards finds nothing to do.
#[test]
fn writes_right_after_a_node_restart_are_stored_whole() -> Result<()> {
    if !fuse_available("writes_right_after_a_node_restart_are_stored_whole") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    // The mount has read its map; the node then moves.
    std::fs::write(tc.path("first"), b"first")?;
    tc.cluster.kill_storage(2)?;
    tc.cluster.start_storage(2)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    let files = write_sized_files(&tc, "after-restart")?;
    let summary = repair(&tc, &["--bandwidth-mb-s", "0"])?;
    assert_eq!(count_before(&summary, "rebuilt"), 0, "{summary}");
    tc.drop_caches();
    check_files(&files)?;
    Ok(())
}

/// Writes made while two nodes were down (and not yet replaced) are
/// reported for repair as they are stored; once the nodes are back the
/// repair service puts the fragments they missed there by itself (no
/// `torchfs repair`), so two *other* nodes can then fail.
#[test]
fn fragments_degraded_writes_left_out_are_put_back_when_their_nodes_return() -> Result<()> {
    if !fuse_available("fragments_degraded_writes_left_out_are_put_back_when_their_nodes_return") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    tc.cluster.kill_storage(0)?;
    tc.cluster.kill_storage(3)?;
    let files = write_sized_files(&tc, "degraded").context("write with two nodes down")?;
    let reported = tc
        .cluster
        .status(Duration::from_secs(5))?
        .repair
        .bad_reported;
    tc.cluster.start_storage(0)?;
    tc.cluster.start_storage(3)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    let what = format!("left-out fragments not put back (reported {reported} while down)");
    wait_for_repair(&tc, &what, |r| {
        r.bad_reported > 0 && r.bad_rebuilt >= r.bad_reported
    })?;
    tc.cluster.kill_storage(1)?;
    tc.cluster.kill_storage(4)?;
    let cold = tc.mount_another("cold")?;
    check_files(&on(&cold.mnt, &files, &tc.mnt))
        .context("read with nodes 2 and 5 down after the service's repair")?;
    Ok(())
}

/// Waits (90 s at most) until the repair service's report satisfies
/// `done`; fails naming `what` and the last report.
fn wait_for_repair(
    tc: &TestCluster,
    what: &str,
    done: impl Fn(&torchfs_proto::meta::RepairProgress) -> bool,
) -> Result<torchfs_proto::meta::RepairProgress> {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = tc.cluster.status(Duration::from_secs(5))?.repair;
        if done(&r) {
            return Ok(r);
        }
        if std::time::Instant::now() > deadline {
            bail!("{what}: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A cluster of `nodes` storage nodes (the placement groups use 6) whose
/// repair service replaces a node down for 2 s, `edit` applied to its
/// spec; with the ids of the nodes in placement groups.
fn cluster_with_spares(
    nodes: usize,
    edit: impl FnOnce(&mut ClusterSpec),
) -> Result<(TestCluster, Vec<u64>)> {
    let mut tc = TestCluster::start_with(
        |spec| {
            spec.storage_nodes = nodes;
            spec.repair_after = Duration::from_secs(2);
            edit(spec);
        },
        &[],
    )?;
    let status = tc.cluster.wait_ready(nodes, Duration::from_secs(60))?;
    let in_groups = placed(&status);
    Ok((tc, in_groups))
}

/// Node ids in a placement group, in id order.
fn placed(status: &torchfs_proto::meta::ClusterStatus) -> Vec<u64> {
    let mut ids: Vec<u64> = status
        .map
        .groups
        .iter()
        .flat_map(|g| g.nodes.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Two storage nodes die for good. After `--repair-after`, the leader's
/// repair service has metad give their placement slots to the two nodes
/// that held none, and rebuilds their fragments there; then two *other*
/// nodes die and every file, written before the loss and while the nodes
/// were down, still reads byte-identical through a fresh mount. Without
/// the repair those stripes would have 2 of 6 fragments left.
#[test]
fn nodes_lost_for_good_are_replaced_so_two_more_can_fail() -> Result<()> {
    if !fuse_available("nodes_lost_for_good_are_replaced_so_two_more_can_fail") {
        return Ok(());
    }
    let _serial = serial();
    let (mut tc, in_groups) = cluster_with_spares(8, |_| {})?;
    assert_eq!(in_groups.len(), 6, "groups over the first six nodes");
    let mut files = write_sized_files(&tc, "before").context("write with all nodes up")?;
    let big = pattern(5 << 20, 11);
    std::fs::write(tc.path("big.bin"), &big)?;
    files.push((tc.path("big.bin"), big));

    let lost = [in_groups[0], in_groups[3]];
    for id in lost {
        tc.cluster.kill_storage(id as usize - 1)?;
    }
    files.extend(write_sized_files(&tc, "while-down").context("write with two nodes down")?);

    // Replaced, and a pass over the moved slots has finished.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let repaired = loop {
        let s = tc.cluster.status(Duration::from_secs(5))?;
        let replaced = lost.iter().all(|id| !placed(&s).contains(id));
        if replaced && s.repair.done && s.repair.reason.starts_with("placement changed") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "no finished repair pass after replacing {lost:?}: {:?}",
                s.repair
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        repaired.repair.fragments_rebuilt > 0,
        "{:?}",
        repaired.repair
    );
    assert_eq!(repaired.repair.fragments_failed, 0, "{:?}", repaired.repair);
    let mut replaced = repaired.repair.nodes_replaced.clone();
    replaced.sort_unstable();
    assert_eq!(replaced, lost);
    // `torchfs status` says so.
    let out = Command::new(exe())
        .args(["status", "--metad", &tc.cluster.metad_addrs().join(",")])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("repair: pass") && text.contains("nodes replaced"),
        "{text}"
    );

    let now_placed = placed(&repaired);
    let others: Vec<u64> = now_placed
        .iter()
        .copied()
        .filter(|id| !lost.contains(id))
        .take(2)
        .collect();
    for id in &others {
        tc.cluster.kill_storage(*id as usize - 1)?;
    }
    let cold = tc.mount_another("cold")?;
    check_files(&on(&cold.mnt, &files, &tc.mnt))
        .with_context(|| format!("read with {lost:?} replaced and {others:?} down"))?;
    Ok(())
}

/// Orphan collection: a node that comes back after it was replaced holds
/// fragments no placement names any more; they are deleted (two sweeps a
/// grace period apart), while the fragments of a file still open for
/// writing, uploaded but not yet committed, are kept, and every file
/// reads back whole.
#[test]
fn a_replaced_node_s_fragments_are_collected_but_uploads_in_flight_are_kept() -> Result<()> {
    if !fuse_available("a_replaced_node_s_fragments_are_collected_but_uploads_in_flight_are_kept") {
        return Ok(());
    }
    let _serial = serial();
    let (mut tc, in_groups) =
        cluster_with_spares(7, |spec| spec.orphan_grace = Duration::from_secs(1))?;
    let mut files = write_sized_files(&tc, "before")?;
    let lost = in_groups[0];
    let lost_index = lost as usize - 1;
    let stale = fragment_files(&tc.cluster.storage_dir(lost_index));
    assert!(!stale.is_empty(), "node {lost} holds no fragment files");
    tc.cluster.kill_storage(lost_index)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let s = tc.cluster.status(Duration::from_secs(5))?;
        if !placed(&s).contains(&lost) && s.repair.done && s.repair.reason.starts_with("placement")
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("node {lost} not replaced and repaired: {:?}", s.repair);
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // A file held open for writing across several sweeps: its full
    // stripes are uploaded at once but committed only at close.
    let open_path = tc.path("open-while-sweeping.bin");
    let open_data = pattern(9 << 20, 77);
    let mut open_file = std::fs::File::create(&open_path)?;
    std::io::Write::write_all(&mut open_file, &open_data)?;

    tc.cluster.start_storage(lost_index)?;
    tc.cluster.wait_ready(7, Duration::from_secs(60))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<_> = stale.iter().filter(|p| p.exists()).collect();
        let s = tc.cluster.status(Duration::from_secs(5))?;
        if left.is_empty() && s.repair.orphans_deleted > 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "stale fragments of node {lost} left: {left:?}; {:?}",
                s.repair
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Two more sweeps with the file still open.
    std::thread::sleep(Duration::from_secs(3));
    drop(open_file);
    files.push((open_path, open_data));
    let cold = tc.mount_another("cold")?;
    check_files(&on(&cold.mnt, &files, &tc.mnt))
}

/// Two `torchfs repair` passes at once over the same stripes (and the
/// repair service, which the writes' reports wake): each rebuild is the
/// same bytes whoever puts it, stored atomically; both passes end well and
/// redundancy is back, so two other nodes can fail.
#[test]
fn two_repairs_of_the_same_stripes_at_once_lose_nothing() -> Result<()> {
    if !fuse_available("two_repairs_of_the_same_stripes_at_once_lose_nothing") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    tc.cluster.kill_storage(0)?;
    tc.cluster.kill_storage(3)?;
    let mut files = write_sized_files(&tc, "degraded")?;
    let big = pattern(9 << 20, 31);
    std::fs::write(tc.path("big.bin"), &big)?;
    files.push((tc.path("big.bin"), big));
    tc.cluster.start_storage(0)?;
    tc.cluster.start_storage(3)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    let metad = tc.cluster.metad_addrs().join(",");
    let spawn = || {
        Command::new(exe())
            .args(["repair", "--metad", &metad, "--bandwidth-mb-s", "0"])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join(), b.join())
    });
    for out in [a, b] {
        let out = out
            .map_err(|_| anyhow::anyhow!("a repair thread panicked"))?
            .context("run torchfs repair")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
    }
    // Nothing left to do afterwards.
    let again = repair(&tc, &[])?;
    assert_eq!(count_before(&again, "rebuilt"), 0, "{again}");
    tc.cluster.kill_storage(1)?;
    tc.cluster.kill_storage(4)?;
    let cold = tc.mount_another("cold")?;
    check_files(&on(&cold.mnt, &files, &tc.mnt))
}

/// The node a lost one's slots go to is full: every rebuilt fragment is
/// refused (ENOSPC), counted as failed and logged, nothing is lost (reads
/// decode around the lost node); once the node has room (restarted
/// without the fault) a later pass of the service rebuilds them.
#[test]
fn a_repair_target_that_is_full_fails_cleanly_and_is_retried() -> Result<()> {
    if !fuse_available("a_repair_target_that_is_full_fails_cleanly_and_is_retried") {
        return Ok(());
    }
    let _serial = serial();
    let (mut tc, in_groups) = cluster_with_spares(7, |_| {})?;
    let spare = (1..=7u64)
        .find(|id| !in_groups.contains(id))
        .context("a node in no placement group")?;
    let files = write_sized_files(&tc, "before")?;
    tc.cluster.kill_storage(spare as usize - 1)?;
    tc.cluster
        .start_storage_with_env(spare as usize - 1, &[("TORCHFS_FAULTS", "put_no_space")])?;
    tc.cluster.wait_ready(7, Duration::from_secs(60))?;
    let lost = in_groups[0];
    tc.cluster.kill_storage(lost as usize - 1)?;
    let failed = wait_for_repair(&tc, "a pass that failed on the full node", |r| {
        r.done && r.reason.starts_with("placement") && r.fragments_failed > 0
    })?;
    assert_eq!(failed.fragments_rebuilt, 0, "{failed:?}");
    let cold = tc.mount_another("while-full")?;
    check_files(&on(&cold.mnt, &files, &tc.mnt)).context("read while the target is full")?;
    drop(cold);
    // Room again: a later pass rebuilds what failed.
    tc.cluster.kill_storage(spare as usize - 1)?;
    tc.cluster.start_storage(spare as usize - 1)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    wait_for_repair(&tc, "a retried pass that rebuilt everything", |r| {
        r.done && r.fragments_failed == 0 && r.fragments_rebuilt > 0
    })?;
    let log = std::fs::read_to_string(tc.cluster.spec().dir.join("logs").join("metad-1.log"))
        .unwrap_or_default()
        + &std::fs::read_to_string(tc.cluster.spec().dir.join("logs").join("metad-2.log"))
            .unwrap_or_default()
        + &std::fs::read_to_string(tc.cluster.spec().dir.join("logs").join("metad-3.log"))
            .unwrap_or_default();
    assert!(
        log.contains("rebuilt but not stored"),
        "no log line for the refused rebuilds"
    );
    Ok(())
}
