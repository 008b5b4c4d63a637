//! What a run produces: figures (one per workload metric and target, every
//! repeat kept), latency distributions, the machine and the targets. This is
//! the JSON results file's schema; the Markdown report and the plots are
//! rendered from it alone, so a results file can be re-rendered later.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::{LatencySummary, Summary};

/// Bumped when a field changes meaning.
pub const SCHEMA_VERSION: u32 = 1;

/// The system under test; every ratio has it in the numerator.
pub const SYSTEM_TARGET: &str = "torchfs";

/// What role a target plays in the ratios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// torchfs itself.
    System,
    /// The local disk's own filesystem (ext4 here).
    LocalDisk,
    /// Another distributed filesystem (GlusterFS, JuiceFS).
    Peer,
    /// A bound on what any filesystem could do here: torchfs's own mount
    /// over a null backend (the FUSE ceiling), raw ISA-L, the disk and
    /// loopback probes.
    Limit,
}

/// A filesystem (or codec) that workloads ran against.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetInfo {
    pub name: String,
    pub kind: TargetKind,
    /// Where its files were (mount point or directory).
    pub path: String,
    /// "ok", or why it could not be used (the run went on without it).
    pub status: String,
    /// How it was set up (version, layout, options).
    pub details: BTreeMap<String, String>,
}

/// Another figure that bounds this one: the same metric on a limit target
/// (e.g. "fuse-null"), a probe figure (e.g. disk "seq read"), or any figure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    SameMetricOn(String),
    Probe {
        workload: String,
        metric: String,
    },
    /// A figure of another workload on a given target (the degraded read
    /// is bounded by the healthy read on the FUSE ceiling).
    Figure {
        workload: String,
        metric: String,
        target: String,
    },
    /// Each operation needs all of these, one after the other (a durable
    /// create through FUSE: the FUSE ceiling's create, then an fdatasync):
    /// the rate is 1 / (1/a + 1/b + ...). Only for rates.
    Serial(Vec<Bound>),
}

/// One figure: a metric of a workload on one target, every repeat kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    pub workload: String,
    pub metric: String,
    pub target: String,
    /// "MB/s" (10^6 bytes), "GB/s", "ops/s", "samples/s", "ms".
    pub unit: String,
    pub higher_is_better: bool,
    /// Every repeat; a failed one is NaN here and null in the JSON.
    #[serde(with = "nan_as_null")]
    pub samples: Vec<f64>,
    /// None when every repeat failed.
    pub summary: Option<Summary>,
    /// Figures that bound this one; the report's "limit" is the smallest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounded_by: Vec<Bound>,
    /// Anything a reader must know to interpret it (e.g. "caches not dropped").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Per-request latencies of one phase on one target (all repeats pooled).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LatencyFigure {
    pub workload: String,
    pub phase: String,
    pub target: String,
    pub summary: Option<LatencySummary>,
    /// Downsampled CDF (latency in us, fraction at or below), for re-plotting.
    pub cdf_us: Vec<(f64, f64)>,
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub os: String,
    /// Filesystem type and device behind the work directory.
    pub work_dir_fs: String,
}

/// The whole results file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    /// UTC, RFC 3339.
    pub started: String,
    pub duration_s: f64,
    /// The exact command line.
    pub command: String,
    pub machine: Machine,
    pub versions: BTreeMap<String, String>,
    pub config: serde_json::Value,
    pub targets: Vec<TargetInfo>,
    pub figures: Vec<Figure>,
    pub latencies: Vec<LatencyFigure>,
    /// Things that went wrong or that change how to read the figures.
    pub notes: Vec<String>,
}

impl Results {
    /// The figure for (workload, metric, target), if measured.
    pub fn figure(&self, workload: &str, metric: &str, target: &str) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.workload == workload && f.metric == metric && f.target == target)
    }

    /// Median of that figure.
    pub fn median(&self, workload: &str, metric: &str, target: &str) -> Option<f64> {
        self.figure(workload, metric, target)
            .and_then(|f| f.summary)
            .map(|s| s.median)
    }
}

/// JSON has no NaN: failed repeats are written as null and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(samples: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<Option<f64>> = samples
            .iter()
            .map(|x| x.is_finite().then_some(*x))
            .collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v: Vec<Option<f64>> = Vec::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}
