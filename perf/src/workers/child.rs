//! The worker process side (`torchfs-perf __worker INDEX COUNT`): commands
//! on stdin, replies on stdout, one JSON line each.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{Manifest, Op, Reply, WorkerCommand, WorkerResult};
use crate::data::{permutation, Content};

/// Progress is reported every this many tasks (cheap, and smooth enough).
const PROGRESS_EVERY: u64 = 32;

pub fn serve(index: usize, count: usize) -> Result<()> {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let mut state: Option<(Manifest, Content)> = None;
    for line in stdin.lock().lines() {
        let line = line?;
        let reply = match serde_json::from_str::<WorkerCommand>(&line) {
            Err(e) => Reply::Failed {
                error: format!("bad command: {e}"),
            },
            Ok(WorkerCommand::Load { manifest }) => match load(&manifest) {
                Ok(m) => {
                    let content = Content::new(m.content_seed);
                    state = Some((m, content));
                    Reply::Ready
                }
                Err(e) => Reply::Failed {
                    error: format!("{e:#}"),
                },
            },
            Ok(WorkerCommand::Run {
                op,
                order,
                keep_open,
            }) => match &state {
                None => Reply::Failed {
                    error: "run before load".into(),
                },
                Some((manifest, content)) => {
                    let mut emit = |r: &Reply| send(&mut stdout, r);
                    Reply::Done(run(
                        manifest, content, index, count, op, order, keep_open, &mut emit,
                    )?)
                }
            },
        };
        send(&mut stdout, &reply)?;
    }
    Ok(())
}

fn send(out: &mut impl Write, reply: &Reply) -> Result<()> {
    serde_json::to_writer(&mut *out, reply)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn load(path: &std::path::Path) -> Result<Manifest> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .with_context(|| format!("parse {}", path.display()))
}

#[allow(clippy::too_many_arguments)]
fn run(
    manifest: &Manifest,
    content: &Content,
    index: usize,
    count: usize,
    op: Op,
    order: Option<(u64, u64)>,
    keep_open: bool,
    emit: &mut dyn FnMut(&Reply) -> Result<()>,
) -> Result<WorkerResult> {
    let n = manifest.tasks.len();
    let order = match order {
        Some((seed, epoch)) => permutation(n, seed, epoch),
        None => (0..n).collect(),
    };
    let request = manifest.request_bytes.max(1) as usize;
    let mut buf = vec![0u8; request];
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut result = WorkerResult::default();
    let mut unreported = 0;
    for &t in order.iter().skip(index).step_by(count) {
        let task = manifest.tasks[t];
        let spec = &manifest.files[task.file];
        let path = manifest.root.join(&spec.path);
        let started = Instant::now();
        let done: std::io::Result<u64> = match op {
            Op::ReadWhole => read_whole(&path, &mut buf),
            Op::ReadRange => read_range_task(&mut open, keep_open, &task, &path, &mut buf),
            Op::Write => write_file(&path, spec.id, spec.bytes, content, request),
            Op::WriteRange => write_range(&path, spec.id, &task, content, request),
        };
        let elapsed_us = started.elapsed().as_secs_f64() * 1e6;
        let expected = match op {
            Op::ReadRange | Op::WriteRange => task.len,
            _ => spec.bytes,
        };
        match done {
            Ok(bytes) if bytes == expected => {
                result.bytes += bytes;
                result.latencies_us.push(elapsed_us as f32);
            }
            Ok(bytes) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| {
                    format!("{}: {bytes} bytes, expected {expected}", path.display())
                });
            }
            Err(e) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{}: {e}", path.display()));
            }
        }
        result.tasks += 1;
        unreported += 1;
        if unreported == PROGRESS_EVERY {
            emit(&Reply::Progress { tasks: unreported })?;
            unreported = 0;
        }
    }
    if unreported > 0 {
        emit(&Reply::Progress { tasks: unreported })?;
    }
    Ok(result)
}

/// Reads a file to its end, as `open(path, "rb").read()` does in Python.
fn read_whole(path: &std::path::Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let mut total = 0u64;
    loop {
        let n = file.read(buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Record readers keep their shards open (`keep_open`): the open is then
/// paid once per shard, not per record.
fn read_range_task(
    open: &mut HashMap<usize, File>,
    keep_open: bool,
    task: &super::Task,
    path: &std::path::Path,
    buf: &mut [u8],
) -> std::io::Result<u64> {
    let file = match open.entry(task.file) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(File::open(path)?),
    };
    let r = read_range(file, task.offset, task.len, buf);
    if !keep_open {
        open.remove(&task.file);
    }
    r
}

fn read_range(file: &File, offset: u64, len: u64, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            break;
        }
        done += n as u64;
    }
    Ok(done)
}

fn write_file(
    path: &std::path::Path,
    id: u64,
    bytes: u64,
    content: &Content,
    request: usize,
) -> std::io::Result<u64> {
    let mut file = File::create(path)?;
    let mut done = 0u64;
    while done < bytes {
        let want = (bytes - done).min(request as u64) as usize;
        let chunk = content.slice(id, done, want);
        file.write_all(chunk)?;
        done += chunk.len() as u64;
    }
    // close(2) is where torchfs commits the layout: part of the write.
    drop(file);
    Ok(done)
}

/// One writer's part of a file that already exists: opened without
/// truncating, written where the task says, fsync'd, closed (a close error
/// is the write's error: torchfs commits there too).
fn write_range(
    path: &std::path::Path,
    id: u64,
    task: &super::Task,
    content: &Content,
    request: usize,
) -> std::io::Result<u64> {
    use std::os::fd::IntoRawFd;
    let file = File::options().read(true).write(true).open(path)?;
    let mut done = 0u64;
    while done < task.len {
        let want = (task.len - done).min(request as u64) as usize;
        let chunk = content.slice(id, task.offset + done, want);
        file.write_all_at(chunk, task.offset + done)?;
        done += chunk.len() as u64;
    }
    file.sync_all()?;
    let fd = file.into_raw_fd();
    // SAFETY: the descriptor was just taken out of the File: closed once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(done)
}
