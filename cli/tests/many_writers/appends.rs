//! Appends to one log from 4 processes (2 per mount), each line one write
//! under an exclusive `flock` or `fcntl` (lockf) lock, with no fsync: the
//! unlock alone publishes the line to the next holder, so every line is
//! there exactly once, none torn, each writer's in order.

use std::time::Instant;

use anyhow::Result;

use crate::common::{fuse_available, serial, TestCluster};
use crate::{start_together, verdict, wait_all, Proc, WRITER_TIMEOUT};

/// Lines per appending process.
const APPENDS: usize = 200;

/// What a log of "w<writer> <i>\n" lines written by `writers` processes of
/// `APPENDS` lines each is missing: problems, one a line.
fn check_log(data: &[u8], writers: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let nuls = data.iter().filter(|&&c| c == 0).count();
    if nuls > 0 {
        let first = data.iter().position(|&c| c == 0).unwrap_or(0);
        problems.push(format!("{nuls} NUL bytes, the first at offset {first}"));
    }
    if !data.is_empty() && !data.ends_with(b"\n") {
        problems.push("the file does not end with a newline".into());
    }
    let mut seen = vec![vec![0usize; APPENDS]; writers];
    let mut last = vec![None::<usize>; writers];
    let mut torn = Vec::new();
    let mut out_of_order = 0;
    for line in data.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let text = String::from_utf8_lossy(line);
        let parsed = text.strip_prefix('w').and_then(|rest| {
            let (w, i) = rest.split_once(' ')?;
            Some((w.parse::<usize>().ok()?, i.parse::<usize>().ok()?))
        });
        match parsed {
            Some((w, i)) if w < writers && i < APPENDS => {
                seen[w][i] += 1;
                if last[w].is_some_and(|l| l >= i) {
                    out_of_order += 1;
                }
                last[w] = Some(i);
            }
            _ => torn.push(text.escape_debug().to_string()),
        }
    }
    let want = writers * APPENDS;
    let once = seen.iter().flatten().filter(|&&n| n == 1).count();
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .map(|(w, s)| format!("w{w} {}", s.iter().filter(|&&n| n == 0).count()))
        .collect();
    let dup = seen.iter().flatten().filter(|&&n| n > 1).count();
    if once != want {
        problems.push(format!(
            "{once} of {want} lines present exactly once; missing per writer: {}; \
             duplicated: {dup}",
            missing.join(", ")
        ));
    }
    if !torn.is_empty() {
        problems.push(format!(
            "{} torn or foreign lines, e.g. {:?}",
            torn.len(),
            &torn[..torn.len().min(5)]
        ));
    }
    if out_of_order > 0 {
        problems.push(format!("{out_of_order} lines out of their writer's order"));
    }
    problems
}

/// The tests: 4 processes (2 per mount) append `APPENDS` lines each to
/// one O_APPEND file, each line under an exclusive `mode` lock, no fsync.
fn locked_appends(test: &str, mode: &str) -> Result<()> {
    if !fuse_available(test) {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let b = tc.mount_another("mnt-b")?;
    let (on_a, on_b) = (tc.path("log"), b.path("log"));
    std::fs::File::create(&on_a)?;
    let mut procs = Vec::new();
    for w in 0..4 {
        let path = if w < 2 { &on_a } else { &on_b };
        procs.push(Proc::spawn(
            &tc,
            &format!("{mode}-w{w}"),
            "appender.py",
            &[
                path.display().to_string(),
                w.to_string(),
                APPENDS.to_string(),
                mode.to_string(),
            ],
        )?);
    }
    let t = Instant::now();
    start_together(&mut procs)?;
    let failed = wait_all(&mut procs, WRITER_TIMEOUT);
    eprintln!("{mode} appends: writers done in {:?}", t.elapsed());
    let mut problems = Vec::new();
    for (mount, path) in [("A", &on_a), ("B", &on_b)] {
        match std::fs::read(path) {
            Ok(data) => problems.extend(
                check_log(&data, 4)
                    .into_iter()
                    .map(|p| format!("read on mount {mount} ({} bytes): {p}", data.len())),
            ),
            Err(e) => problems.push(format!("read {} on mount {mount}: {e}", path.display())),
        }
    }
    verdict(
        &format!(
            "appends under {} locks by 4 processes (2 per mount), {APPENDS} lines each, \
             no fsync: lines lost or damaged",
            if mode == "lockf" {
                "fcntl (lockf)"
            } else {
                mode
            }
        ),
        &problems,
        &failed,
        &[("A", &tc.mount_log()), ("B", &b.log)],
    )?;
    eprintln!("{mode} appends: {:?}", t0.elapsed());
    Ok(())
}

#[test]
fn appends_under_flock_from_two_mounts_keep_every_line() -> Result<()> {
    locked_appends(
        "appends_under_flock_from_two_mounts_keep_every_line",
        "flock",
    )
}

#[test]
fn appends_under_fcntl_locks_from_two_mounts_keep_every_line() -> Result<()> {
    locked_appends(
        "appends_under_fcntl_locks_from_two_mounts_keep_every_line",
        "lockf",
    )
}
