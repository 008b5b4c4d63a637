//! Two mounts of one cluster, as two machines would have: a rename on one
//! is seen by the other within the TTL, a file unlinked on one while the
//! other reads it is read to the end, fcntl and flock locks exclude each
//! other across mounts (blocking waits included), and the locks of a mount
//! that is killed are released once its lease ends.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::*;

/// How long the other mount may take to see a change (entry TTL 1 s).
const SEEN_WITHIN: Duration = Duration::from_secs(3);
/// A killed mount's locks: its 5 s lease, plus the leader's 1 s tick.
const RELEASED_WITHIN: Duration = Duration::from_secs(15);

/// Polls `ok` until it holds or `within` passes; how long it took.
fn within(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while !ok() {
        ensure!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t0.elapsed())
}

#[test]
fn two_mounts_see_renames_share_unlinked_files_and_exclude_locks() -> Result<()> {
    if !fuse_available("two_mounts") {
        return Ok(());
    }
    let _g = serial();
    let tc = TestCluster::start()?;
    let mut b = tc.mount_another("mnt-b")?;

    // A rename on A is seen on B within the TTL, the old name gone.
    std::fs::write(tc.path("x"), b"renamed")?;
    ensure!(std::fs::read(b.path("x"))? == b"renamed");
    std::fs::rename(tc.path("x"), tc.path("y"))?;
    let took = within(SEEN_WITHIN, "rename seen on B", || {
        b.path("y").exists() && !b.path("x").exists()
    })?;
    eprintln!("rename on A seen on B after {took:?}");

    // Unlinked on A while B reads it: B reads every byte, A sees it gone.
    let data = pattern(6 << 20, 9);
    std::fs::write(tc.path("big"), &data)?;
    let mut on_b = rw(&b.path("big"))?;
    let mut got = vec![0u8; 1 << 20];
    on_b.read_exact(&mut got)?;
    std::fs::remove_file(tc.path("big"))?;
    ensure!(!tc.path("big").exists(), "still there after unlink on A");
    tc.drop_caches();
    let mut rest = Vec::new();
    on_b.read_to_end(&mut rest)?;
    got.extend_from_slice(&rest);
    ensure!(
        got.len() == data.len(),
        "read {} of {} bytes",
        got.len(),
        data.len()
    );
    ensure!(got == data, "the unlinked file read back different bytes");
    // And written through the open handle, still unlinked.
    on_b.write_all(b"tail")?;
    on_b.sync_all()?;
    on_b.seek(SeekFrom::Start(data.len() as u64))?;
    let mut tail = Vec::new();
    on_b.read_to_end(&mut tail)?;
    ensure!(
        tail == b"tail",
        "wrote to the unlinked file, read back {tail:?}"
    );
    ensure!(on_b.metadata()?.len() == data.len() as u64 + 4);
    drop(on_b);
    within(SEEN_WITHIN, "unlink seen on B", || !b.path("big").exists())?;

    // fcntl locks across mounts: A holds bytes 0..100 for writing.
    std::fs::write(tc.path("locked"), b"0123456789")?;
    let fa = rw(&tc.path("locked"))?;
    let fb = rw(&b.path("locked"))?;
    ensure!(setlk(&fa, libc::F_WRLCK, 0, 100, false) == 0);
    ensure!(setlk(&fb, libc::F_RDLCK, 50, 10, false) == libc::EAGAIN);
    let (typ, start, len) = getlk(&fb, libc::F_RDLCK, 0, 0);
    ensure!(
        (typ, start, len) == (libc::F_WRLCK, 0, 100),
        "F_GETLK on B: type {typ} start {start} len {len}"
    );
    ensure!(
        setlk(&fb, libc::F_WRLCK, 100, 0, false) == 0,
        "bytes 100.. are free"
    );
    // A blocking lock on B waits until A closes its file. (The thread
    // hands its fd back: closing any fd of the file would release the
    // process's locks on it, as POSIX says.)
    let waiter = {
        let fb = fb.try_clone()?;
        std::thread::spawn(move || {
            let t0 = Instant::now();
            (setlk(&fb, libc::F_WRLCK, 0, 100, true), t0.elapsed(), fb)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    ensure!(
        !waiter.is_finished(),
        "F_SETLKW returned while A held the lock"
    );
    drop(fa); // close(2) releases A's locks
    let (rc, waited, fb_dup) = waiter.join().expect("waiter thread");
    ensure!(rc == 0, "F_SETLKW on B: errno {rc}");
    eprintln!("F_SETLKW on B waited {waited:?}");
    let fa = rw(&tc.path("locked"))?;
    ensure!(setlk(&fa, libc::F_RDLCK, 0, 1, false) == libc::EAGAIN);

    // flock: exclusive on B keeps A out until B unlocks.
    let ga = rw(&tc.path("y"))?;
    let gb = rw(&b.path("y"))?;
    ensure!(flock(&gb, libc::LOCK_EX | libc::LOCK_NB) == 0);
    ensure!(flock(&ga, libc::LOCK_SH | libc::LOCK_NB) == libc::EWOULDBLOCK);
    ensure!(flock(&gb, libc::LOCK_UN) == 0);
    ensure!(flock(&ga, libc::LOCK_SH | libc::LOCK_NB) == 0);
    ensure!(
        flock(&gb, libc::LOCK_SH | libc::LOCK_NB) == 0,
        "shared locks share"
    );
    ensure!(flock(&ga, libc::LOCK_UN) == 0 && flock(&gb, libc::LOCK_UN) == 0);

    // B dies holding its fcntl lock on `locked` and a flock on `y`.
    ensure!(flock(&gb, libc::LOCK_EX | libc::LOCK_NB) == 0);
    b.kill();
    let took = within(
        RELEASED_WITHIN,
        "locks of the killed mount released",
        || {
            setlk(&fa, libc::F_WRLCK, 0, 0, false) == 0
                && flock(&ga, libc::LOCK_EX | libc::LOCK_NB) == 0
        },
    )?;
    eprintln!("locks of the killed mount released after {took:?}");
    drop((fb, fb_dup, gb));

    // A's file handle still works for I/O after all this.
    let mut fa = fa;
    fa.seek(SeekFrom::End(0))?;
    fa.write_all(b"!")?;
    drop(fa);
    ensure!(std::fs::read(tc.path("locked"))? == b"0123456789!");
    Ok(())
}
