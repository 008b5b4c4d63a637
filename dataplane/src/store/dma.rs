//! [`DmaStore`]: fragments on local disk, one directory per shard, read
//! and written with O_DIRECT through a [`DiskIo`]. Small fragments (up to
//! `LogConfig::fragment_bytes_max`) are records of the shard's fragment
//! log ([`super::log`]); larger ones are files `<dir>/<key>.frag`, in the
//! format of [`super::format`], as described below.
//!
//! **Put.** The data is checked against the sender's CRC32C (computed from
//! the chunk CRCs, one pass) and written with one O_DIRECT write and an
//! fdatasync, then the directory is fsync'd; a put is acknowledged only
//! once its data and its name are durable. A new key (every key a client
//! writes has a fresh generation) is written at its final name: a crash or
//! full disk mid-way can leave a torn file only for a put never
//! acknowledged, and the CRCs refuse it on read. A key that exists is
//! replaced through a uniquely named temp file renamed over it, so a crash
//! leaves the old fragment or the new one, never a torn one (as does a put
//! of a key another put is writing at that moment). The directory fsync is
//! shared by the puts in flight on the shard ([`GroupSync`]): one fsync
//! covers every create and rename done before it started. Temp files left
//! by a crash are removed by [`scan`] at start.
//!
//! **Get.** Reads the header block and, at the same time, the chunks the
//! requested range touches (one read when the range starts in the first
//! chunk), guessing the chunk size from the file size; the header then
//! says whether the guess holds, and another read fetches what it says
//! when it does not. Before serving:
//! - the whole-fragment CRC, combined from the chunk CRCs without reading
//!   the data, must equal the caller's `expected_crc32c` (a stale or
//!   misdirected fragment is refused whatever range is asked);
//! - every chunk read must match its CRC. A flipped byte in a chunk the
//!   range does not touch is not noticed by that get: it is caught by any
//!   get that covers it (a whole-fragment read, a degraded read, a repair).
//!
//! Version-1 fragments (no chunk CRCs) are read and checked whole, as
//! before chunks existed.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use torchfs_proto::fragment::FragmentKey;

use super::format::{self, FragmentHeader, HEADER_BLOCK_BYTES};
use super::group_sync::GroupSync;
use super::log::{self, FragmentLog, LogConfig, ScannedSegment};
pub use super::place::Place;
use super::{FragmentStore, Slice, StoreError};
use crate::io::{align_up, is_no_space, DiskIo, BLOCK_BYTES};

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
    /// Stored fragments.
    pub fragments: BTreeMap<FragmentKey, Place>,
    /// Log segments holding records.
    pub segments: Vec<ScannedSegment>,
    /// Leftover temp files removed.
    pub temp_files_removed: usize,
}

impl ScanResult {
    /// Bytes the fragments take.
    pub fn used_bytes(&self) -> u64 {
        self.fragments.values().map(Place::bytes).sum()
    }
}

const TEMP_MARK: &str = ".frag.tmp";
/// The most data bytes a fragment file is read for: the largest
/// block-aligned u32, so aligned lengths never overflow.
const ROOM_BYTES_MAX: u32 = u32::MAX / BLOCK_BYTES as u32 * BLOCK_BYTES as u32;

/// Lists a shard directory (creating it if needed), removes leftover
/// temp files and walks the log ([`log::scan`]). Runs at start, before
/// the executor serves.
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
            let bytes = entry.metadata()?.len();
            result.fragments.insert(key, Place::File { bytes });
        }
    }
    result.segments = log::scan(dir, &mut result.fragments)?;
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
    io: Rc<I>,
    /// Stored fragments; this shard's alone.
    index: RefCell<BTreeMap<FragmentKey, Place>>,
    log: Rc<FragmentLog<I>>,
    used_bytes: Cell<u64>,
    node: Arc<NodeUsage>,
    /// Makes temp names unique, so concurrent puts of one key do not collide.
    temp_seq: Cell<u64>,
    /// New keys being written at their final names (see `put`).
    writing: RefCell<HashSet<FragmentKey>>,
    /// The shard directory, opened on the first put and kept open.
    dir_handle: RefCell<Option<Rc<I::Dir>>>,
    dir_sync: GroupSync,
}

impl<I: DiskIo + 'static> DmaStore<I> {
    /// A store over `dir` holding what [`scan`] found there. The scanned
    /// bytes must already be counted in `node`. `log` must be valid
    /// ([`LogConfig::validate`]).
    pub fn new(
        dir: PathBuf,
        io: I,
        scanned: ScanResult,
        node: Arc<NodeUsage>,
        log: LogConfig,
    ) -> Self {
        let used = scanned.used_bytes();
        let io = Rc::new(io);
        let log = Rc::new(FragmentLog::new(
            dir.clone(),
            io.clone(),
            log,
            scanned.segments,
        ));
        Self {
            dir,
            io,
            log,
            index: RefCell::new(scanned.fragments),
            used_bytes: Cell::new(used),
            node,
            temp_seq: Cell::new(0),
            writing: RefCell::new(HashSet::new()),
            dir_handle: RefCell::new(None),
            dir_sync: GroupSync::new(),
        }
    }

    /// Directory syncs run and puts they served (group commit figures).
    pub fn dir_syncs(&self) -> (u64, u64) {
        (self.dir_sync.syncs(), self.dir_sync.callers())
    }

    /// The shard's fragment log (figures for tests and tuning).
    pub fn log(&self) -> &FragmentLog<I> {
        &self.log
    }

    pub fn path_of(&self, key: &FragmentKey) -> PathBuf {
        self.dir.join(format::file_name(key))
    }

    /// The file holding `key` and the offset of its header block there.
    pub fn stored_at(&self, key: &FragmentKey) -> Option<(PathBuf, u64)> {
        match self.index.borrow().get(key)? {
            Place::File { .. } => Some((self.path_of(key), 0)),
            Place::Log { seq, offset, .. } => Some((self.log.segment_path(*seq)?, *offset)),
        }
    }

    fn account(&self, old_bytes: u64, new_bytes: u64) {
        self.used_bytes
            .set(self.used_bytes.get() - old_bytes + new_bytes);
        self.node.used_bytes.fetch_add(new_bytes, Ordering::Relaxed);
        self.node.used_bytes.fetch_sub(old_bytes, Ordering::Relaxed);
    }
}

impl<I: DiskIo + 'static> FragmentStore for DmaStore<I> {
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
        let header = FragmentHeader::for_data(key, data.as_mut());
        if header.crc32c != crc32c {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: crc32c,
                actual: header.crc32c,
            });
        }
        let needed_bytes = format::file_bytes(length_bytes);
        let old_bytes = self.index.borrow().get(&key).map_or(0, Place::bytes);
        let used_bytes = self.node.used_bytes.load(Ordering::Relaxed);
        let capacity_bytes = self.node.capacity_bytes;
        let no_space = StoreError::NoSpace {
            key,
            needed_bytes,
            used_bytes,
            capacity_bytes,
        };
        if (used_bytes + needed_bytes).saturating_sub(old_bytes) > capacity_bytes {
            return Err(no_space);
        }
        // Padding goes to disk too: zero it rather than leak old memory.
        let image = data.image.as_mut();
        image[HEADER_BLOCK_BYTES + data.length_bytes..].fill(0);
        let stored = if self.log.config().takes(length_bytes) {
            self.put_logged(key, &header, data.image).await
        } else {
            self.put_file(key, &header, data.image).await
        };
        stored.map_err(|e| {
            if is_no_space(&e.source) {
                no_space
            } else {
                StoreError::Io {
                    key,
                    op: e.op,
                    source: e.source,
                }
            }
        })
    }

    async fn get(
        &self,
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: u32,
    ) -> Result<Self::GetBuf, StoreError> {
        self.read_placed(key, offset, length, Some(expected_crc32c))
            .await
            .map(|(_, data)| data)
    }

    async fn scrub(&self, key: FragmentKey) -> Result<(u32, u32), StoreError> {
        let (header, _) = self.read_placed(key, 0, u32::MAX, None).await?;
        Ok((header.crc32c, header.length_bytes))
    }

    async fn delete(&self, key: FragmentKey) -> Result<(), StoreError> {
        let Some(old) = self.index.borrow_mut().remove(&key) else {
            return Err(StoreError::NotFound { key });
        };
        self.account(old.bytes(), 0);
        self.drop_old(key, old, false)
            .await
            .map_err(|e| StoreError::Io {
                key,
                op: e.op,
                source: e.source,
            })
    }

    fn list(&self) -> Vec<FragmentKey> {
        self.index.borrow().keys().copied().collect()
    }

    fn used_bytes(&self) -> u64 {
        self.used_bytes.get()
    }
}

mod read;
mod write;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod log_tests;

#[cfg(all(test, feature = "testing"))]
mod fault_tests;
