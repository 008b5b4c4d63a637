//! An unlock whose flush fails keeps the lock and answers the error
//! (`fuse-client/src/core/locks.rs`): the next holder never starts from a
//! half-written state. With one storage node's disk full (fault injection,
//! feature `testing`) no stripe can be uploaded (every stripe has a
//! fragment on every node, and a node that refuses a fragment fails the
//! write: degraded writes only leave out nodes that are down), so mount
//! A's unflushed write cannot be committed: its fsync and its F_UNLCK
//! fail, mount B cannot take the lock and reads the old content. Once the
//! node has room again the unlock goes through, and B's lock shows what
//! it committed (lock to lock).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::common::{fuse_available, pattern, serial, TestCluster};
use crate::common::{getlk, rw, setlk};
use crate::{errno_name, mount_logs, MIB};

/// The committed content: half a stripe and a ragged tail.
const OLD_LEN: usize = 2 * MIB as usize + 4321;
/// A's unflushed write at offset 0 (one unit).
const NEW_LEN: usize = MIB as usize;
/// The storage node whose disk fills (node id 1).
const NODE: usize = 0;
/// Longer than a mount's cluster-map refresh period (2 s).
const MAP_REFRESH: Duration = Duration::from_millis(3_000);
/// How long the restarted node may take until A's unlock goes through.
const BACK_WITHIN: Duration = Duration::from_secs(30);

/// Where `got` first differs from `want`, for messages ("" when equal).
fn first_difference(got: &[u8], want: &[u8], names: [(&str, &[u8]); 2]) -> String {
    if got == want {
        return String::new();
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    let at = at.unwrap_or(got.len().min(want.len()));
    // What the differing bytes are: those of another version, or other.
    let whose = names
        .iter()
        .find(|(_, v)| v.get(at..(at + 64).min(v.len())) == got.get(at..(at + 64).min(got.len())))
        .map_or("neither version's", |(n, _)| n);
    format!(
        "{} bytes read, {} wanted; first difference at byte {at}, where it holds \
         {whose} bytes",
        got.len(),
        want.len()
    )
}

#[test]
#[cfg_attr(
    not(feature = "testing"),
    ignore = "needs the `testing` feature (fault injection): cargo test --all-features"
)]
fn unlock_whose_flush_fails_keeps_the_lock_and_answers_the_error() -> Result<()> {
    if !fuse_available("unlock_whose_flush_fails_keeps_the_lock_and_answers_the_error") {
        return Ok(());
    }
    let _g = serial();
    let t0 = Instant::now();
    let mut tc = TestCluster::start()?;
    let b = tc.mount_another("mnt-b")?;
    let logs = |tc: &TestCluster| mount_logs(&[("A", &tc.mount_log()), ("B", &b.log)]);
    let (on_a, on_b) = (tc.path("locked"), b.path("locked"));
    let old = pattern(OLD_LEN, 1);
    let new = pattern(NEW_LEN, 2);
    let mut want = old.clone();
    want[..NEW_LEN].copy_from_slice(&new);
    let versions = [("the old", &old[..]), ("the new", &want[..])];

    // A commits the old content, then writes over it under a write lock of
    // the whole file, without fsync.
    {
        let mut f = File::create(&on_a)?;
        f.write_all(&old)?;
        f.sync_all().context("fsync of the old content")?;
    }
    // Node 1's disk fills up before A writes.
    tc.cluster.kill_storage(NODE)?;
    tc.cluster
        .start_storage_with_env(NODE, &[("TORCHFS_FAULTS", "put_no_space")])?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    // The restarted node listens on new ports: let A's map (refreshed
    // every 2 s) learn them, or A finds the old ports closed, counts the
    // node as down and writes without it (a degraded write).
    std::thread::sleep(MAP_REFRESH);
    let fa = rw(&on_a)?;
    let fb = rw(&on_b)?;
    let rc = setlk(&fa, libc::F_WRLCK, 0, 0, false);
    ensure!(rc == 0, "F_SETLK F_WRLCK on A: {}", errno_name(rc));
    fa.write_all_at(&new, 0).context("pwrite on A")?;

    // The write cannot be uploaded now: fsync and unlock fail.
    let e = match fa.sync_all() {
        Ok(()) => bail!(
            "fsync on A succeeded with storage node {}'s disk full{}",
            NODE + 1,
            logs(&tc)
        ),
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    eprintln!(
        "node {}'s disk full; fsync on A: {}",
        NODE + 1,
        errno_name(e)
    );
    if e != libc::ENOSPC {
        eprintln!("note: fsync failed with {}, not ENOSPC", errno_name(e));
    }
    let rc = setlk(&fa, libc::F_UNLCK, 0, 0, false);
    eprintln!("F_UNLCK on A with the disk full: {}", errno_name(rc));
    ensure!(
        rc != 0,
        "F_UNLCK on A succeeded with storage node {}'s disk full: its write \
         cannot have been committed{}",
        NODE + 1,
        logs(&tc)
    );
    if rc != libc::ENOSPC {
        eprintln!("note: F_UNLCK failed with {}, not ENOSPC", errno_name(rc));
    }

    // A still holds the lock, and B sees the old content.
    let rc = setlk(&fb, libc::F_WRLCK, 0, 0, false);
    ensure!(
        rc == libc::EAGAIN,
        "F_SETLK F_WRLCK on B after A's failed unlock: {}, not EAGAIN (the lock \
         was handed on){}",
        errno_name(rc),
        logs(&tc)
    );
    let (typ, start, _) = getlk(&fb, libc::F_WRLCK, 0, 0);
    ensure!(
        (typ, start) == (libc::F_WRLCK, 0),
        "F_GETLK on B after A's failed unlock: type {typ} start {start}, not \
         A's write lock from 0"
    );
    let got = std::fs::read(&on_b).context("read on B with the disk full")?;
    let diff = first_difference(&got, &old, versions);
    ensure!(
        diff.is_empty(),
        "B read the file while A's unlock had failed: not the old content: \
         {diff}{}",
        logs(&tc)
    );

    // The node has room again: A's unlock goes through (its flush commits).
    tc.cluster.kill_storage(NODE)?;
    tc.cluster.start_storage(NODE)?;
    tc.cluster.wait_ready(6, Duration::from_secs(60))?;
    let t = Instant::now();
    let mut seen = Vec::new();
    loop {
        let rc = setlk(&fa, libc::F_UNLCK, 0, 0, false);
        if rc == 0 {
            break;
        }
        if seen.last() != Some(&rc) {
            seen.push(rc);
        }
        ensure!(
            t.elapsed() < BACK_WITHIN,
            "F_UNLCK on A still failing {BACK_WITHIN:?} after node {} was back \
             (errnos seen: {:?}){}",
            NODE + 1,
            seen.iter().map(|&e| errno_name(e)).collect::<Vec<_>>(),
            logs(&tc)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "node {} back: F_UNLCK on A went through after {:?} (errnos before: {:?})",
        NODE + 1,
        t.elapsed(),
        seen.iter().map(|&e| errno_name(e)).collect::<Vec<_>>()
    );

    // B takes the lock and reads what A's unlock committed, through its
    // handle and through a fresh open.
    let rc = setlk(&fb, libc::F_WRLCK, 0, 0, false);
    ensure!(
        rc == 0,
        "F_SETLK F_WRLCK on B after A's unlock: {}{}",
        errno_name(rc),
        logs(&tc)
    );
    let size = fb.metadata()?.len();
    let mut got = vec![0u8; want.len()];
    let n = read_at_most(&fb, &mut got).context("read on B under its lock")?;
    got.truncate(n);
    let diff = first_difference(&got, &want, versions);
    ensure!(
        diff.is_empty() && size == want.len() as u64,
        "B took the lock after A's unlock, read through its handle (size {size}): \
         not the new content: {diff}{}",
        logs(&tc)
    );
    let got = std::fs::read(&on_b).context("fresh read on B")?;
    let diff = first_difference(&got, &want, versions);
    ensure!(
        diff.is_empty(),
        "B took the lock after A's unlock, read through a fresh open: not the \
         new content: {diff}{}",
        logs(&tc)
    );
    let rc = setlk(&fb, libc::F_UNLCK, 0, 0, false);
    ensure!(rc == 0, "F_UNLCK on B: {}", errno_name(rc));
    eprintln!("unlock whose flush fails: {:?}", t0.elapsed());
    Ok(())
}

/// Reads from offset 0 until `buf` is full or the file ends: the bytes read.
fn read_at_most(f: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            got => n += got,
        }
    }
    Ok(n)
}
