//! A seeded chaos run against real processes: checkpoint-style writes
//! (write, fsync) and DataLoader-style reads through a mount whose
//! fragment requests suffer injected network faults (drops, lost replies,
//! delays, resets, partitions: `TORCHFS_NET_FAULTS`), on a cluster where
//! one storage node's disk fails now and then (EIO, ENOSPC, torn writes,
//! flipped bits on read, latency: `TORCHFS_DISK_FAULTS`), while a schedule
//! drawn from the same seed kills and restarts storage nodes (at most m = 2
//! down at once), kills the metad leader once, and jumps the metad voters'
//! wall clock forward past the client-session expiry and later back
//! (`TORCHFS_CLOCK_FILE`). No acknowledged byte may be lost and no read
//! may return wrong bytes; writes and reads that fail are allowed and
//! counted. The seed is printed; `TORCHFS_CHAOS_SEED=N` replays a run,
//! `TORCHFS_CHAOS_ROUNDS` sizes it (CI: 12).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;

/// Longer than metad's clock-offset reread interval (100 ms).
const CLOCK_REREAD: Duration = Duration::from_millis(300);

/// Deterministic draws from the seed (splitmix64).
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
#[cfg_attr(
    not(feature = "testing"),
    ignore = "needs the `testing` feature (fault injection): cargo test --all-features"
)]
fn chaos_seeded_kills_and_network_faults_lose_no_acknowledged_byte() -> Result<()> {
    if !fuse_available("chaos_seeded_kills_and_network_faults_lose_no_acknowledged_byte") {
        return Ok(());
    }
    let _serial = serial();
    let seed: u64 = match std::env::var("TORCHFS_CHAOS_SEED") {
        Ok(s) => s.parse().context("TORCHFS_CHAOS_SEED is a number")?,
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let rounds: u64 = std::env::var("TORCHFS_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(12);
    println!("chaos seed {seed} (replay: TORCHFS_CHAOS_SEED={seed}), {rounds} rounds");
    let t0 = Instant::now();
    let mut draws = Draws(seed);
    // One storage node with a failing disk, and the voters' clock offset.
    let faulty = draws.below(6) as usize;
    let disk_faults =
        format!("seed={seed},eio=0.01,enospc=0.01,torn=0.01,bitflip=0.02,delay=0.05,delay_ms=5");
    let mut clock_file = PathBuf::new();
    let (forward_round, back_round) = (
        draws.below(rounds / 2),
        rounds / 2 + draws.below(rounds - rounds / 2),
    );
    // Past the 10-minute client-session expiry, then to before the start.
    let (forward_s, back_s) = (900 + draws.below(3600), draws.below(3600));
    let mut tc = TestCluster::start_with(
        |spec| {
            clock_file = spec.dir.join("clock-offset");
            let env = |k: &str, v: String| vec![(k.to_string(), v)];
            spec.env.insert(
                format!("storage-{}", faulty + 1),
                env("TORCHFS_DISK_FAULTS", disk_faults.clone()),
            );
            for id in 1..=spec.metad_ports.len() {
                let path = clock_file.display().to_string();
                spec.env
                    .insert(format!("metad-{id}"), env("TORCHFS_CLOCK_FILE", path));
            }
        },
        &[],
    )?;
    println!(
        "storage node {} runs with TORCHFS_DISK_FAULTS={disk_faults}; the voters' clock \
         jumps +{forward_s} s at round {forward_round} and to -{back_s} s at round {back_round}",
        faulty + 1
    );

    // The dataset, written through a healthy mount.
    std::fs::create_dir(tc.path("data"))?;
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..24 {
        let name = format!("data/{i}");
        let bytes = pattern(10_000 + draws.below(300_000) as usize, draws.next());
        std::fs::write(tc.path(&name), &bytes)?;
        acked.push((name, bytes));
    }
    let faults = format!(
        "TORCHFS_NET_FAULTS=seed={seed},drop=10,delay=100,delay_ms=20,reset=10,partition=2,partition_requests=8"
    );
    let chaos = tc.mount_another_wrapped("chaos", &["env", &faults], &[])?;
    let on_chaos = |name: &str| -> PathBuf { chaos.path(name) };
    std::fs::create_dir(on_chaos("ckpt"))?;

    let nodes = tc.cluster.spec().storage_nodes;
    let mut down: Vec<usize> = Vec::new();
    let mut leader_killed: Option<usize> = None;
    let (mut write_errors, mut read_errors, mut reads) = (0, 0, 0);
    for round in 0..rounds {
        let mut action = match draws.below(5) {
            0 | 1 if down.len() < 2 => {
                let up: Vec<usize> = (0..nodes).filter(|n| !down.contains(n)).collect();
                let n = up[draws.below(up.len() as u64) as usize];
                tc.cluster.kill_storage(n)?;
                down.push(n);
                format!("kill storage node {}", n + 1)
            }
            2 if !down.is_empty() => {
                let n = down.remove(draws.below(down.len() as u64) as usize);
                tc.cluster.start_storage(n)?;
                format!("restart storage node {}", n + 1)
            }
            _ => "nothing".to_string(),
        };
        // Each voter reads the offset again within 100 ms: past that, this
        // round's metad writes are stamped with the jumped clock.
        if round == forward_round {
            std::fs::write(&clock_file, format!("+{forward_s}"))?;
            std::thread::sleep(CLOCK_REREAD);
            action += &format!(", the voters' clock jumps +{forward_s} s");
        }
        if round == back_round {
            std::fs::write(&clock_file, format!("-{back_s}"))?;
            std::thread::sleep(CLOCK_REREAD);
            action += &format!(", the voters' clock jumps back to -{back_s} s");
        }
        if round == rounds / 2 {
            let status = tc.cluster.status(Duration::from_secs(10))?;
            if let Some(id) = status.leader {
                let index = id as usize - 1;
                tc.cluster.kill_metad(index)?;
                leader_killed = Some(index);
                action += &format!(", kill the metad leader (voter {id})");
            }
        }
        // A checkpoint: written, fsync'd; acknowledged only if both pass.
        let name = format!("ckpt/{round}");
        let bytes = pattern(100_000 + draws.below(6 << 20) as usize, draws.next());
        let written = std::fs::File::create(on_chaos(&name)).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        match written {
            Ok(()) => acked.push((name.clone(), bytes)),
            Err(e) => {
                write_errors += 1;
                println!("round {round}: write of {name} failed (allowed, not acknowledged): {e}");
            }
        }
        // DataLoader-style reads of acknowledged files.
        for _ in 0..4 {
            let (name, want) = &acked[draws.below(acked.len() as u64) as usize];
            reads += 1;
            match std::fs::read(on_chaos(name)) {
                Ok(got) if got == *want => {}
                Ok(got) => bail!(
                    "chaos seed {seed}, round {round}: {name} read {} bytes, not the {} \
                     acknowledged (replay: TORCHFS_CHAOS_SEED={seed})",
                    got.len(),
                    want.len()
                ),
                Err(e) => {
                    read_errors += 1;
                    println!("round {round}: read of {name} failed (allowed): {e}");
                }
            }
        }
        println!("round {round}: {action}; down {down:?}");
        // The killed leader comes back two rounds later.
        if round == rounds / 2 + 2 {
            if let Some(index) = leader_killed.take() {
                tc.cluster.start_metad(index)?;
                println!("round {round}: restart metad voter {}", index + 1);
            }
        }
    }
    // The faults were on: the mount said so, and met them.
    let log = std::fs::read_to_string(&chaos.log)?;
    if !log.contains("network fault injection on") {
        bail!("the chaos mount ran without network faults:\n{log}");
    }
    let degraded_reads = log.matches("degraded read").count();
    let degraded_writes = log.matches("stored without").count();
    // The forward jump expired the mount's metad session; it started
    // another and went on.
    let sessions_renewed = log.matches("metad forgot client session").count();
    if sessions_renewed == 0 {
        bail!("chaos seed {seed}: the clock jumped +{forward_s} s but no session expired:\n{log}");
    }
    drop(chaos);
    let logs = tc.dir.path().join("logs");
    let storage_log = std::fs::read_to_string(logs.join(format!("storage-{}.log", faulty + 1)))?;
    if !storage_log.contains("disk fault injection on") {
        bail!(
            "storage node {} ran without disk faults:\n{storage_log}",
            faulty + 1
        );
    }
    let mut jumps = 0;
    for id in 1..=tc.cluster.spec().metad_ports.len() {
        let metad_log = std::fs::read_to_string(logs.join(format!("metad-{id}.log")))?;
        jumps += metad_log.matches("clock jumps by").count();
    }
    if jumps == 0 {
        bail!("no metad voter saw its clock jump");
    }

    // Healed: the disk and the clock mended, every node back; every
    // acknowledged file, byte-identical, from a fresh mount.
    std::fs::write(&clock_file, "0")?;
    tc.cluster
        .set_env(&format!("storage-{}", faulty + 1), Vec::new());
    if !down.contains(&faulty) {
        tc.cluster.kill_storage(faulty)?;
        down.push(faulty);
    }
    for n in down.drain(..) {
        tc.cluster.start_storage(n)?;
    }
    if let Some(index) = leader_killed {
        tc.cluster.start_metad(index)?;
    }
    tc.cluster.wait_ready(nodes, Duration::from_secs(60))?;
    let check = tc.mount_another("check")?;
    for (name, want) in &acked {
        let got = std::fs::read(check.path(name))
            .with_context(|| format!("chaos seed {seed}: read {name} after healing"))?;
        if got != *want {
            bail!(
                "chaos seed {seed}: {name} lost acknowledged bytes ({} read, {} written; \
                 replay: TORCHFS_CHAOS_SEED={seed})",
                got.len(),
                want.len()
            );
        }
    }
    println!(
        "chaos seed {seed}: {rounds} rounds in {:.0?}: {} files acknowledged and read back \
         byte-identical; {write_errors} writes and {read_errors} of {reads} reads failed \
         (allowed); 0 wrong; the mount logged {degraded_reads} degraded reads and \
         {degraded_writes} degraded stripe writes; {jumps} clock jumps seen by the voters, \
         {sessions_renewed} metad sessions renewed",
        t0.elapsed(),
        acked.len()
    );
    Ok(())
}
