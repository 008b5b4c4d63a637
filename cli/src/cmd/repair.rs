//! `torchfs repair`: walks the whole tree and, for every stored fragment of
//! every file, checks it is there and right and rebuilds it from k others
//! where it is not (docs/ARCHITECTURE.md: Data path, repair). Run it once
//! nodes that missed writes are back, or after a node's disk was replaced;
//! `--scrub` reads every fragment whole (every chunk's CRC checked).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use torchfs_client::core::{Client, ClientConfig, RepairBandwidth};
use torchfs_proto::meta::{FileKind, ROOT_INO};

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

/// Directory entries asked for per readdir.
const READDIR_PAGE: u32 = 1024;

pub fn run(args: RepairArgs) -> Result<()> {
    super::check_metad_addrs(&args.metad)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    runtime.block_on(repair(&args))
}

async fn repair(args: &RepairArgs) -> Result<()> {
    let config = ClientConfig {
        metad: args.metad.clone(),
        ..ClientConfig::default()
    };
    let client = Client::connect(config)
        .await
        .context("connect to the cluster")?;
    let bandwidth =
        (args.bandwidth_mb_s > 0).then(|| RepairBandwidth::new(args.bandwidth_mb_s * 1_000_000));
    let started = Instant::now();
    let (mut files, mut checked, mut rebuilt, mut rebuilt_bytes, mut failed) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut dirs = vec![ROOT_INO];
    while let Some(dir) = dirs.pop() {
        let mut after = String::new();
        loop {
            let entries = client
                .readdir(dir, &after, READDIR_PAGE)
                .await
                .with_context(|| format!("list directory inode {dir}"))?;
            let Some(last) = entries.last() else { break };
            after = last.name.clone();
            for e in &entries {
                match e.kind {
                    FileKind::Dir => dirs.push(e.ino),
                    FileKind::File => {
                        files += 1;
                        match client
                            .repair_file(e.ino, args.scrub, bandwidth.as_ref())
                            .await
                        {
                            Ok(r) => {
                                checked += u64::from(r.checked);
                                rebuilt += u64::from(r.rebuilt);
                                rebuilt_bytes += r.rebuilt_bytes;
                                failed += u64::from(r.failed);
                            }
                            Err(err) => {
                                failed += 1;
                                eprintln!("torchfs repair: inode {} ({}): {err}", e.ino, e.name);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "repair: {files} files, {checked} fragments checked, {rebuilt} rebuilt \
         ({:.1} MB in {secs:.1} s, {:.1} MB/s), {failed} not repairable now",
        rebuilt_bytes as f64 / 1e6,
        rebuilt_bytes as f64 / 1e6 / secs.max(1e-9),
    );
    if failed > 0 {
        anyhow::bail!("{failed} fragments could not be checked or rebuilt (nodes down?)");
    }
    Ok(())
}
