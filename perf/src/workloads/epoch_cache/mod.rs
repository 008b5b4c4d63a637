//! The epoch cache (issue 4): a shuffled multi-epoch read of (1) many small
//! files read whole and (2) a few large files read in shuffled chunks, with
//! the client's memory cache at 25%, 50% and 100% of the dataset, comparing
//! in one run torchfs with plans, torchfs without plans (LRU + readahead)
//! and the same files on the local disk. The torchfs modes run twice: on
//! the dataset as written, then frozen (`torchfs freeze`: the mount loads
//! its metadata once and opens need no metad round trip), as a training
//! job would use a finished dataset.
//!
//! The data loader is modelled as PyTorch's: W worker *processes* (this
//! binary as `__epoch_worker`) read batches (batch b goes to worker b mod W,
//! at most `prefetch` batches outstanding per worker), and a trainer (this
//! process) consumes the batches in order, spending `--epoch-cache-step-ms`
//! per batch on the "training step". A loader that only reads can never
//! "never wait" unless storage outruns it, so the step time is part of the
//! setup and is reported with the numbers. The trainer publishes each
//! epoch's plan (and the next one's) before the epoch's first batch, as
//! the Python `PlanSampler` does.
//!
//! Each (case, cache size, mode) gets its own `torchfs mount` of the
//! harness's cluster (same data, fresh client cache; page cache dropped
//! before its first epoch); per epoch it reports wall time, samples/s, hit
//! ratio, reads without a stall, client stall time, trainer wait time and
//! bytes read from storage nodes (from `.torchfs/stats`). The full table
//! goes to `<out>/epoch_cache.md`; the steady-state (epochs 2+) samples/s
//! also go into the harness's figures.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

mod loader;
mod report;

use loader::run_epochs;
pub use loader::serve_worker;
use report::record;

use super::Workload;
use crate::ctx::Ctx;
use crate::data::pattern;
use crate::model::TargetKind;
use crate::targets::{wait_for_mount, Target};

pub struct EpochCache;

pub const NAME: &str = "epoch_cache";
/// DataLoader's default prefetch factor (batches outstanding per worker).
const PREFETCH_BATCHES: usize = 2;
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
enum Mode {
    Plan,
    NoPlan,
    /// The dataset frozen (`torchfs freeze`), with plans.
    FrozenPlan,
    FrozenNoPlan,
    Local,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plan => "torchfs, plans",
            Mode::NoPlan => "torchfs, no plan",
            Mode::FrozenPlan => "torchfs frozen, plans",
            Mode::FrozenNoPlan => "torchfs frozen, no plan",
            Mode::Local => "local disk",
        }
    }

    fn plans(self) -> bool {
        matches!(self, Mode::Plan | Mode::FrozenPlan)
    }
}

/// One dataset: files (relative paths, sizes) and the samples read from
/// them per epoch (whole files, or chunks).
struct Case {
    name: &'static str,
    /// The directory under the workload's root holding every file.
    dir: &'static str,
    files: Vec<(String, u64)>,
    /// (file, offset, len); len 0 = the whole file.
    samples: Vec<(usize, u64, u64)>,
}

impl Case {
    fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.1).sum()
    }
}

fn cases(ctx: &Ctx) -> Vec<Case> {
    let c = &ctx.config;
    let small = Case {
        name: "small files",
        dir: "small",
        files: (0..c.loader_files)
            .map(|i| {
                (
                    format!("small/d{:03}/f{i:06}", i / 1000),
                    c.loader_file_bytes,
                )
            })
            .collect(),
        samples: (0..c.loader_files).map(|i| (i, 0, 0)).collect(),
    };
    let total = c.loader_files as u64 * c.loader_file_bytes;
    let chunk = c.epoch_cache_chunk_bytes.max(4096);
    let big_files = c.shard_files.max(1) as u64;
    let per_file = (total / big_files).div_ceil(chunk).max(1) * chunk;
    let large = Case {
        name: "large files, chunks",
        dir: "large",
        files: (0..big_files)
            .map(|i| (format!("large/shard-{i}.bin"), per_file))
            .collect(),
        samples: (0..big_files as usize)
            .flat_map(|f| (0..per_file / chunk).map(move |k| (f, k * chunk, chunk)))
            .collect(),
    };
    vec![small, large]
}

/// One row of the table.
#[derive(Clone, Debug, Serialize)]
struct Row {
    case: &'static str,
    cache_pct: u32,
    mode: Mode,
    epoch: usize,
    wall_s: f64,
    samples_per_s: f64,
    hit_ratio: Option<f64>,
    no_stall_pct: Option<f64>,
    stall_s: Option<f64>,
    trainer_wait_s: f64,
    storage_mb: Option<f64>,
    /// Bytes the prefetcher brought into the memory tier that were
    /// evicted before any read used them.
    wasted_mb: Option<f64>,
    /// Requests the client sent metad per sample read.
    metad_per_sample: Option<f64>,
}

impl Workload for EpochCache {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "shuffled multi-epoch reads with the client cache at 25/50/100% of the dataset: plans vs no plan vs local disk"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let Some(ti) = targets.iter().position(|t| t.kind() == TargetKind::System) else {
            ctx.note(format!("{NAME}: skipped (no torchfs target)"));
            return Ok(());
        };
        let info = targets[ti].info();
        let (Some(bin), Some(port)) = (info.details.get("binary"), info.details.get("base port"))
        else {
            ctx.note(format!(
                "{NAME}: skipped (needs the cluster the harness starts, to mount it with cache flags)"
            ));
            return Ok(());
        };
        let port: u16 = port.parse().context("base port")?;
        let metad: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", port + i)).collect();
        let torchfs_root = targets[ti].root().to_path_buf();
        let up_mount = mount_root_of(&torchfs_root)?;
        let rel_root = torchfs_root.strip_prefix(&up_mount)?.join(NAME);
        let local_root = targets
            .iter()
            .find(|t| t.kind() == TargetKind::LocalDisk)
            .map(|t| t.root().join(NAME));
        let mnt = ctx.scratch.join("epoch-cache-mnt");
        std::fs::create_dir_all(&mnt)?;
        let mut rows = Vec::new();
        for case in cases(ctx) {
            ctx.check_interrupted()?;
            write_case(ctx, &case, &up_mount.join(&rel_root))?;
            if let Some(local) = &local_root {
                write_case(ctx, &case, local)?;
            }
            let versions = ctx.config.epoch_cache_versions;
            let mode_sets = [
                (versions.as_written(), [Mode::Plan, Mode::NoPlan]),
                (versions.frozen(), [Mode::FrozenPlan, Mode::FrozenNoPlan]),
            ];
            for (_, modes) in mode_sets.into_iter().filter(|(wanted, _)| *wanted) {
                // Thawed again when dropped, so the dataset can be removed.
                let _frozen = (modes[0] == Mode::FrozenPlan)
                    .then(|| Frozen::freeze(Path::new(bin), &metad, &rel_root.join(case.dir)))
                    .transpose()?;
                for &pct in &ctx.config.epoch_cache_percents.clone() {
                    for mode in modes {
                        let budget = case.bytes() * pct as u64 / 100;
                        let mount = Mount::start(
                            Path::new(bin),
                            &metad,
                            &mnt,
                            budget,
                            ctx.config.workers,
                            &ctx.config.epoch_cache_mount_args,
                        )?;
                        ctx.drop_caches();
                        let result = run_epochs(
                            ctx,
                            &case,
                            &mnt.join(&rel_root),
                            Some(&mnt),
                            &rel_root,
                            mode,
                            pct,
                        );
                        mount.stop();
                        rows.extend(result?);
                    }
                }
            }
            if let Some(local) = &local_root {
                ctx.drop_caches();
                rows.extend(run_epochs(
                    ctx,
                    &case,
                    local,
                    None,
                    Path::new(""),
                    Mode::Local,
                    0,
                )?);
            }
        }
        let local_name = targets
            .iter()
            .find(|t| t.kind() == TargetKind::LocalDisk)
            .map_or_else(|| "local".to_string(), |t| t.name().to_string());
        record(ctx, &rows, targets[ti].name().to_string(), local_name)?;
        Ok(())
    }
}

/// The torchfs mount point holding `path` (the nearest ancestor with
/// `.torchfs/`).
fn mount_root_of(path: &Path) -> Result<PathBuf> {
    let mut d = path.to_path_buf();
    loop {
        if d.join(".torchfs/stats").exists() {
            return Ok(d);
        }
        if !d.pop() {
            bail!("{} is not on a torchfs mount", path.display());
        }
    }
}

/// Files written in parallel (creates are metadata round trips).
const WRITE_THREADS: usize = 8;

fn write_case(ctx: &Ctx, case: &Case, root: &Path) -> Result<()> {
    let started = Instant::now();
    let largest = case.files.iter().map(|f| f.1).max().unwrap_or(0);
    let buf = pattern(largest.min(64 << 20) as usize, ctx.config.seed);
    for (path, _) in &case.files {
        if let Some(dir) = root.join(path).parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WRITE_THREADS)
            .map(|t| {
                let buf = &buf;
                s.spawn(move || -> Result<()> {
                    for (path, bytes) in case.files.iter().skip(t).step_by(WRITE_THREADS) {
                        let p = root.join(path);
                        let mut f =
                            File::create(&p).with_context(|| format!("create {}", p.display()))?;
                        let mut left = *bytes as usize;
                        while left > 0 {
                            let n = left.min(buf.len());
                            f.write_all(&buf[..n])?;
                            left -= n;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| anyhow::anyhow!("writer panicked"))?)
    })?;
    ctx.log(format!(
        "[{NAME}] wrote {} ({} files, {:.0} MB) under {} in {:.1} s",
        case.name,
        case.files.len(),
        case.bytes() as f64 / 1e6,
        root.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A directory frozen with `torchfs freeze` until dropped.
struct Frozen {
    bin: PathBuf,
    metad: Vec<String>,
    /// The directory's path inside the filesystem, from its root.
    inner: String,
}

impl Frozen {
    fn freeze(bin: &Path, metad: &[String], rel: &Path) -> Result<Frozen> {
        let frozen = Frozen {
            bin: bin.to_path_buf(),
            metad: metad.to_vec(),
            inner: format!("/{}", rel.display()),
        };
        frozen.run("freeze")?;
        Ok(frozen)
    }

    fn run(&self, verb: &str) -> Result<()> {
        let out = Command::new(&self.bin)
            .arg(verb)
            .arg(&self.inner)
            .arg("--metad")
            .arg(self.metad.join(","))
            .output()
            .with_context(|| format!("run torchfs {verb}"))?;
        if !out.status.success() {
            bail!(
                "torchfs {verb} {}: {}",
                self.inner,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = self.run("unfreeze") {
            eprintln!("[{NAME}] {e:#}");
        }
    }
}

/// A `torchfs mount` with a given cache budget.
struct Mount {
    child: Child,
    path: PathBuf,
}

impl Mount {
    fn start(
        bin: &Path,
        metad: &[String],
        path: &Path,
        cache_bytes: u64,
        threads: usize,
        extra_args: &[String],
    ) -> Result<Mount> {
        let log = File::create(path.with_extension("log"))?;
        let mut child = Command::new(bin)
            .arg("mount")
            .arg(path)
            .arg("--metad")
            .arg(metad.join(","))
            .arg("--threads")
            .arg(threads.max(2).to_string())
            .arg("--cache-mem-bytes")
            .arg(cache_bytes.max(1).to_string())
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start torchfs mount")?;
        wait_for_mount(path, "fuse", MOUNT_TIMEOUT, || match child.try_wait() {
            Ok(Some(s)) => bail!("torchfs mount exited: {s}"),
            _ => Ok(()),
        })?;
        Ok(Mount {
            child,
            path: path.to_path_buf(),
        })
    }

    fn stop(mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
        if crate::targets::mount_at(&self.path).is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}
