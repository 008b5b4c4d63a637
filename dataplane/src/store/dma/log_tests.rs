//! Tests of the disk store's fragment log (`store::log`) on a real
//! directory (glommio, O_DIRECT): records, restarts, holes, segments.

use super::tests::{flip_data_byte_at, open_logged, run_local, Counting};
use super::*;
use crate::faults::Faults;
use crate::io::GlommioDisk;
use std::os::unix::fs::FileExt;

fn key(stripe: u64) -> FragmentKey {
    FragmentKey {
        ino: 9,
        stripe,
        generation: 1,
        index: 0,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ seed ^ (i >> 11) as u8)
        .collect()
}

fn store(dir: &Path, log: LogConfig) -> DmaStore<GlommioDisk> {
    open_logged(dir, GlommioDisk::new(Faults::for_dir(dir)), u64::MAX, log)
}

/// Small segments, so that a test fills several: 12 KiB records, five
/// to a 64 KiB segment.
fn small_segments() -> LogConfig {
    LogConfig {
        fragment_bytes_max: 8192,
        segment_bytes: 64 << 10,
    }
}

async fn put<I: DiskIo + 'static>(store: &DmaStore<I>, key: FragmentKey, data: &[u8]) {
    let mut buf = store.put_buffer(data.len() as u32);
    buf.as_mut().copy_from_slice(data);
    store.put(key, buf, crc32c::crc32c(data)).await.unwrap();
}

async fn get<I: DiskIo + 'static>(store: &DmaStore<I>, key: FragmentKey, data: &[u8]) -> Vec<u8> {
    let b = store
        .get(key, 0, u32::MAX, crc32c::crc32c(data))
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    b.to_vec()
}

fn names(dir: &Path, ext: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(ext))
        .collect();
    v.sort();
    v
}

fn conformance_with(log: LogConfig) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = Rc::new(store(&path, log));
        let s = store.clone();
        super::super::conformance::run(&*store, move |key, at| {
            let (file, base) = s.stored_at(&key).expect("a stored fragment");
            flip_data_byte_at(&file, base, at)
        })
        .await;
    });
}

#[test]
fn conformance_small_fragments_in_the_log_large_ones_as_files() {
    // 300,000 bytes is past the 256 KiB default: one file, the rest records.
    conformance_with(LogConfig::default());
}

#[test]
fn conformance_everything_in_the_log() {
    conformance_with(LogConfig {
        fragment_bytes_max: 1 << 20,
        segment_bytes: 8 << 20,
    });
}

#[test]
fn small_fragments_are_records_and_a_restart_finds_the_latest_of_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (a1, a2, b, c) = (
        pattern(10_000, 1),
        pattern(5000, 2),
        pattern(8192, 3),
        pattern(1, 4),
    );
    let used = {
        let (p, a1, a2, b, c) = (path.clone(), a1.clone(), a2.clone(), b.clone(), c.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        run_local(move || async move {
            let store = store(&p, LogConfig::default());
            put(&store, key(1), &a1).await;
            put(&store, key(2), &b).await;
            put(&store, key(1), &a2).await;
            put(&store, key(3), &c).await;
            store.delete(key(2)).await.unwrap();
            assert_eq!(get(&store, key(1), &a2).await, a2);
            assert_eq!(get(&store, key(3), &c).await, c);
            assert!(names(&p, ".frag").is_empty(), "no fragment files");
            assert_eq!(names(&p, ".seg").len(), 1);
            assert_eq!(store.log().segment_counts().0, 1);
            let used = store.used_bytes();
            assert_eq!(used, format::file_bytes(5000) + format::file_bytes(1));
            tx.send(used).unwrap();
        });
        rx.recv().unwrap()
    };
    run_local(move || async move {
        let store = store(&path, LogConfig::default());
        assert_eq!(store.list(), vec![key(1), key(3)]);
        assert_eq!(store.used_bytes(), used);
        assert_eq!(get(&store, key(1), &a2).await, a2);
        assert_eq!(get(&store, key(3), &c).await, c);
        assert!(matches!(
            store.get(key(2), 0, 1, 0).await,
            Err(StoreError::NotFound { .. })
        ));
        // The old segment is sealed: new records go to a new one.
        put(&store, key(4), &b).await;
        assert_eq!(names(&path, ".seg").len(), 2);
        assert_eq!(get(&store, key(4), &b).await, b);
    });
}

#[test]
fn a_hole_or_garbage_before_a_record_does_not_hide_it_and_a_copied_header_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (a, b) = (pattern(6000, 5), pattern(7000, 6));
    let (p, a2, b2) = (path.clone(), a.clone(), b.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    run_local(move || async move {
        let store = store(&p, LogConfig::default());
        put(&store, key(1), &a2).await;
        put(&store, key(2), &b2).await;
        let (seg, at1) = store.stored_at(&key(1)).unwrap();
        let (_, at2) = store.stored_at(&key(2)).unwrap();
        // A third fragment whose data is the exact image of record 2
        // (say, a backup of this very disk stored in torchfs).
        let f = std::fs::File::open(&seg).unwrap();
        let mut image = vec![0u8; format::file_bytes(7000) as usize];
        f.read_exact_at(&mut image, at2).unwrap();
        put(&store, key(3), &image).await;
        let (_, at3) = store.stored_at(&key(3)).unwrap();
        tx.send((seg, at1, at2, at3, image)).unwrap();
    });
    let (seg, at1, at2, at3, image) = rx.recv().unwrap();
    // Record 1's header torn (garbage), record 3's header zeroed: the walk
    // steps block by block through both, and through 3's data, which
    // holds a well-formed header stamped for another offset.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0xa5u8; 4096], at1).unwrap();
    f.write_all_at(&[0u8; 4096], at3).unwrap();
    drop(f);
    run_local(move || async move {
        let store = store(&path, LogConfig::default());
        assert_eq!(store.list(), vec![key(2)]);
        assert_eq!(store.stored_at(&key(2)).unwrap().1, at2);
        assert_eq!(get(&store, key(2), &b).await, b);
        let _ = (a, image);
    });
}

#[test]
fn full_segments_are_sealed_and_removed_once_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    run_local(move || async move {
        let store = store(&p, small_segments());
        let data: Vec<Vec<u8>> = (0..20).map(|i| pattern(8192, i as u8)).collect();
        for (i, d) in data.iter().enumerate() {
            put(&store, key(i as u64), d).await;
        }
        let (created, now) = store.log().segment_counts();
        assert!(
            created >= 4,
            "20 records of 12 KiB, 5 per segment: {created}"
        );
        assert_eq!(now as u64, created);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(&get(&store, key(i as u64), d).await, d);
        }
        for i in 0..20 {
            store.delete(key(i)).await.unwrap();
        }
        assert_eq!(store.used_bytes(), 0);
        // Sealed segments went with their last record; the active one
        // (and a spare made ahead of need) stay.
        let left = names(&p, ".seg").len();
        assert!(left <= 2, "{left} segments left");
        assert_eq!(store.log().segment_counts().1, left);
    });
    // At start nothing is active: empty segments are removed.
    run_local(move || async move {
        let store = store(&path, small_segments());
        assert!(store.list().is_empty());
        assert!(names(&path, ".seg").is_empty());
        put(&store, key(1), &pattern(100, 1)).await;
        assert_eq!(get(&store, key(1), &pattern(100, 1)).await, pattern(100, 1));
    });
}

#[test]
fn sealed_segments_keep_a_bounded_number_of_files_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let n = 5 * (crate::store::log::OPEN_SEALED_MAX as u64 + 20);
    let p = path.clone();
    run_local(move || async move {
        let store = store(&p, small_segments());
        for chunk in (0..n).collect::<Vec<_>>().chunks(20) {
            let data: Vec<(u64, Vec<u8>)> = chunk
                .iter()
                .map(|i| (*i, pattern(8192, *i as u8)))
                .collect();
            futures::future::join_all(data.iter().map(|(i, d)| put(&store, key(*i), d))).await;
        }
        let open = store.log().open_sealed_files();
        assert!(open <= crate::store::log::OPEN_SEALED_MAX, "{open} open");
    });
    run_local(move || async move {
        let store = store(&path, small_segments());
        assert!(store.log().segment_counts().1 > crate::store::log::OPEN_SEALED_MAX);
        // Every record read, twice, in an order that cycles through all
        // the segments: files are closed and opened again as needed.
        for _ in 0..2 {
            for i in 0..n {
                let d = pattern(8192, i as u8);
                assert_eq!(get(&store, key(i), &d).await, d);
            }
        }
        let open = store.log().open_sealed_files();
        assert!(
            (1..=crate::store::log::OPEN_SEALED_MAX).contains(&open),
            "{open} open"
        );
    });
}

#[test]
fn concurrent_puts_share_segment_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = store(&path, LogConfig::default());
        let data: Vec<Vec<u8>> = (0..32).map(|i| pattern(20_000, i as u8)).collect();
        futures::future::join_all(
            data.iter()
                .enumerate()
                .map(|(i, d)| put(&store, key(i as u64), d)),
        )
        .await;
        let (syncs, callers) = store.log().syncs();
        assert_eq!(callers, 32);
        assert!(syncs < callers, "{syncs} syncs for {callers} puts");
        for (i, d) in data.iter().enumerate() {
            assert_eq!(&get(&store, key(i as u64), d).await, d);
        }
    });
}

#[test]
fn a_segment_sealed_while_puts_into_it_are_in_flight_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let p = path.clone();
    let data: Vec<Vec<u8>> = (0..17).map(|i| pattern(8192, i as u8)).collect();
    let d = data.clone();
    run_local(move || async move {
        // Writes held back 20 ms, so the puts are still in flight when
        // later ones fill and seal their segments.
        let io = Counting {
            disk: GlommioDisk::new(Faults::for_dir(&p)),
            read_bytes: Rc::default(),
            renames: Rc::default(),
            write_delay_ms: 20,
            sync_fails_next: Rc::default(),
        };
        let store = open_logged(&p, io, u64::MAX, small_segments());
        // 17 records at once, 5 to a segment.
        futures::future::join_all(
            d.iter()
                .enumerate()
                .map(|(i, d)| put(&store, key(i as u64), d)),
        )
        .await;
        assert!(store.log().segment_counts().0 >= 4);
        for (i, d) in d.iter().enumerate() {
            assert_eq!(&get(&store, key(i as u64), d).await, d);
        }
    });
    run_local(move || async move {
        let store = store(&path, small_segments());
        assert_eq!(store.list().len(), 17);
        for (i, d) in data.iter().enumerate() {
            assert_eq!(&get(&store, key(i as u64), d).await, d);
        }
    });
}

#[test]
fn a_key_moves_between_log_and_file_and_a_restart_keeps_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let config = small_segments();
    let (small, large) = (pattern(3000, 7), pattern(20_000, 8));
    let (p, s, l) = (path.clone(), small.clone(), large.clone());
    run_local(move || async move {
        let store = store(&p, config);
        put(&store, key(1), &s).await;
        put(&store, key(1), &l).await;
        assert_eq!(names(&p, ".frag").len(), 1);
        assert_eq!(get(&store, key(1), &l).await, l);
    });
    let (p, s, l) = (path.clone(), small.clone(), large.clone());
    run_local(move || async move {
        let store = store(&p, config);
        assert_eq!(get(&store, key(1), &l).await, l);
        put(&store, key(1), &s).await;
        assert!(names(&p, ".frag").is_empty(), "the file went");
    });
    run_local(move || async move {
        let store = store(&path, config);
        assert_eq!(store.list(), vec![key(1)]);
        assert_eq!(get(&store, key(1), &small).await, small);
        assert_eq!(store.used_bytes(), format::file_bytes(3000));
        let _ = large;
    });
}

#[cfg(feature = "testing")]
#[test]
fn disk_full_in_the_log_is_no_space_and_keeps_the_old_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = store(&path, LogConfig::default());
        let old = pattern(10, 3);
        put(&store, key(1), &old).await;
        crate::faults::set(
            &path,
            crate::faults::FaultSet {
                put_no_space: true,
                get_io: false,
            },
        );
        let new = pattern(10, 4);
        let mut buf = store.put_buffer(10);
        buf.as_mut().copy_from_slice(&new);
        let err = store
            .put(key(1), buf, crc32c::crc32c(&new))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
        crate::faults::set(&path, crate::faults::FaultSet::default());
        assert_eq!(get(&store, key(1), &old).await, old);
        assert_eq!(store.used_bytes(), format::file_bytes(10));
    });
}

/// A crash in the middle of a replacement's write can leave its record's
/// header block on disk without its data. At the next start that record
/// must not win over the whole fragment it was to replace: a record, or
/// a fragment file.
#[test]
fn a_torn_replacement_left_by_a_crash_loses_to_the_whole_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (old_record, old_file) = (pattern(20_000, 1), pattern(300_000, 2));
    let (p, r, f) = (path.clone(), old_record.clone(), old_file.clone());
    run_local(move || async move {
        let store = store(&p, LogConfig::default());
        put(&store, key(1), &r).await;
        put(&store, key(2), &f).await;
        // The "crash": two replacements' stamped header blocks written
        // after the last record, their data never.
        let (segment, base) = store.stored_at(&key(1)).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&segment)
            .unwrap();
        let mut block = vec![0u8; BLOCK_BYTES];
        file.read_exact_at(&mut block, base).unwrap();
        let stamp = format::Stamp::read(&block);
        let mut offset = base + format::file_bytes(r.len() as u32);
        for k in [key(1), key(2)] {
            let header = FragmentHeader::for_data(k, &pattern(150_000, 3));
            header.encode_stamped(&mut block, format::Stamp { offset, ..stamp });
            file.write_all_at(&block, offset).unwrap();
            offset += format::file_bytes(150_000);
        }
        file.sync_all().unwrap();
    });
    run_local(move || async move {
        let store = store(&path, LogConfig::default());
        assert_eq!(get(&store, key(1), &old_record).await, old_record);
        assert_eq!(get(&store, key(2), &old_file).await, old_file);
    });
}

/// A put whose record was written whole but whose fdatasync failed is not
/// acknowledged; its record must not come back at the next start, where
/// it would win over what the key holds by then (here a fragment file
/// stored and acknowledged after it).
#[test]
fn a_failed_record_put_does_not_come_back_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let last = pattern(300_000, 3);
    let (p, l) = (path.clone(), last.clone());
    run_local(move || async move {
        let fail_next = Rc::new(Cell::new(false));
        let io = Counting {
            disk: GlommioDisk::new(Faults::for_dir(&p)),
            read_bytes: Rc::default(),
            renames: Rc::default(),
            write_delay_ms: 0,
            sync_fails_next: fail_next.clone(),
        };
        let store = open_logged(&p, io, u64::MAX, LogConfig::default());
        put(&store, key(1), &pattern(20_000, 1)).await;
        fail_next.set(true);
        let failed = pattern(20_000, 2);
        let mut buf = store.put_buffer(failed.len() as u32);
        buf.as_mut().copy_from_slice(&failed);
        let e = store
            .put(key(1), buf, crc32c::crc32c(&failed))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        // Past the log's 256 KiB: a file, and the record it replaces
        // punched durably.
        put(&store, key(1), &l).await;
    });
    run_local(move || async move {
        let store = store(&path, LogConfig::default());
        assert_eq!(get(&store, key(1), &last).await, last);
    });
}

#[test]
fn bad_log_settings_are_refused() {
    assert!(LogConfig::default().validate().is_ok());
    assert!(LogConfig::off().validate().is_ok());
    let e = LogConfig {
        fragment_bytes_max: 1 << 20,
        segment_bytes: 2 << 20,
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("at least 4"), "{e}");
    let e = LogConfig {
        fragment_bytes_max: 32 << 20,
        segment_bytes: 1 << 30,
    }
    .validate()
    .unwrap_err();
    assert!(e.contains("at most"), "{e}");
    assert!(LogConfig {
        fragment_bytes_max: 4096,
        segment_bytes: (1 << 20) + 1,
    }
    .validate()
    .is_err());
}
