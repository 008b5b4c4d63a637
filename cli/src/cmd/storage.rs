//! `torchfs storage`: one storage node.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use torchfs_dataplane::store::log::LogConfig;
use torchfs_dataplane::StorageConfig;

#[derive(Args)]
#[command(args_override_self = true)]
pub struct StorageArgs {
    /// This node's id, unique in the cluster; kept in the data dir.
    #[arg(long)]
    pub node_id: u64,
    /// Where fragments are stored.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// metad voters' addresses.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = super::DEFAULT_METAD_ADDRS
    )]
    pub metad: Vec<String>,
    /// IP address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_ip: IpAddr,
    /// Host name or address clients use to reach this node (default: --listen-ip).
    #[arg(long)]
    pub host: Option<String>,
    /// Shard i listens on base-port + i; 0 picks free ports.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Executors (shards), one per core (default: the number of cores).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Heartbeat period.
    #[arg(long, default_value_t = 1_000)]
    pub heartbeat_ms: u64,
    /// Capacity to advertise (default: the size of the data dir's filesystem).
    #[arg(long)]
    pub capacity_bytes: Option<u64>,
    /// Registered O_DIRECT buffer memory per shard (default: a share of
    /// RLIMIT_MEMLOCK; io_uring charges it to the user, root is exempt).
    #[arg(long)]
    pub io_memory_bytes: Option<usize>,
    /// Fragments of at most this many bytes are appended to the shard's
    /// fragment log (one write and a shared fdatasync per put) instead of
    /// each getting a file; 0 turns the log off.
    #[arg(long, default_value_t = LogConfig::default().fragment_bytes_max)]
    pub log_fragment_bytes_max: u32,
    /// Size of each fragment log segment file (zero-filled ahead of need).
    #[arg(long, default_value_t = LogConfig::default().segment_bytes)]
    pub log_segment_bytes: u64,
    /// Serve RDMA verbs beside TCP: off, auto (when this host has an RDMA
    /// device and --verbs-ip or --listen-ip is not loopback) or on (or fail).
    #[arg(long, default_value = "auto")]
    pub verbs: torchfs_dataplane::VerbsMode,
    /// Address to serve verbs on, of the RDMA device's interface (default:
    /// --listen-ip).
    #[arg(long)]
    pub verbs_ip: Option<IpAddr>,
    /// Rate of the background scrub (every fragment at rest read and
    /// checked against its stored CRCs; bad ones dropped and reported for
    /// repair), MB/s for the whole node; 0: no scrub.
    #[arg(long, default_value_t = 20)]
    pub scrub_mb_s: u64,
    /// Pause between two scrub passes ("24h", "10s").
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub scrub_interval: std::time::Duration,
    /// TOML file with defaults for these flags (table [storage]).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl StorageArgs {
    pub fn to_config(&self) -> Result<StorageConfig> {
        super::check_metad_addrs(&self.metad)?;
        let shards = self
            .shards
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if shards == 0 || shards > 256 {
            anyhow::bail!("--shards {shards}: must be between 1 and 256");
        }
        let log = LogConfig {
            fragment_bytes_max: self.log_fragment_bytes_max,
            segment_bytes: self.log_segment_bytes,
        };
        log.validate()
            .map_err(|e| anyhow::anyhow!("--log-fragment-bytes-max / --log-segment-bytes: {e}"))?;
        Ok(StorageConfig {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            host: self
                .host
                .clone()
                .unwrap_or_else(|| self.listen_ip.to_string()),
            listen_ip: self.listen_ip,
            base_port: self.base_port,
            shards,
            metad: self.metad.clone(),
            heartbeat_ms: self.heartbeat_ms,
            capacity_bytes: self.capacity_bytes,
            io_memory_bytes: self.io_memory_bytes,
            log,
            verbs: self.verbs,
            verbs_ip: self.verbs_ip,
            scrub: torchfs_dataplane::scrub::ScrubConfig {
                bytes_per_s: self.scrub_mb_s.saturating_mul(1_000_000),
                interval: self.scrub_interval,
            },
        })
    }
}

pub fn run(args: StorageArgs) -> Result<()> {
    let config = args.to_config()?;
    let node = torchfs_dataplane::start(config)
        .with_context(|| format!("start storage node {}", args.node_id))?;
    tracing::info!(node = args.node_id, shards = ?node.shard_addrs(), verbs = ?node.verbs_addr(), "storage node serving");
    node.wait()
        .with_context(|| format!("storage node {}", args.node_id))
}
