//! The epoch cache (issue 4): a shuffled multi-epoch read of (1) many small
//! files read whole and (2) a few large files read in shuffled chunks, with
//! the client's memory cache at 25%, 50% and 100% of the dataset, comparing
//! in one run torchfs with plans, torchfs without plans (LRU + readahead)
//! and the same files on the local disk.
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

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use torchfs_client::core::cache::{render_plan, ByteRange};

use super::Workload;
use crate::ctx::{Ctx, Metric};
use crate::data::{pattern, permutation};
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
    /// Plans, and opens of prefetched files trust the prefetched layout
    /// (`--cache-trust-ms`: no metad round trip per open).
    PlanTrust,
    NoPlan,
    Local,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Plan => "torchfs, plans",
            Mode::PlanTrust => "torchfs, plans + trust",
            Mode::NoPlan => "torchfs, no plan",
            Mode::Local => "local disk",
        }
    }
}

/// One dataset: files (relative paths, sizes) and the samples read from
/// them per epoch (whole files, or chunks).
struct Case {
    name: &'static str,
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
            for &pct in &ctx.config.epoch_cache_percents.clone() {
                for mode in [Mode::Plan, Mode::PlanTrust, Mode::NoPlan] {
                    let budget = case.bytes() * pct as u64 / 100;
                    let trust = mode == Mode::PlanTrust;
                    let mount = Mount::start(
                        Path::new(bin),
                        &metad,
                        &mnt,
                        budget,
                        ctx.config.workers,
                        trust,
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
        trust: bool,
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
            .arg("--cache-trust-ms")
            .arg(if trust { "600000" } else { "0" })
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

fn stats(mnt: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(mnt.join(".torchfs/stats"))?;
    Ok(serde_json::from_slice(&text)?)
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// What a worker is told: the epoch's samples in order and its share.
#[derive(Serialize, Deserialize)]
struct WorkerSpec {
    root: PathBuf,
    /// (path, offset, len) in epoch order; len 0 = whole file.
    samples: Vec<(String, u64, u64)>,
    batch: usize,
}

fn run_epochs(
    ctx: &mut Ctx,
    case: &Case,
    root: &Path,
    mnt: Option<&Path>,
    rel_root: &Path,
    mode: Mode,
    pct: u32,
) -> Result<Vec<Row>> {
    let cfg = ctx.config.clone();
    let mut rows = Vec::new();
    for epoch in 0..cfg.epoch_cache_epochs {
        let order = permutation(case.samples.len(), cfg.seed, epoch as u64);
        if matches!(mode, Mode::Plan | Mode::PlanTrust) {
            if let Some(m) = mnt {
                for e in [epoch, epoch + 1] {
                    publish(
                        m,
                        case,
                        rel_root,
                        e as u64,
                        &permutation(case.samples.len(), cfg.seed, e as u64),
                    )?;
                }
            }
        }
        let spec = WorkerSpec {
            root: root.to_path_buf(),
            samples: order
                .iter()
                .map(|&s| {
                    let (f, off, len) = case.samples[s];
                    (case.files[f].0.clone(), off, len)
                })
                .collect(),
            batch: cfg.epoch_cache_batch.max(1),
        };
        let spec_path = ctx.scratch.join("epoch-cache-spec.json");
        std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
        let before = mnt.map(stats).transpose()?;
        let (wall_s, wait_s) = trainer(ctx, &spec_path, spec.samples.len(), spec.batch)?;
        let after = mnt.map(stats).transpose()?;
        let n = spec.samples.len() as f64;
        let mut row = Row {
            case: case.name,
            cache_pct: pct,
            mode,
            epoch: epoch + 1,
            wall_s,
            samples_per_s: n / wall_s,
            hit_ratio: None,
            no_stall_pct: None,
            stall_s: None,
            trainer_wait_s: wait_s,
            storage_mb: None,
        };
        if let (Some(b), Some(a)) = (before, after) {
            let reads = (num(&a, "reads") - num(&b, "reads")).max(1.0);
            row.hit_ratio = Some((num(&a, "hits") - num(&b, "hits")) / reads);
            row.no_stall_pct =
                Some(100.0 * (1.0 - (num(&a, "stalls") - num(&b, "stalls")) / reads));
            row.stall_s = Some(num(&a, "stall_seconds") - num(&b, "stall_seconds"));
            row.storage_mb =
                Some((num(&a, "storage_read_bytes") - num(&b, "storage_read_bytes")) / 1e6);
        }
        ctx.log(format!(
            "[{NAME}] {} {}% {} epoch {}: {:.1} s, {:.0} samples/s, hit {:.2}, no-stall {:.1}%, trainer waited {:.2} s",
            case.name,
            pct,
            mode.label(),
            epoch + 1,
            wall_s,
            row.samples_per_s,
            row.hit_ratio.unwrap_or(f64::NAN),
            row.no_stall_pct.unwrap_or(f64::NAN),
            wait_s
        ));
        rows.push(row);
    }
    Ok(rows)
}

fn publish(mnt: &Path, case: &Case, rel_root: &Path, epoch: u64, order: &[usize]) -> Result<()> {
    let items: Vec<(String, Option<ByteRange>)> = order
        .iter()
        .map(|&s| {
            let (f, offset, len) = case.samples[s];
            let path = rel_root
                .join(&case.files[f].0)
                .to_string_lossy()
                .into_owned();
            let range = (len > 0).then_some(ByteRange {
                offset,
                len_bytes: len,
            });
            (path, range)
        })
        .collect();
    let text = render_plan(epoch, 0, &items);
    let mut f = File::create(mnt.join(".torchfs/plan"))?;
    f.write_all(text.as_bytes())?;
    // close() is where the plan is parsed: check its result.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: we own fd (taken from the File) and close it once.
    if unsafe { libc::close(fd) } != 0 {
        bail!(
            "plan for epoch {epoch} rejected: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Runs one epoch: spawns the workers, feeds them batches as DataLoader
/// does, consumes batches in order with the step time. Returns (wall s,
/// seconds the trainer waited for data).
fn trainer(ctx: &Ctx, spec: &Path, samples: usize, batch: usize) -> Result<(f64, f64)> {
    let w = ctx.config.workers.max(1);
    let batches = samples.div_ceil(batch);
    let (tx, rx) = channel::<(usize, Result<usize, String>)>();
    let mut workers: Vec<(Child, ChildStdin)> = Vec::new();
    for i in 0..w {
        let mut child = Command::new(&ctx.exe)
            .arg("__epoch_worker")
            .arg(spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start epoch worker")?;
        let stdin = child.stdin.take().context("worker stdin")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace();
                let (Some(kind), Some(b)) =
                    (parts.next(), parts.next().and_then(|b| b.parse().ok()))
                else {
                    continue;
                };
                let msg = match kind {
                    "done" => Ok(b),
                    "ready" => Ok(usize::MAX),
                    _ => Err(line.clone()),
                };
                if tx.send((i, msg)).is_err() {
                    break;
                }
            }
        });
        workers.push((child, stdin));
    }
    drop(tx);
    // Every worker has parsed the spec before the clock starts.
    for _ in 0..w {
        match rx.recv() {
            Ok((_, Ok(_))) => {}
            Ok((i, Err(e))) => bail!("worker {i}: {e}"),
            Err(_) => bail!("a worker died at start"),
        }
    }
    let send = |workers: &mut Vec<(Child, ChildStdin)>, b: usize| -> Result<()> {
        writeln!(workers[b % w].1, "batch {b}").context("feed worker")
    };
    let started = Instant::now();
    for b in 0..batches.min(w * PREFETCH_BATCHES) {
        send(&mut workers, b)?;
    }
    let step = Duration::from_secs_f64(ctx.config.epoch_cache_step_ms / 1e3);
    let mut ready: HashMap<usize, ()> = HashMap::new();
    let mut waited = Duration::ZERO;
    for b in 0..batches {
        let t0 = Instant::now();
        while !ready.contains_key(&b) {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok((_, Ok(done))) => {
                    ready.insert(done, ());
                }
                Ok((i, Err(e))) => bail!("worker {i}: {e}"),
                Err(e) => bail!("waiting for batch {b}: {e}"),
            }
        }
        ready.remove(&b);
        waited += t0.elapsed();
        std::thread::sleep(step);
        let next = b + w * PREFETCH_BATCHES;
        if next < batches {
            send(&mut workers, next)?;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    for (mut child, stdin) in workers {
        drop(stdin);
        let _ = child.wait();
    }
    Ok((wall, waited.as_secs_f64()))
}

/// The worker process: reads the batches it is given (whole files, or
/// ranges), answers `done B` per batch.
pub fn serve_worker(spec: &Path) -> Result<()> {
    let spec: WorkerSpec = serde_json::from_slice(&std::fs::read(spec)?)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready 0")?;
    out.flush()?;
    let mut buf = vec![0u8; 1 << 20];
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let Some(b) = line
            .strip_prefix("batch ")
            .and_then(|b| b.parse::<usize>().ok())
        else {
            continue;
        };
        let start = b * spec.batch;
        for (path, offset, len) in spec.samples.iter().skip(start).take(spec.batch) {
            let p = spec.root.join(path);
            let result = (|| -> std::io::Result<()> {
                let mut f = File::open(&p)?;
                if *len == 0 {
                    while f.read(&mut buf)? > 0 {}
                } else {
                    let mut want = vec![0u8; *len as usize];
                    f.read_exact_at(&mut want, *offset)?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                writeln!(out, "error {b} {}: {e}", p.display())?;
                out.flush()?;
                return Ok(());
            }
        }
        writeln!(out, "done {b}")?;
        out.flush()?;
    }
    Ok(())
}

/// The table (Markdown and JSON in the output directory) and the
/// steady-state samples/s as harness figures.
fn record(ctx: &mut Ctx, rows: &[Row], torchfs_name: String, local_name: String) -> Result<()> {
    let c = ctx.config.clone();
    let mut md = format!(
        "# Epoch cache: plans vs no plan vs local disk\n\n\
         {} worker processes, batch {}, training step {} ms per batch (the trainer's compute), \
         prefetch {} batches per worker; dataset cases: {} x {} B small files; large files in {} B chunks. \
         Cache % is the client's memory budget as a share of the dataset. Hit ratio, no-stall % and \
         stall s come from the client (`.torchfs/stats`, per FUSE read); trainer wait is the time the \
         training loop waited for a batch.\n\n\
         | case | cache | mode | epoch | wall s | samples/s | hit ratio | reads without stall | client stall s | trainer wait s | storage MB |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        c.workers, c.epoch_cache_batch, c.epoch_cache_step_ms, PREFETCH_BATCHES, c.loader_files,
        c.loader_file_bytes, c.epoch_cache_chunk_bytes
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {:.2} | {} |\n",
            r.case,
            if r.mode == Mode::Local {
                "-".into()
            } else {
                format!("{}%", r.cache_pct)
            },
            r.mode.label(),
            r.epoch,
            r.wall_s,
            r.samples_per_s,
            opt(r.hit_ratio, 3),
            r.no_stall_pct
                .map_or("-".to_string(), |v| format!("{v:.1}%")),
            opt(r.stall_s, 2),
            r.trainer_wait_s,
            opt(r.storage_mb, 0)
        ));
    }
    std::fs::create_dir_all(&c.out)?;
    std::fs::write(c.out.join("epoch_cache.md"), &md)?;
    std::fs::write(
        c.out.join("epoch_cache.json"),
        serde_json::to_vec_pretty(rows)?,
    )?;
    for r in rows.iter().filter(|r| r.epoch >= 2) {
        let target = if r.mode == Mode::Local {
            local_name.as_str()
        } else {
            torchfs_name.as_str()
        };
        let name = match r.mode {
            Mode::Local => format!("{} epochs 2+", r.case),
            m => format!("{} {}% cache, {} epochs 2+", r.case, r.cache_pct, m.label()),
        };
        let metric = Metric::new(NAME, name, "samples/s");
        ctx.sample(&metric, target, r.samples_per_s);
    }
    ctx.log(format!(
        "[{NAME}] table written to {}",
        c.out.join("epoch_cache.md").display()
    ));
    Ok(())
}
