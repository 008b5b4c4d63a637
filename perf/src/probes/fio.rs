//! Disk limits with fio (Debian `fio`), O_DIRECT so the page cache is out of
//! it: sequential read and write (1 MiB, queue depth 32, io_uring), and
//! random reads shaped like the two read workloads (W synchronous readers
//! of the loader's file size; of the chunk size). The probe file lives in
//! the work directory, on the disk that holds the storage nodes' fragments
//! and the GlusterFS bricks.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::TARGET;
use crate::ctx::{Ctx, Metric};

const WORKLOAD: &str = "disk";

struct Job {
    metric: &'static str,
    rw: &'static str,
    bs: u64,
    engine_args: Vec<String>,
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    if Command::new("fio").arg("--version").output().is_err() {
        ctx.note("fio is not installed (apt-get install -y fio): no disk limits");
        return Ok(());
    }
    let dir = ctx.config.work_dir.join("fio");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("probe.dat");
    let size: u64 = if ctx.config.quick { 64 << 20 } else { 2 << 30 };
    let workers = ctx.config.workers.to_string();
    let round4k = |b: u64| b.div_ceil(4096).max(1) * 4096;
    let queued = |depth: u32| {
        vec![
            "--ioengine=io_uring".to_string(),
            format!("--iodepth={depth}"),
        ]
    };
    let parallel = vec![
        "--ioengine=psync".to_string(),
        format!("--numjobs={workers}"),
        "--group_reporting".to_string(),
    ];
    let jobs = [
        Job {
            metric: "seq read",
            rw: "read",
            bs: 1 << 20,
            engine_args: queued(32),
        },
        Job {
            metric: "seq write",
            rw: "write",
            bs: 1 << 20,
            engine_args: queued(32),
        },
        Job {
            metric: "rand read (loader)",
            rw: "randread",
            bs: round4k(ctx.config.loader_file_bytes),
            engine_args: parallel.clone(),
        },
        Job {
            metric: "rand read (chunks)",
            rw: "randread",
            bs: round4k(ctx.config.chunk_bytes),
            engine_args: parallel,
        },
    ];
    for round in 0..ctx.config.repeats {
        for job in &jobs {
            ctx.check_interrupted()?;
            let metric = Metric::new(WORKLOAD, job.metric, "MB/s");
            match fio(&file, size, job, ctx.config.probe_seconds) {
                Ok(bytes_s) => {
                    ctx.sample(&metric, TARGET, bytes_s / 1e6);
                    ctx.log(format!(
                        "[probe] disk {} (bs {}) round {}: {:.0} MB/s",
                        job.metric,
                        crate::units::format_bytes(job.bs),
                        round + 1,
                        bytes_s / 1e6
                    ));
                }
                Err(e) => ctx.failed(&metric, TARGET, &e),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs one fio job; bytes per second.
fn fio(file: &Path, size: u64, job: &Job, seconds: u64) -> Result<f64> {
    let out = Command::new("fio")
        .arg("--name=probe")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg("--direct=1")
        .arg(format!("--runtime={seconds}"))
        .arg("--time_based")
        .arg("--output-format=json")
        .args(&job.engine_args)
        .output()
        .context("run fio")?;
    if !out.status.success() {
        bail!(
            "fio {} failed: {}",
            job.rw,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_bandwidth(&String::from_utf8_lossy(&out.stdout), job.rw)
}

/// The read or write bandwidth (bytes/s) of the first job of fio's JSON.
/// fio may print warnings before the JSON: skip to the first '{'.
fn parse_bandwidth(output: &str, rw: &str) -> Result<f64> {
    let json = &output[output.find('{').context("no JSON in fio's output")?..];
    let v: serde_json::Value = serde_json::from_str(json).context("parse fio's JSON")?;
    let side = if rw.contains("write") {
        "write"
    } else {
        "read"
    };
    v["jobs"][0][side]["bw_bytes"]
        .as_f64()
        .context("fio's JSON has no bw_bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bandwidth_after_warnings() {
        let out = "fio: some warning\n{\"jobs\":[{\"read\":{\"bw_bytes\":1500000000},\"write\":{\"bw_bytes\":0}}]}";
        assert_eq!(parse_bandwidth(out, "randread").unwrap(), 1.5e9);
        assert_eq!(parse_bandwidth(out, "write").unwrap(), 0.0);
        assert!(parse_bandwidth("no json", "read").is_err());
    }
}
