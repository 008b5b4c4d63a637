//! Degraded read and write: the data-loader dataset read again (cold
//! epochs) after `--fail-nodes` (default m=2) storage nodes were SIGKILLed
//! (torchfs's storage nodes, GlusterFS's brick processes): every read then
//! has to be served by the remaining nodes, decoding where a needed
//! fragment is lost. Then one large file written + fsync'd (a checkpoint)
//! with those nodes still down: torchfs stores each stripe without their
//! fragments (a degraded write).
//! Targets without nodes to kill (local disk, FUSE ceiling) are skipped.
//! Destructive: runs last, and the targets stay degraded until teardown.

use std::time::Duration;

use anyhow::Result;

use super::loader::{ensure_dataset, epoch_metrics, read_epoch, record_epoch};
use super::{drop_caches, live_targets, mb_per_s, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::data::{mix, Content};
use crate::model::Bound;
use crate::targets::Target;

pub struct Degraded;

const NAME: &str = "degraded";
/// torchfs up marks a node down after 5 s without heartbeats; reads are
/// measured after that, in the steady degraded state, not the transition.
const SETTLE: Duration = Duration::from_secs(6);

impl Workload for Degraded {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "the data-loader epochs again with m storage nodes killed (torchfs nodes, GlusterFS bricks)"
    }

    fn destructive(&self) -> bool {
        true
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let fail = ctx.config.fail_nodes;
        let [samples, mb] = epoch_metrics("cold epoch", true);
        let label = format!("cold epoch, {fail} nodes down");
        let metrics = [
            rename(samples, &label, super::loader::NAME, "cold epoch"),
            rename(
                mb,
                &format!("{label} MB/s"),
                super::loader::NAME,
                "cold epoch MB/s",
            ),
        ];
        let write = rename(
            Metric::new(NAME, "write (+fsync)", "MB/s")
                .bounded(&[crate::targets::nullfs::NAME], &[]),
            &format!("write (+fsync), {fail} nodes down"),
            super::large_file::NAME,
            "write (+fsync)",
        );
        let mut degraded = Vec::new();
        for i in live_targets(ctx, targets) {
            let name = targets[i].name().to_string();
            let killable = targets[i].nodes_killable();
            if killable == 0 {
                if targets[i].kind() == crate::model::TargetKind::System {
                    ctx.note(format!(
                        "{name}: degraded read skipped (no storage nodes the harness can kill)"
                    ));
                }
                continue;
            }
            if fail > killable {
                ctx.note(format!(
                    "{name}: degraded read skipped (--fail-nodes {fail} > {killable} it can lose)"
                ));
                continue;
            }
            // The dataset must be complete before nodes go.
            if let Err(e) = ensure_dataset(ctx, &*targets[i]) {
                ctx.failed(&metrics[0], &name, &e.context("write the dataset"));
                continue;
            }
            match targets[i].kill_nodes(fail) {
                Ok(said) => {
                    ctx.log(format!("[{NAME}] {name}: {said}"));
                    degraded.push(i);
                }
                Err(e) => ctx.failed(&metrics[0], &name, &e.context("kill storage nodes")),
            }
        }
        if degraded.is_empty() {
            return Ok(());
        }
        std::thread::sleep(SETTLE);
        for round in 0..ctx.config.loader_rounds {
            for &i in &degraded {
                ctx.check_interrupted()?;
                let name = targets[i].name().to_string();
                if ctx.is_dead(&name) {
                    continue;
                }
                let key = format!("{}/{name}", super::loader::NAME);
                let Some(manifest) = ctx.shared.get(&key).cloned() else {
                    continue;
                };
                drop_caches(ctx, &mut *targets[i]);
                // Epochs after the loader's own, so orders are new ones.
                let epoch = 1000 + round as u64;
                let bar_label = format!("{name} degraded epoch {}", round + 1);
                match read_epoch(ctx, &manifest, epoch, &bar_label) {
                    Ok(out) => record_epoch(ctx, &metrics, NAME, "cold", &name, &out),
                    Err(e) => ctx.failed(&metrics[0], &name, &e),
                }
            }
        }
        // A checkpoint written with the nodes still down.
        let bytes = ctx.config.large_file_bytes;
        let request = ctx.config.request_bytes as usize;
        let content = Content::new(ctx.config.seed);
        let id = mix(ctx.config.seed ^ 0xde9);
        for &i in &degraded {
            ctx.check_interrupted()?;
            let name = targets[i].name().to_string();
            if ctx.is_dead(&name) {
                continue;
            }
            let path = match workload_dir(&*targets[i], NAME) {
                Ok(dir) => dir.join("checkpoint.bin"),
                Err(e) => {
                    ctx.failed(&write, &name, &e);
                    continue;
                }
            };
            let bar = ctx.bar(bytes >> 20, &format!("{name} degraded write"));
            let result = super::large_file::write_file(&path, id, bytes, request, &content, &bar);
            bar.finish_and_clear();
            match result {
                Ok(s) => {
                    ctx.sample(&write, &name, mb_per_s(bytes, s));
                    ctx.log(format!(
                        "[{NAME}] {name}: write (+fsync) with {fail} nodes down {:.0} MB/s",
                        mb_per_s(bytes, s)
                    ));
                }
                Err(e) => ctx.failed(&write, &name, &e),
            }
            std::fs::remove_file(&path).ok();
        }
        Ok(())
    }
}

/// A healthy workload's metric under this workload's name, bounded by the
/// healthy figure on the FUSE ceiling (it has no nodes to lose).
fn rename(mut m: Metric, name: &str, healthy_workload: &'static str, healthy: &str) -> Metric {
    m.workload = NAME;
    m.name = name.to_string();
    for b in m.bounded_by.iter_mut() {
        if let Bound::SameMetricOn(target) = b {
            *b = Bound::Figure {
                workload: healthy_workload.into(),
                metric: healthy.into(),
                target: target.clone(),
            };
        }
    }
    m
}
