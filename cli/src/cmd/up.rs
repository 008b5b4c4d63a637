//! `torchfs up`: the embedded default. A whole cluster on loopback (metad
//! voters and storage nodes as child processes, data under one directory)
//! and a FUSE mount of it, in the foreground, with a short demonstration.
//! Ctrl-C unmounts and stops everything.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use torchfs_cli::local_cluster::{ClusterSpec, LocalCluster};
use torchfs_client::fuse::FuseOptions;

#[derive(Args)]
#[command(args_override_self = true)]
pub struct UpArgs {
    /// Where the cluster keeps its data and logs.
    #[arg(long, default_value = "/tmp/torchfs")]
    pub dir: PathBuf,
    /// Where to mount (default: <dir>/mnt, created if missing).
    #[arg(long)]
    pub mount: Option<PathBuf>,
    /// metad voters listen on base-port+1.., storage nodes on base-port+10...
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
    /// Number of metad voters (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub voters: usize,
    /// Number of storage nodes (at least k+m = 6).
    #[arg(long, default_value_t = 6)]
    pub storage_nodes: usize,
    /// Executors (shards) per storage node.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// Storage nodes serve RDMA verbs on this address of an RDMA device's
    /// interface (soft-RoCE cannot use loopback); the mount then picks
    /// verbs for them under --transport auto.
    #[arg(long)]
    pub verbs_ip: Option<std::net::IpAddr>,
    /// With --verbs-ip: only the first N storage nodes serve verbs, the
    /// others TCP only (a mixed cluster).
    #[arg(long)]
    pub verbs_nodes: Option<usize>,
    /// Storage nodes down this long are replaced and their fragments
    /// rebuilt on the others ("10m", "90s"; 0: never; see `torchfs metad`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub repair_after: std::time::Duration,
    /// Skip the demonstration.
    #[arg(long)]
    pub no_demo: bool,
    /// Stop everything after the demonstration instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_after_demo: bool,
    #[command(flatten)]
    pub access: super::mount::AccessArgs,
    #[command(flatten)]
    pub cache: super::mount::CacheArgs,
    /// TOML file with defaults for these flags (table [up]).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: UpArgs) -> Result<()> {
    if ![1, 3, 5].contains(&args.voters) {
        bail!("--voters {}: use 1, 3 or 5", args.voters);
    }
    if args.storage_nodes < 6 {
        bail!(
            "--storage-nodes {}: k+m = 6 nodes are needed",
            args.storage_nodes
        );
    }
    if args.shards == 0 || args.shards > 16 {
        bail!("--shards {}: use 1 to 16", args.shards);
    }
    let storage_base = u32::from(args.base_port) + 10;
    if storage_base + 16 * args.storage_nodes as u32 > u32::from(u16::MAX) {
        bail!(
            "--base-port {} leaves no room for the storage ports",
            args.base_port
        );
    }
    let mountpoint = args.mount.clone().unwrap_or_else(|| args.dir.join("mnt"));
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("create data dir {} (is it writable?)", args.dir.display()))?;
    if !mountpoint.exists() {
        std::fs::create_dir_all(&mountpoint)
            .with_context(|| format!("create mount point {}", mountpoint.display()))?;
    }
    super::mount::check_mountpoint(&mountpoint)?;
    let metad_ports: Vec<u16> = (1..=args.voters as u16)
        .map(|i| args.base_port + i)
        .collect();
    for port in metad_ports.iter().copied() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} is in use (another `torchfs up`?): stop it, or pick other ports with --base-port"
            );
        }
    }
    let spec = ClusterSpec {
        exe: std::env::current_exe().context("find the torchfs binary")?,
        dir: args.dir.clone(),
        metad_ports,
        storage_nodes: args.storage_nodes,
        storage_base_port: Some(storage_base as u16),
        shards_per_node: args.shards,
        node_down_after_ms: 5_000,
        io_memory_bytes_per_shard: torchfs_cli::local_cluster::shared_io_memory_bytes(
            args.storage_nodes * args.shards,
        ),
        verbs_ip: args.verbs_ip,
        verbs_nodes: args.verbs_nodes,
        repair_after: args.repair_after,
        scrub_interval: Duration::from_secs(24 * 3600),
        orphan_grace: Duration::from_secs(600),
        env: Default::default(),
    };
    let metad = spec.metad_addrs();
    println!(
        "torchfs: starting {} metad voters and {} storage nodes under {}",
        args.voters,
        args.storage_nodes,
        args.dir.display()
    );
    let mut cluster = LocalCluster::start(spec)?;
    let status = cluster.wait_ready(args.storage_nodes, Duration::from_secs(60))?;
    print!("{}", super::status::render(&status));
    let mounted = super::mount::mount(
        &args.cache.client_config(&metad),
        &mountpoint,
        &FuseOptions {
            allow_other: args.access.allow_other(),
            ..FuseOptions::default()
        },
    )?;
    super::mount::adopt_new_root(&mounted)?;
    println!("torchfs: mounted on {}", mountpoint.display());
    if !args.no_demo {
        if let Err(e) = demo(&mountpoint) {
            let _ = mounted.unmount();
            return Err(e.context("demonstration failed"));
        }
    }
    println!();
    println!("torchfs is up.");
    println!("  mount:   {}", mountpoint.display());
    println!(
        "  data:    {} (logs in {}/logs)",
        args.dir.display(),
        args.dir.display()
    );
    println!("  status:  torchfs status --metad {}", metad.join(","));
    println!("  stop:    Ctrl-C (unmounts and stops every process)");
    if !args.exit_after_demo {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start runtime")?;
        runtime.block_on(async {
            tokio::select! {
                _ = super::stop_signal() => {}
                r = watch(&mut cluster) => {
                    if let Err(e) = r {
                        eprintln!("torchfs: warning: {e:#}");
                        super::stop_signal().await;
                    }
                }
            }
        });
    }
    println!(
        "torchfs: unmounting {} and stopping the cluster",
        mountpoint.display()
    );
    mounted
        .unmount()
        .with_context(|| format!("unmount {}", mountpoint.display()))?;
    cluster.stop();
    Ok(())
}

/// Reports (once) a process of the cluster that died on its own.
async fn watch(cluster: &mut LocalCluster) -> Result<()> {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.check_children()?;
    }
}

/// Writes, reads back and checks a few files through the mount.
fn demo(mnt: &Path) -> Result<()> {
    println!();
    println!("demonstration (ordinary file I/O through the mount):");
    let dir = mnt.join("demo");
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("mkdir {}", dir.display())),
    }
    let hello = dir.join("hello.txt");
    std::fs::write(&hello, b"hello from torchfs\n")
        .with_context(|| format!("write {}", hello.display()))?;
    let text =
        std::fs::read_to_string(&hello).with_context(|| format!("read {}", hello.display()))?;
    println!(
        "  wrote and read {}: {:?}",
        hello.display(),
        text.trim_end()
    );

    // Several stripes of k=4 x 1 MiB, with a ragged tail.
    let len = 9 * (1 << 20) + 12_345;
    let data = pseudo_random(len, 0x7f4a_7c15);
    let big = dir.join("random-9MiB.bin");
    let started = Instant::now();
    let mut f = std::fs::File::create(&big).with_context(|| format!("create {}", big.display()))?;
    f.write_all(&data)
        .with_context(|| format!("write {}", big.display()))?;
    f.sync_all()
        .with_context(|| format!("fsync {}", big.display()))?;
    drop(f);
    let write_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut back = Vec::with_capacity(len);
    std::fs::File::open(&big)
        .and_then(|mut f| f.read_to_end(&mut back))
        .with_context(|| format!("read {}", big.display()))?;
    let read_s = started.elapsed().as_secs_f64();
    if back != data {
        bail!("{} read back differs from what was written", big.display());
    }
    let mib = len as f64 / (1 << 20) as f64;
    println!(
        "  wrote {:.1} MiB in {:.0} ms, read it back in {:.0} ms: byte-identical",
        mib,
        write_s * 1e3,
        read_s * 1e3
    );
    let renamed = dir.join("renamed.bin");
    std::fs::rename(&big, &renamed).context("rename")?;
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    println!(
        "  renamed it; {} now holds: {}",
        dir.display(),
        names.join(", ")
    );
    let stats = std::fs::read_to_string(mnt.join(".torchfs/stats")).context("read stats")?;
    let stats: serde_json::Value = serde_json::from_str(&stats).context("parse stats")?;
    let t = &stats["transport"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    println!(
        "  fragment bytes moved: {} over RDMA verbs ({} nodes), {} over TCP",
        super::status::human_bytes(n("verbs_bytes")),
        n("verbs_nodes"),
        super::status::human_bytes(n("tcp_bytes")),
    );
    Ok(())
}

/// Deterministic bytes (xorshift64*), so a mismatch is reproducible.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
