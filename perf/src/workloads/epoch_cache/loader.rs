//! The data loader of the epoch-cache workload, modelled on PyTorch's:
//! the trainer (this process) publishes plans and consumes batches in
//! order with the step time; worker processes (this binary as
//! `__epoch_worker`) read the batches' samples.

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

use super::{Case, Mode, Row, NAME, PREFETCH_BATCHES};
use crate::ctx::Ctx;
use crate::data::permutation;

fn stats(mnt: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(mnt.join(".torchfs/stats"))?;
    Ok(serde_json::from_slice(&text)?)
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    num_at(v, &[key])
}

/// The number at `path` (object keys) in `v`; 0 when absent.
fn num_at(v: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter().fold(v, |x, k| &x[*k]).as_f64().unwrap_or(0.0)
}

/// What a worker is told: the epoch's samples in order and its share.
#[derive(Serialize, Deserialize)]
struct WorkerSpec {
    root: PathBuf,
    /// (path, offset, len) in epoch order; len 0 = whole file.
    samples: Vec<(String, u64, u64)>,
    batch: usize,
}

pub(super) fn run_epochs(
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
        if mode.plans() {
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
        if let (Some(b), Some(a)) = (&before, &after) {
            let delta = |path: &[&str]| num_at(a, path) - num_at(b, path);
            ctx.log(format!(
                "[{NAME}] {} {}% {} epoch {}: prefetches {:.0}, prefetched {:.0} MB, wasted {:.0} MB, \
                 evicted {:.0} MB, readahead {:.0} MB, metad requests {:.0}",
                case.name,
                pct,
                mode.label(),
                epoch + 1,
                delta(&["prefetch", "issued"]),
                delta(&["tiers", "memory", "prefetched_bytes"]) / 1e6,
                delta(&["tiers", "memory", "wasted_bytes"]) / 1e6,
                delta(&["tiers", "memory", "evicted_bytes"]) / 1e6,
                delta(&["prefetch", "readahead_bytes"]) / 1e6,
                delta(&["meta_requests"]),
            ));
        }
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
            wasted_mb: None,
            metad_per_sample: None,
        };
        if let (Some(b), Some(a)) = (before, after) {
            let reads = (num(&a, "reads") - num(&b, "reads")).max(1.0);
            row.hit_ratio = Some((num(&a, "hits") - num(&b, "hits")) / reads);
            row.no_stall_pct =
                Some(100.0 * (1.0 - (num(&a, "stalls") - num(&b, "stalls")) / reads));
            row.stall_s = Some(num(&a, "stall_seconds") - num(&b, "stall_seconds"));
            row.storage_mb =
                Some((num(&a, "storage_read_bytes") - num(&b, "storage_read_bytes")) / 1e6);
            row.metad_per_sample = Some((num(&a, "meta_requests") - num(&b, "meta_requests")) / n);
            let wasted = ["tiers", "memory", "wasted_bytes"];
            row.wasted_mb = Some((num_at(&a, &wasted) - num_at(&b, &wasted)) / 1e6);
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
