//! The epoch-cache table (Markdown and JSON) and its harness figures.

use anyhow::Result;

use super::{Mode, Row, NAME, PREFETCH_BATCHES};
use crate::ctx::{Ctx, Metric};

/// The table (Markdown and JSON in the output directory) and the
/// steady-state samples/s as harness figures.
pub(super) fn record(
    ctx: &mut Ctx,
    rows: &[Row],
    torchfs_name: String,
    local_name: String,
) -> Result<()> {
    let c = ctx.config.clone();
    let mut md = format!(
        "# Epoch cache: plans vs no plan vs local disk\n\n\
         {} worker processes, batch {}, training step {} ms per batch (the trainer's compute), \
         prefetch {} batches per worker; dataset cases: {} x {} B small files; large files in {} B chunks. \
         Cache % is the client's memory budget as a share of the dataset. Hit ratio, no-stall % and \
         stall s come from the client (`.torchfs/stats`, per FUSE read); trainer wait is the time the \
         training loop waited for a batch; wasted MB is what the prefetcher brought into memory that \
         was evicted before any read used it; metad/sample counts the client's requests to metad \
         (plan resolution, lookups, opens) per sample. \"frozen\": the dataset frozen with \
         `torchfs freeze` before the mount.\n\n\
         | case | cache | mode | epoch | wall s | samples/s | hit ratio | reads without stall | client stall s | trainer wait s | storage MB | wasted MB | metad/sample |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        c.workers, c.epoch_cache_batch, c.epoch_cache_step_ms, PREFETCH_BATCHES, c.loader_files,
        c.loader_file_bytes, c.epoch_cache_chunk_bytes
    );
    let opt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    for r in rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} | {:.0} | {} | {} | {} | {:.2} | {} | {} | {} |\n",
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
            opt(r.storage_mb, 0),
            opt(r.wasted_mb, 0),
            opt(r.metad_per_sample, 2)
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
