//! The segment files on a real directory: rollover, reopen, truncate,
//! purge, torn writes and corruption.

use super::*;

const SEG: u64 = 4096;

fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (index as usize * 31 + i) as u8 | 1)
        .collect()
}

/// Appends records `from..to` of `len` bytes each, one call per record.
fn append(wal: &mut Wal, from: u64, to: u64, len: usize) {
    for index in from..to {
        let mut buf = Vec::new();
        encode_record(&mut buf, index, &payload(index, len));
        let n = buf.len() as u64;
        wal.append(index, &buf, &[n]).unwrap();
    }
}

fn indexes(wal: &Wal, from: u64, to: u64) -> Vec<u64> {
    let read = wal.reader().read(from, to).unwrap();
    for (index, bytes) in &read {
        assert_eq!(*bytes, payload(*index, bytes.len()), "record {index}");
    }
    read.into_iter().map(|(i, _)| i).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    out.sort();
    out
}

#[test]
fn records_roll_over_segments_and_come_back_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 201, 100);
    assert!(
        segments(dir.path()).len() >= 5,
        "{:?}",
        segments(dir.path())
    );
    assert_eq!(indexes(&wal, 0, u64::MAX), (1..201).collect::<Vec<_>>());
    assert_eq!(indexes(&wal, 50, 60), (50..60).collect::<Vec<_>>());
    drop(wal);
    let wal = Wal::open(dir.path(), SEG, None).unwrap();
    assert_eq!(wal.reader().last_index(), Some(200));
    assert_eq!(indexes(&wal, 0, u64::MAX), (1..201).collect::<Vec<_>>());
}

#[test]
fn a_record_bigger_than_a_segment_gets_one_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 3, 10);
    append(&mut wal, 3, 4, 3 * SEG as usize);
    append(&mut wal, 4, 6, 10);
    drop(wal);
    let wal = Wal::open(dir.path(), SEG, None).unwrap();
    assert_eq!(indexes(&wal, 0, 10), [1, 2, 3, 4, 5]);
}

#[test]
fn truncate_and_purge_hold_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 101, 100);
    wal.truncate_from(70).unwrap();
    assert_eq!(wal.reader().last_index(), Some(69));
    // New records take the truncated indexes.
    append(&mut wal, 70, 81, 50);
    wal.purge_upto(40).unwrap();
    let first_kept = indexes(&wal, 0, u64::MAX)[0];
    assert!(first_kept <= 41 && first_kept > 1, "{first_kept}");
    drop(wal);
    let wal = Wal::open(dir.path(), SEG, Some(40)).unwrap();
    let got = indexes(&wal, 41, u64::MAX);
    assert_eq!(got, (41..81).collect::<Vec<_>>());
    // Truncating everything, then starting again past a purge.
    let mut wal = wal;
    wal.truncate_from(first_kept).unwrap();
    assert_eq!(wal.reader().last_index(), None);
    append(&mut wal, 500, 510, 10);
    drop(wal);
    let wal = Wal::open(dir.path(), SEG, Some(499)).unwrap();
    assert_eq!(indexes(&wal, 0, u64::MAX), (500..510).collect::<Vec<_>>());
}

#[test]
fn a_purge_past_the_end_starts_a_new_segment() {
    // What installing a snapshot ahead of the log does.
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 11, 10);
    wal.purge_upto(1000).unwrap();
    assert_eq!(wal.reader().last_index(), None);
    append(&mut wal, 1001, 1004, 10);
    drop(wal);
    let wal = Wal::open(dir.path(), SEG, Some(1000)).unwrap();
    assert_eq!(indexes(&wal, 0, u64::MAX), [1001, 1002, 1003]);
}

/// The last segment file and the offset of record `index` in it.
fn locate(dir: &Path, index: u64) -> (PathBuf, u64) {
    let wal = Wal::open(dir, SEG, None).unwrap();
    let segs = wal.reader.lock();
    let seg = segs
        .iter()
        .find(|s| s.first <= index && index < s.next_index())
        .unwrap();
    (seg.path.clone(), seg.offsets[(index - seg.first) as usize])
}

#[test]
fn a_torn_last_write_is_dropped_and_its_index_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 4, 100);
    append(&mut wal, 4, 5, 1500);
    drop(wal);
    // A crash wrote only the first sector of record 4.
    let (path, at) = locate(dir.path(), 4);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let cut = (at + 1).next_multiple_of(SECTOR_BYTES);
    file.write_all_at(&vec![0u8; 1600], cut).unwrap();
    drop(file);

    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    assert_eq!(wal.reader().last_index(), Some(3));
    append(&mut wal, 4, 6, 20);
    drop(wal);
    let wal = Wal::open(dir.path(), SEG, None).unwrap();
    assert_eq!(indexes(&wal, 0, 10), [1, 2, 3, 4, 5]);
}

fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_bit_is_an_error_naming_segment_offset_and_index() {
    for (victim, last) in [(20u64, 30u64), (30, 30)] {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
        append(&mut wal, 1, last + 1, 60);
        drop(wal);
        let (path, at) = locate(dir.path(), victim);
        flip(&path, at + HEADER_BYTES + 7);
        let Err(e) = Wal::open(dir.path(), SEG, None) else {
            panic!("record {victim} of {last} corrupt, yet the log opened");
        };
        let text = e.to_string();
        assert!(
            matches!(e, WalError::Corrupt { index, offset, .. } if index == victim && offset == at),
            "{text}"
        );
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("checksum"), "{text}");
        // Nothing was thrown away while refusing.
        let bytes = fs::read(&path).unwrap();
        assert!(bytes[at as usize..].iter().any(|b| *b != 0));
    }
}

#[test]
fn a_missing_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 201, 100);
    drop(wal);
    let segs = segments(dir.path());
    fs::remove_file(&segs[1]).unwrap();
    let e = Wal::open(dir.path(), SEG, None)
        .err()
        .expect("a hole in the log");
    assert!(e.to_string().contains("records are missing"), "{e}");
}

#[test]
fn records_out_of_order_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = Wal::open(dir.path(), SEG, None).unwrap();
    append(&mut wal, 1, 5, 10);
    let mut buf = Vec::new();
    encode_record(&mut buf, 3, b"again");
    let e = wal.append(3, &buf, &[buf.len() as u64]).unwrap_err();
    assert!(
        matches!(e, WalError::OutOfOrder { index: 3, last: 4 }),
        "{e}"
    );
}
