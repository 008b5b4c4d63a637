//! The Markdown report, rendered from a [`Results`] alone: the ratio table
//! (torchfs against the local disk, each peer and the tightest limit, each a
//! ratio of medians measured in the same run), then every figure with its
//! repeats, latency percentiles, the targets, the machine and the notes.

use std::fmt::Write;

use crate::model::{Bound, Figure, Results, TargetKind, SYSTEM_TARGET};
use crate::probes;
use crate::stats::ratio;
use crate::units::{format_bytes, format_value};

const MISSING: &str = "–";

/// One row of the ratio table.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioRow {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub system: Option<f64>,
    /// One per baseline column (local disk, peer), in column order.
    pub baselines: Vec<Option<f64>>,
    /// The tightest bound and what it is.
    pub limit: Option<(f64, String)>,
}

/// The baseline columns: the local disk, then every peer, when they are
/// targets.
pub fn baseline_columns(results: &Results) -> Vec<String> {
    [TargetKind::LocalDisk, TargetKind::Peer]
        .iter()
        .flat_map(|k| results.targets.iter().filter(move |t| t.kind == *k))
        .map(|t| t.name.clone())
        .collect()
}

/// Rows for every (workload, metric) measured on any non-probe target with
/// something to compare (at least two of: torchfs, a baseline, a limit), in
/// the order first measured.
pub fn ratio_rows(results: &Results) -> Vec<RatioRow> {
    let columns = baseline_columns(results);
    let mut rows: Vec<RatioRow> = Vec::new();
    for f in results
        .figures
        .iter()
        .filter(|f| f.target != probes::TARGET)
    {
        if rows
            .iter()
            .any(|r| r.workload == f.workload && r.metric == f.metric)
        {
            continue;
        }
        let median = |target: &str| results.median(&f.workload, &f.metric, target);
        rows.push(RatioRow {
            workload: f.workload.clone(),
            metric: f.metric.clone(),
            unit: f.unit.clone(),
            higher_is_better: f.higher_is_better,
            system: median(SYSTEM_TARGET),
            baselines: columns.iter().map(|c| median(c)).collect(),
            limit: limit_of(results, f),
        });
    }
    // A figure with nothing to compare against has no ratio to show (it
    // stays in "Every figure").
    rows.retain(|r| {
        let measured = r.baselines.iter().filter(|b| b.is_some()).count()
            + usize::from(r.system.is_some())
            + usize::from(r.limit.is_some());
        measured >= 2
    });
    rows
}

/// The tightest of a figure's bounds that was measured: the smallest for a
/// higher-is-better figure, the largest otherwise. Probe bounds count only
/// when their unit matches.
pub fn limit_of(results: &Results, f: &Figure) -> Option<(f64, String)> {
    let candidates = f.bounded_by.iter().filter_map(|b| resolve(results, f, b));
    if f.higher_is_better {
        candidates.min_by(|a, b| a.0.total_cmp(&b.0))
    } else {
        candidates.max_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// One bound's value and what it is, if measured.
fn resolve(results: &Results, f: &Figure, b: &Bound) -> Option<(f64, String)> {
    match b {
        Bound::SameMetricOn(target) => results
            .median(&f.workload, &f.metric, target)
            .map(|v| (v, target.clone())),
        Bound::Figure {
            workload,
            metric,
            target,
        } => results
            .median(workload, metric, target)
            .map(|v| (v, format!("{target} {workload} {metric}"))),
        Bound::Probe { workload, metric } => results
            .figures
            .iter()
            .find(|p| &p.workload == workload && &p.metric == metric && p.unit == f.unit)
            .and_then(|p| p.summary)
            .map(|s| (s.median, format!("{workload} {metric}"))),
        Bound::Serial(parts) if f.higher_is_better && !parts.is_empty() => {
            let resolved: Option<Vec<(f64, String)>> =
                parts.iter().map(|p| resolve(results, f, p)).collect();
            let resolved = resolved?;
            if resolved.iter().any(|(v, _)| *v <= 0.0) {
                return None;
            }
            let seconds: f64 = resolved.iter().map(|(v, _)| 1.0 / v).sum();
            let what: Vec<String> = resolved.into_iter().map(|(_, w)| w).collect();
            Some((1.0 / seconds, what.join(" then ")))
        }
        Bound::Serial(_) => None,
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or(MISSING.into(), format_value)
}

fn ratio_cell(v: Option<f64>) -> String {
    v.map_or(MISSING.into(), |r| format!("{r:.2}"))
}

/// The ratio table alone (also pasted into the README).
pub fn ratio_table(results: &Results) -> String {
    let columns = baseline_columns(results);
    let mut s = String::new();
    let _ = write!(s, "| workload | figure | unit | {SYSTEM_TARGET} |");
    for c in &columns {
        let _ = write!(s, " {c} |");
    }
    let _ = write!(s, " limit (what) |");
    for c in &columns {
        let _ = write!(s, " {SYSTEM_TARGET}/{c} |");
    }
    let _ = writeln!(s, " {SYSTEM_TARGET}/limit |");
    let cols = 5 + 2 * columns.len() + 1;
    let _ = writeln!(s, "|{}", " --- |".repeat(cols));
    for r in ratio_rows(results) {
        let arrow = if r.higher_is_better {
            ""
        } else {
            " (lower is better)"
        };
        let _ = write!(
            s,
            "| {} | {}{arrow} | {} | {} |",
            r.workload,
            r.metric,
            r.unit,
            cell(r.system)
        );
        for b in &r.baselines {
            let _ = write!(s, " {} |", cell(*b));
        }
        match &r.limit {
            Some((v, what)) => {
                let _ = write!(s, " {} ({what}) |", format_value(*v));
            }
            None => {
                let _ = write!(s, " {MISSING} |");
            }
        }
        for b in &r.baselines {
            let _ = write!(s, " {} |", ratio_cell(ratio(r.system, *b)));
        }
        let _ = writeln!(
            s,
            " {} |",
            ratio_cell(ratio(r.system, r.limit.as_ref().map(|l| l.0)))
        );
    }
    s
}

/// The whole report.
pub fn markdown(results: &Results) -> String {
    let m = &results.machine;
    let mut s = String::new();
    let date = results.started.get(..10).unwrap_or(&results.started);
    let _ = writeln!(s, "# torchfs-perf: {date} on {}\n", m.hostname);
    let _ = writeln!(
        s,
        "Machine: {}, {} cores, {} memory, kernel {}, {}; work directory on {}.  ",
        m.cpu_model,
        m.cores,
        format_bytes(m.memory_bytes),
        m.kernel,
        m.os,
        m.work_dir_fs
    );
    let _ = writeln!(
        s,
        "Started {} UTC, took {:.0} s.  ",
        results.started.trim_end_matches('Z').replace('T', " "),
        results.duration_s
    );
    let _ = writeln!(s, "Command: `{}`\n", results.command);
    let _ = writeln!(s, "## Ratios\n");
    let _ = writeln!(
        s,
        "Medians of the repeats; every ratio is {SYSTEM_TARGET} over a figure measured in this \
         same run (above 1: {SYSTEM_TARGET} is faster, for figures where higher is better). \
         \"limit\" is the tightest bound measured: the same workload on torchfs's own \
         mount over a null backend (fuse-null, the FUSE ceiling), raw ISA-L, or a probe of the \
         disk or loopback TCP.\n"
    );
    s.push_str(&ratio_table(results));
    degraded_section(results, &mut s);
    probes_section(results, &mut s);
    figures_section(results, &mut s);
    latency_section(results, &mut s);
    let _ = writeln!(s, "\n## Targets\n");
    let _ = writeln!(
        s,
        "| target | role | status | details |\n| --- | --- | --- | --- |"
    );
    for t in &results.targets {
        let details: Vec<String> = t.details.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {} |",
            t.name,
            t.kind,
            t.status.replace('|', "/").replace('\n', " "),
            details.join("; ").replace('|', "/")
        );
    }
    let _ = writeln!(s, "\n## Versions\n");
    for (k, v) in &results.versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(
        s,
        "\n## Configuration\n\n```json\n{}\n```",
        serde_json::to_string_pretty(&results.config).unwrap_or_default()
    );
    if !results.notes.is_empty() {
        let _ = writeln!(s, "\n## Notes\n");
        for n in &results.notes {
            let _ = writeln!(s, "- {}", n.replace('\n', " "));
        }
    }
    s
}

fn degraded_section(results: &Results, s: &mut String) {
    let pairs: Vec<(&Figure, f64, f64)> = results
        .figures
        .iter()
        .filter(|f| f.workload == "degraded" && f.unit == "samples/s")
        .filter_map(|f| {
            let healthy = results.median("loader", "cold epoch", &f.target)?;
            Some((f, f.summary?.median, healthy))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Degraded against healthy\n");
    let _ = writeln!(
        s,
        "| target | healthy cold epoch | {} | degraded/healthy |",
        pairs[0].0.metric
    );
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    for (f, degraded, healthy) in pairs {
        let _ = writeln!(
            s,
            "| {} | {} samples/s | {} samples/s | {} |",
            f.target,
            format_value(healthy),
            format_value(degraded),
            ratio_cell(ratio(Some(degraded), Some(healthy)))
        );
    }
}

fn probes_section(results: &Results, s: &mut String) {
    let probes: Vec<&Figure> = results
        .figures
        .iter()
        .filter(|f| f.target == probes::TARGET)
        .collect();
    if probes.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Physical limits\n");
    let _ = writeln!(
        s,
        "| probe | figure | min | median | max | n |\n| --- | --- | --- | --- | --- | --- |"
    );
    for f in probes {
        summary_cells(
            s,
            &format!("| {} | {} ({})", f.workload, f.metric, f.unit),
            f,
        );
    }
}

fn summary_cells(s: &mut String, lead: &str, f: &Figure) {
    match f.summary {
        Some(sum) => {
            let _ = writeln!(
                s,
                "{lead} | {} | {} | {} | {} |",
                format_value(sum.min),
                format_value(sum.median),
                format_value(sum.max),
                sum.n
            );
        }
        None => {
            let _ = writeln!(s, "{lead} | {MISSING} | {MISSING} | {MISSING} | 0 |");
        }
    }
}

fn figures_section(results: &Results, s: &mut String) {
    let _ = writeln!(s, "\n## Every figure (min / median / max of the repeats)\n");
    let _ = writeln!(
        s,
        "| workload | figure | target | unit | min | median | max | n | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for f in results
        .figures
        .iter()
        .filter(|f| f.target != probes::TARGET)
    {
        let failed = f.samples.iter().filter(|v| !v.is_finite()).count();
        let mut note = f.note.clone().unwrap_or_default();
        if failed > 0 {
            if !note.is_empty() {
                note.push_str("; ");
            }
            let _ = write!(note, "{failed} repeat(s) failed");
        }
        let lead = format!(
            "| {} | {} | {} | {}",
            f.workload, f.metric, f.target, f.unit
        );
        let mut row = String::new();
        summary_cells(&mut row, &lead, f);
        let _ = writeln!(s, "{} {} |", row.trim_end(), note);
    }
}

fn latency_section(results: &Results, s: &mut String) {
    if results.latencies.is_empty() {
        return;
    }
    let _ = writeln!(s, "\n## Per-request latency (ms)\n");
    let _ = writeln!(
        s,
        "| workload | phase | target | requests | p50 | p90 | p99 | p99.9 | max |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for l in &results.latencies {
        let Some(sum) = l.summary else { continue };
        let ms = |us: f64| format_value(us / 1000.0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.workload,
            l.phase,
            l.target,
            sum.count,
            ms(sum.p50_us),
            ms(sum.p90_us),
            ms(sum.p99_us),
            ms(sum.p999_us),
            ms(sum.max_us)
        );
    }
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
