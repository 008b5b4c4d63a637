//! Frozen dataset versions through a real cluster and a real FUSE mount:
//! `torchfs freeze` on a mounted directory; every change inside is refused
//! with EROFS; the mount loads the tree's table once and then serves
//! lookups, stat, listings, links and reads of the whole dataset with no
//! metad request (counted in `.torchfs/stats`); `torchfs unfreeze` is seen
//! within the check interval and the directory takes writes again.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;

const FILES: usize = 24;
const FILE_BYTES: usize = 40 << 10;
const CHECK_MS: u64 = 400;

fn stats(mnt: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(mnt.join(".torchfs/stats")).context("read .torchfs/stats")?;
    serde_json::from_slice(&text).context("parse .torchfs/stats")
}

fn freeze(tc: &TestCluster, verb: &str, path: &Path) -> Result<String> {
    let out = Command::new(exe())
        .arg(verb)
        .arg(path)
        .arg("--metad")
        .arg(tc.cluster.metad_addrs().join(","))
        .output()
        .with_context(|| format!("run torchfs {verb}"))?;
    if !out.status.success() {
        bail!(
            "torchfs {verb} {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Reads the whole dataset through the mount and checks every byte, the
/// listings and the link.
fn read_dataset(mnt: &Path, data: &[Vec<u8>]) -> Result<()> {
    let mut names: Vec<String> = std::fs::read_dir(mnt.join("ds"))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    assert_eq!(names.len(), FILES / 2 + 2, "{names:?}");
    for (i, d) in data.iter().enumerate() {
        let p = mnt.join(file_name(i));
        assert_eq!(std::fs::metadata(&p)?.len(), d.len() as u64);
        let got = std::fs::read(&p).with_context(|| format!("read {}", p.display()))?;
        assert!(got == *d, "{} differs", p.display());
    }
    assert_eq!(std::fs::read_link(mnt.join("ds/link"))?, Path::new("f000"));
    Ok(())
}

fn file_name(i: usize) -> String {
    if i < FILES / 2 {
        format!("ds/f{i:03}")
    } else {
        format!("ds/sub/g{i:03}")
    }
}

#[test]
fn a_frozen_dataset_is_served_without_metad_round_trips() -> Result<()> {
    if !fuse_available("a_frozen_dataset_is_served_without_metad_round_trips") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;
    tc.unmount()?;
    tc.mount_with(&["--frozen-check-ms", &CHECK_MS.to_string()])?;
    let mnt = tc.mnt.clone();
    std::fs::create_dir_all(mnt.join("ds/sub"))?;
    let data: Vec<Vec<u8>> = (0..FILES)
        .map(|i| pattern(FILE_BYTES + i * 1000, i as u64 + 7))
        .collect();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(mnt.join(file_name(i)), d)?;
    }
    std::os::unix::fs::symlink("f000", mnt.join("ds/link"))?;

    let out = freeze(&tc, "freeze", &mnt.join("ds"))?;
    assert!(
        out.contains("/ds") && out.contains("frozen = true"),
        "{out}"
    );

    // Nothing inside changes: EROFS from metad (or from the client once it
    // holds the table), and the files are intact.
    let erofs = Some(libc::EROFS);
    assert_eq!(errno_of(std::fs::write(mnt.join("ds/new"), b"x")), erofs);
    assert_eq!(errno_of(std::fs::create_dir(mnt.join("ds/sub/d"))), erofs);
    assert_eq!(errno_of(std::fs::remove_file(mnt.join("ds/f001"))), erofs);
    assert_eq!(
        errno_of(std::fs::rename(mnt.join("ds/f002"), mnt.join("ds/f902"))),
        erofs
    );
    assert_eq!(
        errno_of(
            std::fs::OpenOptions::new()
                .write(true)
                .open(mnt.join("ds/f003"))
        ),
        erofs
    );
    // The root of the tree cannot be moved or removed either.
    assert_eq!(
        errno_of(std::fs::rename(mnt.join("ds"), mnt.join("ds2"))),
        erofs
    );

    // Cached entries from before the freeze expire (1 s TTLs); the next
    // lookup of `ds` sees it frozen and loads the table.
    std::thread::sleep(Duration::from_millis(1_100));
    read_dataset(&mnt, &data)?;
    let s = stats(&mnt)?;
    assert_eq!(s["frozen"]["tables"], 1, "{s}");
    // The root, `sub`, the files and the link.
    assert_eq!(s["frozen"]["entries"], (FILES + 3) as u64, "{s}");

    // The kernel keeps a frozen file's pages across opens: the dataset
    // read again (caches not dropped) sends the mount no read at all.
    let before = stats(&mnt)?;
    read_dataset(&mnt, &data)?;
    let after = stats(&mnt)?;
    assert_eq!(
        after["reads"], before["reads"],
        "a warm read of the frozen dataset reached the mount: {after}"
    );

    // Read it all again, twice, with the kernel's caches dropped: metad
    // sees only the root rechecks (one per CHECK_MS at most).
    let before = stats(&mnt)?;
    let started = Instant::now();
    for _ in 0..2 {
        tc.drop_caches();
        read_dataset(&mnt, &data)?;
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let after = stats(&mnt)?;
    let requests = after["meta_requests"].as_u64().unwrap_or(u64::MAX)
        - before["meta_requests"].as_u64().unwrap_or(0);
    // Allowed: the root rechecks, and getattrs of the mount's root (not
    // frozen; the kernel revalidates it when its 1 s attributes expire).
    let rechecks_max = elapsed_ms / CHECK_MS + elapsed_ms / 1000 + 2;
    assert!(
        requests <= rechecks_max,
        "{requests} metad requests in {elapsed_ms} ms for {} reads (rechecks allowed: {rechecks_max}): {after}",
        2 * FILES
    );
    let hits = after["frozen"]["hits"].as_u64().unwrap_or(0)
        - before["frozen"]["hits"].as_u64().unwrap_or(0);
    assert!(hits >= 2 * FILES as u64, "{hits} table hits: {after}");

    // A subdirectory is not a root: unfreeze refuses it, changing nothing.
    assert!(freeze(&tc, "unfreeze", &mnt.join("ds/sub")).is_err());
    let out = freeze(&tc, "unfreeze", &mnt.join("ds"))?;
    assert!(out.contains("frozen = false"), "{out}");
    // The directory takes writes again at once (metad decides), and the
    // mount drops its table when it sees the change or at the next check.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::write(mnt.join("ds/new"), b"thawed") {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), erofs, "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => bail!("ds still refuses writes 10 s after unfreeze: {e}"),
        }
    }
    assert_eq!(std::fs::read(mnt.join("ds/new"))?, b"thawed");
    assert_eq!(stats(&mnt)?["frozen"]["tables"], 0);
    std::fs::remove_file(mnt.join("ds/f001"))?;
    Ok(())
}
