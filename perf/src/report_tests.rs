//! Tests of the report: ratios, limits and the table's shape are what a
//! reader trusts, so they are checked on a hand-made results file.

use std::collections::BTreeMap;

use super::*;
use crate::model::{Machine, TargetInfo};
use crate::stats::{LatencySummary, Summary};

fn target(name: &str, kind: TargetKind, status: &str) -> TargetInfo {
    TargetInfo {
        name: name.into(),
        kind,
        path: format!("/x/{name}"),
        status: status.into(),
        details: BTreeMap::new(),
    }
}

fn figure(workload: &str, metric: &str, target: &str, unit: &str, samples: &[f64]) -> Figure {
    Figure {
        workload: workload.into(),
        metric: metric.into(),
        target: target.into(),
        unit: unit.into(),
        higher_is_better: true,
        samples: samples.to_vec(),
        summary: Summary::of(samples),
        bounded_by: Vec::new(),
        note: None,
    }
}

fn bounded(mut f: Figure, bounds: Vec<Bound>) -> Figure {
    f.bounded_by = bounds;
    f
}

fn sample_results() -> Results {
    let probe = Bound::Probe {
        workload: "disk".into(),
        metric: "seq read".into(),
    };
    let null = Bound::SameMetricOn("fuse-null".into());
    let read = |t: &str, s: &[f64]| {
        bounded(
            figure("large-file", "read cold", t, "MB/s", s),
            vec![null.clone(), probe.clone()],
        )
    };
    Results {
        schema_version: 1,
        started: "2026-11-24T08:00:00Z".into(),
        duration_s: 321.0,
        command: "torchfs-perf --out x".into(),
        machine: Machine {
            hostname: "vm".into(),
            cpu_model: "AMD EPYC".into(),
            cores: 2,
            memory_bytes: 24 << 30,
            kernel: "6.18".into(),
            os: "Debian 12".into(),
            work_dir_fs: "ext4 on /dev/vda (/)".into(),
        },
        versions: BTreeMap::new(),
        config: serde_json::json!({"repeats": 3}),
        targets: vec![
            target("torchfs", TargetKind::System, "ok"),
            target("ext4", TargetKind::LocalDisk, "ok"),
            target("gluster", TargetKind::Peer, "unavailable: no glusterd"),
            target("fuse-null", TargetKind::Limit, "ok"),
        ],
        figures: vec![
            figure(
                "disk",
                "seq read",
                "machine",
                "MB/s",
                &[1500.0, 1400.0, 1600.0],
            ),
            read("torchfs", &[300.0, 200.0, 400.0]),
            read("ext4", &[1200.0, 1200.0, 1200.0]),
            read("fuse-null", &[2000.0]),
            bounded(
                figure("metadata", "create", "torchfs", "ops/s", &[100.0]),
                vec![null.clone(), probe.clone()],
            ),
            figure("metadata", "create", "ext4", "ops/s", &[f64::NAN]),
            figure("metadata", "create", "gluster", "ops/s", &[50.0]),
            figure("loader", "cold epoch", "torchfs", "samples/s", &[1000.0]),
            figure("loader", "cold epoch", "fuse-null", "samples/s", &[4000.0]),
            bounded(
                figure(
                    "degraded",
                    "cold epoch, 2 nodes down",
                    "torchfs",
                    "samples/s",
                    &[500.0],
                ),
                vec![Bound::Figure {
                    workload: "loader".into(),
                    metric: "cold epoch".into(),
                    target: "fuse-null".into(),
                }],
            ),
        ],
        latencies: vec![crate::model::LatencyFigure {
            workload: "loader".into(),
            phase: "cold".into(),
            target: "torchfs".into(),
            summary: LatencySummary::of(&[1000.0, 2000.0, 3000.0]),
            cdf_us: vec![(1000.0, 0.33), (3000.0, 1.0)],
        }],
        notes: vec!["gluster is unavailable: no glusterd".into()],
    }
}

#[test]
fn limit_is_the_tightest_measured_bound_with_matching_units() {
    let r = sample_results();
    let read = r.figure("large-file", "read cold", "torchfs").unwrap();
    // fuse-null 2000 vs disk 1500: the disk is tighter.
    assert_eq!(limit_of(&r, read), Some((1500.0, "disk seq read".into())));
    // ops/s cannot be bounded by a MB/s probe, and fuse-null has no create.
    let create = r.figure("metadata", "create", "torchfs").unwrap();
    assert_eq!(limit_of(&r, create), None);
    // Another workload's figure on a named target.
    let degraded = r
        .figure("degraded", "cold epoch, 2 nodes down", "torchfs")
        .unwrap();
    assert_eq!(
        limit_of(&r, degraded),
        Some((4000.0, "fuse-null loader cold epoch".into()))
    );
}

#[test]
fn a_serial_bound_adds_the_times_of_its_parts() {
    let mut r = sample_results();
    let sync = Bound::Probe {
        workload: "disk".into(),
        metric: "fdatasync".into(),
    };
    let null = Bound::SameMetricOn("fuse-null".into());
    r.figures.extend([
        figure("disk", "fdatasync", "machine", "ops/s", &[5000.0]),
        figure("metadata", "unlink", "fuse-null", "ops/s", &[4000.0]),
        bounded(
            figure("metadata", "unlink", "torchfs", "ops/s", &[700.0]),
            vec![
                null.clone(),
                sync.clone(),
                Bound::Serial(vec![null.clone(), sync.clone()]),
            ],
        ),
        // A part not measured: no bound from it.
        bounded(
            figure("metadata", "rename", "torchfs", "ops/s", &[700.0]),
            vec![Bound::Serial(vec![null, sync])],
        ),
    ]);
    let unlink = r.figure("metadata", "unlink", "torchfs").unwrap();
    let (v, what) = limit_of(&r, unlink).unwrap();
    // 1 / (1/4000 + 1/5000): tighter than either alone.
    assert!((v - 20_000.0 / 9.0).abs() < 1e-6, "{v}");
    assert_eq!(what, "fuse-null then disk fdatasync");
    let rename = r.figure("metadata", "rename", "torchfs").unwrap();
    assert_eq!(limit_of(&r, rename), None);
}

#[test]
fn ratio_rows_use_medians_and_leave_gaps_empty() {
    let r = sample_results();
    assert_eq!(baseline_columns(&r), vec!["ext4", "gluster"]);
    let rows = ratio_rows(&r);
    let names: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.workload.as_str(), r.metric.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("large-file", "read cold"),
            ("metadata", "create"),
            ("degraded", "cold epoch, 2 nodes down")
        ],
        "probe figures are not rows; each metric once; the loader's cold \
         epoch has nothing to be compared with"
    );
    assert_eq!(rows[0].system, Some(300.0));
    assert_eq!(rows[0].baselines, vec![Some(1200.0), None]);
    // A figure whose every repeat failed has no median.
    assert_eq!(rows[1].baselines, vec![None, Some(50.0)]);
}

#[test]
fn ratio_table_has_one_header_and_aligned_columns() {
    let r = sample_results();
    let table = ratio_table(&r);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].contains("torchfs/ext4") && lines[0].contains("torchfs/gluster"));
    let columns = lines[0].matches('|').count();
    assert!(
        lines.iter().all(|l| l.matches('|').count() == columns),
        "{table}"
    );
    let read = lines.iter().find(|l| l.contains("read cold")).unwrap();
    // 300/1200 = 0.25 against ext4, gluster missing, 300/1500 = 0.20 limit.
    assert!(read.contains("| 0.25 |"), "{read}");
    assert!(read.contains("| – |"), "{read}");
    assert!(read.contains("1,500 (disk seq read)"), "{read}");
    assert!(read.trim_end().ends_with("| 0.20 |"), "{read}");
}

#[test]
fn markdown_has_every_section_and_says_what_failed() {
    let r = sample_results();
    let md = markdown(&r);
    for heading in [
        "# torchfs-perf: 2026-11-24 on vm",
        "## Ratios",
        "## Degraded against healthy",
        "## Physical limits",
        "## Every figure",
        "## Per-request latency (ms)",
        "## Targets",
        "## Notes",
    ] {
        assert!(md.contains(heading), "missing {heading}");
    }
    assert!(md.contains("Command: `torchfs-perf --out x`"));
    assert!(md.contains("unavailable: no glusterd"));
    assert!(md.contains("1 repeat(s) failed"));
    // degraded/healthy = 500/1000.
    assert!(md.contains("| torchfs | 1,000 samples/s | 500 samples/s | 0.50 |"));
    // Latency in ms: p50 of 1000/2000/3000 us is 2 ms.
    assert!(
        md.contains("| loader | cold | torchfs | 3 | 2.00 |"),
        "{md}"
    );
}

#[test]
fn results_round_trip_through_json() {
    let r = sample_results();
    let text = serde_json::to_string(&r).unwrap();
    let back: Results = serde_json::from_str(&text).unwrap();
    // NaN samples become null in JSON and must not break reading it back.
    assert_eq!(back.figures.len(), r.figures.len());
    assert_eq!(ratio_table(&back), ratio_table(&r));
}
