//! [`DmaStore`]: fragments as files on local disk, one directory per shard,
//! `<dir>/<key>.frag` in the format of [`super::format`], written and read
//! whole with O_DIRECT through a [`DiskIo`].
//!
//! A put writes a uniquely named temp file, fdatasyncs it, renames it into
//! place and fsyncs the directory: a crash or a full disk at any point
//! leaves either the old fragment or the new one, never a torn one. Temp
//! files left by a crash are removed by [`scan`] at start.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use torchfs_proto::fragment::FragmentKey;

use super::format::{self, FragmentHeader, HEADER_BLOCK_BYTES};
use super::{FragmentStore, Slice, StoreError};
use crate::io::{align_up, is_no_space, DiskIo};

/// Space accounting shared by all shards of a node and its control thread
/// (atomics, no locks).
#[derive(Debug)]
pub struct NodeUsage {
    pub used_bytes: AtomicU64,
    pub capacity_bytes: u64,
}

/// What [`scan`] found in a shard directory.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Stored fragments and their file sizes (bytes).
    pub fragments: BTreeMap<FragmentKey, u64>,
    /// Leftover temp files removed.
    pub temp_files_removed: usize,
}

const TEMP_MARK: &str = ".frag.tmp";

/// Lists a shard directory (creating it if needed) and removes leftover
/// temp files. Runs at start, before the executor serves.
pub fn scan(dir: &Path) -> io::Result<ScanResult> {
    std::fs::create_dir_all(dir)?;
    let mut result = ScanResult::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.contains(TEMP_MARK) {
            std::fs::remove_file(entry.path())?;
            result.temp_files_removed += 1;
        } else if let Some(key) = format::parse_file_name(name) {
            result.fragments.insert(key, entry.metadata()?.len());
        }
    }
    Ok(result)
}

/// Receives a put's data behind the header block of the file image, so the
/// whole image is written in one O_DIRECT write without a copy.
pub struct BlockBuf<W> {
    image: W,
    length_bytes: usize,
}

impl<W: AsMut<[u8]>> AsMut<[u8]> for BlockBuf<W> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.image.as_mut()[HEADER_BLOCK_BYTES..HEADER_BLOCK_BYTES + self.length_bytes]
    }
}

pub struct DmaStore<I: DiskIo> {
    dir: PathBuf,
    io: I,
    /// Stored fragments and their file sizes; this shard's alone.
    index: RefCell<BTreeMap<FragmentKey, u64>>,
    used_bytes: Cell<u64>,
    node: Arc<NodeUsage>,
    /// Makes temp names unique, so concurrent puts of one key do not collide.
    temp_seq: Cell<u64>,
}

impl<I: DiskIo> DmaStore<I> {
    /// A store over `dir` holding what [`scan`] found there. The scanned
    /// bytes must already be counted in `node`.
    pub fn new(dir: PathBuf, io: I, scanned: ScanResult, node: Arc<NodeUsage>) -> Self {
        let used: u64 = scanned.fragments.values().sum();
        Self {
            dir,
            io,
            index: RefCell::new(scanned.fragments),
            used_bytes: Cell::new(used),
            node,
            temp_seq: Cell::new(0),
        }
    }

    pub fn path_of(&self, key: &FragmentKey) -> PathBuf {
        self.dir.join(format::file_name(key))
    }

    fn account(&self, old_bytes: u64, new_bytes: u64) {
        self.used_bytes
            .set(self.used_bytes.get() - old_bytes + new_bytes);
        self.node.used_bytes.fetch_add(new_bytes, Ordering::Relaxed);
        self.node.used_bytes.fetch_sub(old_bytes, Ordering::Relaxed);
    }
}

impl<I: DiskIo> FragmentStore for DmaStore<I> {
    type PutBuf = BlockBuf<I::WriteBuf>;
    type GetBuf = Slice<I::ReadBuf>;

    fn put_buffer(&self, length_bytes: u32) -> Self::PutBuf {
        let length_bytes = length_bytes as usize;
        BlockBuf {
            image: self.io.alloc(HEADER_BLOCK_BYTES + align_up(length_bytes)),
            length_bytes,
        }
    }

    async fn put(
        &self,
        key: FragmentKey,
        mut data: Self::PutBuf,
        crc32c: u32,
    ) -> Result<(), StoreError> {
        let length_bytes = data.length_bytes as u32;
        let actual = crc32c::crc32c(data.as_mut());
        if actual != crc32c {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: crc32c,
                actual,
            });
        }
        let needed_bytes = format::file_bytes(length_bytes);
        let old_bytes = self.index.borrow().get(&key).copied().unwrap_or(0);
        let used_bytes = self.node.used_bytes.load(Ordering::Relaxed);
        let capacity_bytes = self.node.capacity_bytes;
        if (used_bytes + needed_bytes).saturating_sub(old_bytes) > capacity_bytes {
            return Err(StoreError::NoSpace {
                key,
                needed_bytes,
                used_bytes,
                capacity_bytes,
            });
        }

        let image = data.image.as_mut();
        FragmentHeader {
            key,
            length_bytes,
            crc32c,
        }
        .encode(image);
        // Padding goes to disk too: zero it rather than leak old memory.
        image[HEADER_BLOCK_BYTES + data.length_bytes..].fill(0);

        let seq = self.temp_seq.get();
        self.temp_seq.set(seq + 1);
        let temp = self.dir.join(format!("{key}{TEMP_MARK}.{seq}"));
        if let Err(source) = self.io.write_new(&temp, data.image).await {
            let _ = self.io.remove(&temp).await;
            if is_no_space(&source) {
                return Err(StoreError::NoSpace {
                    key,
                    needed_bytes,
                    used_bytes,
                    capacity_bytes,
                });
            }
            return Err(StoreError::Io {
                key,
                op: "write",
                source,
            });
        }
        if let Err(source) = self.io.rename(&temp, &self.path_of(&key)).await {
            let _ = self.io.remove(&temp).await;
            return Err(StoreError::Io {
                key,
                op: "rename",
                source,
            });
        }
        // Bookkeeping first: the new file is in place whatever the
        // directory sync says.
        let old_bytes = self
            .index
            .borrow_mut()
            .insert(key, needed_bytes)
            .unwrap_or(0);
        self.account(old_bytes, needed_bytes);
        self.io
            .sync_dir(&self.dir)
            .await
            .map_err(|source| StoreError::Io {
                key,
                op: "sync directory",
                source,
            })
    }

    async fn get(
        &self,
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: u32,
    ) -> Result<Self::GetBuf, StoreError> {
        if !self.index.borrow().contains_key(&key) {
            return Err(StoreError::NotFound { key });
        }
        let image = self
            .io
            .read_all(&self.path_of(&key))
            .await
            .map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    StoreError::NotFound { key }
                } else {
                    StoreError::Io {
                        key,
                        op: "read",
                        source,
                    }
                }
            })?;
        let header = FragmentHeader::decode(&image)
            .map_err(|message| StoreError::CorruptHeader { key, message })?;
        if header.key != key {
            return Err(StoreError::CorruptHeader {
                key,
                message: format!("the file holds fragment {}", header.key),
            });
        }
        let data_end = HEADER_BLOCK_BYTES + header.length_bytes as usize;
        if data_end > image.len() {
            let message = format!(
                "says {} data bytes, the file has {}",
                header.length_bytes,
                image.len()
            );
            return Err(StoreError::CorruptHeader { key, message });
        }
        // The whole fragment, on every get: a flipped byte outside the
        // requested range still means the fragment is bad.
        let actual = crc32c::crc32c(&image[HEADER_BLOCK_BYTES..data_end]);
        if actual != header.crc32c || actual != expected_crc32c {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: expected_crc32c,
                actual,
            });
        }
        if offset > header.length_bytes {
            return Err(StoreError::BadRange {
                key,
                offset,
                length_bytes: header.length_bytes,
            });
        }
        let end = (u64::from(offset) + u64::from(length)).min(u64::from(header.length_bytes));
        Ok(Slice::new(
            image,
            HEADER_BLOCK_BYTES + offset as usize,
            HEADER_BLOCK_BYTES + end as usize,
        ))
    }

    async fn delete(&self, key: FragmentKey) -> Result<(), StoreError> {
        let Some(old_bytes) = self.index.borrow_mut().remove(&key) else {
            return Err(StoreError::NotFound { key });
        };
        self.account(old_bytes, 0);
        match self.io.remove(&self.path_of(&key)).await {
            Err(source) if source.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
                key,
                op: "remove",
                source,
            }),
            _ => Ok(()),
        }
    }

    fn list(&self) -> Vec<FragmentKey> {
        self.index.borrow().keys().copied().collect()
    }

    fn used_bytes(&self) -> u64 {
        self.used_bytes.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use crate::io::GlommioDisk;
    use std::io::{Read, Seek, SeekFrom, Write};

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

    fn open(dir: &Path, capacity_bytes: u64) -> DmaStore<GlommioDisk> {
        let scanned = scan(dir).unwrap();
        let used: u64 = scanned.fragments.values().sum();
        let node = Arc::new(NodeUsage {
            used_bytes: AtomicU64::new(used),
            capacity_bytes,
        });
        DmaStore::new(
            dir.to_path_buf(),
            GlommioDisk::new(Faults::for_dir(dir)),
            scanned,
            node,
        )
    }

    /// Flips one data byte of a stored fragment, behind the store's back.
    pub(crate) fn flip_data_byte(path: &Path, at: usize) {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let pos = (HEADER_BLOCK_BYTES + at) as u64;
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
}
