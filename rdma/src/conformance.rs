//! The contract every [`Transport`] keeps against a live storage node, as
//! one suite that each implementation runs (TCP today; RDMA verbs where a
//! device exists): put, ranged gets into the caller's buffer, delete, a
//! checksum failure (a stale CRC and a flipped byte on disk), a short
//! fragment, a missing one, a request timeout, and peer death. Call [`run`]
//! with the transport and a [`Peer`]: the node under test, and the faults
//! its caller can cause there.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};

use crate::{Transport, TransportError};

/// The storage node a suite runs against.
pub trait Peer {
    /// The shard address that holds `key`.
    fn addr(&self, key: &FragmentKey) -> SocketAddr;
    /// Flips a bit of data byte `at` of the stored fragment `key`, behind
    /// the node's back (as a failing disk would).
    fn corrupt(&self, key: &FragmentKey, at: usize);
    /// Stops the node for good (peer death).
    fn kill(&mut self);
    /// An address that takes connections and never answers a request
    /// (served until the peer is dropped).
    fn silent(&mut self) -> SocketAddr;
}

/// Bytes of the fragments the suite stores: several 64 KiB checksum
/// chunks, and above the size nodes keep as log records by default, so a
/// flipped byte can be placed in a file.
pub const FRAGMENT_BYTES: usize = 300_000;

fn key(stripe: u64, index: u8) -> FragmentKey {
    FragmentKey {
        ino: 0xC0FF,
        stripe,
        generation: 7,
        index,
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// Runs the suite. `timeout` is the transport's request timeout: a
/// request to a peer that never answers, or that died, must fail within
/// about that long (never hang, never succeed).
pub async fn run<T: Transport>(t: &T, peer: &mut impl Peer, timeout: Duration) {
    let (k, d) = (key(1, 0), bytes(FRAGMENT_BYTES, 1));
    let crc = crc32c::crc32c(&d);
    let at = peer.addr(&k);

    // Put, then the whole fragment into a caller buffer.
    t.put(at, k, &d).await.expect("put");
    let mut whole = vec![0u8; d.len()];
    t.get(at, k, 0, crc, &mut whole).await.expect("whole get");
    assert!(whole == d, "whole get: wrong bytes");

    // Ranged gets land in the caller's buffer, exactly.
    let last = d.len() - 1;
    for (offset, len) in [
        (0, 1),
        (40, 60),
        (65_530, 70_000),
        (last - 9, 10),
        (last, 1),
    ] {
        let mut part = vec![0u8; len];
        t.get(at, k, offset as u32, crc, &mut part)
            .await
            .unwrap_or_else(|e| panic!("get {offset}+{len}: {e}"));
        assert!(
            part == d[offset..offset + len],
            "get {offset}+{len}: wrong bytes"
        );
    }

    // A range past the end: the fragment is short for it.
    let mut past = vec![0u8; 20];
    let err = t
        .get(at, k, (d.len() - 10) as u32, crc, &mut past)
        .await
        .expect_err("a get past the end succeeded");
    assert_eq!(err.code(), Some(FragmentErrorCode::BadRequest), "{err}");

    // A CRC that is not the fragment's (a stale layout): refused, for a
    // whole get and a ranged one alike.
    for (offset, len) in [(0, d.len()), (100, 10)] {
        let mut buf = vec![0u8; len];
        let err = t
            .get(at, k, offset as u32, crc ^ 1, &mut buf)
            .await
            .expect_err("a get with the wrong CRC succeeded");
        assert_eq!(
            err.code(),
            Some(FragmentErrorCode::ChecksumMismatch),
            "{offset}+{len}: {err}"
        );
    }

    // A flipped byte on disk: every get that covers it fails the check;
    // gets of other chunks still read right bytes.
    let (bad, bad_data) = (key(2, 1), bytes(FRAGMENT_BYTES, 2));
    let bad_crc = crc32c::crc32c(&bad_data);
    let bad_at = peer.addr(&bad);
    t.put(bad_at, bad, &bad_data).await.expect("put");
    peer.corrupt(&bad, last);
    for (offset, len) in [(0, bad_data.len()), (last - 9, 10), (last, 1)] {
        let mut buf = vec![0u8; len];
        let err = t
            .get(bad_at, bad, offset as u32, bad_crc, &mut buf)
            .await
            .expect_err("a get over a flipped byte succeeded");
        assert_eq!(
            err.code(),
            Some(FragmentErrorCode::ChecksumMismatch),
            "{offset}+{len}: {err}"
        );
    }
    let mut head = vec![0u8; 1000];
    t.get(bad_at, bad, 0, bad_crc, &mut head)
        .await
        .expect("a get of an intact chunk");
    assert!(head == bad_data[..1000], "intact chunk: wrong bytes");

    // Missing, and deleted.
    let missing = key(3, 2);
    let mut one = [0u8; 1];
    let err = t
        .get(peer.addr(&missing), missing, 0, 0, &mut one)
        .await
        .expect_err("a get of a missing fragment succeeded");
    assert_eq!(err.code(), Some(FragmentErrorCode::NotFound), "{err}");
    t.delete(at, k).await.expect("delete");
    let err = t
        .get(at, k, 0, crc, &mut one)
        .await
        .expect_err("a get of a deleted fragment succeeded");
    assert_eq!(err.code(), Some(FragmentErrorCode::NotFound), "{err}");

    // A peer that takes the connection and never answers: a timeout.
    let silent_at = peer.silent();
    let started = Instant::now();
    let err = t
        .get(silent_at, bad, 0, bad_crc, &mut one)
        .await
        .expect_err("a get from a silent peer succeeded");
    assert!(
        matches!(err, TransportError::Timeout { .. }),
        "silent peer: {err}"
    );
    assert!(
        started.elapsed() < timeout * 2,
        "silent peer: failed after {:?}",
        started.elapsed()
    );

    // Peer death: what it held fails at once or within the timeout.
    peer.kill();
    let started = Instant::now();
    let err = t
        .get(bad_at, bad, 0, bad_crc, &mut head)
        .await
        .expect_err("a get from a dead peer succeeded");
    assert!(err.code().is_none(), "dead peer judged the fragment: {err}");
    assert!(
        started.elapsed() < timeout * 2,
        "dead peer: failed after {:?}",
        started.elapsed()
    );
    let err = t
        .put(bad_at, key(4, 3), &bad_data[..100])
        .await
        .expect_err("a put to a dead peer succeeded");
    assert!(err.code().is_none(), "dead peer judged the fragment: {err}");
}
