//! mdtest-style metadata load: N threads at once (one client each, as
//! mdtest's ranks) create, stat, list, rename and unlink empty files, in one
//! shared directory or in a directory per thread, reported per thread
//! count. Where `metadata` shows one operation's latency, this shows how
//! many operations a mount (and the metadata service behind it) completes
//! when they are in flight together.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{drop_caches, live_targets, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::targets::{nullfs, Target};

pub struct Mdtest;

const NAME: &str = "mdtest";

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    Create,
    Stat,
    Readdir,
    Rename,
    Unlink,
}

const PHASES: [(Phase, &str); 5] = [
    (Phase::Create, "create"),
    (Phase::Stat, "stat"),
    (Phase::Readdir, "readdir"),
    (Phase::Rename, "rename"),
    (Phase::Unlink, "unlink"),
];

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Shared,
    Private,
}

impl Layout {
    fn label(self) -> &'static str {
        match self {
            Layout::Shared => "shared dir",
            Layout::Private => "dir per thread",
        }
    }
}

fn metric_name(phase: &str, threads: usize, layout: Layout) -> String {
    let s = if threads == 1 { "" } else { "s" };
    format!("{phase}, {threads} thread{s}, {}", layout.label())
}

impl Workload for Mdtest {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "create / stat / readdir / rename / unlink by N threads at once, shared and private directories"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let per_thread = ctx.config.mdtest_files_per_thread;
        let counts = ctx.config.mdtest_threads.clone();
        for round in 0..ctx.config.repeats {
            for &threads in &counts {
                for layout in [Layout::Shared, Layout::Private] {
                    for i in live_targets(ctx, targets) {
                        ctx.check_interrupted()?;
                        let target = &mut *targets[i];
                        let name = target.name().to_string();
                        let dir = workload_dir(target, NAME)?;
                        let dirs = thread_dirs(&dir, threads, layout)?;
                        let mut said = Vec::new();
                        for (phase, label) in PHASES {
                            let unit = if phase == Phase::Readdir {
                                "entries/s"
                            } else {
                                "ops/s"
                            };
                            let metric =
                                Metric::new(NAME, metric_name(label, threads, layout), unit)
                                    .cold()
                                    .bounded(&[nullfs::NAME], &[]);
                            drop_caches(ctx, target);
                            let started = Instant::now();
                            let result = run_phase(phase, &dirs, per_thread, layout);
                            let seconds = started.elapsed().as_secs_f64();
                            match result {
                                Ok(ops) => {
                                    let rate = ops as f64 / seconds;
                                    ctx.sample(&metric, &name, rate);
                                    said.push(format!("{label} {rate:.0}/s"));
                                }
                                Err(e) => {
                                    ctx.failed(&metric, &name, &e);
                                    break;
                                }
                            }
                        }
                        ctx.log(format!(
                            "[{NAME}] {name} round {}, {}: {}",
                            round + 1,
                            metric_name("threads", threads, layout).trim_start_matches("threads, "),
                            said.join(", ")
                        ));
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The directory each thread works in: one for all, or one each.
fn thread_dirs(dir: &Path, threads: usize, layout: Layout) -> Result<Vec<PathBuf>> {
    (0..threads)
        .map(|t| {
            let d = match layout {
                Layout::Shared => dir.to_path_buf(),
                Layout::Private => dir.join(format!("t{t:03}")),
            };
            std::fs::create_dir_all(&d).with_context(|| format!("mkdir {}", d.display()))?;
            Ok(d)
        })
        .collect()
}

fn file(dir: &Path, thread: usize, i: usize, renamed: bool) -> PathBuf {
    let prefix = if renamed { "r" } else { "f" };
    dir.join(format!("{prefix}{thread:03}-{i:06}"))
}

/// Runs one phase on every thread at once; the operations completed.
fn run_phase(phase: Phase, dirs: &[PathBuf], per_thread: usize, layout: Layout) -> Result<usize> {
    let results: Vec<Result<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(t, dir)| {
                s.spawn(move || thread_phase(phase, dir, t, per_thread, dirs.len(), layout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a worker thread panicked")))
            })
            .collect()
    });
    let mut ops = 0;
    for r in results {
        ops += r?;
    }
    Ok(ops)
}

fn thread_phase(
    phase: Phase,
    dir: &Path,
    t: usize,
    n: usize,
    threads: usize,
    layout: Layout,
) -> Result<usize> {
    match phase {
        Phase::Create => {
            for i in 0..n {
                let p = file(dir, t, i, false);
                File::create(&p).with_context(|| format!("create {}", p.display()))?;
            }
            Ok(n)
        }
        Phase::Stat => {
            for i in 0..n {
                let p = file(dir, t, i, false);
                std::fs::metadata(&p).with_context(|| format!("stat {}", p.display()))?;
            }
            Ok(n)
        }
        Phase::Readdir => {
            // Every thread lists its directory whole: in a shared one, all
            // threads' files.
            let expected = match layout {
                Layout::Shared => n * threads,
                Layout::Private => n,
            };
            let mut count = 0;
            for entry in
                std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?
            {
                entry?;
                count += 1;
            }
            if count != expected {
                bail!(
                    "listed {count} entries in {}, expected {expected}",
                    dir.display()
                );
            }
            Ok(count)
        }
        Phase::Rename => {
            for i in 0..n {
                let (from, to) = (file(dir, t, i, false), file(dir, t, i, true));
                std::fs::rename(&from, &to)
                    .with_context(|| format!("rename {} to {}", from.display(), to.display()))?;
            }
            Ok(n)
        }
        Phase::Unlink => {
            for i in 0..n {
                let p = file(dir, t, i, true);
                std::fs::remove_file(&p).with_context(|| format!("unlink {}", p.display()))?;
            }
            Ok(n)
        }
    }
}
