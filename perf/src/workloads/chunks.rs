//! Record-style datasets: a few large shard files read in fixed-size chunks
//! at shuffled offsets by W worker processes, each keeping its shards open
//! (as a record reader with random access does). Every chunk is read once
//! per pass; caches are dropped before each pass.

use anyhow::{bail, Result};

use super::{drop_caches, live_targets, mb_per_s, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::data::dataset;
use crate::targets::{nullfs, Target};
use crate::workers::{write_manifest, Manifest, Op, Pool, Task};

pub struct Chunks;

const NAME: &str = "chunks";

impl Workload for Chunks {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "large shard files read in chunks at shuffled offsets by worker processes (record datasets)"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let records = Metric::new(NAME, "shuffled read cold", "records/s")
            .cold()
            .bounded(&[nullfs::NAME], &[]);
        let mb = Metric::new(NAME, "shuffled read cold MB/s", "MB/s")
            .cold()
            .bounded(&[nullfs::NAME], &[("disk", "rand read (chunks)")]);
        let mut manifests = std::collections::HashMap::new();
        for round in 0..ctx.config.repeats {
            for i in live_targets(ctx, targets) {
                ctx.check_interrupted()?;
                let target = &mut *targets[i];
                let name = target.name().to_string();
                if !manifests.contains_key(&name) {
                    match write_shards(ctx, target) {
                        Ok(m) => {
                            manifests.insert(name.clone(), m);
                        }
                        Err(e) => {
                            ctx.failed(&records, &name, &e.context("write the shards"));
                            continue;
                        }
                    }
                }
                let (path, tasks) = &manifests[&name];
                drop_caches(ctx, target);
                let result = (|| {
                    let mut pool = Pool::spawn(&ctx.exe, ctx.config.workers)?;
                    pool.load(path)?;
                    let bar = ctx.bar(*tasks, &format!("{name} chunks {}", round + 1));
                    let out = pool.run(
                        Op::ReadRange,
                        Some((ctx.config.seed, round as u64)),
                        true,
                        false,
                        &bar,
                    );
                    bar.finish_and_clear();
                    out
                })();
                match result {
                    Ok(out) if out.errors == 0 => {
                        ctx.sample(&records, &name, out.tasks as f64 / out.wall_s);
                        ctx.sample(&mb, &name, mb_per_s(out.bytes, out.wall_s));
                        ctx.latencies(NAME, "cold", &name, &out.latencies_us);
                        ctx.log(format!(
                            "[{NAME}] {name} pass {}: {:.0} MB/s, {:.1} s",
                            round + 1,
                            mb_per_s(out.bytes, out.wall_s),
                            out.wall_s
                        ));
                    }
                    Ok(out) => {
                        let e = anyhow::anyhow!(
                            "{} of {} reads failed; first: {}",
                            out.errors,
                            out.tasks,
                            out.first_error.unwrap_or_default()
                        );
                        ctx.failed(&records, &name, &e);
                    }
                    Err(e) => ctx.failed(&records, &name, &e),
                }
            }
        }
        Ok(())
    }
}

/// Writes the shards (in parallel, one worker per shard) and returns the
/// manifest of chunk reads and its task count.
fn write_shards(ctx: &mut Ctx, target: &dyn Target) -> Result<(std::path::PathBuf, u64)> {
    let cfg = &ctx.config;
    let name = target.name().to_string();
    let mut files = dataset(
        cfg.shard_files,
        cfg.shard_file_bytes,
        0.0,
        cfg.seed ^ 0x5a4d,
    );
    for (i, f) in files.iter_mut().enumerate() {
        f.path = format!("shard-{i:04}.rec");
    }
    let chunk = cfg.chunk_bytes;
    let per_file = cfg.shard_file_bytes.div_ceil(chunk);
    let write_tasks: Vec<Task> = (0..files.len())
        .map(|file| Task {
            file,
            offset: 0,
            len: 0,
        })
        .collect();
    let read_tasks: Vec<Task> = (0..files.len())
        .flat_map(|file| {
            (0..per_file).map(move |c| Task {
                file,
                offset: c * chunk,
                len: chunk.min(cfg.shard_file_bytes - c * chunk),
            })
        })
        .collect();
    let dir = workload_dir(target, NAME)?;
    let mut manifest = Manifest {
        root: dir,
        files,
        tasks: write_tasks,
        content_seed: cfg.seed,
        request_bytes: cfg.request_bytes,
    };
    let write_path = write_manifest(&ctx.scratch, &format!("chunks-write-{name}"), &manifest)?;
    let mut pool = Pool::spawn(&ctx.exe, cfg.workers.min(manifest.files.len()))?;
    pool.load(&write_path)?;
    let bar = ctx.bar(manifest.files.len() as u64, &format!("{name} write shards"));
    let out = pool.run(Op::Write, None, false, true, &bar);
    bar.finish_and_clear();
    let out = out?;
    if out.errors > 0 {
        bail!(
            "{} shards failed; first: {}",
            out.errors,
            out.first_error.unwrap_or_default()
        );
    }
    let count = read_tasks.len() as u64;
    manifest.tasks = read_tasks;
    let read_path = write_manifest(&ctx.scratch, &format!("chunks-read-{name}"), &manifest)?;
    Ok((read_path, count))
}
