//! Metadata: create, stat, list and unlink many empty files in one
//! directory, one process, one operation at a time (latency-bound, as a
//! script preparing or scanning a dataset is). Caches are dropped before
//! each phase so stat and readdir reach the filesystem, not the kernel's
//! dentry and inode caches.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{drop_caches, live_targets, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::model::Bound;
use crate::probes;
use crate::targets::{nullfs, Target};

pub struct Metadata;

const NAME: &str = "metadata";

#[derive(Clone, Copy)]
enum Phase {
    Create,
    Stat,
    Readdir,
    Unlink,
}

const PHASES: [(Phase, &str); 4] = [
    (Phase::Create, "create"),
    (Phase::Stat, "stat"),
    (Phase::Readdir, "readdir"),
    (Phase::Unlink, "unlink"),
];

impl Workload for Metadata {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "create / stat / readdir / unlink of many files in one directory, one at a time"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let n = ctx.config.meta_files;
        let metrics: Vec<Metric> = PHASES
            .iter()
            .map(|(_, name)| {
                let unit = if matches!(name, &"readdir") {
                    "entries/s"
                } else {
                    "ops/s"
                };
                // A durable create or unlink needs at least one commit.
                let commits: &[(&str, &str)] = if matches!(*name, "create" | "unlink") {
                    &[("disk", probes::sync::SYNC_METRIC)]
                } else {
                    &[]
                };
                let metric = Metric::new(NAME, *name, unit)
                    .cold()
                    .bounded(&[nullfs::NAME], commits);
                if commits.is_empty() {
                    return metric;
                }
                // One at a time, each needs the FUSE round trips and then
                // a commit: the tighter bound of the two in series.
                metric.bounded_serial(vec![
                    Bound::SameMetricOn(nullfs::NAME.into()),
                    Bound::Probe {
                        workload: "disk".into(),
                        metric: probes::sync::SYNC_METRIC.into(),
                    },
                ])
            })
            .collect();
        for round in 0..ctx.config.repeats {
            for i in live_targets(ctx, targets) {
                ctx.check_interrupted()?;
                let target = &mut *targets[i];
                let name = target.name().to_string();
                let dir = workload_dir(target, NAME)?;
                let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("f{i:07}"))).collect();
                let mut said = Vec::new();
                for ((phase, label), metric) in PHASES.iter().zip(&metrics) {
                    drop_caches(ctx, target);
                    let bar = ctx.bar(n as u64, &format!("{name} {label} {}", round + 1));
                    let started = Instant::now();
                    let result = run_phase(*phase, &dir, &paths, &bar);
                    let seconds = started.elapsed().as_secs_f64();
                    bar.finish_and_clear();
                    match result {
                        Ok(()) => {
                            let rate = n as f64 / seconds;
                            ctx.sample(metric, &name, rate);
                            said.push(format!("{label} {rate:.0}/s"));
                        }
                        Err(e) => {
                            ctx.failed(metric, &name, &e);
                            break;
                        }
                    }
                }
                ctx.log(format!(
                    "[{NAME}] {name} round {}: {}",
                    round + 1,
                    said.join(", ")
                ));
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Ok(())
    }
}

fn run_phase(
    phase: Phase,
    dir: &Path,
    paths: &[PathBuf],
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    match phase {
        Phase::Create => {
            for p in paths {
                File::create(p).with_context(|| format!("create {}", p.display()))?;
                bar.inc(1);
            }
        }
        Phase::Stat => {
            for p in paths {
                std::fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
                bar.inc(1);
            }
        }
        Phase::Readdir => {
            let mut count = 0;
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?
            {
                entry?;
                count += 1;
                bar.inc(1);
            }
            if count != paths.len() {
                bail!("listed {count} entries, expected {}", paths.len());
            }
        }
        Phase::Unlink => {
            for p in paths {
                std::fs::remove_file(p).with_context(|| format!("unlink {}", p.display()))?;
                bar.inc(1);
            }
        }
    }
    Ok(())
}
