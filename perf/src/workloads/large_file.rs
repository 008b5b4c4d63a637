//! Large files: one file written sequentially in request-sized writes and
//! fsync'ed (the write figure includes the fsync: without it ext4 would be
//! timed writing to its page cache), then read sequentially twice: cold
//! (caches dropped first) and hot (straight after).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use super::{drop_caches, live_targets, mb_per_s, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::data::{mix, Content};
use crate::targets::{nullfs, Target};

pub struct LargeFile;

pub const NAME: &str = "large-file";

fn metrics() -> [Metric; 3] {
    [
        Metric::new(NAME, "write (+fsync)", "MB/s")
            .bounded(&[nullfs::NAME], &[("disk", "seq write")]),
        Metric::new(NAME, "read cold", "MB/s").cold().bounded(
            &[nullfs::NAME],
            &[("disk", "seq read"), ("loopback", "tcp 1 stream")],
        ),
        Metric::new(NAME, "read hot", "MB/s")
            .bounded(&[nullfs::NAME], &[("loopback", "tcp 1 stream")]),
    ]
}

impl Workload for LargeFile {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "one large file: sequential write + fsync, then sequential read cold and hot"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let [write, cold, hot] = metrics();
        let bytes = ctx.config.large_file_bytes;
        let request = ctx.config.request_bytes as usize;
        let content = Content::new(ctx.config.seed);
        let id = mix(ctx.config.seed ^ 0x1a4e);
        let repeats = ctx.config.repeats;
        for round in 0..repeats {
            for i in live_targets(ctx, targets) {
                ctx.check_interrupted()?;
                let target = &mut *targets[i];
                let name = target.name().to_string();
                let dir = workload_dir(target, NAME)?;
                let path = dir.join("large.bin");
                let label = |phase: &str| format!("{name} {phase} {}/{}", round + 1, repeats);
                drop_caches(ctx, target);
                let mut said = Vec::new();
                let bar = ctx.bar(bytes >> 20, &label("write"));
                let result = write_file(&path, id, bytes, request, &content, &bar);
                bar.finish_and_clear();
                match result {
                    Ok(s) => {
                        ctx.sample(&write, &name, mb_per_s(bytes, s));
                        said.push(format!("write {:.0} MB/s", mb_per_s(bytes, s)));
                    }
                    Err(e) => {
                        ctx.failed(&write, &name, &e);
                        continue;
                    }
                }
                for (metric, drop) in [(&cold, true), (&hot, false)] {
                    if drop {
                        drop_caches(ctx, target);
                    }
                    let bar = ctx.bar(bytes >> 20, &label(&metric.name));
                    let result = read_file(&path, bytes, request, &bar);
                    bar.finish_and_clear();
                    match result {
                        Ok(s) => {
                            ctx.sample(metric, &name, mb_per_s(bytes, s));
                            said.push(format!("{} {:.0} MB/s", metric.name, mb_per_s(bytes, s)));
                        }
                        Err(e) => ctx.failed(metric, &name, &e),
                    }
                }
                if round == 0 && !target.synthetic_data() {
                    if let Err(e) = verify(&path, id, bytes, request, &content) {
                        ctx.note(format!("{name}: large file content check failed: {e:#}"));
                    }
                }
                std::fs::remove_file(&path).ok();
                ctx.log(format!(
                    "[{NAME}] {name} round {}: {}",
                    round + 1,
                    said.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Writes and fsyncs; returns the seconds taken.
pub(super) fn write_file(
    path: &Path,
    id: u64,
    bytes: u64,
    request: usize,
    content: &Content,
    bar: &ProgressBar,
) -> Result<f64> {
    let started = Instant::now();
    let mut file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut done = 0u64;
    while done < bytes {
        let chunk = content.slice(id, done, (bytes - done).min(request as u64) as usize);
        file.write_all(chunk)
            .with_context(|| format!("write {} at {done}", path.display()))?;
        done += chunk.len() as u64;
        bar.set_position(done >> 20);
    }
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    drop(file);
    Ok(started.elapsed().as_secs_f64())
}

/// Reads to EOF; returns the seconds taken. A short file is an error.
fn read_file(path: &Path, bytes: u64, request: usize, bar: &ProgressBar) -> Result<f64> {
    let mut buf = vec![0u8; request];
    let started = Instant::now();
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut done = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("read {} at {done}", path.display()))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        bar.set_position(done >> 20);
    }
    let seconds = started.elapsed().as_secs_f64();
    if done != bytes {
        bail!("read {done} bytes of {}, expected {bytes}", path.display());
    }
    Ok(seconds)
}

/// Checks a few spread-out requests of the file against what was written.
fn verify(path: &Path, id: u64, bytes: u64, request: usize, content: &Content) -> Result<()> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; request];
    for k in 0..8u64 {
        let offset = (mix(k) % bytes.div_ceil(request as u64)) * request as u64;
        let len = (bytes - offset).min(request as u64) as usize;
        file.read_exact_at(&mut buf[..len], offset)?;
        if !content.matches(id, offset, &buf[..len]) {
            bail!("bytes at offset {offset} differ from what was written");
        }
    }
    Ok(())
}
