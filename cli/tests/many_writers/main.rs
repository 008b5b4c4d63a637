//! Many writers, one file (issue 28), across two mounts of one cluster as two
//! machines would have them, with real processes (Python helpers under
//! `tests/many_writers/scripts/`) doing most of the writing:
//! - `blocks`: disjoint blocks of one file written concurrently by 4
//!   processes (2 per mount), blocks straddling unit and stripe boundaries:
//!   every block's bytes are there, seen from both mounts;
//! - `appends`: appends to one log under `flock` and under `fcntl` record
//!   locks, with no fsync (the unlock publishes): every line exactly once,
//!   none torn;
//! - `sqlite`: SQLite in rollback-journal mode: every committed row is there
//!   and the database passes `PRAGMA integrity_check`;
//! - `killed`: a mount SIGKILLed while its process writes: the other mount's
//!   acknowledged (fsynced) bytes survive and the file stays readable;
//! - `unlock`: an unlock whose flush fails (a storage node down) keeps the
//!   lock and answers the error; the other mount neither gets the lock nor
//!   sees the half-written state until the unlock succeeds.
//!
//! This file holds what the tests share: the helper processes (spawned,
//! started together, waited for), the failure reports and the fcntl lock
//! calls; `patterns` the blocks' bytes and their checker.

#[path = "../common/mod.rs"]
mod common;

mod appends;
mod blocks;
mod killed;
mod patterns;
mod sqlite;
mod unlock;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::TestCluster;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// k = 4 units of 1 MiB.
const UNIT: u64 = MIB;
const STRIPE: u64 = 4 * UNIT;
/// A writer process that has not exited by then is killed; the test fails.
const WRITER_TIMEOUT: Duration = Duration::from_secs(180);

/// Debian's own Python where there is one (sqlite3 and fcntl are standard).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A helper script, under `tests/many_writers/scripts/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/many_writers/scripts")
        .join(name)
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

/// A helper process (`python3 tests/many_writers/scripts/<script> ...`), its
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

/// An errno as its name and text, e.g. "EIO (Input/output error)".
fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "0",
        libc::EIO => "EIO",
        libc::EAGAIN => "EAGAIN",
        libc::EACCES => "EACCES",
        libc::EINTR => "EINTR",
        libc::ENOSPC => "ENOSPC",
        libc::ESTALE => "ESTALE",
        libc::ENOLCK => "ENOLCK",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => "errno",
    };
    let text = std::io::Error::from_raw_os_error(e).to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    format!("{name} {e} ({text})")
}
