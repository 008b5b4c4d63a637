//! The lock half of `shared_writes`: fcntl F_SETLKW write locks over the
//! whole file, then F_UNLCK, each timed, on a file nobody else touches and
//! on one a second client changed before every lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{metad_requests, stats_file, Params, NAME};
use crate::ctx::{Ctx, Metric};
use crate::data::mix;
use crate::stats::percentile;

/// What the second client writes into the lock file before each lock.
const CHANGE_BYTES: u64 = 4096;
const LOCK_FILE: &str = "lock.bin";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LockCase {
    /// Nobody else touches the file.
    Untouched,
    /// A second client changed it before each lock.
    Changed,
}

impl LockCase {
    fn label(self) -> &'static str {
        match self {
            LockCase::Untouched => "untouched file",
            LockCase::Changed => "file changed by another client",
        }
    }

    /// In latency phase names (which name plot files).
    fn short(self) -> &'static str {
        match self {
            LockCase::Untouched => "untouched",
            LockCase::Changed => "changed",
        }
    }
}

/// (operation, percentile) of the lock figures, in recording order.
const LOCK_FIGURES: [(&str, f64); 4] = [
    ("acquire", 50.0),
    ("acquire", 99.0),
    ("release", 50.0),
    ("release", 99.0),
];

fn lock_metric(op: &str, pct: f64, case: LockCase) -> Metric {
    Metric::new(NAME, format!("lock {op} p{pct}, {}", case.label()), "us").lower_is_better()
}

fn metad_metric(case: LockCase) -> Metric {
    let name = format!("metad requests per lock cycle, {}", case.label());
    Metric::new(NAME, name, "requests").lower_is_better()
}

/// Where the second client writes before lock cycle `i`: 4 KiB blocks of a
/// file of `file_bytes`, in turn.
fn change_offset(i: usize, file_bytes: u64) -> u64 {
    let slots = (file_bytes / CHANGE_BYTES).max(1);
    (i as u64 % slots) * CHANGE_BYTES
}

/// The lock file written (untimed), then (a) untouched and (b) changed by
/// the second client (`second`: the round's directory there), if any.
pub(super) fn lock_phases(
    ctx: &mut Ctx,
    p: &Params,
    name: &str,
    dir: &Path,
    second: Option<&Path>,
    said: &mut Vec<String>,
) {
    let path = dir.join(LOCK_FILE);
    let id = mix(p.seed ^ 0x10c4);
    let written = (|| -> Result<()> {
        let file = File::create(&path)?;
        let mut done = 0;
        while done < p.part_bytes {
            let chunk = p.content.slice(id, done, (p.part_bytes - done) as usize);
            file.write_all_at(chunk, done)?;
            done += chunk.len() as u64;
        }
        file.sync_all()?;
        Ok(())
    })()
    .with_context(|| format!("write {}", path.display()));
    if let Err(e) = written {
        ctx.failed(&lock_metric("acquire", 50.0, LockCase::Untouched), name, &e);
        return;
    }
    let stats = stats_file(dir);
    let untouched = lock_cycles(&path, p.lock_cycles, stats.as_deref(), |_| Ok(()));
    record_locks(ctx, name, LockCase::Untouched, untouched, said);
    let Some(second) = second else {
        return;
    };
    // The second client keeps its own descriptor and changes 4 KiB (and
    // fsyncs: committed) before each lock.
    let block = p.content.slice(id ^ 1, 0, CHANGE_BYTES as usize).to_vec();
    let other_path = second.join(LOCK_FILE);
    let changed = File::options()
        .read(true)
        .write(true)
        .open(&other_path)
        .with_context(|| format!("open {} on the second client", other_path.display()))
        .and_then(|other| {
            lock_cycles(&path, p.lock_cycles, stats.as_deref(), |i| {
                other.write_all_at(&block, change_offset(i, p.part_bytes))?;
                other.sync_data()?;
                Ok(())
            })
        });
    record_locks(ctx, name, LockCase::Changed, changed, said);
}

/// What one case's cycles measured.
struct LockTimes {
    acquire_us: Vec<f64>,
    release_us: Vec<f64>,
    /// The mount's metad requests per cycle, where it counts them.
    metad_requests_per_cycle: Option<f64>,
}

/// One untimed lock/unlock cycle, then `cycles` timed ones; `between(i)`
/// runs (untimed) before cycle i, the untimed one included (i = 0). One
/// descriptor throughout: a close would drop the process's locks.
fn lock_cycles(
    path: &Path,
    cycles: usize,
    stats: Option<&Path>,
    mut between: impl FnMut(usize) -> Result<()>,
) -> Result<LockTimes> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))?;
    between(0)?;
    set_lock(&file, libc::F_WRLCK).context("lock")?;
    set_lock(&file, libc::F_UNLCK).context("unlock")?;
    let before = stats.map(metad_requests).transpose()?;
    let mut t = LockTimes {
        acquire_us: Vec::with_capacity(cycles),
        release_us: Vec::with_capacity(cycles),
        metad_requests_per_cycle: None,
    };
    for i in 1..=cycles {
        between(i).with_context(|| format!("change before lock {i}"))?;
        let started = Instant::now();
        set_lock(&file, libc::F_WRLCK).with_context(|| format!("lock {i}"))?;
        let locked = Instant::now();
        set_lock(&file, libc::F_UNLCK).with_context(|| format!("unlock {i}"))?;
        t.acquire_us.push((locked - started).as_secs_f64() * 1e6);
        t.release_us.push(locked.elapsed().as_secs_f64() * 1e6);
    }
    if let (Some(b), Some(s)) = (before, stats) {
        t.metad_requests_per_cycle = Some((metad_requests(s)? - b) / cycles as f64);
    }
    Ok(t)
}

/// F_SETLKW of `kind` (F_WRLCK, F_UNLCK) over the whole file, however long
/// it grows (start 0, length 0); retried when a signal interrupts it.
fn set_lock(file: &File, kind: libc::c_int) -> std::io::Result<()> {
    // SAFETY: struct flock is plain data; all zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    loop {
        // SAFETY: an open descriptor and a valid struct flock.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLKW, &fl) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn record_locks(
    ctx: &mut Ctx,
    name: &str,
    case: LockCase,
    times: Result<LockTimes>,
    said: &mut Vec<String>,
) {
    let t = match times {
        Ok(t) => t,
        Err(e) => {
            for (op, pct) in LOCK_FIGURES {
                ctx.failed(&lock_metric(op, pct, case), name, &e);
            }
            return;
        }
    };
    let mut parts = Vec::new();
    for (op, us) in [("acquire", &t.acquire_us), ("release", &t.release_us)] {
        let mut sorted = us.clone();
        sorted.sort_by(f64::total_cmp);
        let [p50, p99] = [50.0, 99.0].map(|pct| percentile(&sorted, pct).unwrap_or(f64::NAN));
        ctx.sample(&lock_metric(op, 50.0, case), name, p50);
        ctx.sample(&lock_metric(op, 99.0, case), name, p99);
        let phase = format!("lock-{op}-{}", case.short());
        ctx.latencies(NAME, &phase, name, us);
        parts.push(format!("{op} p50 {p50:.0} us p99 {p99:.0} us"));
    }
    if let Some(n) = t.metad_requests_per_cycle {
        ctx.sample(&metad_metric(case), name, n);
        parts.push(format!("{n:.2} metad requests/cycle"));
    }
    said.push(format!("locks, {}: {}", case.label(), parts.join(", ")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_walk_the_file_in_blocks() {
        assert_eq!(change_offset(0, 1 << 20), 0);
        assert_eq!(change_offset(1, 1 << 20), 4096);
        assert_eq!(change_offset(256, 1 << 20), 0);
        // A file smaller than a block: always its start.
        assert_eq!(change_offset(5, 100), 0);
        assert!((0..1000).all(|i| change_offset(i, 10_000) + CHANGE_BYTES <= 10_000));
    }

    #[test]
    fn lock_figures_are_lower_is_better_microseconds() {
        let m = lock_metric("acquire", 99.0, LockCase::Changed);
        assert_eq!(m.name, "lock acquire p99, file changed by another client");
        assert_eq!(m.unit, "us");
        assert!(!m.higher_is_better);
        assert_eq!(
            lock_metric("release", 50.0, LockCase::Untouched).name,
            "lock release p50, untouched file"
        );
    }

    #[test]
    fn locks_cycle_on_a_local_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let mut calls = Vec::new();
        let t = lock_cycles(&path, 5, None, |i| {
            calls.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, [0, 1, 2, 3, 4, 5]);
        assert_eq!((t.acquire_us.len(), t.release_us.len()), (5, 5));
        assert!(t.acquire_us.iter().all(|&us| us >= 0.0));
        assert!(t.metad_requests_per_cycle.is_none());
        assert!(stats_file(tmp.path()).is_none());
    }
}
