//! `torchfs mount --read-only`: the kernel opens and closes files by
//! itself (no-open mode), so a warm re-read of a dataset sends the mount
//! no open, flush, release or read; reads are byte-identical, frozen
//! files and files that can change alike; a file changed through another
//! mount is read at its new bytes once the attribute TTL has passed; and
//! the mount refuses writes and has no control files.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// Requests fuser logged (at debug) in `log` past byte `from`, by opcode.
fn requests_since(log: &Path, from: usize, opcode: &str) -> Result<usize> {
    let text = std::fs::read_to_string(log)?;
    let tail = text.get(from..).unwrap_or("");
    let needle = format!(" {opcode} ");
    Ok(tail
        .lines()
        .filter(|l| l.contains(&needle) && l.contains("FUSE("))
        .count())
}

fn log_len(log: &Path) -> Result<usize> {
    Ok(std::fs::metadata(log)?.len() as usize)
}

#[test]
fn a_read_only_mount_reads_warm_files_with_no_request_and_sees_changes() -> Result<()> {
    if !fuse_available("a_read_only_mount_reads_warm_files_with_no_request_and_sees_changes") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start()?;
    let mut files = Vec::new();
    for dir in ["live", "ds"] {
        std::fs::create_dir(tc.path(dir))?;
        for i in 0..12u64 {
            let name = format!("{dir}/f{i:02}");
            let bytes = pattern(1_000 + (i as usize) * 37_000, 500 + i);
            std::fs::write(tc.path(&name), &bytes)?;
            files.push((name, bytes));
        }
    }
    let out = Command::new(exe())
        .args(["freeze", &tc.path("ds").display().to_string()])
        .args(["--metad", &tc.cluster.metad_addrs().join(",")])
        .output()
        .context("run torchfs freeze")?;
    ensure!(
        out.status.success(),
        "torchfs freeze: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ro = tc.mount_another_wrapped(
        "ro",
        &["env", "RUST_LOG=info,fuser=debug"],
        &["--read-only"],
    )?;
    // Cold: read through the mount's handle per inode.
    for (name, want) in &files {
        let got = std::fs::read(ro.path(name)).with_context(|| format!("read {name}"))?;
        ensure!(
            got == *want,
            "{name}: {} bytes read, not the {} written",
            got.len(),
            want.len()
        );
    }
    // (The log has fuser's request lines: the cold reads are there.)
    let reads = requests_since(&ro.log, 0, "READ")?;
    ensure!(
        reads >= files.len(),
        "{reads} reads logged for {} files",
        files.len()
    );
    let opens = requests_since(&ro.log, 0, "OPEN")?;
    ensure!(
        opens <= 1,
        "{opens} opens reached a read-only mount (one answers ENOSYS)"
    );
    // Warm: served by the kernel alone.
    let mark = log_len(&ro.log)?;
    for (name, want) in &files {
        ensure!(
            std::fs::read(ro.path(name))? == *want,
            "{name}: warm read differs"
        );
    }
    for opcode in ["OPEN", "FLUSH", "RELEASE", "READ"] {
        let n = requests_since(&ro.log, mark, opcode)?;
        ensure!(
            n == 0,
            "a warm re-read sent {n} {opcode} requests to the read-only mount"
        );
    }

    // A change made elsewhere is read within the TTL (1 s) and a little.
    let (name, old) = &files[3];
    let new: Vec<u8> = old.iter().map(|b| b ^ 0xff).collect();
    std::fs::write(tc.path(name), &new)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = std::fs::read(ro.path(name))?;
        if got == new {
            break;
        }
        if got != *old {
            bail!("{name}: read neither the old nor the new bytes");
        }
        if std::time::Instant::now() > deadline {
            bail!("{name}: still the old bytes 5 s after another mount rewrote it");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Read-only, and no control files.
    let write = std::fs::write(ro.path("live/new"), b"x");
    ensure!(
        write.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EROFS),
        "a write on a read-only mount: {write:?}"
    );
    ensure!(
        !ro.path(".torchfs").exists(),
        "a read-only mount has no control files"
    );
    Ok(())
}
