//! Several clients writing one file (docs/ARCHITECTURE.md, "Data path:
//! many writers"): disjoint writes merge, overlapping ones keep the last
//! committer's bytes byte by byte, the size is the largest any writer made,
//! and a stripe that keeps changing under a commit ends in a clear error
//! with the writes still held. Over the in-memory metad and storage of
//! `tests`.

use torchfs_proto::meta::{Ino, SetAttr};

use super::tests::*;
use super::*;

const STRIPE: usize = CFG.k as usize * CFG.unit_bytes as usize;

/// Two clients of one metad and one set of storage nodes, and a file
/// `ino` one of them created.
struct Pair {
    meta: FakeMeta,
    store: FakeStore,
    a: TestClient,
    b: TestClient,
    ino: Ino,
}

async fn pair(name: &str) -> Pair {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let (a, b) = (
        client(&meta, &store, 8).await,
        client(&meta, &store, 8).await,
    );
    let ino = create_file(&a, name).await.ino;
    Pair {
        meta,
        store,
        a,
        b,
        ino,
    }
}

/// Opens `ino` for writing on each client.
async fn open_all(clients: &[&TestClient], ino: Ino) -> Vec<FileHandle> {
    let mut fhs = Vec::new();
    for c in clients {
        fhs.push(c.open(ino, true, false).await.unwrap());
    }
    fhs
}

/// What a fresh client reads of the whole file.
async fn read_fresh(meta: &FakeMeta, store: &FakeStore, ino: Ino) -> Vec<u8> {
    let c = client(meta, store, 8).await;
    let fh = c.open(ino, false, false).await.unwrap();
    read_all(&c, fh).await
}

#[tokio::test]
async fn disjoint_writes_to_one_stripe_both_survive() {
    let Pair {
        meta,
        store,
        a,
        b,
        ino,
    } = pair("shared").await;
    // Both open before either writes, as two ranks would.
    let fhs = open_all(&[&a, &b], ino).await;
    let (first, second) = (pattern(20, 1), pattern(20, 2));
    a.write(fhs[0], 0, &first).await.unwrap();
    b.write(fhs[1], 20, &second).await.unwrap();
    a.fsync(fhs[0]).await.unwrap();
    b.fsync(fhs[1]).await.unwrap();
    let mut want = first.clone();
    want.extend_from_slice(&second);
    assert_eq!(read_fresh(&meta, &store, ino).await, want);
    // Again, committing in the other order, over what is there now.
    a.write(fhs[0], 40, &pattern(10, 3)).await.unwrap();
    b.write(fhs[1], 5, &pattern(5, 4)).await.unwrap();
    b.release(fhs[1]).await.unwrap();
    a.release(fhs[0]).await.unwrap();
    want[5..10].copy_from_slice(&pattern(5, 4));
    want.extend_from_slice(&pattern(10, 3));
    assert_eq!(read_fresh(&meta, &store, ino).await, want);
}

#[tokio::test]
async fn a_stale_size_never_cuts_another_writers_stripes() {
    let Pair {
        meta,
        store,
        a,
        b,
        ino,
    } = pair("shared").await;
    let fhs = open_all(&[&a, &b], ino).await;
    // B fills stripes 1 and 2; A, which saw the file empty, writes 10
    // bytes of stripe 0 after B committed.
    let theirs = pattern(2 * STRIPE, 5);
    b.write(fhs[1], STRIPE as u64, &theirs).await.unwrap();
    b.release(fhs[1]).await.unwrap();
    a.write(fhs[0], 0, &pattern(10, 6)).await.unwrap();
    a.release(fhs[0]).await.unwrap();
    let got = read_fresh(&meta, &store, ino).await;
    assert_eq!(got.len(), 3 * STRIPE, "the size is the largest end");
    assert_eq!(&got[..10], &pattern(10, 6)[..]);
    assert!(got[10..STRIPE].iter().all(|&b| b == 0));
    assert_eq!(&got[STRIPE..], &theirs[..]);
}

#[tokio::test]
async fn overlapping_writes_keep_the_last_committers_bytes_only_where_they_overlap() {
    let Pair {
        meta,
        store,
        a,
        b,
        ino,
    } = pair("shared").await;
    // Stripe 0 committed whole first, so both writes read-modify-write.
    let fh = a.open(ino, true, false).await.unwrap();
    let old = pattern(STRIPE, 7);
    a.write(fh, 0, &old).await.unwrap();
    a.release(fh).await.unwrap();
    let fhs = open_all(&[&a, &b], ino).await;
    a.write(fhs[0], 4, &[b'a'; 30]).await.unwrap();
    b.write(fhs[1], 20, &[b'b'; 30]).await.unwrap();
    a.release(fhs[0]).await.unwrap();
    let commits_before = lock(&meta.0).commits;
    b.release(fhs[1]).await.unwrap();
    assert_eq!(
        lock(&meta.0).commits - commits_before,
        2,
        "B's first commit conflicts, its merge commits"
    );
    let mut want = old;
    want[4..34].fill(b'a');
    want[20..50].fill(b'b');
    assert_eq!(read_fresh(&meta, &store, ino).await, want);
    settle().await;
    // The fragments of every superseded version are deleted: the file's
    // one stripe is all that is stored (k data + m parity).
    assert_eq!(store.count(), (CFG.k + CFG.m) as usize);
}

#[tokio::test]
async fn a_stripe_that_keeps_changing_is_a_clear_error_and_the_writes_stay() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let ino = create_file(&c, "hot").await.ino;
    let fh = c.open(ino, true, false).await.unwrap();
    c.write(fh, 0, &pattern(STRIPE, 8)).await.unwrap();
    c.flush(fh).await.unwrap();
    c.write(fh, 3, b"xyz").await.unwrap();
    lock(&meta.0).interfere = true;
    let err = c.flush(fh).await.unwrap_err();
    assert!(
        matches!(err, ClientError::CommitConflict { tries, .. } if tries > 1),
        "{err}"
    );
    assert_eq!(err.errno(), libc::EIO);
    // Once the stripe calms down, the next flush commits the writes over
    // the other client's version (its valid bytes: one per try fewer).
    lock(&meta.0).interfere = false;
    c.flush(fh).await.unwrap();
    c.release(fh).await.unwrap();
    let got = read_fresh(&meta, &store, ino).await;
    assert_eq!(&got[3..6], b"xyz");
    let valid = STRIPE - super::write::COMMIT_TRIES_MAX as usize;
    assert_eq!(&got[..3], &pattern(STRIPE, 8)[..3]);
    assert_eq!(&got[6..valid], &pattern(STRIPE, 8)[6..valid]);
    assert!(
        got[valid..].iter().all(|&b| b == 0),
        "bytes the other client cut stay cut"
    );
}

#[tokio::test]
async fn a_truncation_by_this_client_is_not_undone_by_a_merge() {
    let Pair {
        meta,
        store,
        a,
        b,
        ino,
    } = pair("cut").await;
    let fhs = open_all(&[&a, &b], ino).await;
    // A writes 40 bytes, then cuts its own write to 10 before flushing.
    a.write(fhs[0], 0, &pattern(40, 1)).await.unwrap();
    let set = SetAttr {
        size: Some(10),
        ..SetAttr::default()
    };
    a.setattr(ino, set).await.unwrap();
    // Meanwhile B writes bytes 50..60 and commits first.
    b.write(fhs[1], 50, &pattern(10, 2)).await.unwrap();
    b.release(fhs[1]).await.unwrap();
    a.release(fhs[0]).await.unwrap();
    let got = read_fresh(&meta, &store, ino).await;
    assert_eq!(got.len(), 60);
    assert_eq!(&got[..10], &pattern(40, 1)[..10]);
    assert!(got[10..50].iter().all(|&b| b == 0), "{:?}", &got[10..50]);
    assert_eq!(&got[50..], &pattern(10, 2)[..]);
}

/// Puts that take `ms` each, so uploads stay in flight.
fn slow_puts(store: &FakeStore, ms: u64) {
    store
        .put_delay_ms
        .store(ms, std::sync::atomic::Ordering::Relaxed);
}

#[tokio::test]
async fn full_stripes_upload_while_the_writer_goes_on() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let ino = create_file(&c, "pipelined").await.ino;
    let fh = c.open(ino, true, false).await.unwrap();
    slow_puts(&store, 300);
    let data = pattern(3 * STRIPE + 5, 3);
    let t0 = std::time::Instant::now();
    c.write(fh, 0, &data).await.unwrap();
    let wrote = t0.elapsed();
    assert!(
        wrote < std::time::Duration::from_millis(250),
        "3 full stripes written in {wrote:?}: the writer waited for their puts"
    );
    // Readable while in flight, from this client's buffers.
    assert_eq!(read_all(&c, fh).await, data);
    // A write into a stripe being uploaded starts from its buffer.
    c.write(fh, 10, b"again").await.unwrap();
    let mut want = data.clone();
    want[10..15].copy_from_slice(b"again");
    c.release(fh).await.unwrap();
    slow_puts(&store, 0);
    assert_eq!(read_fresh(&meta, &store, ino).await, want);
    settle().await;
    // Stripe 0 was stored twice (the second replaced the first); what is
    // stored now is the file's 4 stripes, nothing more.
    let per_stripe = (CFG.k + CFG.m) as usize;
    assert_eq!(store.count(), 3 * per_stripe + 1 + CFG.m as usize);
}

#[tokio::test]
async fn a_truncation_drops_uploads_in_flight_past_the_end() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let ino = create_file(&c, "cut").await.ino;
    let fh = c.open(ino, true, false).await.unwrap();
    slow_puts(&store, 200);
    c.write(fh, 0, &pattern(2 * STRIPE, 4)).await.unwrap();
    let set = SetAttr {
        size: Some(STRIPE as u64 + 7),
        ..SetAttr::default()
    };
    c.setattr(ino, set).await.unwrap();
    c.release(fh).await.unwrap();
    slow_puts(&store, 0);
    let got = read_fresh(&meta, &store, ino).await;
    assert_eq!(got, pattern(2 * STRIPE, 4)[..STRIPE + 7].to_vec());
    settle().await;
    // Stripe 0 whole, stripe 1's 7 bytes: 1 data + m parity fragments.
    let per_stripe = (CFG.k + CFG.m) as usize;
    assert_eq!(store.count(), per_stripe + 1 + CFG.m as usize);
}

#[tokio::test]
async fn a_stripe_rewritten_while_its_upload_is_in_flight_keeps_the_newer_bytes() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    // The rewrite starts from the buffer in flight and uploads again; the
    // first upload's result must not land after the second's. One dirty
    // stripe at most, so the next stripe's buffer also forces uploads.
    let c = client(&meta, &store, 1).await;
    let ino = create_file(&c, "again").await.ino;
    let fh = c.open(ino, true, false).await.unwrap();
    slow_puts(&store, 200);
    let mut want = pattern(STRIPE, 6);
    c.write(fh, 0, &want).await.unwrap();
    c.write(fh, 3, b"new").await.unwrap();
    want[3..6].copy_from_slice(b"new");
    c.write(fh, STRIPE as u64, b"next").await.unwrap();
    want.extend_from_slice(b"next");
    c.release(fh).await.unwrap();
    slow_puts(&store, 0);
    assert_eq!(read_fresh(&meta, &store, ino).await, want);
}
