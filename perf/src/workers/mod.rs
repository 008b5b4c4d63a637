//! Parallel reader/writer PROCESSES, as PyTorch's DataLoader uses: the
//! harness re-executes itself as `__worker` W times; each worker takes
//! every W-th task of a shared, shuffled order (batch size 1, round-robin,
//! like DataLoader's index assignment), times each task and reports back.
//!
//! Protocol, one JSON line each way: the parent sends `Load` (manifest
//! parsed, files not touched) and waits for every `Ready`; then the clock
//! starts and it sends `Run`; workers stream `Progress` and end with
//! `Done`. Process start-up and manifest parsing are never timed.

mod child;

pub use child::serve;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use crate::data::FileSpec;

/// What the workers do with each task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// open, read to EOF in `request_bytes` reads, close (a sample).
    ReadWhole,
    /// pread `len` bytes at `offset` (a record of a shard).
    ReadRange,
    /// create, write the file's content, close (no fsync: the parent syncs
    /// once at the end, inside the timing).
    Write,
    /// open an existing file O_RDWR (no create, no truncate), pwrite the
    /// task's range in `request_bytes` writes, fsync, close (one of several
    /// writers of a file, each writing its own part).
    WriteRange,
}

/// One unit of work: a whole file, or a range of one.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Task {
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// Everything a worker needs, written once per dataset and target.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub root: PathBuf,
    pub files: Vec<FileSpec>,
    pub tasks: Vec<Task>,
    pub content_seed: u64,
    pub request_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerCommand {
    Load {
        manifest: PathBuf,
    },
    /// Shuffle the tasks with (seed, epoch); None keeps manifest order.
    Run {
        op: Op,
        order: Option<(u64, u64)>,
        keep_open: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Ready,
    Progress { tasks: u64 },
    Done(WorkerResult),
    Failed { error: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub tasks: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies_us: Vec<f32>,
}

/// What a job did, over all workers.
#[derive(Debug, Default)]
pub struct Outcome {
    pub wall_s: f64,
    pub tasks: u64,
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latencies_us: Vec<f64>,
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
}

pub struct Pool {
    workers: Vec<Worker>,
    replies: Receiver<(usize, Result<Reply, String>)>,
}

impl Pool {
    /// Starts `count` worker processes of `exe`.
    pub fn spawn(exe: &Path, count: usize) -> Result<Pool> {
        let (tx, replies) = channel();
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let mut command = Command::new(exe);
            command
                .arg("__worker")
                .arg(index.to_string())
                .arg(count.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            // SAFETY: prctl is async-signal-safe; workers die with us.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = command.spawn().context("start a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let msg = match line {
                        Ok(l) => serde_json::from_str::<Reply>(&l).map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if tx.send((index, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((index, Err("worker exited".into())));
            });
            workers.push(Worker { child, stdin });
        }
        Ok(Pool { workers, replies })
    }

    fn send_all(&mut self, command: &WorkerCommand) -> Result<()> {
        let line = serde_json::to_string(command)? + "\n";
        for w in &mut self.workers {
            w.stdin
                .write_all(line.as_bytes())
                .context("send to a worker")?;
            w.stdin.flush()?;
        }
        Ok(())
    }

    /// Has every worker parse `manifest` (untimed).
    pub fn load(&mut self, manifest: &Path) -> Result<()> {
        self.send_all(&WorkerCommand::Load {
            manifest: manifest.to_path_buf(),
        })?;
        let mut ready = 0;
        while ready < self.workers.len() {
            match self.replies.recv().context("workers gone")? {
                (_, Ok(Reply::Ready)) => ready += 1,
                (i, Ok(Reply::Failed { error })) => bail!("worker {i}: {error}"),
                (i, Err(e)) => bail!("worker {i}: {e}"),
                (i, Ok(other)) => bail!("worker {i}: unexpected {other:?}"),
            }
        }
        Ok(())
    }

    /// Runs one job on every worker; `sync_after` calls sync(2) before the
    /// clock stops (so written data is on disk, for every target alike).
    pub fn run(
        &mut self,
        op: Op,
        order: Option<(u64, u64)>,
        keep_open: bool,
        sync_after: bool,
        bar: &ProgressBar,
    ) -> Result<Outcome> {
        let started = Instant::now();
        self.send_all(&WorkerCommand::Run {
            op,
            order,
            keep_open,
        })?;
        let mut out = Outcome::default();
        let mut done = 0;
        while done < self.workers.len() {
            match self.replies.recv().context("workers gone")? {
                (_, Ok(Reply::Progress { tasks })) => bar.inc(tasks),
                (_, Ok(Reply::Done(r))) => {
                    done += 1;
                    out.tasks += r.tasks;
                    out.bytes += r.bytes;
                    out.errors += r.errors;
                    if out.first_error.is_none() {
                        out.first_error = r.first_error;
                    }
                    out.latencies_us
                        .extend(r.latencies_us.iter().map(|&l| f64::from(l)));
                }
                (i, Ok(Reply::Failed { error })) => bail!("worker {i}: {error}"),
                (i, Ok(Reply::Ready)) => bail!("worker {i}: unexpected Ready"),
                (i, Err(e)) => bail!("worker {i}: {e}"),
            }
        }
        if sync_after {
            // SAFETY: sync(2) takes no arguments and cannot fail.
            unsafe { libc::sync() };
        }
        out.wall_s = started.elapsed().as_secs_f64();
        Ok(out)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

/// Writes a manifest as JSON into `dir` and returns its path.
pub fn write_manifest(dir: &Path, name: &str, manifest: &Manifest) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.manifest.json"));
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(file), manifest)?;
    Ok(path)
}
