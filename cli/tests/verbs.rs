//! RDMA verbs end to end: `torchfs` storage nodes serving verbs on an RDMA
//! device's address (soft-RoCE in `ci/rxe-vm.sh`), a real mount picking
//! verbs for them (`--transport auto`), files written and read back
//! byte-identical, and the mount's counters showing the bytes went over
//! verbs. Needs a device: `TORCHFS_VERBS_IP` is an address of its
//! interface. Without one these tests print SKIPPED, except under CI or
//! with `TORCHFS_VERBS_REQUIRED`, where they fail (`ci/test.sh` runs them
//! in the VM).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use common::{pattern, serial, TestCluster};

/// The device's address, or None (SKIPPED) where there is none.
fn verbs_ip(test: &str) -> Option<std::net::IpAddr> {
    if torchfs_rdma::verbs::devices().is_empty() {
        let why = format!("{test}: no RDMA device on this host (run it in ci/rxe-vm.sh)");
        let required = std::env::var_os("TORCHFS_VERBS_REQUIRED").is_some()
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!required, "verbs required (CI): {why}");
        println!("SKIPPED {why}");
        return None;
    }
    if !common::fuse_available(test) {
        return None;
    }
    let ip = std::env::var("TORCHFS_VERBS_IP").expect("TORCHFS_VERBS_IP: the device's address");
    Some(ip.parse().expect("TORCHFS_VERBS_IP is an IP address"))
}

fn stats(mnt: &std::path::Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(mnt.join(".torchfs/stats")).context("read stats")?;
    Ok(serde_json::from_str(&text)?)
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["transport"][name].as_u64().unwrap_or(0)
}

/// Verbs nodes serving verbs: 4 of the 6 (a mixed cluster).
const VERBS_NODES: usize = 4;

#[test]
fn device_verbs_mount_moves_files_over_verbs_and_survives_two_dead_nodes() -> Result<()> {
    let _serial = serial();
    let Some(ip) =
        verbs_ip("device_verbs_mount_moves_files_over_verbs_and_survives_two_dead_nodes")
    else {
        return Ok(());
    };
    let mut tc = TestCluster::start_with(
        |spec| {
            spec.verbs_ip = Some(ip);
            spec.verbs_nodes = Some(VERBS_NODES);
        },
        &["--transport", "auto"],
    )?;
    // A multi-stripe file (4 MiB stripes) and many small files.
    let big = pattern(21 << 20, 7);
    std::fs::write(tc.path("big"), &big)?;
    std::fs::create_dir(tc.path("small"))?;
    let smalls: Vec<Vec<u8>> = (0..64).map(|i| pattern(1000 + i * 997, i as u64)).collect();
    for (i, data) in smalls.iter().enumerate() {
        let mut f = std::fs::File::create(tc.path(&format!("small/{i}")))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    let written = stats(&tc.mnt)?;

    // Read back cold, through a second mount (its own caches).
    let other = tc.mount_another_with("cold", &["--transport", "auto"])?;
    assert!(std::fs::read(other.path("big"))? == big, "big file differs");
    for (i, data) in smalls.iter().enumerate() {
        let got = std::fs::read(other.path(&format!("small/{i}")))?;
        assert!(got == *data, "small/{i} differs");
    }
    let read = stats(&other.mnt)?;
    println!("writer: {}", written["transport"]);
    println!("reader: {}", read["transport"]);
    for (who, s) in [("writer", &written), ("reader", &read)] {
        assert_eq!(counter(s, "verbs_nodes"), VERBS_NODES as u64, "{who}: {s}");
        assert!(
            counter(s, "verbs_bytes") > 0,
            "{who}: nothing over verbs: {s}"
        );
        // The TCP-only nodes still got their share, over TCP.
        assert!(counter(s, "tcp_bytes") > 0, "{who}: nothing over TCP: {s}");
        assert_eq!(counter(s, "verbs_fallbacks"), 0, "{who}: {s}");
    }
    let status = std::process::Command::new(common::exe())
        .args(["status", "--metad", &tc.cluster.metad_addrs().join(",")])
        .arg("--mount")
        .arg(&other.mnt)
        .output()?;
    let status_text = String::from_utf8_lossy(&status.stdout);
    println!("{status_text}");
    assert!(status.status.success(), "torchfs status failed");
    assert!(status_text.contains("verbs="), "status shows no verbs node");
    drop(other);

    // Two verbs nodes killed while a cold read over verbs is under way:
    // the read completes from the survivors (degraded decode),
    // byte-identical. The reader takes the first 4 MiB, waits for the
    // kills, then reads on.
    let degraded = tc.mount_another_with("degraded", &["--transport", "auto"])?;
    let path = degraded.path("big");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::spawn(move || -> Result<Vec<u8>> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut got = vec![0u8; 4 << 20];
        f.read_exact(&mut got)?;
        started_tx.send(()).ok();
        killed_rx.recv().ok();
        f.read_to_end(&mut got)?;
        Ok(got)
    });
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .context("the reader never got its first 4 MiB")?;
    let before = stats(&degraded.mnt)?;
    assert!(
        counter(&before, "verbs_bytes") > 0,
        "the read so far used no verbs: {before}"
    );
    tc.cluster.kill_storage(0)?;
    tc.cluster.kill_storage(1)?;
    let started = Instant::now();
    killed_tx.send(()).ok();
    let got = reader.join().expect("reader thread")?;
    assert!(got == big, "degraded read differs");
    assert!(started.elapsed() < Duration::from_secs(60));
    let s = stats(&degraded.mnt)?;
    println!("degraded reader: {}", s["transport"]);
    assert!(
        counter(&s, "verbs_bytes") > counter(&before, "verbs_bytes"),
        "nothing went over verbs after the kills: {s}"
    );
    Ok(())
}

/// A mount whose buffers cannot be registered (no CAP_IPC_LOCK and a
/// locked-memory limit below its pool) reaches the verbs nodes over TCP:
/// one log line, the fallbacks counted, the bytes right.
#[test]
fn device_verbs_registration_refused_by_memlock_falls_back_to_tcp() -> Result<()> {
    let _serial = serial();
    let Some(ip) = verbs_ip("device_verbs_registration_refused_by_memlock_falls_back_to_tcp")
    else {
        return Ok(());
    };
    let tc = TestCluster::start_with(|spec| spec.verbs_ip = Some(ip), &["--transport", "tcp"])?;
    let data = pattern(9 << 20, 11);
    std::fs::write(tc.path("f"), &data)?;
    let limited = tc.mount_another_wrapped(
        "limited",
        &[
            "prlimit",
            "--memlock=1048576:1048576",
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
        ],
        &["--transport", "auto"],
    )?;
    assert!(std::fs::read(limited.path("f"))? == data, "bytes differ");
    let s = stats(&limited.mnt)?;
    println!("limited reader: {}", s["transport"]);
    assert!(
        counter(&s, "verbs_fallbacks") > 0,
        "no fallback counted: {s}"
    );
    assert_eq!(counter(&s, "verbs_bytes"), 0, "{s}");
    assert!(counter(&s, "tcp_bytes") >= data.len() as u64, "{s}");
    // One log line for the host, saying why; none per node or request.
    let log = std::fs::read_to_string(&limited.log)?;
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("verbs")).collect();
    println!("{}", lines.join("\n"));
    assert_eq!(lines.len(), 1, "verbs log lines:\n{log}");
    assert!(
        lines[0].contains("register") && lines[0].contains("RLIMIT_MEMLOCK"),
        "the line does not say the registration failed:\n{log}"
    );
    Ok(())
}

/// Verbs against TCP inside the same host, same workload: MB/s and the
/// CPU seconds per GB of every torchfs process (mount and nodes). A
/// measurement, printed; `TORCHFS_VERBS_BENCH_MIB` sets the file size.
#[test]
fn device_verbs_against_tcp_same_workload() -> Result<()> {
    let _serial = serial();
    let Some(ip) = verbs_ip("device_verbs_against_tcp_same_workload") else {
        return Ok(());
    };
    let mib: usize = std::env::var("TORCHFS_VERBS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let tc = TestCluster::start_with(|spec| spec.verbs_ip = Some(ip), &["--transport", "tcp"])?;
    let data = pattern(mib << 20, 3);
    let mut rows = Vec::new();
    for kind in ["tcp", "verbs"] {
        let writer = tc.mount_another_with(&format!("w-{kind}"), &["--transport", kind])?;
        let cpu0 = torchfs_cpu_seconds();
        let t0 = Instant::now();
        {
            let mut f = std::fs::File::create(writer.path(&format!("f-{kind}")))?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        let (write_s, write_cpu) = (t0.elapsed().as_secs_f64(), torchfs_cpu_seconds() - cpu0);
        let reader = tc.mount_another_with(&format!("r-{kind}"), &["--transport", kind])?;
        let cpu0 = torchfs_cpu_seconds();
        let t0 = Instant::now();
        let got = std::fs::read(reader.path(&format!("f-{kind}")))?;
        let (read_s, read_cpu) = (t0.elapsed().as_secs_f64(), torchfs_cpu_seconds() - cpu0);
        assert!(got == data, "{kind}: bytes differ");
        let s = stats(&reader.mnt)?;
        let moved = counter(
            &s,
            if kind == "tcp" {
                "tcp_bytes"
            } else {
                "verbs_bytes"
            },
        );
        assert!(
            moved >= data.len() as u64,
            "{kind}: only {moved} bytes over {kind}: {s}"
        );
        let gb = data.len() as f64 / 1e9;
        rows.push(format!(
            "{kind:<6} write {:>7.1} MB/s {:>6.1} CPU-s/GB | read {:>7.1} MB/s {:>6.1} CPU-s/GB",
            data.len() as f64 / 1e6 / write_s,
            write_cpu / gb,
            data.len() as f64 / 1e6 / read_s,
            read_cpu / gb,
        ));
    }
    println!("verbs vs tcp, {mib} MiB file, write+fsync then cold read:");
    for r in rows {
        println!("  {r}");
    }
    Ok(())
}

/// CPU seconds (user + system) of every running torchfs process.
fn torchfs_cpu_seconds() -> f64 {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((name_end, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if !name_end.ends_with("(torchfs") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after ") ".
        let t = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        total += (t(11) + t(12)) / ticks;
    }
    total
}
