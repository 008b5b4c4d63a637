//! A shard's fragment log: small fragments as records appended to
//! preallocated segment files, so a put is one O_DIRECT overwrite and a
//! share of one fdatasync, instead of a file create, a write, an fdatasync,
//! a close and a directory fsync (each its own io_uring round, most of
//! them handed to io_uring's worker threads).
//!
//! **Records.** A record is the image of a fragment file (header block,
//! data padded to 4 KiB; see [`super::format`]) whose header carries a
//! [`Stamp`]: the segment's random nonce, its sequence number and the
//! record's offset. Segments are `<seq>-<nonce>.seg` in the shard
//! directory, their space allocated when created
//! ([`DiskIo::create_preallocated`]) so that a record's write neither
//! extends the file nor allocates blocks. (Zero-filling them instead
//! makes writes pure overwrites, faster one put at a time, but it doubles
//! the bytes written and lost through the mount; figures in
//! docs/ARCHITECTURE.md.) Their first block says what the
//! file is (`TFSLOG`, sequence, nonce) and is never punched: glommio
//! decides whether a device can be polled by reading the first block of
//! the first file it opens there, and a hole (or an unwritten block)
//! would answer "yes" on a device that cannot.
//!
//! **Put.** Reserves the next `record_bytes` of the active segment, writes
//! the record there and waits for an fdatasync of the segment that started
//! after its write ended ([`GroupSync`]: the puts in flight on a shard
//! share one). Records are written concurrently, so one may land before
//! an earlier one; nothing depends on order within a segment.
//!
//! **Delete and replace.** The record's blocks are punched out (header and
//! data read as zeros from then on); a segment that is no longer active,
//! holds no live record and has no put in flight is removed. As with a
//! fragment file's unlink, a delete is not durable until something syncs
//! the segment: after a crash a deleted fragment may come back (orphan
//! collection's job). A
//! replaced record that comes back loses to its replacement, which is
//! later in (segment, offset) order.
//!
//! **Start.** [`scan`] walks each segment block by block: a block that
//! decodes as a header (its CRC right) with this very segment's stamp at
//! this offset is a record and the walk jumps past it; any other block
//! (zeros, a punched record, the torn remains of a put that was never
//! acknowledged) is stepped over, holes by `SEEK_DATA`. The stamp is what
//! makes this safe: a header copied inside some fragment's data (say, a
//! backup of another node) names another segment or offset. Later records
//! of a key win, older ones are punched, and a record wins over a
//! fragment file of the same key (only a crash or a failed write during a
//! replacement leaves both; see `DmaStore::put` for why either is then
//! right) -- if it is whole: a write torn after its header block landed
//! leaves a record whose data is not its header's, so a record that would
//! replace another fragment is first read whole and checked against its
//! header's CRC, and a torn one is punched (only those are read: most
//! records replace nothing). Every segment found is sealed (new records
//! go to a new segment) and its tail past the last record is punched,
//! freeing its space.
//!
//! A put whose future is dropped after its write leaves a record nothing
//! indexes until the next start; its space is then found again.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::PathBuf;
use std::rc::Rc;

use futures::channel::oneshot;

use super::format::{FragmentHeader, Stamp};
use super::group_sync::GroupSync;
use crate::io::{DiskError, DiskIo, BLOCK_BYTES};

mod scan;
pub use scan::{move_record_to_file, scan, ScannedSegment};

/// Where the log keeps small fragments, and which fragments are small.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// Fragments of at most this many data bytes go to the log; larger
    /// ones (and all, when 0) are fragment files.
    pub fragment_bytes_max: u32,
    /// Size of each segment file (bytes, a multiple of 4 KiB).
    pub segment_bytes: u64,
}

impl Default for LogConfig {
    /// 256 KiB fragments (a file of up to 1 MiB in 4+2 stripes puts its
    /// fragments here; above that, bandwidth rather than syncs sets a
    /// put's pace), 8 MiB segments (made ahead of need).
    fn default() -> Self {
        Self {
            fragment_bytes_max: 256 << 10,
            segment_bytes: 8 << 20,
        }
    }
}

/// The most data bytes a log record may hold: its chunk table must end
/// before the stamp.
pub const LOG_FRAGMENT_BYTES_MAX: u32 = 16 << 20;

impl LogConfig {
    /// No log: every fragment is a file.
    pub fn off() -> Self {
        Self {
            fragment_bytes_max: 0,
            ..Self::default()
        }
    }

    /// Checks the sizes fit together; says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.fragment_bytes_max == 0 {
            return Ok(());
        }
        if self.fragment_bytes_max > LOG_FRAGMENT_BYTES_MAX {
            return Err(format!(
                "log fragments of up to {} bytes: at most {LOG_FRAGMENT_BYTES_MAX}",
                self.fragment_bytes_max
            ));
        }
        let record_bytes = super::format::file_bytes(self.fragment_bytes_max);
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES as u64)
            || self.segment_bytes < BLOCK_BYTES as u64 + 4 * record_bytes
        {
            return Err(format!(
                "log segments of {} bytes: need a multiple of {BLOCK_BYTES} holding a {BLOCK_BYTES}-byte \
                 first block and at least 4 of the largest records ({record_bytes} bytes)",
                self.segment_bytes
            ));
        }
        Ok(())
    }

    /// Whether a fragment of `length_bytes` goes to the log.
    pub fn takes(&self, length_bytes: u32) -> bool {
        length_bytes <= self.fragment_bytes_max && self.fragment_bytes_max > 0
    }
}

/// One segment file.
struct Segment<F> {
    seq: u64,
    nonce: u64,
    path: PathBuf,
    /// Open for reading and writing; opened on first use for segments
    /// found at start.
    file: RefCell<Option<Rc<F>>>,
    /// Records in it the index points at.
    live: Cell<u32>,
    /// Records reserved in it whose puts have not ended.
    pending: Cell<u32>,
    /// No more records go here; removed once `live` and `pending` are 0.
    sealed: Cell<bool>,
    sync: GroupSync,
}

/// The segment records are appended to.
struct Active<F> {
    segment: Rc<Segment<F>>,
    next_offset: u64,
}

struct State<F> {
    segments: BTreeMap<u64, Rc<Segment<F>>>,
    active: Option<Active<F>>,
    /// A segment made ahead of need.
    spare: Option<Rc<Segment<F>>>,
    next_seq: u64,
}

/// See the module docs. Single-threaded: one per shard executor.
pub struct FragmentLog<I: DiskIo> {
    dir: PathBuf,
    io: Rc<I>,
    config: LogConfig,
    state: RefCell<State<I::File>>,
    /// A segment is being made (by a put, or ahead of need).
    creating: Cell<bool>,
    /// Puts waiting for that segment.
    waiting: RefCell<Vec<oneshot::Sender<()>>>,
    /// Segments made, for tests and tuning.
    segments_created: Cell<u64>,
    /// Sealed segments whose files are open, least recently used first.
    open_sealed: RefCell<VecDeque<u64>>,
}

/// Files of sealed segments a shard keeps open: a file descriptor each,
/// and a store of small fragments has a segment per 8 MiB of them (a
/// process's default limit is 1,024 descriptors).
pub const OPEN_SEALED_MAX: usize = 64;

/// Counts a put in flight in its segment (also when the put is dropped
/// midway), so the segment is not removed under it.
struct Pending<'a, F>(&'a Segment<F>);

impl<F> Drop for Pending<'_, F> {
    fn drop(&mut self) {
        self.0.pending.set(self.0.pending.get() - 1);
    }
}

impl<F> Segment<F> {
    /// Sealed, with no live record and no put in flight.
    fn is_done(&self) -> bool {
        self.sealed.get() && self.live.get() == 0 && self.pending.get() == 0
    }
}

/// Clears `creating` and wakes the waiting puts when a segment has been
/// made, or its maker was dropped midway.
struct Creating<'a, I: DiskIo>(&'a FragmentLog<I>);

impl<I: DiskIo> Drop for Creating<'_, I> {
    fn drop(&mut self) {
        self.0.creating.set(false);
        for w in self.0.waiting.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }
}

/// A fresh nonce: the std hasher's per-process random keys, mixed with
/// the time and the sequence number.
fn nonce(seq: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(seq);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    // Zero is the stamp of a fragment file.
    h.finish().max(1)
}

impl<I: DiskIo + 'static> FragmentLog<I> {
    /// The log of the shard directory `dir`, holding the segments [`scan`]
    /// found (all sealed: new records go to a new segment).
    pub fn new(dir: PathBuf, io: Rc<I>, config: LogConfig, scanned: Vec<ScannedSegment>) -> Self {
        let next_seq = scanned.iter().map(|s| s.seq + 1).max().unwrap_or(0);
        let segments = scanned
            .into_iter()
            .map(|s| {
                let segment = Segment {
                    seq: s.seq,
                    nonce: s.nonce,
                    path: s.path,
                    file: RefCell::new(None),
                    live: Cell::new(s.live),
                    pending: Cell::new(0),
                    sealed: Cell::new(true),
                    sync: GroupSync::new(),
                };
                (s.seq, Rc::new(segment))
            })
            .collect();
        Self {
            dir,
            io,
            config,
            state: RefCell::new(State {
                segments,
                active: None,
                spare: None,
                next_seq,
            }),
            creating: Cell::new(false),
            waiting: RefCell::new(Vec::new()),
            segments_created: Cell::new(0),
            open_sealed: RefCell::new(VecDeque::new()),
        }
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Segment files made, and segment files there are now.
    pub fn segment_counts(&self) -> (u64, usize) {
        (
            self.segments_created.get(),
            self.state.borrow().segments.len(),
        )
    }

    /// Syncs run and puts they served, over the segments there are now
    /// (group commit figures).
    pub fn syncs(&self) -> (u64, u64) {
        self.state
            .borrow()
            .segments
            .values()
            .fold((0, 0), |(s, c), seg| {
                (s + seg.sync.syncs(), c + seg.sync.callers())
            })
    }

    /// The path of segment `seq` (tests reach records through it).
    pub fn segment_path(&self, seq: u64) -> Option<PathBuf> {
        self.state
            .borrow()
            .segments
            .get(&seq)
            .map(|s| s.path.clone())
    }

    /// Appends `image` (a fragment file image of `header`, whose header
    /// block is rewritten here with the record's stamp) and returns where
    /// it sits, `(seq, offset)`, once it is durable.
    pub async fn append(
        self: &Rc<Self>,
        header: &FragmentHeader,
        image: I::WriteBuf,
    ) -> Result<(u64, u64), DiskError> {
        let record_bytes = image.as_ref().len() as u64;
        let (segment, offset) = self.reserve(record_bytes).await?;
        let pending = Pending(&segment);
        let stored = self.write_record(&segment, offset, header, image).await;
        if stored.is_ok() {
            segment.live.set(segment.live.get() + 1);
        } else {
            self.unwrite(&segment, offset, record_bytes).await;
        }
        drop(pending);
        if segment.is_done() {
            // This put failed, and a later one sealed the segment meanwhile.
            self.remove_segment(segment.seq).await;
        }
        stored.map(|()| (segment.seq, offset))
    }

    /// Punches out the record of a failed put at `offset` of `segment`
    /// and syncs that, best effort. Its write may have landed whole (the
    /// sync failed) or torn: either way, found at the next start it would
    /// win over what its key holds by then (a record or a file stored
    /// since), and a torn one over the fragment it was to replace.
    async fn unwrite(&self, segment: &Segment<I::File>, offset: u64, record_bytes: u64) {
        let Some(file) = segment.file.borrow().clone() else {
            return;
        };
        let punched = async {
            self.io.punch(&file, offset, record_bytes).await?;
            segment.sync.run(|| self.io.sync_data(&file)).await
        };
        if let Err(e) = punched.await {
            // The walk at start still refuses a torn record that would
            // replace another; a whole one may come back, as a delete can.
            tracing::warn!(
                "log segment {:016x}: punch the failed put's record at {offset}: {e}",
                segment.seq
            );
        }
    }

    /// Writes `image` at `offset` of `segment`, stamped, and waits for a
    /// sync of the segment that started after the write.
    async fn write_record(
        &self,
        segment: &Segment<I::File>,
        offset: u64,
        header: &FragmentHeader,
        mut image: I::WriteBuf,
    ) -> Result<(), DiskError> {
        header.encode_stamped(
            image.as_mut(),
            Stamp {
                nonce: segment.nonce,
                seq: segment.seq,
                offset,
            },
        );
        let file = segment
            .file
            .borrow()
            .clone()
            .expect("an active segment is open");
        self.io
            .write_at(&file, offset, image)
            .await
            .map_err(DiskError::of("write log record"))?;
        segment
            .sync
            .run(|| self.io.sync_data(&file))
            .await
            .map_err(DiskError::of("sync log segment"))
    }

    /// The next `record_bytes` of the active segment, making a segment
    /// when there is none or it is full.
    async fn reserve(
        self: &Rc<Self>,
        record_bytes: u64,
    ) -> Result<(Rc<Segment<I::File>>, u64), DiskError> {
        loop {
            {
                let mut state = self.state.borrow_mut();
                if let Some(active) = &mut state.active {
                    if active.next_offset + record_bytes <= self.config.segment_bytes {
                        let offset = active.next_offset;
                        active.next_offset += record_bytes;
                        // Counted before any await: `append` holds it from here.
                        active.segment.pending.set(active.segment.pending.get() + 1);
                        let half_full = active.next_offset * 2 >= self.config.segment_bytes;
                        let segment = active.segment.clone();
                        let want_spare = half_full && state.spare.is_none();
                        drop(state);
                        if want_spare && !self.creating.get() {
                            let log = self.clone();
                            glommio::spawn_local(async move { log.make_spare().await }).detach();
                        }
                        return Ok((segment, offset));
                    }
                }
            }
            if self.creating.get() {
                let (tx, rx) = oneshot::channel();
                self.waiting.borrow_mut().push(tx);
                let _ = rx.await;
                continue;
            }
            self.creating.set(true);
            let _creating = Creating(&**self);
            let spare = self.state.borrow_mut().spare.take();
            let segment = match spare {
                Some(s) => s,
                None => self
                    .create_segment()
                    .await
                    .map_err(DiskError::of("create log segment"))?,
            };
            let old = self.state.borrow_mut().active.replace(Active {
                segment,
                next_offset: BLOCK_BYTES as u64,
            });
            if let Some(old) = old {
                old.segment.sealed.set(true);
                if old.segment.is_done() {
                    self.remove_segment(old.segment.seq).await;
                } else {
                    self.used_sealed(old.segment.seq);
                }
            }
        }
    }

    /// Makes the spare segment (spawned once the active one is half full).
    async fn make_spare(self: Rc<Self>) {
        if self.creating.get() || self.state.borrow().spare.is_some() {
            return;
        }
        self.creating.set(true);
        let _creating = Creating(&self);
        match self.create_segment().await {
            Ok(segment) => self.state.borrow_mut().spare = Some(segment),
            // The put that needs a segment tries again and reports it.
            Err(e) => tracing::warn!("{}: make a spare log segment: {e}", self.dir.display()),
        }
    }

    /// A new segment file, its space allocated, durable with its name.
    async fn create_segment(&self) -> io::Result<Rc<Segment<I::File>>> {
        let seq = {
            let mut state = self.state.borrow_mut();
            state.next_seq += 1;
            state.next_seq - 1
        };
        let nonce = nonce(seq);
        let path = self.dir.join(scan::segment_name(seq, nonce));
        let mut head = self.io.alloc(BLOCK_BYTES);
        scan::encode_first_block(head.as_mut(), seq, nonce);
        let file = match self
            .io
            .create_preallocated(&path, self.config.segment_bytes, head)
            .await
        {
            Ok(f) => f,
            Err(e) => {
                let _ = self.io.remove(&path).await;
                return Err(e);
            }
        };
        let synced = async {
            let dir = self.io.open_dir(&self.dir).await?;
            self.io.sync_dir(&dir).await
        }
        .await;
        if let Err(e) = synced {
            self.io.close(file).await;
            let _ = self.io.remove(&path).await;
            return Err(e);
        }
        let segment = Rc::new(Segment {
            seq,
            nonce,
            path,
            file: RefCell::new(Some(Rc::new(file))),
            live: Cell::new(0),
            pending: Cell::new(0),
            sealed: Cell::new(false),
            sync: GroupSync::new(),
        });
        self.state
            .borrow_mut()
            .segments
            .insert(seq, segment.clone());
        self.segments_created.set(self.segments_created.get() + 1);
        Ok(segment)
    }

    async fn remove_segment(&self, seq: u64) {
        let Some(segment) = self.state.borrow_mut().segments.remove(&seq) else {
            return;
        };
        self.open_sealed.borrow_mut().retain(|s| *s != seq);
        // Reads in flight keep their open file. Like a fragment file's
        // unlink, not made durable (see the module docs).
        if let Err(e) = self.io.remove(&segment.path).await {
            tracing::warn!("remove log segment {}: {e}", segment.path.display());
        }
    }

    /// Segment `seq`'s file, opened on first use. Sealed segments keep
    /// at most [`OPEN_SEALED_MAX`] files open, the most recently used.
    pub async fn file(&self, seq: u64) -> io::Result<Rc<I::File>> {
        let segment = self.state.borrow().segments.get(&seq).cloned();
        let Some(segment) = segment else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("log segment {seq} is gone"),
            ));
        };
        let open = segment.file.borrow().clone();
        let file = match open {
            Some(f) => f,
            None => {
                let file = Rc::new(self.io.open_rw(&segment.path).await?);
                let mut slot = segment.file.borrow_mut();
                slot.get_or_insert(file).clone()
            }
        };
        if segment.sealed.get() {
            self.used_sealed(seq);
        }
        Ok(file)
    }

    /// Notes that sealed segment `seq`'s file is open and was just used;
    /// closes the least recently used beyond [`OPEN_SEALED_MAX`] (reads in
    /// flight keep theirs until they end).
    fn used_sealed(&self, seq: u64) {
        let mut lru = self.open_sealed.borrow_mut();
        if lru.back() != Some(&seq) {
            lru.retain(|s| *s != seq);
            lru.push_back(seq);
        }
        while lru.len() > OPEN_SEALED_MAX {
            let Some(old) = lru.pop_front() else { break };
            if let Some(segment) = self.state.borrow().segments.get(&old) {
                segment.file.borrow_mut().take();
            }
        }
    }

    /// Files of sealed segments open now (tests).
    pub fn open_sealed_files(&self) -> usize {
        self.state
            .borrow()
            .segments
            .values()
            .filter(|s| s.sealed.get() && s.file.borrow().is_some())
            .count()
    }

    /// Frees the record at `offset` of segment `seq` (`record_bytes`
    /// long), which the index no longer points at. `durable`: also sync
    /// the segment, so the record cannot come back after a crash.
    pub async fn release(
        &self,
        seq: u64,
        offset: u64,
        record_bytes: u64,
        durable: bool,
    ) -> io::Result<()> {
        let file = self.file(seq).await?;
        self.io.punch(&file, offset, record_bytes).await?;
        let segment = self.state.borrow().segments.get(&seq).cloned();
        let Some(segment) = segment else {
            return Ok(());
        };
        if durable {
            segment.sync.run(|| self.io.sync_data(&file)).await?;
        }
        segment.live.set(segment.live.get().saturating_sub(1));
        if segment.is_done() {
            self.remove_segment(seq).await;
        }
        Ok(())
    }
}
