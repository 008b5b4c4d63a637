//! Counters of the epoch cache and their rendering as the JSON document
//! served by `<mount>/.torchfs/stats` (format 1: its fields are listed in
//! the README's epoch-cache section). Counters only grow from mount time; a reader takes
//! two snapshots and subtracts to measure an interval (an epoch).

use std::fmt::Write;

/// Version of the stats document; bumped when a field changes meaning.
pub const STATS_FORMAT: u32 = 1;

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TierCounters {
    /// Reads served wholly from this tier.
    pub hits: u64,
    pub hit_bytes: u64,
    /// Bytes the prefetcher (plan or readahead) brought into this tier
    /// (for the disk tier: demoted from memory).
    pub prefetched_bytes: u64,
    /// Prefetched bytes that left this tier (evicted or invalidated)
    /// without ever being read, and not moved to a lower tier.
    pub wasted_bytes: u64,
    /// Bytes that left this tier for any reason.
    pub evicted_bytes: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    /// Reads of regular files that could use the cache.
    pub reads: u64,
    /// Reads that found neither tier nor a fetch in flight.
    pub misses: u64,
    pub miss_bytes: u64,
    /// Reads that waited for storage: misses plus waits for a fetch
    /// already in flight.
    pub stalls: u64,
    pub stall_ns: u64,
    pub inflight_waits: u64,
    pub mem: TierCounters,
    pub disk: TierCounters,
    /// Opens served by FUSE passthrough from the disk tier (their reads
    /// never reach this client; each counts as one disk hit).
    pub passthrough_opens: u64,
    pub prefetch_issued: u64,
    pub prefetch_failed: u64,
    /// Fetched bytes dropped on arrival (the file changed meanwhile).
    pub prefetch_discarded_bytes: u64,
    pub readahead_bytes: u64,
    pub inflight_bytes_high_water: u64,
    pub plans_accepted: u64,
    pub plans_rejected: u64,
    pub plan_items_unresolved: u64,
}

/// Gauges of one tier at snapshot time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TierGauges {
    pub enabled: bool,
    pub budget_bytes: u64,
    pub cached_bytes: u64,
    pub entries: u64,
}

/// One rank's plan progress at snapshot time.
#[derive(Debug, Default, Clone)]
pub(crate) struct RankGauges {
    pub rank: u32,
    pub epoch: Option<u64>,
    pub next_epoch: Option<u64>,
    pub items: u64,
    pub resolved: u64,
    /// Items of the current epoch already read (or skipped).
    pub position: u64,
    /// Items from the cursor on that are ready in a tier, without a gap.
    pub lead_items: u64,
    pub lead_bytes: u64,
    /// Items from the cursor to where the prefetcher has got to.
    pub issued_ahead_items: u64,
}

/// The frozen tables' part of `.torchfs/stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrozenStats {
    pub tables: usize,
    pub entries: usize,
    /// Lookups, getattrs, readdirs, readlinks and layouts served by a table.
    pub hits: u64,
    /// Root rechecks with metad.
    pub checks: u64,
}

/// Everything `.torchfs/stats` shows.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub counters: Counters,
    pub mem: TierGauges,
    pub disk: TierGauges,
    pub inflight_bytes: u64,
    pub inflight_bytes_max: u64,
    pub inflight_requests: u64,
    pub window_items: u64,
    pub storage_read_bytes: u64,
    /// Stripes stored with fragments missing (nodes down).
    pub degraded_writes: u64,
    pub meta_requests: u64,
    pub transport: torchfs_rdma::TransportCounters,
    pub frozen: FrozenStats,
    pub ranks: Vec<RankGauges>,
    /// Why the last plan written was refused (cleared by an accepted one).
    pub last_plan_error: Option<String>,
}

fn tier(out: &mut String, name: &str, g: &TierGauges, c: &TierCounters, extra: &[(&str, u64)]) {
    let _ = write!(
        out,
        "\"{name}\":{{\"enabled\":{},\"budget_bytes\":{},\"cached_bytes\":{},\"entries\":{},\
         \"hits\":{},\"hit_bytes\":{},\"prefetched_bytes\":{},\"wasted_bytes\":{},\"evicted_bytes\":{}",
        g.enabled,
        g.budget_bytes,
        g.cached_bytes,
        g.entries,
        c.hits,
        c.hit_bytes,
        c.prefetched_bytes,
        c.wasted_bytes,
        c.evicted_bytes
    );
    for (k, v) in extra {
        let _ = write!(out, ",\"{k}\":{v}");
    }
    out.push('}');
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

impl Snapshot {
    /// The JSON document (one line, ending with LF).
    pub fn render(&self) -> String {
        let c = &self.counters;
        let hits = c.mem.hits + c.disk.hits;
        let ratio = if c.reads == 0 {
            0.0
        } else {
            hits as f64 / c.reads as f64
        };
        let mut out = String::with_capacity(1024);
        let _ = write!(
            out,
            "{{\"format\":{STATS_FORMAT},\"reads\":{},\"hits\":{hits},\"hit_ratio\":{ratio:.4},\
             \"misses\":{},\"miss_bytes\":{},\"stalls\":{},\"stall_seconds\":{:.6},\
             \"inflight_waits\":{},\"storage_read_bytes\":{},\"degraded_writes\":{},\"meta_requests\":{},\
             \"frozen\":{{\"tables\":{},\"entries\":{},\"hits\":{},\"checks\":{}}},",
            c.reads,
            c.misses,
            c.miss_bytes,
            c.stalls,
            c.stall_ns as f64 / 1e9,
            c.inflight_waits,
            self.storage_read_bytes,
            self.degraded_writes,
            self.meta_requests,
            self.frozen.tables,
            self.frozen.entries,
            self.frozen.hits,
            self.frozen.checks,
        );
        let t = &self.transport;
        let _ = write!(
            out,
            "\"transport\":{{\"tcp_requests\":{},\"tcp_bytes\":{},\"verbs_requests\":{},\
             \"verbs_bytes\":{},\"verbs_fallbacks\":{},\"verbs_nodes\":{}}},",
            t.tcp_requests,
            t.tcp_bytes,
            t.verbs_requests,
            t.verbs_bytes,
            t.verbs_fallbacks,
            t.verbs_nodes
        );
        out.push_str("\"tiers\":{");
        tier(&mut out, "memory", &self.mem, &c.mem, &[]);
        out.push(',');
        tier(
            &mut out,
            "disk",
            &self.disk,
            &c.disk,
            &[("passthrough_opens", c.passthrough_opens)],
        );
        let _ = write!(
            out,
            "}},\"prefetch\":{{\"issued\":{},\"failed\":{},\"discarded_bytes\":{},\
             \"readahead_bytes\":{},\"bytes_in_flight\":{},\"bytes_in_flight_max\":{},\
             \"bytes_in_flight_high_water\":{},\"requests_in_flight\":{},\"window_items\":{}}},",
            c.prefetch_issued,
            c.prefetch_failed,
            c.prefetch_discarded_bytes,
            c.readahead_bytes,
            self.inflight_bytes,
            self.inflight_bytes_max,
            c.inflight_bytes_high_water,
            self.inflight_requests,
            self.window_items,
        );
        let _ = write!(
            out,
            "\"plans_accepted\":{},\"plans_rejected\":{},\"last_plan_error\":{},\
             \"plan_items_unresolved\":{},\"plans\":[",
            c.plans_accepted,
            c.plans_rejected,
            self.last_plan_error
                .as_deref()
                .map_or_else(|| "null".to_string(), json_str),
            c.plan_items_unresolved
        );
        for (i, r) in self.ranks.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"rank\":{},\"epoch\":{},\"next_epoch\":{},\"items\":{},\"resolved\":{},\
                 \"position\":{},\"lead_items\":{},\"lead_bytes\":{},\"issued_ahead_items\":{}}}",
                r.rank,
                opt(r.epoch),
                opt(r.next_epoch),
                r.items,
                r.resolved,
                r.position,
                r.lead_items,
                r.lead_bytes,
                r.issued_ahead_items
            );
        }
        out.push_str("]}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_one_json_object() {
        let mut s = Snapshot::default();
        s.counters.reads = 4;
        s.counters.mem.hits = 3;
        s.counters.stall_ns = 1_500_000_000;
        s.ranks.push(RankGauges {
            rank: 1,
            epoch: Some(2),
            ..RankGauges::default()
        });
        let text = s.render();
        assert!(text.ends_with("}\n"));
        assert!(text.contains("\"hit_ratio\":0.7500"), "{text}");
        assert!(text.contains("\"stall_seconds\":1.500000"), "{text}");
        assert!(text.contains("\"epoch\":2,\"next_epoch\":null"), "{text}");
        s.last_plan_error = Some("line 2: \"x\"\t\\".into());
        let text = s.render();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["last_plan_error"], "line 2: \"x\"\t\\");
        assert_eq!(v["plans"][0]["rank"], 1);
        s.meta_requests = 9;
        s.frozen.tables = 2;
        s.frozen.hits = 40;
        let v: serde_json::Value = serde_json::from_str(&s.render()).unwrap();
        assert_eq!(v["meta_requests"], 9);
        assert_eq!(
            (v["frozen"]["tables"].clone(), v["frozen"]["hits"].clone()),
            (2.into(), 40.into())
        );
        // Balanced braces and brackets: a cheap well-formedness check (the
        // integration test parses it for real).
        let depth = text.chars().fold(0i32, |d, c| match c {
            '{' | '[' => d + 1,
            '}' | ']' => d - 1,
            _ => d,
        });
        assert_eq!(depth, 0);
    }
}
