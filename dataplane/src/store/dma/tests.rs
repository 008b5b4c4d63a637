//! Tests of the disk store on a real directory (glommio, O_DIRECT).

use super::*;
use crate::faults::Faults;
use crate::io::GlommioDisk;
use crate::store::format::HeaderError;
use std::io::{Read, Seek, SeekFrom, Write};
use torchfs_proto::fragment::FragmentErrorCode;

pub(crate) fn run_local<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(f)
        .expect("start a glommio executor")
        .join()
        .expect("executor ran");
}

/// A store keeping every fragment as a file (the log off).
fn open(dir: &Path, capacity_bytes: u64) -> DmaStore<GlommioDisk> {
    open_with(dir, GlommioDisk::new(Faults::for_dir(dir)), capacity_bytes)
}

fn open_with<I: DiskIo + 'static>(dir: &Path, io: I, capacity_bytes: u64) -> DmaStore<I> {
    open_logged(dir, io, capacity_bytes, LogConfig::off())
}

pub(crate) fn open_logged<I: DiskIo + 'static>(
    dir: &Path,
    io: I,
    capacity_bytes: u64,
    log: LogConfig,
) -> DmaStore<I> {
    let scanned = scan(dir).unwrap();
    let node = Arc::new(NodeUsage {
        used_bytes: AtomicU64::new(scanned.used_bytes()),
        capacity_bytes,
    });
    DmaStore::new(dir.to_path_buf(), io, scanned, node, log)
}

/// [`GlommioDisk`] counting the bytes read and the renames, to see what a
/// get or a put costs, holding each `write_at` back for `write_delay_ms`
/// (to keep puts in flight), and failing the next `sync_data` with EIO
/// when `sync_fails_next` is set.
pub(crate) struct Counting {
    pub(crate) disk: GlommioDisk,
    pub(crate) read_bytes: Rc<Cell<u64>>,
    pub(crate) renames: Rc<Cell<u64>>,
    pub(crate) write_delay_ms: u64,
    pub(crate) sync_fails_next: Rc<Cell<bool>>,
}

impl DiskIo for Counting {
    type WriteBuf = <GlommioDisk as DiskIo>::WriteBuf;
    type ReadBuf = <GlommioDisk as DiskIo>::ReadBuf;
    type File = <GlommioDisk as DiskIo>::File;
    type Dir = <GlommioDisk as DiskIo>::Dir;

    fn alloc(&self, len_bytes: usize) -> Self::WriteBuf {
        self.disk.alloc(len_bytes)
    }
    async fn write_new(&self, path: &Path, buf: Self::WriteBuf) -> io::Result<()> {
        self.disk.write_new(path, buf).await
    }
    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        self.disk.open(path).await
    }
    async fn read_at(
        &self,
        file: &Self::File,
        offset_bytes: u64,
        len_bytes: usize,
    ) -> io::Result<Self::ReadBuf> {
        self.read_bytes
            .set(self.read_bytes.get() + len_bytes as u64);
        self.disk.read_at(file, offset_bytes, len_bytes).await
    }
    async fn close(&self, file: Self::File) {
        self.disk.close(file).await
    }
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.renames.set(self.renames.get() + 1);
        self.disk.rename(from, to).await
    }
    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.disk.remove(path).await
    }
    async fn open_dir(&self, path: &Path) -> io::Result<Self::Dir> {
        self.disk.open_dir(path).await
    }
    async fn sync_dir(&self, dir: &Self::Dir) -> io::Result<()> {
        self.disk.sync_dir(dir).await
    }
    async fn create_preallocated(
        &self,
        path: &Path,
        len_bytes: u64,
        head: Self::WriteBuf,
    ) -> io::Result<Self::File> {
        self.disk.create_preallocated(path, len_bytes, head).await
    }
    async fn open_rw(&self, path: &Path) -> io::Result<Self::File> {
        self.disk.open_rw(path).await
    }
    async fn write_at(
        &self,
        file: &Self::File,
        offset_bytes: u64,
        buf: Self::WriteBuf,
    ) -> io::Result<()> {
        if self.write_delay_ms > 0 {
            glommio::timer::sleep(std::time::Duration::from_millis(self.write_delay_ms)).await;
        }
        self.disk.write_at(file, offset_bytes, buf).await
    }
    async fn sync_data(&self, file: &Self::File) -> io::Result<()> {
        if self.sync_fails_next.replace(false) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.disk.sync_data(file).await
    }
    async fn punch(&self, file: &Self::File, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        self.disk.punch(file, offset_bytes, len_bytes).await
    }
}

fn key(stripe: u64) -> FragmentKey {
    FragmentKey {
        ino: 1,
        stripe,
        generation: 1,
        index: 0,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8) ^ (i >> 9) as u8).collect()
}

async fn put<I: DiskIo + 'static>(store: &DmaStore<I>, key: FragmentKey, data: &[u8]) {
    let mut buf = store.put_buffer(data.len() as u32);
    buf.as_mut().copy_from_slice(data);
    store.put(key, buf, crc32c::crc32c(data)).await.unwrap();
}

/// Overwrites a stored fragment's file with `header_block` and the data.
fn write_image(path: &Path, header_block: &[u8], data: &[u8]) {
    let mut image = header_block.to_vec();
    image.extend_from_slice(data);
    image.resize(HEADER_BLOCK_BYTES + align_up(data.len()), 0);
    std::fs::write(path, image).unwrap();
}

/// Flips one data byte of a stored fragment, behind the store's back.
pub(crate) fn flip_data_byte(path: &Path, at: usize) {
    flip_data_byte_at(path, 0, at)
}

/// [`flip_data_byte`] of the fragment whose header block is at `base`.
pub(crate) fn flip_data_byte_at(path: &Path, base: u64, at: usize) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let pos = base + (HEADER_BLOCK_BYTES + at) as u64;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(pos)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(pos)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = open(&path, u64::MAX);
        let p = path.clone();
        super::super::conformance::run(&store, move |key, at| {
            flip_data_byte(&p.join(format::file_name(&key)), at)
        })
        .await;
    });
}

#[test]
fn restart_serves_what_was_stored_and_drops_temp_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let key = FragmentKey {
        ino: 1,
        stripe: 0,
        generation: 1,
        index: 0,
    };
    let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let crc = crc32c::crc32c(&data);
    let (p, d) = (path.clone(), data.clone());
    run_local(move || async move {
        let store = open(&p, u64::MAX);
        let mut buf = store.put_buffer(d.len() as u32);
        buf.as_mut().copy_from_slice(&d);
        store.put(key, buf, crc).await.unwrap();
    });
    std::fs::write(path.join(format!("{key}{TEMP_MARK}.7")), b"half").unwrap();
    run_local(move || async move {
        let store = open(&path, u64::MAX);
        assert_eq!(store.list(), vec![key]);
        assert_eq!(store.used_bytes(), format::file_bytes(data.len() as u32));
        assert_eq!(&*store.get(key, 0, u32::MAX, crc).await.unwrap(), &data[..]);
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    });
}

#[test]
fn capacity_limit_is_no_space_and_keeps_old_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = open(&path, 3 * 4096);
        let key = FragmentKey {
            ino: 1,
            stripe: 0,
            generation: 1,
            index: 0,
        };
        let mut buf = store.put_buffer(100);
        buf.as_mut().fill(7);
        let crc = crc32c::crc32c(&[7u8; 100]);
        store.put(key, buf, crc).await.unwrap();
        let mut big = store.put_buffer(3 * 4096);
        big.as_mut().fill(1);
        let big_crc = crc32c::crc32c(&vec![1u8; 3 * 4096]);
        let err = store.put(key, big, big_crc).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NoSpace {
                    needed_bytes: 16384,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            &*store.get(key, 0, 100, crc).await.unwrap(),
            &[7u8; 100][..]
        );
    });
}

#[test]
fn a_new_key_is_written_in_place_and_a_replaced_one_through_a_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let renames = Rc::new(Cell::new(0));
        let io = Counting {
            disk: GlommioDisk::new(Faults::for_dir(&path)),
            read_bytes: Rc::default(),
            renames: renames.clone(),
            write_delay_ms: 0,
            sync_fails_next: Rc::default(),
        };
        let store = open_with(&path, io, u64::MAX);
        let key = FragmentKey {
            ino: 1,
            stripe: 0,
            generation: 1,
            index: 0,
        };
        let put = |fill: u8| {
            let mut buf = store.put_buffer(10);
            buf.as_mut().fill(fill);
            store.put(key, buf, crc32c::crc32c(&[fill; 10]))
        };
        put(1).await.unwrap();
        assert_eq!(renames.get(), 0, "new: written at its name");
        put(2).await.unwrap();
        assert_eq!(renames.get(), 1, "replaced: a temp file renamed over it");
        // Two puts of one new key at once: one writes in place, the other
        // through a temp file; either way the fragment is whole.
        let other = FragmentKey {
            generation: 2,
            ..key
        };
        let put_other = |fill: u8| {
            let mut buf = store.put_buffer(4096);
            buf.as_mut().fill(fill);
            store.put(other, buf, crc32c::crc32c(&[fill; 4096]))
        };
        let (a, b) = futures::join!(put_other(3), put_other(3));
        a.unwrap();
        b.unwrap();
        let crc = crc32c::crc32c(&[3u8; 4096]);
        assert_eq!(
            &*store.get(other, 0, 4096, crc).await.unwrap(),
            &[3u8; 4096][..]
        );
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temp file left: {names:?}");
    });
}

#[cfg(feature = "testing")]
#[test]
fn disk_full_is_no_space_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = open(&path, u64::MAX);
        let key = FragmentKey {
            ino: 1,
            stripe: 0,
            generation: 1,
            index: 0,
        };
        let old_crc = crc32c::crc32c(&[3u8; 10]);
        let mut buf = store.put_buffer(10);
        buf.as_mut().fill(3);
        store.put(key, buf, old_crc).await.unwrap();

        crate::faults::set(
            &path,
            crate::faults::FaultSet {
                put_no_space: true,
                get_io: false,
            },
        );
        let mut buf = store.put_buffer(10);
        buf.as_mut().fill(4);
        let err = store
            .put(key, buf, crc32c::crc32c(&[4u8; 10]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file removed: {names:?}");
        assert_eq!(
            &*store.get(key, 0, 10, old_crc).await.unwrap(),
            &[3u8; 10][..]
        );
        // A new key, written at its final name, leaves nothing either.
        let fresh = FragmentKey {
            generation: 2,
            ..key
        };
        let mut buf = store.put_buffer(10);
        buf.as_mut().fill(5);
        let err = store
            .put(fresh, buf, crc32c::crc32c(&[5u8; 10]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 1);
        let err = store.get(fresh, 0, 10, 0).await.err().unwrap();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");

        crate::faults::set(
            &path,
            crate::faults::FaultSet {
                put_no_space: false,
                get_io: true,
            },
        );
        let err = store.get(key, 0, 10, old_crc).await.err().unwrap();
        assert!(matches!(err, StoreError::Io { op: "read", .. }), "{err}");
        crate::faults::set(&path, crate::faults::FaultSet::default());
    });
}

#[test]
fn ranged_get_reads_only_the_chunks_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let read_bytes = Rc::new(Cell::new(0));
        let io = Counting {
            disk: GlommioDisk::new(Faults::for_dir(&path)),
            read_bytes: read_bytes.clone(),
            renames: Rc::default(),
            write_delay_ms: 0,
            sync_fails_next: Rc::default(),
        };
        let store = open_with(&path, io, u64::MAX);
        let data = pattern(1 << 20);
        let crc = crc32c::crc32c(&data);
        put(&store, key(1), &data).await;
        let chunk = format::CHUNK_BYTES_MIN as u64;
        let header = HEADER_BLOCK_BYTES as u64;
        for (offset, length, expected_read) in [
            // Header and first chunk in one read.
            (0u32, 10u32, header + chunk),
            // Header, then the one chunk.
            (500_000, 4096, header + chunk),
            // Across a chunk boundary: two chunks.
            (chunk as u32 - 10, 20, header + 2 * chunk),
            // A 128 KiB read, unaligned: three chunks.
            (100_000, 128 << 10, header + 3 * chunk),
            (0, u32::MAX, header + (1 << 20)),
        ] {
            read_bytes.set(0);
            let got = store.get(key(1), offset, length, crc).await.unwrap();
            let end = (offset as usize)
                .saturating_add(length as usize)
                .min(data.len());
            assert_eq!(&*got, &data[offset as usize..end], "{offset}+{length}");
            assert_eq!(read_bytes.get(), expected_read, "{offset}+{length}");
        }
        // A wrong expected CRC is refused from the header alone.
        read_bytes.set(0);
        let err = store.get(key(1), 500_000, 10, crc ^ 4).await.err().unwrap();
        assert!(
            matches!(err, StoreError::ChecksumMismatch { expected, actual, .. }
                if expected == crc ^ 4 && actual == crc),
            "{err}"
        );
    });
}

#[test]
fn damaged_chunk_is_named_and_other_chunks_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = open(&path, u64::MAX);
        let data = pattern(300_000);
        let crc = crc32c::crc32c(&data);
        put(&store, key(2), &data).await;
        flip_data_byte(&store.path_of(&key(2)), 140_000);
        let err = store.get(key(2), 139_000, 2000, crc).await.err().unwrap();
        match err {
            StoreError::ChunkChecksumMismatch {
                chunk: 2,
                start_bytes: 131_072,
                end_bytes: 196_608,
                stored,
                computed,
                expected,
                actual,
                ..
            } => {
                assert_eq!(stored, crc32c::crc32c(&data[131_072..196_608]));
                assert_ne!(stored, computed);
                assert_eq!(expected, crc);
                let mut damaged = data.clone();
                damaged[140_000] ^= 0x01;
                assert_eq!(
                    actual,
                    crc32c::crc32c(&damaged),
                    "the damaged fragment's CRC"
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            err_code(&store, key(2), 0, u32::MAX, crc).await,
            Some(FragmentErrorCode::ChecksumMismatch)
        );
        // Not covered: served, and right.
        let got = store.get(key(2), 200_000, 100_000, crc).await.unwrap();
        assert_eq!(&*got, &data[200_000..]);
    });
}

async fn err_code<I: DiskIo + 'static>(
    store: &DmaStore<I>,
    key: FragmentKey,
    offset: u32,
    length: u32,
    crc: u32,
) -> Option<FragmentErrorCode> {
    store
        .get(key, offset, length, crc)
        .await
        .err()
        .map(|e| e.code())
}

#[test]
fn damaged_or_foreign_header_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let data = pattern(100_000);
        let crc = crc32c::crc32c(&data);
        let mut block = vec![0u8; HEADER_BLOCK_BYTES];
        FragmentHeader::for_data(key(3), &data).encode(&mut block);
        // A damaged chunk table entry.
        let mut bad = block.clone();
        bad[64 + 4] ^= 0x02;
        write_image(&path.join(format::file_name(&key(3))), &bad, &data);
        // Another fragment's file under this name.
        write_image(&path.join(format::file_name(&key(4))), &block, &data);
        let store = open(&path, u64::MAX);
        let err = store.get(key(3), 70_000, 10, crc).await.err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::CorruptHeader {
                    source: HeaderError::HeaderChecksum { .. },
                    ..
                }
            ),
            "{err}"
        );
        let err = store.get(key(4), 0, 10, crc).await.err().unwrap();
        assert!(
            matches!(err, StoreError::CorruptHeader { source: HeaderError::WrongKey { found }, .. } if found == key(3)),
            "{err}"
        );
        assert_eq!(err.code(), FragmentErrorCode::ChecksumMismatch);
    });
}

#[test]
fn version_1_fragments_are_served_and_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let data = pattern(200_000);
    let crc = crc32c::crc32c(&data);
    let header = FragmentHeader {
        checksums: format::Checksums::Whole,
        ..FragmentHeader::for_data(key(5), &data)
    };
    let mut block = vec![0u8; HEADER_BLOCK_BYTES];
    header.encode_v1(&mut block);
    write_image(&path.join(format::file_name(&key(5))), &block, &data);
    run_local(move || async move {
        let store = open(&path, u64::MAX);
        for (offset, length) in [(0usize, 200_000usize), (150_000, 10), (0, 10), (200_000, 5)] {
            let got = store
                .get(key(5), offset as u32, length as u32, crc)
                .await
                .unwrap();
            let end = (offset + length).min(data.len());
            assert_eq!(&*got, &data[offset..end], "{offset}+{length}");
        }
        assert_eq!(
            err_code(&store, key(5), 0, 10, crc ^ 1).await,
            Some(FragmentErrorCode::ChecksumMismatch)
        );
        let err = store.get(key(5), 200_001, 1, crc).await.err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::BadRange {
                    length_bytes: 200_000,
                    ..
                }
            ),
            "{err}"
        );
        // Read whole, so a flipped byte anywhere fails every get.
        flip_data_byte(&store.path_of(&key(5)), 190_000);
        for (offset, length) in [(0u32, 10u32), (100_000, 4096), (0, u32::MAX)] {
            match store.get(key(5), offset, length, crc).await {
                Err(StoreError::ChecksumMismatch {
                    expected, actual, ..
                }) => {
                    assert_eq!(expected, crc);
                    assert_ne!(actual, crc);
                }
                other => panic!("{offset}+{length}: {:?}", other.map(|b| b.len())),
            }
        }
        // A put over it writes the current version.
        put(&store, key(5), &data[..1000]).await;
        let block = std::fs::read(store.path_of(&key(5))).unwrap();
        assert_eq!(&block[8..12], &format::FORMAT_VERSION.to_le_bytes());
    });
}

#[test]
fn concurrent_puts_share_directory_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    run_local(move || async move {
        let store = Rc::new(open(&path, u64::MAX));
        let puts: Vec<_> = (0..16u64)
            .map(|i| {
                let store = store.clone();
                glommio::spawn_local(async move {
                    put(&store, key(100 + i), &pattern(20_000 + i as usize)).await;
                })
            })
            .collect();
        for p in puts {
            p.await;
        }
        let (syncs, callers) = store.dir_syncs();
        assert_eq!(callers, 16);
        assert!((1..=16).contains(&syncs), "{syncs} syncs");
        for i in 0..16u64 {
            let data = pattern(20_000 + i as usize);
            let got = store
                .get(key(100 + i), 0, u32::MAX, crc32c::crc32c(&data))
                .await
                .unwrap();
            assert_eq!(&*got, &data[..]);
        }
    });
}
