//! Many writers, one file (issue 28), across two mounts of one cluster as two
//! machines would have them, with real processes (Python helpers under
//! `tests/many_writers/`) doing the writing:
//! - disjoint blocks of one file written concurrently by 4 processes (2 per
//!   mount), blocks straddling unit and stripe boundaries: every block's
//!   bytes are there, seen from both mounts;
//! - appends to one log under `flock` and under `fcntl` record locks, with
//!   no fsync (the unlock publishes): every line exactly once, none torn;
//! - SQLite in rollback-journal mode: every committed row is there and the
//!   database passes `PRAGMA integrity_check`;
//! - a mount SIGKILLed while its process writes: the other mount's
//!   acknowledged (fsynced) bytes survive and the file stays readable.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// k = 4 units of 1 MiB.
const UNIT: u64 = MIB;
const STRIPE: u64 = 4 * UNIT;
/// A writer process that has not exited by then is killed; the test fails.
const WRITER_TIMEOUT: Duration = Duration::from_secs(180);
/// The seed sits above bit 40 of each 8-byte word (see `block_bytes`).
const WORD_BITS: u32 = 40;

/// Debian's own Python where there is one (sqlite3 and fcntl are standard).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A helper script of this file, under `tests/many_writers/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/many_writers")
        .join(name)
}

/// The bytes of a block, as `mwlib.block_bytes` writes them: the 8-byte
/// little-endian word at absolute offset 8w holds `(seed << 40) | w`.
fn block_bytes(off: u64, len: u64, seed: u64) -> Vec<u8> {
    let (w0, w1) = (off / 8, (off + len).div_ceil(8));
    let mut raw = Vec::with_capacity(((w1 - w0) * 8) as usize);
    for w in w0..w1 {
        raw.extend_from_slice(&((seed << WORD_BITS) | w).to_le_bytes());
    }
    let skip = (off - w0 * 8) as usize;
    raw[skip..skip + len as usize].to_vec()
}

/// Last `max` bytes of a file, for messages.
fn tail(path: &Path, max: usize) -> String {
    let s = std::fs::read(path).unwrap_or_default();
    let s = String::from_utf8_lossy(&s[s.len().saturating_sub(max)..]).into_owned();
    s.trim_end().to_string()
}

/// The last lines of the mounts' logs, for failure messages.
fn mount_logs(mounts: &[(&str, &Path)]) -> String {
    let mut out = String::new();
    for (name, log) in mounts {
        let raw = std::fs::read_to_string(log).unwrap_or_default();
        // Without the colours' escape sequences.
        let mut text = String::with_capacity(raw.len());
        let mut in_escape = false;
        for c in raw.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (false, c) => text.push(c),
                (true, c) => in_escape = !c.is_ascii_alphabetic(),
            }
        }
        let lines: Vec<&str> = text.lines().collect();
        let _ = write!(
            out,
            "\n--- last lines of mount {name}'s log ({}):",
            log.display()
        );
        for line in &lines[lines.len().saturating_sub(12)..] {
            let cut: String = line.chars().take(300).collect();
            let _ = write!(out, "\n{cut}");
        }
    }
    out
}

/// If there are problems or failed writers: fails with `what`, the problems
/// found in the data, the writers that failed and the mounts' logs.
fn verdict(
    what: &str,
    problems: &[String],
    failed: &[String],
    mounts: &[(&str, &Path)],
) -> Result<()> {
    if problems.is_empty() && failed.is_empty() {
        return Ok(());
    }
    let mut msg = format!("{what}\n{}", problems.join("\n"));
    if !failed.is_empty() {
        let _ = write!(
            msg,
            "\n{} writer process(es) failed:\n{}",
            failed.len(),
            failed.join("\n"),
        );
    }
    bail!("{msg}{}", mount_logs(mounts))
}

/// A helper process (`python3 tests/many_writers/<script> ...`), its
/// stdout and stderr in files of the test's directory (off the mounts).
/// Killed when dropped, so it never keeps a mount busy.
struct Proc {
    name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    ready: PathBuf,
    go: PathBuf,
    done: Option<std::process::ExitStatus>,
}

impl Proc {
    /// The process says it is ready (has its file open) by creating its
    /// ready file, and starts writing once its go file exists
    /// (`mwlib.ready_then_wait_go`); see [`start_together`].
    fn spawn(tc: &TestCluster, name: &str, script_name: &str, args: &[String]) -> Result<Self> {
        let logs = tc.dir.path().join("py");
        std::fs::create_dir_all(&logs)?;
        let out = logs.join(format!("{name}.out"));
        let err = logs.join(format!("{name}.err"));
        let ready = logs.join(format!("{name}.ready"));
        let go = logs.join(format!("{name}.go"));
        let _ = std::fs::remove_file(&ready);
        let _ = std::fs::remove_file(&go);
        let child = Command::new(python())
            .arg(script(script_name))
            .args(args)
            .env("MW_READY", &ready)
            .env("MW_GO", &go)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out)?)
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("start {} {script_name}", python()))?;
        Ok(Self {
            name: name.to_string(),
            child,
            out,
            err,
            ready,
            go,
            done: None,
        })
    }

    fn stdout(&self) -> String {
        tail(&self.out, 4000)
    }

    fn stderr(&self) -> String {
        tail(&self.err, 4000)
    }

    fn running(&mut self) -> bool {
        if self.done.is_none() {
            self.done = self.child.try_wait().ok().flatten();
        }
        self.done.is_none()
    }

    /// SIGKILL and reap; false if it was still running after 30 s (stuck
    /// in the kernel).
    fn kill(&mut self) -> bool {
        if !self.running() {
            return true;
        }
        let _ = self.child.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every process has its file open (its ready file exists),
/// then lets them all go at once (creates the go file).
fn start_together(procs: &mut [Proc]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in procs.iter_mut() {
        while !p.ready.exists() {
            if !p.running() {
                bail!(
                    "{} exited ({:?}) before it was ready:\n{}",
                    p.name,
                    p.done,
                    p.stderr()
                );
            }
            ensure!(Instant::now() < deadline, "{} not ready in 60 s", p.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for p in procs.iter() {
        std::fs::write(&p.go, b"go")?;
    }
    Ok(())
}

/// Waits for every process, up to `timeout` in all; kills those still
/// running then. One line per process that did not exit 0, with its
/// stderr.
fn wait_all(procs: &mut [Proc], timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    while procs.iter_mut().any(|p| p.running()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut failed = Vec::new();
    for p in procs.iter_mut() {
        if p.running() {
            let reaped = p.kill();
            failed.push(format!(
                "{}: still running after {timeout:?}, killed{}; stderr:\n{}",
                p.name,
                if reaped {
                    ""
                } else {
                    " (and still not gone 30 s later)"
                },
                p.stderr()
            ));
        } else if !p.done.is_some_and(|s| s.success()) {
            failed.push(format!(
                "{}: exited with {:?}; stderr:\n{}",
                p.name,
                p.done,
                p.stderr()
            ));
        }
    }
    failed
}

/// One block of the shared file: `[off, off+len)`, its content's seed and
/// which writer process writes it.
#[derive(Clone, Copy, Debug)]
struct Block {
    off: u64,
    len: u64,
    seed: u64,
    writer: usize,
}

/// Cuts `[0, total)` into blocks of 4 KiB to 2 MiB (log-uniform, so many
/// are small; lengths and offsets often not 4 KiB aligned), no cut on a
/// 1 MiB boundary (so every unit and stripe boundary lies inside a block),
/// each given to a random writer of `writers`.
fn partition(rng: &mut StdRng, total: u64, writers: usize, seed_base: u64) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut off = 0;
    while off < total {
        let exp: f64 = rng.gen_range(0.0..9.0);
        let mut len = ((4 * KIB) as f64 * exp.exp2()) as u64;
        if rng.gen_bool(0.5) {
            len = len.next_multiple_of(4 * KIB);
        }
        len = len.clamp(4 * KIB, 2 * MIB);
        if (off + len).is_multiple_of(UNIT) {
            len += rng.gen_range(1..2048);
        }
        if total - off < len + 4 * KIB {
            len = total - off;
        }
        blocks.push(Block {
            off,
            len,
            seed: seed_base + blocks.len() as u64,
            writer: rng.gen_range(0..writers),
        });
        off += len;
    }
    blocks
}

/// What the file holds where a block `[at.., ..end)` went wrong: zeros, a
/// known seed's bytes (another round's, or another block's moved here), or
/// other bytes. Looks at the first whole 8-byte word from `at` on.
fn what_is_there(got: &[u8], at: u64, end: u64, seeds: &HashMap<u64, String>) -> String {
    let mut w = at.div_ceil(8);
    if w * 8 + 8 > end {
        w = at / 8;
    }
    let Some(word) = got.get((w * 8) as usize..(w * 8 + 8) as usize) else {
        return "nothing: past the end of the file".into();
    };
    let v = u64::from_le_bytes(word.try_into().unwrap());
    if v == 0 {
        return "zeros".into();
    }
    let (seed, place) = (v >> WORD_BITS, v & ((1 << WORD_BITS) - 1));
    match seeds.get(&seed) {
        Some(who) if place == w => format!("the bytes of {who}"),
        Some(who) => format!("bytes of {who} from offset {}", place * 8),
        None => format!("other bytes (word {v:#018x})"),
    }
}

/// Reads `path` (a fresh open) and checks every block and the size; the
/// problems found, one line each, after a summary line.
fn check_blocks(
    path: &Path,
    blocks: &[Block],
    seeds: &HashMap<u64, String>,
    writer_names: &[String],
) -> Result<Vec<String>> {
    let got = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let total = blocks.last().map_or(0, |b| b.off + b.len);
    let mut problems = Vec::new();
    if got.len() as u64 != total {
        problems.push(format!(
            "size {} bytes, the last block ends at {total}",
            got.len()
        ));
    }
    let mut bad_blocks = 0;
    let mut bad_bytes = 0u64;
    let mut per_writer = vec![(0usize, 0usize); writer_names.len()];
    let mut lines = Vec::new();
    for (i, b) in blocks.iter().enumerate() {
        per_writer[b.writer].1 += 1;
        let want = block_bytes(b.off, b.len, b.seed);
        let have = got
            .get(b.off as usize..((b.off + b.len) as usize).min(got.len()))
            .unwrap_or(&[]);
        // Compared by 8-byte words of the file (so zeros do not match the
        // zero bytes of the pattern): the bytes of the words that differ.
        let (mut wrong, mut first) = (0u64, None);
        let mut j = 0u64;
        while j < b.len {
            let end = ((b.off + j) / 8 * 8 + 8 - b.off).min(b.len);
            let (s, e) = (j as usize, end as usize);
            if have.get(s..e) != Some(&want[s..e]) {
                wrong += end - j;
                first.get_or_insert(j);
            }
            j = end;
        }
        let Some(first) = first else {
            continue;
        };
        bad_blocks += 1;
        bad_bytes += wrong;
        per_writer[b.writer].0 += 1;
        lines.push(format!(
            "  block {i} [{}, {}) len {} of {}: {wrong} bytes wrong from +{first}, \
             where the file holds {}",
            b.off,
            b.off + b.len,
            b.len,
            writer_names[b.writer],
            what_is_there(&got, b.off + first, b.off + b.len, seeds)
        ));
    }
    if bad_blocks > 0 {
        let mut summary = format!(
            "{bad_blocks} of {} blocks wrong ({bad_bytes} of {total} bytes); \
             per writer (wrong/blocks):",
            blocks.len()
        );
        for (name, (bad, all)) in writer_names.iter().zip(&per_writer) {
            let _ = write!(summary, " {name} {bad}/{all}");
        }
        problems.push(summary);
        let more = lines.len().saturating_sub(20);
        problems.extend(lines.into_iter().take(20));
        if more > 0 {
            problems.push(format!("  ... and {more} more blocks"));
        }
    }
    Ok(problems)
}

/// Rounds of test 1, and the span of the shared file: 5.5 stripes and a
/// ragged tail.
const DISJOINT_ROUNDS: u64 = 3;
const DISJOINT_TOTAL: u64 = 22 * MIB + 12_345;

#[test]
fn disjoint_blocks_from_four_writers_on_two_mounts_all_land() -> Result<()> {
    if !fuse_available("disjoint_blocks_from_four_writers_on_two_mounts_all_land") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let b = tc.mount_another("mnt-b")?;
    let (on_a, on_b) = (tc.path("shared"), b.path("shared"));
    std::fs::File::create(&on_a)?;

    let writer_names: Vec<String> = (0..4)
        .map(|w| format!("writer {w} (mount {})", if w < 2 { 'A' } else { 'B' }))
        .collect();
    let mut rng = StdRng::seed_from_u64(28);
    let mut seeds = HashMap::new();
    let mut last = Vec::new();
    for round in 1..=DISJOINT_ROUNDS {
        // Round 1 fills the empty file; later rounds overwrite all of it.
        let blocks = partition(&mut rng, DISJOINT_TOTAL, 4, round << 12);
        for (i, bl) in blocks.iter().enumerate() {
            seeds.insert(
                bl.seed,
                format!("round {round} block {i} ({})", writer_names[bl.writer]),
            );
        }
        let straddle = |edge: u64| {
            blocks
                .iter()
                .filter(|bl| bl.off / edge != (bl.off + bl.len - 1) / edge)
                .count()
        };
        eprintln!(
            "round {round}: {} blocks, {} straddle a unit boundary, {} a stripe boundary",
            blocks.len(),
            straddle(UNIT),
            straddle(STRIPE)
        );
        let mut procs = Vec::new();
        for w in 0..writer_names.len() {
            let mine: Vec<[u64; 3]> = blocks
                .iter()
                .filter(|bl| bl.writer == w)
                .map(|bl| [bl.off, bl.len, bl.seed])
                .collect();
            let spec = serde_json::json!({
                "blocks": mine,
                "order_seed": round * 10 + w as u64,
                "fsync_every": 3,
            });
            let path = if w < 2 { &on_a } else { &on_b };
            procs.push(Proc::spawn(
                &tc,
                &format!("r{round}-w{w}"),
                "pwriter.py",
                &[path.display().to_string(), spec.to_string()],
            )?);
        }
        let t = Instant::now();
        start_together(&mut procs)?;
        let failed = wait_all(&mut procs, WRITER_TIMEOUT);
        eprintln!("round {round}: writers done in {:?}", t.elapsed());
        let mut problems = Vec::new();
        let mut on_first = None;
        for (mount, path) in [("A", &on_a), ("B", &on_b)] {
            match check_blocks(path, &blocks, &seeds, &writer_names) {
                Ok(found) if !found.is_empty() && on_first.as_ref() == Some(&found) => {
                    problems.push(format!("read on mount {mount}: the same as on mount A"))
                }
                Ok(found) => {
                    problems.extend(found.iter().map(|p| format!("read on mount {mount}: {p}")));
                    on_first.get_or_insert(found);
                }
                Err(e) => problems.push(format!("mount {mount}: {e:#}")),
            }
        }
        verdict(
            &format!(
                "round {round} of {DISJOINT_ROUNDS}: disjoint blocks written by 4 processes \
                 (2 per mount) did not all land"
            ),
            &problems,
            &failed,
            &[("A", &tc.mount_log()), ("B", &b.log)],
        )?;
        last = blocks;
    }
    // Once more from the cluster itself, not the kernels' page caches.
    tc.drop_caches();
    for (mount, path) in [("A", &on_a), ("B", &on_b)] {
        let problems = check_blocks(path, &last, &seeds, &writer_names)?;
        ensure!(
            problems.is_empty(),
            "after drop_caches, read on mount {mount}:\n{}",
            problems.join("\n")
        );
    }
    eprintln!("disjoint writers: {:?}", t0.elapsed());
    Ok(())
}

/// Lines per appending process in tests 2 and 3.
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

/// Tests 2 and 3: 4 processes (2 per mount) append `APPENDS` lines each to
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

/// Transactions per SQLite writer process in test 4 (the issue asks for a
/// few hundred in all: 4 writers).
const SQLITE_TXNS: usize = 150;

/// The rows each SQLite writer saw committed (its "ok <i>" lines).
fn sqlite_acked(p: &Proc) -> Vec<u64> {
    std::fs::read_to_string(&p.out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ok ")?.trim().parse().ok())
        .collect()
}

/// `sqlite_db.py check` on `db`, against the commits each writer saw
/// acknowledged: problems, one a line.
fn check_sqlite(
    tc: &TestCluster,
    name: &str,
    db: &Path,
    acked: &[Vec<u64>],
) -> Result<Vec<String>> {
    let mut p = Proc::spawn(
        tc,
        name,
        "sqlite_db.py",
        &["check".into(), db.display().to_string()],
    )?;
    let failed = wait_all(std::slice::from_mut(&mut p), Duration::from_secs(120));
    ensure!(failed.is_empty(), "sqlite check: {}", failed.join("\n"));
    let out: serde_json::Value = serde_json::from_str(p.stdout().trim())
        .with_context(|| format!("sqlite check printed {:?}", p.stdout()))?;
    let mut problems = Vec::new();
    if let Some(e) = out["error"].as_str() {
        problems.push(format!("error: {e}"));
    }
    let integrity: Vec<&str> = out["integrity"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    if integrity != ["ok"] {
        let shown: Vec<&str> = integrity.iter().take(10).copied().collect();
        problems.push(format!(
            "PRAGMA integrity_check: {} lines: {shown:?}",
            integrity.len()
        ));
    }
    if out["journal_mode"].as_str() != Some("delete") {
        problems.push(format!("journal_mode {}", out["journal_mode"]));
    }
    let (mut present, mut lost, mut dups) = (0, 0, 0);
    let mut per_writer = Vec::new();
    for (w, acked) in acked.iter().enumerate() {
        let mut rows: Vec<u64> = out["rows"][w.to_string()]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        let all = rows.len();
        rows.dedup();
        dups += all - rows.len();
        present += rows.len();
        let missing: Vec<u64> = acked
            .iter()
            .filter(|i| rows.binary_search(i).is_err())
            .copied()
            .collect();
        lost += missing.len();
        per_writer.push(format!(
            "w{w} {} rows ({} acknowledged, {} of them missing{})",
            rows.len(),
            acked.len(),
            missing.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(", e.g. {:?}", &missing[..missing.len().min(5)])
            }
        ));
    }
    let want = acked.len() * SQLITE_TXNS;
    if present != want || lost > 0 || dups > 0 {
        problems.push(format!(
            "{present} of {want} rows present, {lost} acknowledged commits missing, \
             {dups} duplicate rows; {}",
            per_writer.join("; ")
        ));
    }
    Ok(problems)
}

#[test]
fn sqlite_on_two_mounts_keeps_every_commit() -> Result<()> {
    if !fuse_available("sqlite_on_two_mounts_keeps_every_commit") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let b = tc.mount_another("mnt-b")?;
    let (on_a, on_b) = (tc.path("db.sqlite"), b.path("db.sqlite"));
    let mut init = Proc::spawn(
        &tc,
        "sqlite-init",
        "sqlite_db.py",
        &["init".into(), on_a.display().to_string()],
    )?;
    let failed = wait_all(std::slice::from_mut(&mut init), Duration::from_secs(60));
    ensure!(
        failed.is_empty(),
        "creating the database: {}",
        failed.join("\n")
    );
    let mut procs = Vec::new();
    for w in 0..4 {
        let path = if w < 2 { &on_a } else { &on_b };
        procs.push(Proc::spawn(
            &tc,
            &format!("sqlite-w{w}"),
            "sqlite_db.py",
            &[
                "write".into(),
                path.display().to_string(),
                w.to_string(),
                SQLITE_TXNS.to_string(),
            ],
        )?);
    }
    let t = Instant::now();
    start_together(&mut procs)?;
    let failed = wait_all(&mut procs, WRITER_TIMEOUT);
    eprintln!("sqlite: writers done in {:?}", t.elapsed());
    let acked: Vec<Vec<u64>> = procs.iter().map(sqlite_acked).collect();
    for (p, a) in procs.iter().zip(&acked) {
        eprintln!("sqlite: {}: {} commits acknowledged", p.name, a.len());
    }
    let mut problems = Vec::new();
    for (mount, path) in [("A", &on_a), ("B", &on_b)] {
        let found = check_sqlite(&tc, &format!("sqlite-check-{mount}"), path, &acked)?;
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("checked on mount {mount}: {p}")),
        );
    }
    verdict(
        &format!(
            "SQLite (journal_mode=DELETE) with 4 writer processes (2 per mount), \
             {SQLITE_TXNS} transactions each: commits lost or database damaged"
        ),
        &problems,
        &failed,
        &[("A", &tc.mount_log()), ("B", &b.log)],
    )?;
    eprintln!("sqlite: {:?}", t0.elapsed());
    Ok(())
}

/// Test 5: A writes `[0, KILLED_SPLIT)`, B streams over `[KILLED_SPLIT,
/// KILLED_TOTAL)`; the split lies inside a stripe, which both share.
const KILLED_SPLIT: u64 = 10 * MIB + 4321;
const KILLED_TOTAL: u64 = 20 * MIB;

#[test]
fn mount_killed_while_writing_leaves_the_other_mounts_bytes() -> Result<()> {
    if !fuse_available("mount_killed_while_writing_leaves_the_other_mounts_bytes") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let tc = TestCluster::start()?;
    let mut b = tc.mount_another("mnt-b")?;
    let b_log = b.log.clone();
    let on_a = tc.path("shared");
    std::fs::File::create(&on_a)?;
    let mut problems = Vec::new();
    let mut failed = Vec::new();

    // B keeps writing the second half until it dies.
    let progress = tc.dir.path().join("py/streamer.progress");
    let mut streamer = Proc::spawn(
        &tc,
        "streamer-b",
        "streamer.py",
        &[
            b.path("shared").display().to_string(),
            KILLED_SPLIT.to_string(),
            (KILLED_TOTAL - KILLED_SPLIT).to_string(),
            "1000".into(),
            progress.display().to_string(),
        ],
    )?;
    let fsyncs = || -> u64 {
        std::fs::read_to_string(&progress)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while fsyncs() < 2 && streamer.running() {
        ensure!(
            Instant::now() < deadline,
            "B's writer did not fsync twice in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Meanwhile A writes and fsyncs the first half: acknowledged.
    let mut rng = StdRng::seed_from_u64(5);
    let mut blocks = partition(&mut rng, KILLED_SPLIT, 1, 1);
    let spec = serde_json::json!({
        "blocks": blocks.iter().map(|bl| [bl.off, bl.len, bl.seed]).collect::<Vec<_>>(),
        "order_seed": 5,
        "fsync_every": 4,
    });
    let mut writer = Proc::spawn(
        &tc,
        "writer-a",
        "pwriter.py",
        &[on_a.display().to_string(), spec.to_string()],
    )?;
    start_together(std::slice::from_mut(&mut writer))?;
    failed.extend(wait_all(std::slice::from_mut(&mut writer), WRITER_TIMEOUT));
    let before = fsyncs();
    if !streamer.running() {
        // A writer of its own region must not fail: a problem, but the
        // kill and the checks below still run.
        problems.push(format!(
            "B's writer exited ({:?}) before B was killed, after {before} fsyncs:\n{}",
            streamer.done,
            streamer.stderr()
        ));
    }

    // B's mount dies in the middle of its writes, then its writer.
    b.kill();
    let reaped = streamer.kill();
    eprintln!(
        "killed B after {before} fsyncs of its writer ({} once it died); writer reaped: {reaped}",
        fsyncs()
    );
    if !reaped {
        problems.push("B's writer was still not gone 30 s after SIGKILL".into());
    }

    blocks.sort_by_key(|bl| bl.off);
    let mut seeds = HashMap::new();
    for (i, bl) in blocks.iter().enumerate() {
        seeds.insert(bl.seed, format!("A's block {i}"));
    }
    for p in 0..1000 {
        seeds.insert(1000 + p, format!("B's pass {p}"));
    }
    let names = ["A's writer".to_string()];
    // A's acknowledged region, byte for byte; B's may hold anything B wrote,
    // or zeros, but must read.
    let check = |what: &str, path: &Path, problems: &mut Vec<String>| {
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) => {
                problems.push(format!("{what}: stat: {e}"));
                return;
            }
        };
        if size < KILLED_SPLIT {
            problems.push(format!(
                "{what}: size {size}, less than the end of A's acknowledged region \
                 ({KILLED_SPLIT})"
            ));
        }
        match check_blocks(path, &blocks, &seeds, &names) {
            Ok(found) => problems.extend(
                found
                    .into_iter()
                    .filter(|p| !p.starts_with("size "))
                    .map(|p| format!("{what} (file size {size}): {p}")),
            ),
            Err(e) => problems.push(format!("{what}: {e:#}")),
        }
    };
    check("read on mount A", &on_a, &mut problems);
    let c = tc.mount_another("mnt-c")?;
    check("read on a fresh mount C", &c.path("shared"), &mut problems);
    tc.drop_caches();
    check("read on mount A after drop_caches", &on_a, &mut problems);
    verdict(
        "a mount SIGKILLed while writing its half of a file: the other mount's \
         acknowledged half damaged or the file unreadable",
        &problems,
        &failed,
        &[
            ("A", &tc.mount_log()),
            ("B (killed)", &b_log),
            ("C", &c.log),
        ],
    )?;
    eprintln!("killed mount: {:?}", t0.elapsed());
    Ok(())
}
