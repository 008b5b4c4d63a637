//! `torchfs metad`: one voter of the metadata service.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use torchfs_metad::MetadConfig;
use torchfs_proto::meta::StripeConfig;

#[derive(Args)]
#[command(args_override_self = true)]
pub struct MetadArgs {
    /// This voter's id (one of the ids in --voters).
    #[arg(long)]
    pub id: u64,
    /// Address to serve clients, storage nodes and the other voters on.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,
    /// Where the Raft log, vote and snapshots are kept.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Every voter of the cluster, this one included: ID=HOST:PORT,...
    #[arg(long, value_delimiter = ',', required = true)]
    pub voters: Vec<String>,
    /// Data fragments per stripe (set when the cluster is first created).
    #[arg(long, default_value_t = StripeConfig::DEFAULT.k)]
    pub k: u8,
    /// Parity fragments per stripe.
    #[arg(long, default_value_t = StripeConfig::DEFAULT.m)]
    pub m: u8,
    /// Bytes per fragment.
    #[arg(long, default_value_t = StripeConfig::DEFAULT.unit_bytes)]
    pub unit_bytes: u32,
    /// A storage node is marked down after this long without a heartbeat.
    #[arg(long, default_value_t = 5_000)]
    pub node_down_after_ms: u64,
    /// Storage nodes down this long are replaced in the placement and their
    /// fragments rebuilt on other nodes, by the repair service this voter
    /// runs while it leads ("10m", "90s"; 0: never). Long enough to ride
    /// out a reboot or a rolling restart, short enough to bound the time
    /// stripes spend one loss closer to data loss.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub repair_after: std::time::Duration,
    /// Bound on the repair service's traffic, MB/s (the k fragments read
    /// and the one written per rebuild); 0: none.
    #[arg(long, default_value_t = 200)]
    pub repair_bandwidth_mb_s: u64,
    /// Orphan collection: a stored fragment no layout needs is deleted
    /// once two sweeps this far apart find it so ("10m"; 0: never).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub orphan_grace: std::time::Duration,
    /// TOML file with defaults for these flags (table [metad]).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl MetadArgs {
    pub fn to_config(&self) -> Result<MetadConfig> {
        let voters = super::parse_voters(&self.voters)?;
        if !voters.iter().any(|(id, _)| *id == self.id) {
            anyhow::bail!(
                "--id {} is not among --voters ({}): list every voter, this one included",
                self.id,
                self.voters.join(",")
            );
        }
        let stripe = StripeConfig {
            k: self.k,
            m: self.m,
            unit_bytes: self.unit_bytes,
        };
        check_stripe(&stripe)?;
        let mut config = MetadConfig::new(self.id, self.listen, self.data_dir.clone(), voters);
        config.stripe = stripe;
        config.node_down_after_ms = self.node_down_after_ms;
        Ok(config)
    }
}

/// Rejects stripe shapes ISA-L and the on-disk format cannot serve.
pub fn check_stripe(stripe: &StripeConfig) -> Result<()> {
    if stripe.k == 0 || stripe.m == 0 || stripe.k as usize + stripe.m as usize > 32 {
        anyhow::bail!(
            "--k {} --m {}: need k >= 1, m >= 1, k + m <= 32",
            stripe.k,
            stripe.m
        );
    }
    if stripe.unit_bytes < 4096
        || !stripe.unit_bytes.is_multiple_of(4096)
        || stripe.unit_bytes > 16 << 20
    {
        anyhow::bail!(
            "--unit-bytes {}: must be a multiple of 4096 between 4 KiB and 16 MiB",
            stripe.unit_bytes
        );
    }
    Ok(())
}

pub fn run(args: MetadArgs) -> Result<()> {
    let config = args.to_config()?;
    if !args.repair_after.is_zero() {
        start_repair_service(&args)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    let local = tokio::task::LocalSet::new();
    local
        .block_on(&runtime, torchfs_metad::run(config, super::stop_signal()))
        .with_context(|| format!("metad voter {}", args.id))
}

/// Runs the repair service beside this voter, on its own thread: it talks
/// to the voters over RPC like any client and works while this one leads.
fn start_repair_service(args: &MetadArgs) -> Result<()> {
    let voters: Vec<String> = super::parse_voters(&args.voters)?
        .into_iter()
        .map(|(_, addr)| addr)
        .collect();
    let options = torchfs_repair::RepairOptions {
        repair_after: args.repair_after,
        bandwidth_bytes_per_s: args.repair_bandwidth_mb_s.saturating_mul(1_000_000),
        voter: Some(args.id),
        orphan_grace: args.orphan_grace,
        ..torchfs_repair::RepairOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("torchfs-repair")
        .enable_all()
        .build()
        .context("start the repair service's runtime")?;
    std::thread::Builder::new()
        .name("torchfs-repair".into())
        .spawn(move || {
            let never = std::future::pending::<()>();
            if let Err(e) = runtime.block_on(torchfs_repair::run(voters, options, never)) {
                tracing::error!("repair service stopped: {e}");
            }
        })
        .context("start the repair service")?;
    Ok(())
}
