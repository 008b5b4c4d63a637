//! `torchfs-perf`: runs the same workloads against torchfs, the local disk,
//! a GlusterFS peer and physical limits in one run, and reports every figure
//! as a ratio to baselines measured in that same run (JSON, Markdown, PNG).
//!
//! Flow: set up the targets (those that cannot start are reported with the
//! reason), run the probes, run the workloads of `workloads::registry()`
//! (destructive ones last), tear the targets down, write the results.
//! The binary re-executes itself for worker processes (`__worker`) and the
//! FUSE-ceiling server (`__nullfs`: torchfs's own mount over the null
//! backend, `targets::nullfs`).

mod config;
mod ctx;
mod data;
mod machine;
mod model;
mod plots;
mod probes;
mod report;
mod stats;
mod targets;
mod units;
mod workers;
mod workloads;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use config::{Config, RunArgs, TargetChoice};
use ctx::Ctx;
use model::{Results, TargetInfo, TargetKind};
use targets::Target;

#[derive(Parser)]
#[command(
    name = "torchfs-perf",
    version,
    about = "Benchmark torchfs side by side with the local disk, GlusterFS and physical limits",
    long_about = "Benchmark torchfs side by side with the local disk, GlusterFS and physical limits.\n\n\
        One run brings up every target (torchfs via `torchfs up`, a local directory, torchfs's own \
        mount over a null backend (the FUSE ceiling) and, with --gluster, a GlusterFS disperse 4+2 \
        volume), probes the disk and loopback TCP, runs each workload on every target with the same bytes, order and cache state, and writes \
        <out>/<date>-<host>.json, .md (ratio table) and PNG plots. Figures are medians of \
        repeats, reported with min and max. Needs root for FUSE mounts, GlusterFS and dropping \
        caches; what cannot be done is reported and skipped.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    internal: Option<Internal>,
    #[command(flatten)]
    run: RunArgs,
    /// Exit non-zero when a requested target could not be used or a
    /// measurement failed (CI).
    #[arg(long)]
    strict: bool,
    /// Measure nothing: render the report and plots of this results file
    /// (an earlier run's JSON) into --out.
    #[arg(long, value_name = "RESULTS_JSON")]
    render: Option<PathBuf>,
}

/// Internal roles of the same binary; not for people.
#[derive(Subcommand)]
enum Internal {
    #[command(name = "__worker", hide = true)]
    Worker { index: usize, count: usize },
    #[command(name = "__nullfs", hide = true)]
    Nullfs {
        mountpoint: PathBuf,
        mounts_file: PathBuf,
    },
    #[command(name = "__epoch_worker", hide = true)]
    EpochWorker { spec: PathBuf },
}

fn main() -> ExitCode {
    let workload_help = workloads::registry()
        .iter()
        .map(|w| format!("  {:<14} {}", w.name(), w.describe()))
        .collect::<Vec<_>>()
        .join("\n");
    let command = Cli::command().after_help(format!(
        "Workloads (--workloads), in running order:\n{workload_help}\n\n\
         Example (the committed full run): torchfs-perf --out perf/results"
    ));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.internal {
        Some(Internal::Worker { index, count }) => workers::serve(index, count),
        Some(Internal::Nullfs {
            mountpoint,
            mounts_file,
        }) => targets::nullfs::serve(&mountpoint, &mounts_file),
        Some(Internal::EpochWorker { spec }) => workloads::epoch_cache::serve_worker(&spec),
        None => match cli.render {
            Some(json) => render(&json, &cli.run.out),
            None => run(cli.run, cli.strict),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("torchfs-perf: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs, strict: bool) -> Result<()> {
    let names: Vec<&str> = workloads::registry().iter().map(|w| w.name()).collect();
    let config = Config::resolve(args, &names)?;
    let started = Instant::now();
    let started_epoch = machine::now_epoch_s();
    ctx::install_interrupt_handler();
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("create {}", config.out.display()))?;
    std::fs::create_dir_all(&config.work_dir)
        .with_context(|| format!("create {}", config.work_dir.display()))?;
    let _lock = lock_work_dir(&config.work_dir)?;
    let leftovers = targets::unmount_below(&config.work_dir);
    let scratch = config.work_dir.join("scratch");
    targets::fresh_dir(&scratch)?;
    let exe = std::env::current_exe().context("find this executable")?;
    let torchfs_bin = targets::torchfs::find_binary(config.torchfs_bin.as_deref());
    let mut ctx = Ctx::new(config.clone(), exe.clone(), scratch.clone());
    if !leftovers.is_empty() {
        ctx.note(format!(
            "unmounted leftovers of an earlier run: {leftovers:?}"
        ));
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        ctx.note("not running as root: FUSE mounts, GlusterFS and dropping caches may fail");
    }

    // Other work on the machine skews every figure: say how busy it was.
    ctx.note(format!("load average at the start: {}", load_average()));
    let (mut live, mut infos) = start_targets(&mut ctx, &exe, torchfs_bin.as_deref());
    let outcome = measure(&mut ctx, &mut live);
    if let Err(e) = &outcome {
        ctx.note(format!("run stopped early: {e:#}"));
    }
    for t in live.iter_mut().rev() {
        let info = t.info();
        if let Err(e) = t.teardown() {
            ctx.note(format!("{}: teardown: {e:#}", t.name()));
        }
        infos.push(info);
    }
    ctx.note(format!("load average at the end: {}", load_average()));
    let order = |k: TargetKind| k as usize;
    infos.sort_by_key(|i| order(i.kind));
    if !config.keep_work_dir {
        let _ = std::fs::remove_dir_all(&scratch);
    }

    let (figures, latencies, notes) = ctx.finish();
    let results = Results {
        schema_version: model::SCHEMA_VERSION,
        started: machine::rfc3339_utc(started_epoch),
        duration_s: started.elapsed().as_secs_f64(),
        command: command_line(),
        machine: machine::machine(&config.work_dir),
        versions: machine::versions(torchfs_bin.as_deref()),
        config: serde_json::to_value(&config)?,
        targets: infos,
        figures,
        latencies,
        notes,
    };
    let written = write_results(&results, &config.out)?;
    eprintln!("\n{}", report::ratio_table(&results));
    for p in &written {
        eprintln!("wrote {}", p.display());
    }
    outcome?;
    if strict {
        check_strict(&results)?;
    }
    Ok(())
}

/// Holds an exclusive lock on the work directory for the run: a second run
/// on the same directory would unmount and empty the first one's targets.
fn lock_work_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".torchfs-perf.lock");
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `file` closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another torchfs-perf run is using {}: wait for it, or pass another --work-dir",
            dir.display()
        );
    }
    Ok(file)
}

/// Re-renders an earlier run's report and plots.
fn render(json: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json).with_context(|| format!("read {}", json.display()))?;
    let results: Results =
        serde_json::from_str(&text).with_context(|| format!("parse {}", json.display()))?;
    std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    for p in write_results(&results, out)? {
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// Brings up the requested targets; those that fail are reported, not fatal.
fn start_targets(
    ctx: &mut Ctx,
    exe: &Path,
    torchfs_bin: Option<&Path>,
) -> (Vec<Box<dyn Target>>, Vec<TargetInfo>) {
    let cfg = ctx.config.clone();
    let mut live: Vec<Box<dyn Target>> = Vec::new();
    let mut infos = Vec::new();
    for choice in &cfg.targets {
        let dir = cfg.work_dir.join(match choice {
            TargetChoice::Torchfs => "torchfs",
            TargetChoice::Local => "local",
            TargetChoice::Gluster => "gluster",
            TargetChoice::Juicefs => "juicefs",
            TargetChoice::FuseNull => "nullfs",
        });
        ctx.log(format!("starting target {choice:?} ..."));
        let started: Result<Box<dyn Target>> = match choice {
            TargetChoice::Torchfs => match (&cfg.torchfs_mount, torchfs_bin) {
                (Some(m), _) => targets::torchfs::Torchfs::existing(m).map(|t| Box::new(t) as _),
                (None, Some(bin)) => {
                    targets::torchfs::Torchfs::start(bin, &dir, cfg.torchfs_base_port, cfg.keep_work_dir)
                        .map(|t| Box::new(t) as _)
                }
                (None, None) => Err(anyhow::anyhow!(
                    "no torchfs binary (build it: cargo build --release -p torchfs-cli; or pass --torchfs-bin)"
                )),
            },
            // A subdirectory: --local-dir may name a directory that holds
            // other files, and this one is emptied and removed.
            TargetChoice::Local => targets::local::LocalDir::setup(
                &cfg.local_dir.join("torchfs-perf"),
                cfg.keep_work_dir,
            )
                .map(|t| Box::new(t) as _),
            TargetChoice::Gluster => {
                targets::gluster::Gluster::start(&dir).map(|t| Box::new(t) as _)
            }
            TargetChoice::Juicefs => {
                targets::juicefs::Juicefs::start(&dir, cfg.juicefs_redis_port).map(|t| Box::new(t) as _)
            }
            TargetChoice::FuseNull => {
                targets::nullfs::NullFsTarget::start(exe, &dir).map(|t| Box::new(t) as _)
            }
        };
        match started {
            Ok(t) => {
                ctx.log(format!(
                    "target {} ready at {}",
                    t.name(),
                    t.root().display()
                ));
                live.push(t);
            }
            Err(e) => {
                let (name, kind) = match choice {
                    TargetChoice::Torchfs => (model::SYSTEM_TARGET, TargetKind::System),
                    TargetChoice::Local => ("local", TargetKind::LocalDisk),
                    TargetChoice::Gluster => ("gluster", TargetKind::Peer),
                    TargetChoice::Juicefs => (targets::juicefs::NAME, TargetKind::Peer),
                    TargetChoice::FuseNull => (targets::nullfs::NAME, TargetKind::Limit),
                };
                let why = format!("{e:#}");
                ctx.note(format!("{name} is unavailable: {why}"));
                infos.push(targets::unavailable(name, kind, &dir, &why));
            }
        }
    }
    (live, infos)
}

/// Probes, then the workloads (destructive last). An error in one workload
/// is noted and the next one runs; only an interrupt stops the run.
fn measure(ctx: &mut Ctx, live: &mut [Box<dyn Target>]) -> Result<()> {
    if ctx.config.probes {
        probes::run_all(ctx)?;
    }
    let mut chosen: Vec<Box<dyn workloads::Workload>> = workloads::registry()
        .into_iter()
        .filter(|w| ctx.config.workloads.iter().any(|n| n == w.name()))
        .collect();
    chosen.sort_by_key(|w| w.destructive());
    for w in chosen {
        ctx.check_interrupted()?;
        ctx.log(format!("== {}: {}", w.name(), w.describe()));
        let t0 = Instant::now();
        if let Err(e) = w.run(ctx, live) {
            ctx.check_interrupted()?;
            ctx.note(format!("workload {} stopped: {e:#}", w.name()));
        }
        ctx.log(format!(
            "== {} done in {:.0} s",
            w.name(),
            t0.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// <out>/<date>-<host>.json, .md and <date>-<host>/*.png.
fn write_results(results: &Results, out: &Path) -> Result<Vec<PathBuf>> {
    let stem = format!(
        "{}-{}",
        results.started.get(..10).unwrap_or("run"),
        results.machine.hostname
    );
    let json = out.join(format!("{stem}.json"));
    // Compact: pretty-printing puts every CDF number on its own line and
    // triples the file.
    std::fs::write(&json, serde_json::to_string(results)?)
        .with_context(|| format!("write {}", json.display()))?;
    let plot_dir = out.join(&stem);
    let plots = match plots::render_all(results, &plot_dir) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("torchfs-perf: warning: plots failed: {e:#}");
            Vec::new()
        }
    };
    let mut md = report::markdown(results);
    if !plots.is_empty() {
        md.push_str("\n## Plots\n\n");
        for p in &plots {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            md.push_str(&format!("![{name}]({stem}/{name})\n"));
        }
    }
    let md_path = out.join(format!("{stem}.md"));
    std::fs::write(&md_path, md).with_context(|| format!("write {}", md_path.display()))?;
    let mut written = vec![json, md_path];
    written.extend(plots);
    Ok(written)
}

fn check_strict(results: &Results) -> Result<()> {
    let unavailable: Vec<&str> = results
        .targets
        .iter()
        .filter(|t| t.status != "ok")
        .map(|t| t.name.as_str())
        .collect();
    let failed: Vec<String> = results
        .figures
        .iter()
        .filter(|f| f.samples.iter().any(|v| !v.is_finite()))
        .map(|f| format!("{} {} on {}", f.workload, f.metric, f.target))
        .collect();
    if !unavailable.is_empty() || !failed.is_empty() {
        anyhow::bail!(
            "--strict: unavailable targets {unavailable:?}, failed figures {failed:?} (see the notes in the report)"
        );
    }
    Ok(())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// The command line as typed (arguments with spaces quoted).
fn command_line() -> String {
    std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}
