//! The disk store under seeded disk faults (`io::FaultyDisk`, feature
//! `testing`): it never acknowledges a put it did not store whole, never
//! serves wrong bytes, and a failed put leaves a whole fragment (the old
//! one, or the failed put's when it failed after its bytes and name were
//! in place), at once and after a restart. The seed is fixed;
//! `TORCHFS_DISK_FAULTS_SEED=N` tries another.

use std::collections::BTreeMap;

use super::tests::{flip_data_byte_at, open_logged, run_local};
use super::*;
use crate::faults::{stream, DiskFaults, Faults};
use crate::io::{FaultyDisk, GlommioDisk};

type Store = DmaStore<FaultyDisk<GlommioDisk>>;

fn seed() -> u64 {
    std::env::var("TORCHFS_DISK_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7)
}

/// The store on `dir` over a faulty disk, and the handle its faults are
/// set through.
fn open_faulty(dir: &Path, log: LogConfig) -> (Store, Faults) {
    let faults = Faults::for_dir(dir);
    let disk = FaultyDisk::new(
        GlommioDisk::new(faults.clone()),
        faults.clone(),
        stream(1, 0),
    );
    (open_logged(dir, disk, u64::MAX, log), faults)
}

fn key(i: u64) -> FragmentKey {
    FragmentKey {
        ino: 9,
        stripe: i,
        generation: 1,
        index: 2,
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn put(store: &Store, key: FragmentKey, data: &[u8]) -> Result<(), StoreError> {
    let mut buf = store.put_buffer(data.len() as u32);
    buf.as_mut().copy_from_slice(data);
    store.put(key, buf, crc32c::crc32c(data)).await
}

/// What a key may hold: the last acknowledged bytes, and the bytes of
/// every put of it that failed since (a put can fail after its bytes and
/// name are in place, e.g. at the directory fsync).
#[derive(Default)]
struct Versions {
    acked: Option<Vec<u8>>,
    failed: Vec<Vec<u8>>,
}

impl Versions {
    fn all(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.acked.iter().chain(&self.failed)
    }
}

/// Which of `versions` a get of `key` serves: a get asked for the CRC of
/// a version returns exactly its bytes or an error, never other bytes.
/// Panics on wrong bytes.
async fn served(store: &Store, key: FragmentKey, versions: &Versions, what: &str) -> Option<usize> {
    let mut found = None;
    for (i, want) in versions.all().enumerate() {
        if let Ok(got) = store.get(key, 0, u32::MAX, crc32c::crc32c(want)).await {
            assert!(
                *got == want[..],
                "{what}: {key} served {} bytes that are not the version asked for",
                got.len()
            );
            found = Some(i);
        }
    }
    found
}

/// With faults off: every key holds one whole version, the acknowledged
/// one or a failed put's (never none, once a put was acknowledged); no
/// temp file or unindexed fragment file is left; the space is counted.
async fn check_at_rest(
    store: &Store,
    dir: &Path,
    model: &BTreeMap<FragmentKey, Versions>,
    what: &str,
) {
    for (key, versions) in model {
        let found = served(store, *key, versions, what).await;
        if versions.acked.is_some() {
            assert!(found.is_some(), "{what}: acknowledged {key} lost");
        }
    }
    let index = store.index.borrow();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(TEMP_MARK), "{what}: temp file {name} left");
        if let Some(key) = format::parse_file_name(&name) {
            assert!(
                matches!(index.get(&key), Some(Place::File { .. })),
                "{what}: fragment file {name} not in the index"
            );
        }
    }
    let indexed: u64 = index.values().map(Place::bytes).sum();
    assert_eq!(store.used_bytes(), indexed, "{what}: space counted");
}

/// Puts and gets of 6 keys (sizes as log records and as files) under
/// `spec`, checked at rest every 10 rounds and after a restart.
fn run_under(spec: DiskFaults, log: LogConfig) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let what = format!(
        "{spec} (replay: TORCHFS_DISK_FAULTS_SEED={}), log {log:?}",
        spec.seed
    );
    run_local(move || async move {
        let (mut store, mut faults) = open_faulty(&path, log);
        let mut model: BTreeMap<FragmentKey, Versions> = BTreeMap::new();
        let (mut acked, mut failed) = (0, 0);
        let sizes = [3_000, 20_000, 200_000, 300_000];
        for round in 0..48u64 {
            let mix = torchfs_rdma::faults::splitmix(spec.seed ^ round);
            let key = key(mix % 6);
            let data = pattern(sizes[(mix >> 8) as usize % sizes.len()], mix);
            faults.set_disk(Some(spec));
            let versions = model.entry(key).or_default();
            let r = put(&store, key, &data).await;
            eprintln!(
                "round {round} {key} len {} -> {:?} place {:?}",
                data.len(),
                r.as_ref().err().map(|e| e.to_string()),
                store.index.borrow().get(&key)
            );
            match r {
                Ok(()) => {
                    acked += 1;
                    *versions = Versions {
                        acked: Some(data),
                        failed: Vec::new(),
                    };
                }
                Err(e) => {
                    failed += 1;
                    // ENOSPC stays recognisable through the store.
                    if spec.enospc > 0.0 {
                        assert!(matches!(e, StoreError::NoSpace { .. }), "{what}: {e}");
                    } else {
                        assert!(matches!(e, StoreError::Io { .. }), "{what}: {e}");
                    }
                    versions.failed.push(data);
                }
            }
            // Gets under the faults: exact bytes or an error.
            for (key, versions) in &model {
                served(&store, *key, versions, &what).await;
            }
            if round % 10 == 9 {
                faults.set_disk(None);
                check_at_rest(&store, &path, &model, &format!("{what}, round {round}")).await;
            }
        }
        faults.set_disk(None);
        check_at_rest(&store, &path, &model, &what).await;
        if spec.eio + spec.enospc + spec.torn > 0.0 {
            assert!(
                failed > 0 && acked > 0,
                "{what}: {acked} puts acknowledged, {failed} failed"
            );
        } else {
            assert_eq!(failed, 0, "{what}: no fault fails a put");
        }
        // A restart (the log walked again) keeps a whole version of each.
        drop(store);
        (store, faults) = open_faulty(&path, log);
        faults.set_disk(None);
        for (key, versions) in &model {
            let found = served(&store, *key, versions, &what).await;
            if versions.acked.is_some() {
                assert!(
                    found.is_some(),
                    "{what}: acknowledged {key} lost at restart (place {:?})",
                    store.index.borrow().get(key)
                );
            }
        }
    });
}

fn each_layout(spec: &str) {
    let spec: DiskFaults = format!("seed={},{spec}", seed()).parse().unwrap();
    for log in [LogConfig::default(), LogConfig::off()] {
        run_under(spec, log);
    }
}

#[test]
fn eio_fails_puts_and_gets_but_loses_and_damages_nothing() {
    each_layout("eio=0.2");
}

#[test]
fn enospc_is_no_space_and_loses_nothing() {
    each_layout("enospc=0.3");
}

#[test]
fn torn_writes_are_never_acknowledged_nor_served() {
    each_layout("torn=0.3");
}

#[test]
fn flipped_bits_on_read_are_never_served() {
    each_layout("bitflip=0.3");
}

#[test]
fn delays_change_nothing_but_time() {
    each_layout("delay=0.5,delay_ms=1");
}

#[test]
fn all_faults_at_once() {
    each_layout("eio=0.05,torn=0.1,bitflip=0.1,delay=0.1,delay_ms=1");
}

/// A replacement whose write is torn (its header block landed, this
/// seed) fails, and its record is punched at once: the whole fragment it
/// was to replace (a record, a file) is served, now and after a restart.
#[test]
fn a_torn_replacement_is_punched_and_the_old_fragment_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let (store, faults) = open_faulty(&path, LogConfig::default());
        // A record, and a file (past the log's 256 KiB).
        let (old_record, old_file) = (pattern(200_000, 1), pattern(300_000, 2));
        put(&store, key(1), &old_record).await.unwrap();
        put(&store, key(2), &old_file).await.unwrap();
        faults.set_disk(Some("seed=3,torn=1".parse().unwrap()));
        for k in [key(1), key(2)] {
            let e = put(&store, k, &pattern(150_000, 3)).await.unwrap_err();
            assert!(matches!(e, StoreError::Io { .. }), "{e}");
        }
        faults.set_disk(None);
        let torn_headers: usize = (0..store.log.segment_counts().0)
            .filter_map(|seq| store.log.segment_path(seq))
            .map(|p| {
                std::fs::read(p)
                    .unwrap()
                    .chunks(BLOCK_BYTES)
                    .filter(|b| FragmentHeader::decode(b).is_ok_and(|h| h.length_bytes == 150_000))
                    .count()
            })
            .sum();
        assert_eq!(torn_headers, 0, "the torn records are punched");
        for (k, want) in [(key(1), &old_record), (key(2), &old_file)] {
            let got = store
                .get(k, 0, u32::MAX, crc32c::crc32c(want))
                .await
                .unwrap();
            assert!(*got == want[..]);
        }
        drop(store);
        let (store, _) = open_faulty(&path, LogConfig::default());
        for (k, want) in [(key(1), &old_record), (key(2), &old_file)] {
            let got = store
                .get(k, 0, u32::MAX, crc32c::crc32c(want))
                .await
                .unwrap_or_else(|e| panic!("{k} after the restart: {e}"));
            assert!(*got == want[..]);
        }
    });
}

/// The store's contract holds over the faulty disk when it only delays.
#[test]
fn conformance_over_delays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let (store, faults) = open_faulty(&path, LogConfig::default());
        faults.set_disk(Some("seed=1,delay=0.5,delay_ms=1".parse().unwrap()));
        let store = Rc::new(store);
        let s = store.clone();
        super::super::conformance::run(&*store, move |key, at| {
            let (file, base) = s.stored_at(&key).expect("a stored fragment");
            flip_data_byte_at(&file, base, at)
        })
        .await;
    });
}
