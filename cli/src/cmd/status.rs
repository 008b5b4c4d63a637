//! `torchfs status`: the cluster as the metad leader sees it.

use anyhow::{bail, Context, Result};
use clap::Args;
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{ClusterStatus, MetaReply, MetaRequest, NodeState};

#[derive(Args)]
#[command(args_override_self = true)]
pub struct StatusArgs {
    /// metad voters' addresses (any one that answers will do).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = super::DEFAULT_METAD_ADDRS
    )]
    pub metad: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long without an answer.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Also show what this mount moved over each transport (from its
    /// `.torchfs/stats`).
    #[arg(long)]
    pub mount: Option<std::path::PathBuf>,
    /// TOML file with defaults for these flags (table [status]).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
}

pub fn run(args: StatusArgs) -> Result<()> {
    super::check_metad_addrs(&args.metad)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    let status = runtime.block_on(fetch(&args.metad, args.timeout_ms))?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).context("encode status")?
        );
    } else {
        print!("{}", render(&status));
    }
    if let Some(mount) = &args.mount {
        let path = mount.join(".torchfs/stats");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("read {} (is it a torchfs mount?)", path.display()))?;
        let stats: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        let t = &stats["transport"];
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        println!(
            "mount {}: verbs {} requests, {} to {} nodes; tcp {} requests, {}; {} fell back to tcp",
            mount.display(),
            n("verbs_requests"),
            human_bytes(n("verbs_bytes")),
            n("verbs_nodes"),
            n("tcp_requests"),
            human_bytes(n("tcp_bytes")),
            n("verbs_fallbacks"),
        );
    }
    Ok(())
}

pub async fn fetch(metad: &[String], timeout_ms: u64) -> Result<ClusterStatus> {
    let opts = MetaClientOptions {
        retry_for_ms: timeout_ms,
        ..MetaClientOptions::default()
    };
    let client = MetaClient::new(metad.to_vec(), opts).context("metad addresses")?;
    match client.call(MetaRequest::ClusterStatus).await {
        Ok(MetaReply::ClusterStatus(s)) => Ok(s),
        Ok(other) => bail!("metad answered cluster status with {other:?}"),
        Err(e) => Err(e).with_context(|| {
            format!(
                "ask metad at {} for the cluster status (is it running?)",
                metad.join(",")
            )
        }),
    }
}

/// A human-readable table of the cluster.
pub fn render(s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let leader = s.leader.map_or("none".to_string(), |l| l.to_string());
    let _ = writeln!(
        out,
        "metad: leader {leader}, term {}, last applied log index {}",
        s.term, s.last_applied
    );
    for v in &s.voters {
        let role = if Some(v.id) == s.leader {
            "leader"
        } else {
            "follower"
        };
        let _ = writeln!(out, "  voter {:<3} {:<22} {role}", v.id, v.addr);
    }
    let c = &s.map.config;
    let up = s
        .map
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Up)
        .count();
    let _ = writeln!(
        out,
        "storage: {up}/{} nodes up, {} placement groups, k={} m={} unit={} KiB",
        s.map.nodes.len(),
        s.map.groups.len(),
        c.k,
        c.m,
        c.unit_bytes / 1024
    );
    let _ = writeln!(
        out,
        "  {:<5} {:<6} {:<24} {:>12} {:>12} {:>10}  transports",
        "node", "state", "address (shard ports)", "used", "capacity", "heartbeat"
    );
    for n in &s.map.nodes {
        let state = match n.state {
            NodeState::Up => "up",
            NodeState::Down => "DOWN",
        };
        let ports: Vec<String> = n.info.shard_ports.iter().map(|p| p.to_string()).collect();
        let addr = format!("{}:{}", n.info.host, ports.join("/"));
        let beat = n
            .last_heartbeat_ms_ago
            .map_or("-".to_string(), |ms| format!("{ms} ms ago"));
        let _ = writeln!(
            out,
            "  {:<5} {:<6} {:<24} {:>12} {:>12} {:>10}  {}",
            n.info.id,
            state,
            addr,
            human_bytes(n.info.used_bytes),
            human_bytes(n.info.capacity_bytes),
            beat,
            n.info.transports.join(" ")
        );
    }
    let r = &s.repair;
    if r.pass > 0 {
        let state = if r.done { "done" } else { "running" };
        let _ = writeln!(
            out,
            "repair: pass {} ({}) {state}: {} stripes checked, {} fragments rebuilt ({}), \
             {} could not be, {:.1} s",
            r.pass,
            r.reason,
            r.stripes_checked,
            r.fragments_rebuilt,
            human_bytes(r.bytes_rebuilt),
            r.fragments_failed,
            r.elapsed_ms as f64 / 1000.0
        );
        if r.bad_reported > 0 {
            let _ = writeln!(
                out,
                "  reported: {} fragments corrupt (scrubs) or left out (degraded writes), {} rebuilt",
                r.bad_reported, r.bad_rebuilt
            );
        }
        if r.orphans_deleted > 0 {
            let _ = writeln!(
                out,
                "  orphans: {} fragments no one needed deleted",
                r.orphans_deleted
            );
        }
        if !r.nodes_replaced.is_empty() {
            let ids: Vec<String> = r.nodes_replaced.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(out, "  nodes replaced: {}", ids.join(", "));
        }
    }
    out
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_the_unit() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
