//! `torchfs repair`: one pass of the repair service over every stored
//! fragment of every file metad holds: each is checked where the map
//! places it and rebuilt from k others where it is missing or wrong
//! (docs/ARCHITECTURE.md: Repair). Run it once nodes that missed writes
//! are back, or after a node's disk was replaced; `--scrub` reads every
//! fragment whole (every chunk's CRC checked). The service in each metad
//! does this by itself after a node is replaced.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Args;
use tokio::sync::Notify;
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{MetaReply, MetaRequest, RepairProgress};
use torchfs_rdma::endpoint::TransportMode;
use torchfs_rdma::verbs::VerbsOptions;
use torchfs_rdma::{MultiTransport, TcpOptions};
use torchfs_repair::{run_pass, PassOptions, RepairBandwidth, Scope};
use torchfs_storage_client::StorageClient;

#[derive(Args)]
#[command(args_override_self = true)]
pub struct RepairArgs {
    /// metad voters' addresses (any one that answers will do).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = super::DEFAULT_METAD_ADDRS
    )]
    pub metad: Vec<String>,
    /// Read every fragment whole (checks every chunk's CRC) instead of
    /// checking only that it exists with the right whole CRC.
    #[arg(long)]
    pub scrub: bool,
    /// Bound on repair traffic, MB/s (the k fragments read and the one
    /// written per rebuild); 0: none.
    #[arg(long, default_value_t = 200)]
    pub bandwidth_mb_s: u64,
    /// TOML file with defaults for these flags (table [repair]).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

pub fn run(args: RepairArgs) -> Result<()> {
    super::check_metad_addrs(&args.metad)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    runtime.block_on(repair(&args))
}

async fn repair(args: &RepairArgs) -> Result<()> {
    let meta = MetaClient::new(args.metad.clone(), MetaClientOptions::default())
        .context("connect to metad")?;
    let map = match meta.call(MetaRequest::ClusterMap).await {
        Ok(MetaReply::ClusterMap(map)) => map,
        Ok(other) => anyhow::bail!("metad answered ClusterMap with {other:?}"),
        Err(e) => return Err(e).context("fetch the cluster map"),
    };
    let transport = MultiTransport::new(
        TransportMode::Auto,
        TcpOptions::default(),
        VerbsOptions::default(),
    );
    let storage = StorageClient::new(
        transport,
        map,
        tokio::runtime::Handle::current(),
        Arc::new(Notify::new()),
    );
    let options = PassOptions {
        verify_whole: args.scrub,
        bandwidth: (args.bandwidth_mb_s > 0)
            .then(|| Arc::new(RepairBandwidth::new(args.bandwidth_mb_s * 1_000_000))),
    };
    let progress = Mutex::new(RepairProgress::default());
    run_pass(&meta, &storage, &Scope::All, &options, &progress)
        .await
        .context("repair pass")?;
    let p = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let secs = p.elapsed_ms as f64 / 1000.0;
    println!(
        "repair: {} stripes checked, {} rebuilt ({:.1} MB in {secs:.1} s, {:.1} MB/s), \
         {} not repairable now",
        p.stripes_checked,
        p.fragments_rebuilt,
        p.bytes_rebuilt as f64 / 1e6,
        p.bytes_rebuilt as f64 / 1e6 / secs.max(1e-9),
        p.fragments_failed,
    );
    if p.fragments_failed > 0 {
        anyhow::bail!(
            "{} fragments could not be checked or rebuilt (nodes down?)",
            p.fragments_failed
        );
    }
    Ok(())
}
