//! The run context workloads get: the config, where to put scratch files,
//! progress bars and log lines (stderr), dropping caches, and the place
//! figures and latencies are recorded as they are measured.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::model::{Bound, Figure, LatencyFigure};
use crate::stats::{cdf_points, LatencySummary, Summary};

/// Points kept per latency CDF in the results file (enough for a smooth
/// plot; the file stays small).
const CDF_POINTS_MAX: usize = 100;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes Ctrl-C end the run at the next check, so targets are torn down
/// (mounts unmounted, clusters stopped) instead of left behind.
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// What a metric is, independent of the target it was measured on.
#[derive(Clone, Debug)]
pub struct Metric {
    pub workload: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub bounded_by: Vec<Bound>,
    /// Measured after dropping caches (the note says when that failed).
    pub cold: bool,
}

impl Metric {
    pub fn new(workload: &'static str, name: impl Into<String>, unit: &'static str) -> Metric {
        Metric {
            workload,
            name: name.into(),
            unit,
            higher_is_better: true,
            bounded_by: Vec::new(),
            cold: false,
        }
    }

    pub fn cold(mut self) -> Metric {
        self.cold = true;
        self
    }

    /// A latency or a cost: smaller figures are better.
    pub fn lower_is_better(mut self) -> Metric {
        self.higher_is_better = false;
        self
    }

    /// Bounded by the same metric on the FUSE ceiling (and `probes`).
    pub fn bounded(mut self, same_on: &[&str], probes: &[(&str, &str)]) -> Metric {
        self.bounded_by
            .extend(same_on.iter().map(|t| Bound::SameMetricOn(t.to_string())));
        self.bounded_by
            .extend(probes.iter().map(|(w, m)| Bound::Probe {
                workload: w.to_string(),
                metric: m.to_string(),
            }));
        self
    }

    /// Also bounded by doing all of `parts` one after the other (see
    /// [`Bound::Serial`]).
    pub fn bounded_serial(mut self, parts: Vec<Bound>) -> Metric {
        self.bounded_by.push(Bound::Serial(parts));
        self
    }
}

pub struct Ctx {
    pub config: Config,
    /// This executable, re-run as workers and the null FUSE server.
    pub exe: PathBuf,
    /// Manifests and other scratch files (inside the work dir).
    pub scratch: PathBuf,
    progress: MultiProgress,
    tty: bool,
    figures: Vec<Figure>,
    latencies: BTreeMap<(String, String, String), Vec<f64>>,
    notes: Vec<String>,
    caches_droppable: Option<bool>,
    /// Targets that died: later workloads skip them.
    dead: BTreeSet<String>,
    /// Shared state between workloads, e.g. a dataset written once per
    /// target and read by several (key: "workload/target").
    pub shared: HashMap<String, PathBuf>,
    started: std::time::Instant,
}

impl Ctx {
    pub fn new(config: Config, exe: PathBuf, scratch: PathBuf) -> Ctx {
        let tty = std::io::stderr().is_terminal();
        let progress = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        Ctx {
            config,
            exe,
            scratch,
            progress,
            tty,
            figures: Vec::new(),
            latencies: BTreeMap::new(),
            notes: Vec::new(),
            caches_droppable: None,
            dead: BTreeSet::new(),
            shared: HashMap::new(),
            started: std::time::Instant::now(),
        }
    }

    /// A line on stderr (above the bars on a terminal), stamped with the
    /// seconds since the run started.
    pub fn log(&self, msg: impl AsRef<str>) {
        let line = format!(
            "[{:>6.1}s] {}",
            self.started.elapsed().as_secs_f64(),
            msg.as_ref()
        );
        if self.tty {
            let _ = self.progress.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    /// Something the report must say; also logged.
    pub fn note(&mut self, msg: impl Into<String>) {
        let msg = msg.into();
        self.log(format!("note: {msg}"));
        self.notes.push(msg);
    }

    /// A progress bar over `len` units for a long phase.
    pub fn bar(&self, len: u64, label: &str) -> ProgressBar {
        let bar = self.progress.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>28} [{bar:30}] {pos}/{len} {per_sec:>12} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        bar
    }

    pub fn check_interrupted(&self) -> Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Writes back dirty pages and drops the page, dentry and inode caches
    /// (needs root); false, once noted, when that is not possible.
    pub fn drop_caches(&mut self) -> bool {
        if !self.config.drop_caches || self.caches_droppable == Some(false) {
            return false;
        }
        // SAFETY: sync(2) has no arguments.
        unsafe { libc::sync() };
        match std::fs::write("/proc/sys/vm/drop_caches", "3\n") {
            Ok(()) => {
                self.caches_droppable = Some(true);
                true
            }
            Err(e) => {
                self.caches_droppable = Some(false);
                self.note(format!(
                    "could not drop caches ({e}): figures marked cold were measured with warm caches"
                ));
                false
            }
        }
    }

    pub fn is_dead(&self, target: &str) -> bool {
        self.dead.contains(target)
    }

    pub fn mark_dead(&mut self, target: &str, why: &str) {
        if self.dead.insert(target.to_string()) {
            self.note(format!(
                "{target} stopped working ({why}); later workloads skip it"
            ));
        }
    }

    /// Records one repeat of `metric` on `target` (NaN for a failed repeat).
    pub fn sample(&mut self, metric: &Metric, target: &str, value: f64) {
        let cold_note = (metric.cold && self.caches_droppable != Some(true))
            .then(|| "caches were not dropped".to_string());
        if let Some(f) = self.figures.iter_mut().find(|f| {
            f.workload == metric.workload && f.metric == metric.name && f.target == target
        }) {
            f.samples.push(value);
            f.summary = Summary::of(&f.samples);
            if f.note.is_none() {
                f.note = cold_note;
            }
            return;
        }
        self.figures.push(Figure {
            workload: metric.workload.into(),
            metric: metric.name.clone(),
            target: target.into(),
            unit: metric.unit.into(),
            higher_is_better: metric.higher_is_better,
            samples: vec![value],
            summary: Summary::of(&[value]),
            bounded_by: metric.bounded_by.clone(),
            note: cold_note,
        });
    }

    /// Adds per-request latencies of a phase (pooled over repeats).
    pub fn latencies(&mut self, workload: &str, phase: &str, target: &str, us: &[f64]) {
        self.latencies
            .entry((workload.into(), phase.into(), target.into()))
            .or_default()
            .extend_from_slice(us);
    }

    /// Records a failed phase: a note, and NaN so the repeat count shows it.
    pub fn failed(&mut self, metric: &Metric, target: &str, err: &anyhow::Error) {
        self.note(format!(
            "{} {} on {target} failed: {err:#}",
            metric.workload, metric.name
        ));
        self.sample(metric, target, f64::NAN);
    }

    /// Everything recorded, for the results file.
    pub fn finish(self) -> (Vec<Figure>, Vec<LatencyFigure>, Vec<String>) {
        let latencies = self
            .latencies
            .into_iter()
            .map(|((workload, phase, target), mut us)| {
                us.sort_by(f64::total_cmp);
                LatencyFigure {
                    summary: LatencySummary::of(&us),
                    // 0.1 us and 4 decimals of fraction: finer than any
                    // plot shows, and a third of the digits.
                    cdf_us: cdf_points(&us, CDF_POINTS_MAX)
                        .into_iter()
                        .map(|(v, f)| ((v * 10.0).round() / 10.0, (f * 1e4).round() / 1e4))
                        .collect(),
                    workload,
                    phase,
                    target,
                }
            })
            .collect();
        (self.figures, latencies, self.notes)
    }
}
