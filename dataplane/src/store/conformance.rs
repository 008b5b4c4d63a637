//! The contract every [`FragmentStore`] must keep, as one test suite:
//! call [`run`] on an empty store (see `store/mod.rs` for the contract).

use torchfs_proto::fragment::FragmentKey;

use super::{FragmentStore, StoreError};

fn key(index: u8) -> FragmentKey {
    FragmentKey {
        ino: 0x77,
        stripe: 3,
        generation: 2,
        index,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The (expected, actual) whole-fragment CRCs of a checksum refusal.
fn checksum_refusal(e: &StoreError) -> Option<(u32, u32)> {
    match e {
        StoreError::ChecksumMismatch {
            expected, actual, ..
        }
        | StoreError::ChunkChecksumMismatch {
            expected, actual, ..
        } => Some((*expected, *actual)),
        _ => None,
    }
}

/// A get of `offset..offset + length` of the damaged `key` must be
/// refused, naming the expected CRC and another one.
async fn assert_caught<S: FragmentStore>(
    store: &S,
    key: FragmentKey,
    offset: u32,
    length: u32,
    crc: u32,
) {
    match store.get(key, offset, length, crc).await {
        Err(e) => match checksum_refusal(&e) {
            Some((expected, actual)) => {
                assert_eq!(expected, crc, "{e}");
                assert_ne!(actual, crc, "{e}");
            }
            None => panic!("corrupt fragment, range {offset}+{length}: {e}"),
        },
        Ok(b) => panic!(
            "corrupt fragment, range {offset}+{length}: served {} bytes",
            b.len()
        ),
    }
}

async fn put<S: FragmentStore>(store: &S, key: FragmentKey, data: &[u8]) -> Result<(), StoreError> {
    let mut buf = store.put_buffer(data.len() as u32);
    buf.as_mut().copy_from_slice(data);
    store.put(key, buf, crc32c::crc32c(data)).await
}

/// Exercises every contract of [`FragmentStore`] on an empty `store`.
/// `corrupt(key, at)` must flip a bit of data byte `at` of the stored
/// fragment `key` behind the store's back. Panics on the first breach.
pub async fn run<S: FragmentStore>(store: &S, corrupt: impl Fn(FragmentKey, usize)) {
    // Empty store.
    assert!(store.list().is_empty());
    assert_eq!(store.used_bytes(), 0);
    assert!(matches!(
        store.get(key(0), 0, 1, 0).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete(key(0)).await,
        Err(StoreError::NotFound { .. })
    ));

    // Round trips at awkward sizes, whole and ranged.
    let sizes = [0usize, 1, 4095, 4096, 4097, 100_000, 300_000];
    for (i, len) in sizes.iter().enumerate() {
        let data = pattern(*len, i as u8);
        let crc = crc32c::crc32c(&data);
        put(store, key(i as u8), &data)
            .await
            .unwrap_or_else(|e| panic!("put {len} bytes: {e}"));
        let whole = store.get(key(i as u8), 0, *len as u32, crc).await.unwrap();
        assert_eq!(&*whole, &data[..], "{len} bytes");
        // A range past the end is clamped to the end.
        let clamped = store
            .get(key(i as u8), 0, *len as u32 + 100, crc)
            .await
            .unwrap();
        assert_eq!(clamped.len(), *len);
        if *len > 10 {
            let mid = store.get(key(i as u8), 3, 7, crc).await.unwrap();
            assert_eq!(&*mid, &data[3..10]);
        }
        // Ranges across (and ending at) 4 KiB and 64 KiB boundaries.
        for (offset, length) in [
            (4090usize, 20usize),
            (65_530, 20),
            (65_536, 4096),
            (131_000, 1000),
        ] {
            if offset + length <= *len {
                let got = store
                    .get(key(i as u8), offset as u32, length as u32, crc)
                    .await
                    .unwrap();
                assert_eq!(
                    &*got,
                    &data[offset..offset + length],
                    "{len}: {offset}+{length}"
                );
            }
        }
        let tail = store
            .get(key(i as u8), (*len as u32).saturating_sub(5), 100, crc)
            .await
            .unwrap();
        assert_eq!(&*tail, &data[len.saturating_sub(5)..]);
        let at_end = store.get(key(i as u8), *len as u32, 10, crc).await.unwrap();
        assert!(at_end.is_empty());
        let err = store
            .get(key(i as u8), *len as u32 + 1, 1, crc)
            .await
            .err()
            .expect("offset past the end");
        assert!(matches!(err, StoreError::BadRange { .. }), "{err}");
    }
    let keys: Vec<_> = (0..sizes.len() as u8).map(key).collect();
    assert_eq!(store.list(), keys, "list in key order");
    let used = store.used_bytes();
    assert!(used >= sizes.iter().sum::<usize>() as u64);

    // The sender's CRC is checked before anything is stored.
    let data = pattern(5000, 9);
    let mut buf = store.put_buffer(5000);
    buf.as_mut().copy_from_slice(&data);
    let crc = crc32c::crc32c(&data);
    match store.put(key(100), buf, crc ^ 0xff).await {
        Err(StoreError::ChecksumMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, crc ^ 0xff);
            assert_eq!(actual, crc);
        }
        other => panic!("put with a wrong CRC: {other:?}"),
    }
    assert!(matches!(
        store.get(key(100), 0, 1, crc).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.used_bytes(), used);

    // The caller's expected CRC is checked (a stale or misdirected fragment).
    let data = pattern(100_000, 5);
    let crc = crc32c::crc32c(&data);
    match store.get(key(5), 10, 10, crc ^ 1).await {
        Err(StoreError::ChecksumMismatch {
            expected, actual, ..
        }) => {
            assert_eq!((expected, actual), (crc ^ 1, crc));
        }
        other => panic!(
            "get with a wrong expected CRC: {:?}",
            other.map(|b| b.len())
        ),
    }

    // Overwrite replaces.
    let new = pattern(4097, 200);
    put(store, key(5), &new).await.unwrap();
    let new_crc = crc32c::crc32c(&new);
    assert_eq!(
        &*store.get(key(5), 0, u32::MAX, new_crc).await.unwrap(),
        &new[..]
    );
    assert!(
        store.get(key(5), 0, 1, crc).await.is_err(),
        "the old CRC no longer matches"
    );
    assert_eq!(store.list().len(), sizes.len());

    // A scrub reads a fragment whole and answers its CRC.
    assert_eq!(
        store.scrub(key(5)).await.unwrap(),
        (new_crc, new.len() as u32)
    );
    assert!(matches!(
        store.scrub(key(9)).await,
        Err(StoreError::NotFound { .. })
    ));

    // A flipped byte is caught by every get that covers it. A get of
    // another range may not notice it, but then serves right bytes.
    corrupt(key(5), 4000);
    for (offset, length) in [(0u32, 4097u32), (3995, 10), (4000, 1)] {
        assert_caught(store, key(5), offset, length, new_crc).await;
    }
    let big = pattern(300_000, 6);
    let big_crc = crc32c::crc32c(&big);
    corrupt(key(6), 200_000);
    for (offset, length) in [
        (0u32, 300_000u32),
        (0, u32::MAX),
        (199_990, 20),
        (200_000, 1),
    ] {
        assert_caught(store, key(6), offset, length, big_crc).await;
    }
    // A scrub catches a flip wherever it is.
    for k in [key(5), key(6)] {
        let err = store
            .scrub(k)
            .await
            .expect_err("a scrub of a flipped fragment");
        assert!(checksum_refusal(&err).is_some(), "{err}");
    }
    for (offset, length) in [(0usize, 10usize), (4096, 4096), (290_000, 10_000)] {
        match store
            .get(key(6), offset as u32, length as u32, big_crc)
            .await
        {
            Ok(b) => assert_eq!(&*b, &big[offset..offset + length]),
            Err(e) => assert!(checksum_refusal(&e).is_some(), "{e}"),
        }
    }
    // The expected CRC is still checked when the range reads nothing.
    let err = store
        .get(key(6), 300_000, 10, big_crc ^ 2)
        .await
        .err()
        .expect("a wrong expected CRC at the end");
    assert!(checksum_refusal(&err).is_some(), "{err}");

    // Delete, and everything is gone.
    for k in keys {
        store.delete(k).await.unwrap();
        assert!(matches!(
            store.get(k, 0, 1, 0).await,
            Err(StoreError::NotFound { .. })
        ));
    }
    assert!(store.list().is_empty());
    assert_eq!(store.used_bytes(), 0);
}
