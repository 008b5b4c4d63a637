//! The command line of a benchmark run and the sizes it resolves to
//! (defaults, or tiny ones with `--quick`). The resolved [`Config`] goes into
//! the results file as is, so a run can be reproduced from it.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::units::bytes_arg;

/// Which filesystems to run the workloads against.
/// Which versions of a dataset a workload reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetVersions {
    /// The files as written.
    AsWritten,
    /// The directory frozen with `torchfs freeze`.
    Frozen,
    Both,
}

impl DatasetVersions {
    pub fn as_written(self) -> bool {
        matches!(self, DatasetVersions::AsWritten | DatasetVersions::Both)
    }

    pub fn frozen(self) -> bool {
        matches!(self, DatasetVersions::Frozen | DatasetVersions::Both)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetChoice {
    /// torchfs: a cluster and mount the harness starts (`torchfs up`), or
    /// `--torchfs-mount`.
    Torchfs,
    /// A plain directory on the local disk (`--local-dir`).
    Local,
    /// GlusterFS disperse 4+2 on 6 local bricks (perf/scripts/gluster-up.sh).
    Gluster,
    /// JuiceFS over its own redis-server and a local-disk bucket
    /// (perf/scripts/juicefs-up.sh).
    Juicefs,
    /// torchfs's own mount (FUSE front-end and client core, default
    /// settings) over a null backend, metadata in memory and no storage:
    /// the FUSE ceiling.
    FuseNull,
}

#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    /// Every workload at tiny sizes, one repeat, no peers (GlusterFS,
    /// JuiceFS) unless asked (what CI runs; well under a minute).
    #[arg(long)]
    pub quick: bool,
    /// Add the GlusterFS peer with --quick or --targets.
    #[arg(long, conflicts_with = "no_gluster")]
    pub gluster: bool,
    /// Leave the GlusterFS peer out of a full run.
    #[arg(long)]
    pub no_gluster: bool,
    /// Add the JuiceFS peer with --quick or --targets.
    #[arg(long, conflicts_with = "no_juicefs")]
    pub juicefs: bool,
    /// Leave the JuiceFS peer out of a full run.
    #[arg(long)]
    pub no_juicefs: bool,
    /// Port of the redis-server the JuiceFS peer starts for itself.
    #[arg(long, default_value_t = 16379)]
    pub juicefs_redis_port: u16,
    /// Where the results go (JSON, Markdown, plots, logs).
    #[arg(long, default_value = "perf-out")]
    pub out: PathBuf,
    /// Scratch space for the targets: torchfs's data, the local-disk
    /// directory, GlusterFS bricks, mount points. Emptied first.
    #[arg(long, default_value = "/tmp/torchfs-perf")]
    pub work_dir: PathBuf,
    /// Targets, comma-separated [default:
    /// torchfs,local,gluster,juicefs,fuse-null; with --quick:
    /// torchfs,local,fuse-null].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub targets: Option<Vec<TargetChoice>>,
    /// Workloads, comma-separated (see the list below) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// Skip the physical-limit probes (fio, loopback TCP).
    #[arg(long)]
    pub no_probes: bool,
    /// Use this existing torchfs mount instead of starting a cluster (the
    /// degraded-read workload then has no nodes to kill and is skipped).
    #[arg(long)]
    pub torchfs_mount: Option<PathBuf>,
    /// The `torchfs` binary [default: next to this one, else on PATH].
    #[arg(long)]
    pub torchfs_bin: Option<PathBuf>,
    /// First port for the cluster the harness starts (metad on +1..+3,
    /// storage nodes on +10..); the next free block is used if it is busy.
    #[arg(long, default_value_t = 17400)]
    pub torchfs_base_port: u16,
    /// The local-disk baseline's directory; files go in <dir>/torchfs-perf,
    /// which is emptied first and removed at the end [default:
    /// <work-dir>/local].
    #[arg(long)]
    pub local_dir: Option<PathBuf>,
    /// Repeats of each measurement (min/median/max are reported)
    /// [default: 3; 1 with --quick].
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Size of the large file written and read sequentially
    /// [default: 1GiB; 16MiB with --quick].
    #[arg(long, value_parser = bytes_arg)]
    pub large_file_bytes: Option<u64>,
    /// Request size for sequential I/O.
    #[arg(long, value_parser = bytes_arg, default_value = "1MiB")]
    pub request_bytes: u64,
    /// Files in the data-loader dataset [default: 2,000; 200 with --quick].
    /// torchfs and GlusterFS create only ~30-90 files/s here, so a bigger
    /// dataset (`--loader-files 20000`) takes minutes per target to write.
    #[arg(long)]
    pub loader_files: Option<usize>,
    /// Median size of a data-loader file.
    #[arg(long, value_parser = bytes_arg, default_value = "100KiB")]
    pub loader_file_bytes: u64,
    /// Spread of file sizes: sigma of a log-normal around the median
    /// (0 = all files the same size; 0.5 is a broad image dataset).
    #[arg(long, default_value_t = 0.0)]
    pub loader_size_sigma: f64,
    /// Worker processes reading in parallel (like DataLoader num_workers).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Data-loader rounds; each is a cold epoch (caches dropped) and a warm
    /// one [default: 2; 1 with --quick].
    #[arg(long)]
    pub loader_rounds: Option<usize>,
    /// Record files ("shards") for the shuffled-chunk workload [default: 4;
    /// 2 with --quick].
    #[arg(long)]
    pub shard_files: Option<usize>,
    /// Size of each shard [default: 128MiB; 4MiB with --quick].
    #[arg(long, value_parser = bytes_arg)]
    pub shard_file_bytes: Option<u64>,
    /// Chunk (record) size read at shuffled offsets.
    #[arg(long, value_parser = bytes_arg, default_value = "256KiB")]
    pub chunk_bytes: u64,
    /// Epoch cache: epochs per (case, cache size, mode).
    #[arg(long)]
    pub epoch_cache_epochs: Option<usize>,
    /// Epoch cache: the client's memory cache as % of the dataset.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    pub epoch_cache_percents: Vec<u32>,
    /// Epoch cache: samples per batch.
    #[arg(long, default_value_t = 32)]
    pub epoch_cache_batch: usize,
    /// Epoch cache: the training step, ms of compute per batch in the
    /// trainer (the data loader's consumer).
    #[arg(long, default_value_t = 10.0)]
    pub epoch_cache_step_ms: f64,
    /// Epoch cache: chunk size of the large-file case.
    #[arg(long, value_parser = bytes_arg, default_value = "1MiB")]
    pub epoch_cache_chunk_bytes: u64,
    /// Epoch cache: which versions of the dataset the torchfs modes read:
    /// as written, frozen (`torchfs freeze`), or both.
    #[arg(long, value_enum, default_value = "both")]
    pub epoch_cache_versions: DatasetVersions,
    /// Epoch cache: extra `torchfs mount` flags for every torchfs mode,
    /// one argument per value (e.g. `--epoch-cache-mount-arg=--prefetch-inflight-bytes
    /// --epoch-cache-mount-arg=256M`).
    #[arg(long = "epoch-cache-mount-arg", allow_hyphen_values = true)]
    pub epoch_cache_mount_args: Vec<String>,
    /// Files created, stat'ed, listed and unlinked by the metadata workload
    /// [default: 1,000; 100 with --quick].
    #[arg(long)]
    pub meta_files: Option<usize>,
    /// Thread counts of the mdtest workload, comma-separated [default:
    /// 1,4,16; 1,4 with --quick].
    #[arg(long, value_delimiter = ',')]
    pub mdtest_threads: Option<Vec<usize>>,
    /// Files each mdtest thread creates [default: 200; 20 with --quick].
    #[arg(long)]
    pub mdtest_files_per_thread: Option<usize>,
    /// Shared writes: writer processes, each writing its own part of one
    /// shared file (and, against that, its own file) [default: 8; 4 with
    /// --quick].
    #[arg(long)]
    pub shared_writes_writers: Option<usize>,
    /// Shared writes: bytes each writer writes, in --request-bytes pwrites
    /// [default: 4MiB (a torchfs stripe); 1MiB with --quick].
    #[arg(long, value_parser = bytes_arg)]
    pub shared_writes_part_bytes: Option<u64>,
    /// Shared writes: fcntl lock/unlock cycles timed per case [default: 200;
    /// 20 with --quick].
    #[arg(long)]
    pub shared_writes_lock_cycles: Option<usize>,
    /// Fragment size for the erasure-code benchmark (torchfs's unit).
    #[arg(long, value_parser = bytes_arg, default_value = "1MiB")]
    pub codec_fragment_bytes: u64,
    /// Seconds per erasure-code measurement [default: 1; 0.2 with --quick].
    #[arg(long)]
    pub codec_seconds: Option<f64>,
    /// Storage nodes (GlusterFS: bricks) killed for the degraded read.
    #[arg(long, default_value_t = 2)]
    pub fail_nodes: usize,
    /// Seconds per fio probe [default: 2; 1 with --quick].
    #[arg(long)]
    pub probe_seconds: Option<u64>,
    /// Seed for file sizes, shuffles and file contents.
    #[arg(long, default_value_t = 0x7f4a_7c15)]
    pub seed: u64,
    /// Do not drop the page cache before cold phases (figures are then
    /// marked as such; dropping needs root).
    #[arg(long)]
    pub no_drop_caches: bool,
    /// Keep the work directory's contents after the run (for debugging).
    #[arg(long)]
    pub keep_work_dir: bool,
}

/// Every size and count a run uses, resolved from the flags.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub quick: bool,
    pub out: PathBuf,
    pub work_dir: PathBuf,
    pub targets: Vec<TargetChoice>,
    pub workloads: Vec<String>,
    pub probes: bool,
    pub torchfs_mount: Option<PathBuf>,
    pub torchfs_bin: Option<PathBuf>,
    pub torchfs_base_port: u16,
    pub juicefs_redis_port: u16,
    pub local_dir: PathBuf,
    pub repeats: usize,
    pub large_file_bytes: u64,
    pub request_bytes: u64,
    pub loader_files: usize,
    pub loader_file_bytes: u64,
    pub loader_size_sigma: f64,
    pub workers: usize,
    pub loader_rounds: usize,
    pub shard_files: usize,
    pub shard_file_bytes: u64,
    pub epoch_cache_epochs: usize,
    pub epoch_cache_percents: Vec<u32>,
    pub epoch_cache_batch: usize,
    pub epoch_cache_step_ms: f64,
    pub epoch_cache_chunk_bytes: u64,
    pub epoch_cache_versions: DatasetVersions,
    pub epoch_cache_mount_args: Vec<String>,
    pub chunk_bytes: u64,
    pub meta_files: usize,
    pub mdtest_threads: Vec<usize>,
    pub mdtest_files_per_thread: usize,
    pub shared_writes_writers: usize,
    pub shared_writes_part_bytes: u64,
    pub shared_writes_lock_cycles: usize,
    pub codec_fragment_bytes: u64,
    pub codec_seconds: f64,
    pub fail_nodes: usize,
    pub probe_seconds: u64,
    pub seed: u64,
    pub drop_caches: bool,
    pub keep_work_dir: bool,
}

impl Config {
    /// Applies the defaults (full or quick) to what the flags left open.
    pub fn resolve(args: RunArgs, all_workloads: &[&str]) -> anyhow::Result<Config> {
        let q = args.quick;
        let pick = |quick: u64, full: u64| if q { quick } else { full };
        let explicit = args.targets.is_some();
        let mut targets = args.targets.unwrap_or_else(|| {
            vec![
                TargetChoice::Torchfs,
                TargetChoice::Local,
                TargetChoice::FuseNull,
            ]
        });
        // A full run measures the peers by default (GlusterFS takes about 3
        // of its 7-8 minutes here); a quick one only when asked.
        for (peer, asked, refused) in [
            (TargetChoice::Gluster, args.gluster, args.no_gluster),
            (TargetChoice::Juicefs, args.juicefs, args.no_juicefs),
        ] {
            if asked || (!q && !explicit && !refused) {
                // Before the FUSE ceiling, so tables list systems, then limits.
                let at = targets
                    .iter()
                    .position(|t| *t == TargetChoice::FuseNull)
                    .unwrap_or(targets.len());
                targets.insert(at, peer);
            }
            if refused {
                targets.retain(|t| *t != peer);
            }
        }
        let mut deduped = Vec::new();
        for t in targets {
            if !deduped.contains(&t) {
                deduped.push(t);
            }
        }
        let workloads = match args.workloads {
            None => all_workloads.iter().map(|w| w.to_string()).collect(),
            Some(list) => {
                for w in &list {
                    if !all_workloads.contains(&w.as_str()) {
                        anyhow::bail!(
                            "unknown workload {w:?}: choose from {}",
                            all_workloads.join(", ")
                        );
                    }
                }
                list
            }
        };
        let request_bytes = args.request_bytes.max(4096);
        let config = Config {
            quick: q,
            local_dir: args
                .local_dir
                .unwrap_or_else(|| args.work_dir.join("local")),
            out: args.out,
            work_dir: args.work_dir,
            targets: deduped,
            workloads,
            probes: !args.no_probes,
            torchfs_mount: args.torchfs_mount,
            torchfs_bin: args.torchfs_bin,
            torchfs_base_port: args.torchfs_base_port,
            juicefs_redis_port: args.juicefs_redis_port,
            repeats: args.repeats.unwrap_or(pick(1, 3) as usize).max(1),
            large_file_bytes: args
                .large_file_bytes
                .unwrap_or(pick(16 << 20, 1 << 30))
                .max(request_bytes),
            request_bytes,
            loader_files: args
                .loader_files
                .unwrap_or(pick(200, 2_000) as usize)
                .max(1),
            loader_file_bytes: args.loader_file_bytes.max(1),
            loader_size_sigma: args.loader_size_sigma.max(0.0),
            workers: args.workers.clamp(1, 64),
            loader_rounds: args.loader_rounds.unwrap_or(pick(1, 2) as usize).max(1),
            shard_files: args.shard_files.unwrap_or(pick(2, 4) as usize).max(1),
            shard_file_bytes: args
                .shard_file_bytes
                .unwrap_or(pick(4 << 20, 128 << 20))
                .max(args.chunk_bytes),
            chunk_bytes: args.chunk_bytes.max(1),
            epoch_cache_epochs: args
                .epoch_cache_epochs
                .unwrap_or(pick(2, 3) as usize)
                .max(1),
            epoch_cache_percents: args.epoch_cache_percents.clone(),
            epoch_cache_batch: args.epoch_cache_batch.max(1),
            epoch_cache_versions: args.epoch_cache_versions,
            epoch_cache_mount_args: args.epoch_cache_mount_args.clone(),
            epoch_cache_step_ms: args.epoch_cache_step_ms.max(0.0),
            epoch_cache_chunk_bytes: if q {
                args.epoch_cache_chunk_bytes.min(256 << 10)
            } else {
                args.epoch_cache_chunk_bytes
            }
            .max(4096),
            meta_files: args.meta_files.unwrap_or(pick(100, 1_000) as usize).max(1),
            mdtest_threads: {
                let mut t =
                    args.mdtest_threads
                        .unwrap_or_else(|| if q { vec![1, 4] } else { vec![1, 4, 16] });
                t.retain(|&n| n > 0);
                t
            },
            mdtest_files_per_thread: args
                .mdtest_files_per_thread
                .unwrap_or(pick(20, 200) as usize)
                .max(1),
            shared_writes_writers: args
                .shared_writes_writers
                .unwrap_or(pick(4, 8) as usize)
                .clamp(1, 64),
            shared_writes_part_bytes: args
                .shared_writes_part_bytes
                .unwrap_or(pick(1 << 20, 4 << 20))
                .max(4096),
            shared_writes_lock_cycles: args
                .shared_writes_lock_cycles
                .unwrap_or(pick(20, 200) as usize)
                .max(1),
            codec_fragment_bytes: args.codec_fragment_bytes.max(64),
            codec_seconds: args.codec_seconds.unwrap_or(if q { 0.2 } else { 1.0 }),
            fail_nodes: args.fail_nodes,
            probe_seconds: args.probe_seconds.unwrap_or(pick(1, 2)).max(1),
            seed: args.seed,
            drop_caches: !args.no_drop_caches,
            keep_work_dir: args.keep_work_dir,
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn resolve(args: &[&str]) -> Config {
        let cli = Cli::parse_from(std::iter::once("torchfs-perf").chain(args.iter().copied()));
        Config::resolve(cli.run, &["codec", "loader"]).unwrap()
    }

    #[test]
    fn peers_are_in_full_runs_and_only_asked_for_in_quick_ones() {
        use TargetChoice::*;
        assert_eq!(
            resolve(&[]).targets,
            [Torchfs, Local, Gluster, Juicefs, FuseNull]
        );
        assert_eq!(resolve(&["--quick"]).targets, [Torchfs, Local, FuseNull]);
        assert_eq!(
            resolve(&["--quick", "--gluster"]).targets,
            [Torchfs, Local, Gluster, FuseNull]
        );
        assert_eq!(
            resolve(&["--quick", "--juicefs"]).targets,
            [Torchfs, Local, Juicefs, FuseNull]
        );
        assert_eq!(
            resolve(&["--no-gluster"]).targets,
            [Torchfs, Local, Juicefs, FuseNull]
        );
        assert_eq!(
            resolve(&["--no-gluster", "--no-juicefs"]).targets,
            [Torchfs, Local, FuseNull]
        );
        assert_eq!(
            resolve(&["--targets", "local,gluster,local"]).targets,
            [Local, Gluster]
        );
        assert_eq!(resolve(&["--targets", "local"]).targets, [Local]);
    }

    #[test]
    fn quick_sizes_are_tiny_and_flags_win() {
        let q = resolve(&["--quick"]);
        assert_eq!(
            (q.repeats, q.loader_files, q.large_file_bytes),
            (1, 200, 16 << 20)
        );
        let full = resolve(&[]);
        assert_eq!((full.repeats, full.large_file_bytes), (3, 1 << 30));
        assert_eq!(
            (
                q.shared_writes_writers,
                q.shared_writes_part_bytes,
                q.shared_writes_lock_cycles
            ),
            (4, 1 << 20, 20)
        );
        assert_eq!(
            (
                full.shared_writes_writers,
                full.shared_writes_part_bytes,
                full.shared_writes_lock_cycles
            ),
            (8, 4 << 20, 200)
        );
        let mine = resolve(&["--quick", "--repeats", "2", "--large-file-bytes", "64MiB"]);
        assert_eq!((mine.repeats, mine.large_file_bytes), (2, 64 << 20));
        assert_eq!(resolve(&["--workloads", "loader"]).workloads, ["loader"]);
        let cli = Cli::parse_from(["x", "--workloads", "nope"]);
        assert!(Config::resolve(cli.run, &["loader"]).is_err());
    }
}
