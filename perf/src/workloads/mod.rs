//! Workloads: what is measured. Each lives in its own file and implements
//! [`Workload`]; [`registry`] is the one place that lists them, in the order
//! they run. To add one (e.g. the plan-driven epoch-cache benchmark as
//! `epoch_cache.rs`): write the file, add `mod` below and a line to
//! `registry()`. Its name becomes a `--workloads` value; its figures land in
//! the JSON, the table and the plots with no other change. Sizes it needs
//! that no flag covers yet go in `config.rs`.
//!
//! A workload runs against all targets itself, so it can interleave them
//! (round 1 on every target, then round 2, ...): slow drift of the machine
//! then affects every target alike instead of whichever ran last.

pub mod chunks;
pub mod codec;
pub mod degraded;
pub mod epoch_cache;
pub mod large_file;
pub mod loader;
pub mod mdtest;
pub mod metadata;
pub mod shared_writes;

use anyhow::Result;

use crate::ctx::Ctx;
use crate::targets::Target;

pub trait Workload {
    /// Short name, used in `--workloads` and as the figures' workload.
    fn name(&self) -> &'static str;
    /// One line on what it measures (help text and report).
    fn describe(&self) -> &'static str;
    /// Kills storage nodes or otherwise leaves targets changed: such
    /// workloads run after all the others.
    fn destructive(&self) -> bool {
        false
    }
    /// Measures; records figures and latencies into `ctx`. A failure on one
    /// target should be recorded (`ctx.failed`) and the others continued;
    /// an `Err` ends only this workload.
    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()>;
}

/// Every workload, in running order (destructive ones are moved last).
pub fn registry() -> Vec<Box<dyn Workload>> {
    vec![
        Box::new(codec::Codec),
        Box::new(large_file::LargeFile),
        Box::new(chunks::Chunks),
        Box::new(loader::Loader),
        Box::new(metadata::Metadata),
        Box::new(mdtest::Mdtest),
        Box::new(shared_writes::SharedWrites),
        Box::new(epoch_cache::EpochCache),
        Box::new(degraded::Degraded),
    ]
}

/// Indices of the targets still alive (a target found dead is noted once
/// and skipped from then on).
pub fn live_targets(ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Vec<usize> {
    let mut live = Vec::new();
    for (i, t) in targets.iter_mut().enumerate() {
        if ctx.is_dead(t.name()) {
            continue;
        }
        match t.check() {
            Ok(()) => live.push(i),
            Err(e) => {
                let name = t.name().to_string();
                ctx.mark_dead(&name, &format!("{e:#}"));
            }
        }
    }
    live
}

/// Before a cold phase on `target`: its own caches (client restart), then
/// the kernel's. A failure is noted, and the phase runs anyway.
pub fn drop_caches(ctx: &mut Ctx, target: &mut dyn Target) {
    match target.drop_caches() {
        Ok(None) => {}
        Ok(Some(note)) => ctx.note(note),
        Err(e) => {
            let name = target.name().to_string();
            ctx.note(format!("{name}: could not empty its client cache: {e:#}"));
        }
    }
    ctx.drop_caches();
}

/// 10^6 bytes per second (the unit fio and most papers use).
pub fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / 1e6 / seconds.max(1e-9)
}

/// A fresh directory for `workload` under a target's root.
pub fn workload_dir(target: &dyn Target, workload: &str) -> Result<std::path::PathBuf> {
    let dir = target.root().join(workload);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
