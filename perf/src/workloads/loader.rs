//! The data-loader pattern: a dataset of many small files (default 20,000 x
//! 100 KiB in class directories of 1,000), read whole in a shuffled order by
//! W worker processes, one epoch after another, as PyTorch's DataLoader does
//! with a map-style dataset. Each round is a cold epoch (caches dropped
//! first, as when a job starts) and a warm one (straight after).
//!
//! The dataset is written once per target by the same workers (the write
//! figure is files/s and MB/s to durable: sync(2) is inside the timing); the
//! degraded-read workload reads the same dataset. Each round ends with a
//! warm epoch through a read-only mount where the target has one (torchfs
//! `--read-only`: no round trip per open), after one epoch that warms it;
//! the local disk's is one more warm epoch, its baseline. Other targets
//! have no such figure (the FUSE ceiling's null backend has no second,
//! read-only mount).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{drop_caches, live_targets, mb_per_s, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::data::{dataset, dirs_of, Content};
use crate::model::TargetKind;
use crate::targets::{nullfs, Target};
use crate::workers::{write_manifest, Manifest, Op, Outcome, Pool, Task};

pub struct Loader;

pub const NAME: &str = "loader";

/// Epoch numbers (for the shuffle) of round `r`: every target reads the
/// same orders.
fn epochs_of_round(round: usize) -> (u64, u64) {
    (2 * round as u64, 2 * round as u64 + 1)
}

impl Workload for Loader {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "many small files read whole in shuffled order by worker processes (PyTorch DataLoader)"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let phases = [
            ("cold", epoch_metrics("cold epoch", true)),
            ("warm", epoch_metrics("warm epoch", false)),
        ];
        let read_only = [
            Metric::new(NAME, "warm epoch, read-only mount", "samples/s"),
            Metric::new(NAME, "warm epoch, read-only mount MB/s", "MB/s"),
        ];
        for round in 0..ctx.config.loader_rounds {
            let (cold_epoch, warm_epoch) = epochs_of_round(round);
            for i in live_targets(ctx, targets) {
                ctx.check_interrupted()?;
                let target = &mut *targets[i];
                let name = target.name().to_string();
                let manifest = match ensure_dataset(ctx, target) {
                    Ok(m) => m,
                    Err(e) => {
                        ctx.failed(&phases[0].1[0], &name, &e.context("write the dataset"));
                        continue;
                    }
                };
                for ((phase, metrics), epoch) in phases.iter().zip([cold_epoch, warm_epoch]) {
                    if *phase == "cold" {
                        drop_caches(ctx, target);
                    }
                    let label = format!("{name} {phase} epoch {}", round + 1);
                    match read_epoch(ctx, &manifest, epoch, &label) {
                        Ok(out) => record_epoch(ctx, metrics, NAME, phase, &name, &out),
                        Err(e) => ctx.failed(&metrics[0], &name, &e),
                    }
                }
                let label = format!("{name} read-only warm epoch {}", round + 1);
                match read_only_epoch(ctx, target, &manifest, warm_epoch, &label) {
                    Ok(Some(out)) => record_epoch(ctx, &read_only, NAME, "warm-ro", &name, &out),
                    Ok(None) => {}
                    Err(e) => ctx.failed(&read_only[0], &name, &e),
                }
            }
        }
        Ok(())
    }
}

/// A warm epoch through `target`'s read-only mount, after one unrecorded
/// epoch that warms that mount; the local disk's through its root. None:
/// the target has no read-only mount.
fn read_only_epoch(
    ctx: &Ctx,
    target: &mut dyn Target,
    manifest: &Path,
    epoch: u64,
    label: &str,
) -> Result<Option<Outcome>> {
    let Some(read_only_root) = target.read_only_root()? else {
        if target.kind() == TargetKind::LocalDisk {
            return read_epoch(ctx, manifest, epoch, label).map(Some);
        }
        return Ok(None);
    };
    let file = std::fs::File::open(manifest).context("open the manifest")?;
    let mut m: Manifest =
        serde_json::from_reader(std::io::BufReader::new(file)).context("read the manifest")?;
    let rel = m
        .root
        .strip_prefix(target.root())
        .context("the dataset is not under the target's root")?
        .to_path_buf();
    m.root = read_only_root.join(rel);
    let name = format!("loader-{}-read-only", target.name());
    let path = write_manifest(&ctx.scratch, &name, &m)?;
    read_epoch(ctx, &path, epoch + 1_000, &format!("{label} (warming)"))?;
    read_epoch(ctx, &path, epoch, label).map(Some)
}

/// samples/s, MB/s: for one kind of epoch.
pub fn epoch_metrics(name: &str, cold: bool) -> [Metric; 2] {
    let mut samples = Metric::new(NAME, name, "samples/s").bounded(&[nullfs::NAME], &[]);
    let mut mb = Metric::new(NAME, format!("{name} MB/s"), "MB/s");
    if cold {
        samples = samples.cold();
        // Only a cold epoch has to come from the disk.
        mb = mb
            .cold()
            .bounded(&[nullfs::NAME], &[("disk", "rand read (loader)")]);
    } else {
        mb = mb.bounded(&[nullfs::NAME], &[]);
    }
    [samples, mb]
}

/// Records an epoch's figures and latencies; errors inside it are noted
/// (a target that returned short or failed reads is not silently fast).
pub fn record_epoch(
    ctx: &mut Ctx,
    metrics: &[Metric; 2],
    workload: &str,
    phase: &str,
    target: &str,
    out: &Outcome,
) {
    if out.errors > 0 {
        let err = anyhow::anyhow!(
            "{} of {} reads failed; first: {}",
            out.errors,
            out.tasks,
            out.first_error.as_deref().unwrap_or("?")
        );
        ctx.failed(&metrics[0], target, &err);
        return;
    }
    let samples_s = out.tasks as f64 / out.wall_s;
    ctx.sample(&metrics[0], target, samples_s);
    ctx.sample(&metrics[1], target, mb_per_s(out.bytes, out.wall_s));
    ctx.latencies(workload, phase, target, &out.latencies_us);
    ctx.log(format!(
        "[{workload}] {target} {phase}: {samples_s:.0} samples/s, {:.0} MB/s, {:.1} s",
        mb_per_s(out.bytes, out.wall_s),
        out.wall_s
    ));
}

/// One epoch over the dataset with fresh worker processes.
pub fn read_epoch(ctx: &Ctx, manifest: &Path, epoch: u64, label: &str) -> Result<Outcome> {
    let mut pool = Pool::spawn(&ctx.exe, ctx.config.workers)?;
    pool.load(manifest)?;
    let bar = ctx.bar(ctx.config.loader_files as u64, label);
    let out = pool.run(
        Op::ReadWhole,
        Some((ctx.config.seed, epoch)),
        false,
        false,
        &bar,
    );
    bar.finish_and_clear();
    out
}

/// The dataset's manifest on `target`, writing the dataset first if this
/// run has not yet (recording the write figures then).
pub fn ensure_dataset(ctx: &mut Ctx, target: &dyn Target) -> Result<PathBuf> {
    let key = format!("{NAME}/{}", target.name());
    if let Some(path) = ctx.shared.get(&key) {
        return Ok(path.clone());
    }
    let name = target.name().to_string();
    let cfg = &ctx.config;
    let files = dataset(
        cfg.loader_files,
        cfg.loader_file_bytes,
        cfg.loader_size_sigma,
        cfg.seed,
    );
    let dir = workload_dir(target, NAME)?;
    for d in dirs_of(&files) {
        std::fs::create_dir(dir.join(&d)).with_context(|| format!("mkdir {d}"))?;
    }
    let manifest = Manifest {
        root: dir,
        tasks: (0..files.len())
            .map(|file| Task {
                file,
                offset: 0,
                len: 0,
            })
            .collect(),
        files,
        content_seed: cfg.seed,
        request_bytes: cfg.request_bytes,
    };
    let path = write_manifest(&ctx.scratch, &format!("loader-{name}"), &manifest)?;
    let mut pool = Pool::spawn(&ctx.exe, cfg.workers)?;
    pool.load(&path)?;
    let bar = ctx.bar(
        manifest.files.len() as u64,
        &format!("{name} write dataset"),
    );
    let out = pool.run(Op::Write, None, false, true, &bar);
    bar.finish_and_clear();
    let out = out?;
    let files_metric = Metric::new(NAME, "write dataset", "files/s").bounded(&[nullfs::NAME], &[]);
    let mb_metric = Metric::new(NAME, "write dataset MB/s", "MB/s")
        .bounded(&[nullfs::NAME], &[("disk", "seq write")]);
    if out.errors > 0 {
        anyhow::bail!(
            "{} of {} files failed; first: {}",
            out.errors,
            out.tasks,
            out.first_error.unwrap_or_default()
        );
    }
    ctx.sample(&files_metric, &name, out.tasks as f64 / out.wall_s);
    ctx.sample(&mb_metric, &name, mb_per_s(out.bytes, out.wall_s));
    ctx.latencies(NAME, "write", &name, &out.latencies_us);
    ctx.log(format!(
        "[{NAME}] {name} wrote {} files in {:.1} s ({:.0} files/s)",
        out.tasks,
        out.wall_s,
        out.tasks as f64 / out.wall_s
    ));
    if !target.synthetic_data() {
        check_sample(&manifest, ctx.config.seed)
            .with_context(|| format!("{name}: dataset content check"))?;
    }
    ctx.shared.insert(key, path.clone());
    Ok(path)
}

/// Reads back a few files and compares them with what was written.
fn check_sample(manifest: &Manifest, seed: u64) -> Result<()> {
    let content = Content::new(seed);
    let n = manifest.files.len();
    for k in 0..16.min(n) {
        let spec = &manifest.files[(k * 7919) % n];
        let path = manifest.root.join(&spec.path);
        let data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        if data.len() as u64 != spec.bytes || !content.matches(spec.id, 0, &data) {
            anyhow::bail!("{} does not hold what was written", path.display());
        }
    }
    Ok(())
}
