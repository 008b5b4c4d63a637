//! The epoch cache (docs/ARCHITECTURE.md: The epoch cache): file data kept in this client ahead of
//! the reads a plan announces, in a memory tier and an optional local-disk
//! tier, evicted by next use (Belady) when plans are known and by LRU when
//! not.
//!
//! - [`plan`]: the plan format and its parser.
//! - [`belady`]: accepted plans on each rank's virtual time, next-use
//!   queries, and the eviction order / admission rule.
//! - [`tiers`]: per-tier byte accounting and the disk tier's files.
//! - [`stats`]: counters and the JSON document of `.torchfs/stats`.
//! - [`readahead`]: the sequential readahead window of files no plan names.
//!
//! The cache never calls the client: the client's prefetcher
//! (`core::prefetch`) takes jobs from it and hands their bytes back.
//!
//! Entries are byte ranges of one inode at one layout *version* (a hash of
//! the committed layout and size, [`crate::core::file`]): an entry is only
//! served to a reader whose open file has the same version, so data
//! another client replaced is never served after this client reopens the
//! file (close-to-open), and this client's own writes, truncations and
//! unlinks drop the inode's entries outright. An entry is in flight, in
//! memory, moving to disk, or on disk. Cached plus in-flight bytes never
//! exceed the memory budget: room is made before a fetch is issued, and a
//! fetch that arrives bigger than reserved is dropped.
//!
//! One mutex guards the whole state: every operation under it is a few
//! map updates (no I/O, no await), and reads spend their time copying data
//! out, which happens after the lock is released.

pub mod plan;

mod belady;
mod entries;
mod readahead;
mod stats;
pub(crate) mod tiers;

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};
use torchfs_proto::meta::{Attr, Ino, Layout};

use super::sync::lock;

pub(crate) use belady::{Installed, Slot, WHOLE_FILE_END};
use entries::CacheState;
pub(crate) use entries::{Job, Lookup, Piece};
pub use plan::{parse_plan, render_plan, ByteRange, Plan, PlanError, PlanItem};
pub(crate) use readahead::{Readahead, READAHEAD_CHUNK_BYTES};
pub use stats::{FrozenStats, STATS_FORMAT};
pub(crate) use tiers::read_file as read_cache_file;
use tiers::DiskDir;

/// How the epoch cache behaves; set at mount time.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Memory tier budget (cached plus in-flight bytes). 0 turns the cache
    /// (and prefetching) off.
    pub mem_bytes: u64,
    /// Directory of the local-disk tier; None: no disk tier.
    pub disk_dir: Option<PathBuf>,
    pub disk_bytes: u64,
    /// How far ahead of the furthest read item the prefetcher may go.
    pub window_items: u64,
    /// Bytes the prefetcher (and readahead) keeps in flight at most.
    pub inflight_bytes_max: u64,
    /// Fetches in flight at most.
    pub inflight_requests_max: u64,
    /// Largest sequential readahead window (no plan).
    pub readahead_bytes_max: u64,
    /// Opt-in relaxation of close-to-open for immutable datasets: a
    /// read-only open of a file the prefetcher fetched the layout of less
    /// than this long ago uses that layout instead of asking metad again
    /// (0, the default: every open revalidates). Changes made by other
    /// clients can then stay unseen for up to this long.
    pub trust_layout_ms: u64,
}

/// Default memory tier: 1 GiB.
pub const DEFAULT_CACHE_MEM_BYTES: u64 = 1 << 30;

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            mem_bytes: DEFAULT_CACHE_MEM_BYTES,
            disk_dir: None,
            disk_bytes: 0,
            window_items: 16_384,
            inflight_bytes_max: 64 << 20,
            inflight_requests_max: 32,
            readahead_bytes_max: 8 << 20,
            trust_layout_ms: 0,
        }
    }
}

/// Data a read returns: its own buffer, or a slice of a cached one.
#[derive(Debug, Clone)]
pub enum ReadBuf {
    Owned(Vec<u8>),
    Shared {
        data: Arc<Vec<u8>>,
        start: usize,
        end: usize,
    },
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ReadBuf::Owned(v) => v,
            ReadBuf::Shared { data, start, end } => &data[*start..*end],
        }
    }
}

impl PartialEq<[u8]> for ReadBuf {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

/// Work for the disk tier's blocking thread.
pub(crate) enum DiskWork {
    Demote {
        id: u64,
        path: PathBuf,
        data: Arc<Vec<u8>>,
    },
    Remove(PathBuf),
}

/// The epoch cache of one client.
pub(crate) struct EpochCache {
    pub config: CacheConfig,
    state: Mutex<CacheState>,
    /// Wakes the prefetcher (plan accepted, cursor moved, room freed).
    pub wake: Arc<Notify>,
    disk_work: Option<mpsc::UnboundedSender<DiskWork>>,
    /// Layouts the prefetcher fetched: for its next jobs of the same file
    /// ([`PREFETCH_LAYOUT_REUSE_MS`]) and for opens (`trust_layout_ms`).
    layouts: Mutex<HashMap<Ino, NotedLayout>>,
}

/// A layout the prefetcher fetched, at file version `version`.
struct NotedLayout {
    attr: Attr,
    layout: Layout,
    version: u64,
    at: Instant,
}

/// Prefetched layouts remembered at most with a trust window (then the
/// memo starts over).
const TRUSTED_LAYOUTS_MAX: usize = 1 << 18;
/// How long a layout the prefetcher fetched serves its later jobs of the
/// same file (chunks of a large file would otherwise cost a `GetLayout`
/// each). Safe at any length for prefetches: what they fetch is keyed by
/// the file's version, and an open that finds a newer version drops it;
/// short, so a file changed meanwhile costs at most a few wasted fetches.
const PREFETCH_LAYOUT_REUSE_MS: u64 = 250;
/// Layouts remembered at most without a trust window, when only
/// [`EpochCache::recent_layout`] reads them: the large files a plan reads
/// in chunks at once.
const RECENT_LAYOUTS_MAX: usize = 4096;

impl EpochCache {
    /// Builds the cache; with a disk tier, also the receiving end of its
    /// work queue (drained by a blocking task the client spawns).
    pub fn new(
        config: CacheConfig,
    ) -> std::io::Result<(Self, Option<mpsc::UnboundedReceiver<DiskWork>>)> {
        let disk = match &config.disk_dir {
            Some(dir) if config.disk_bytes > 0 && config.mem_bytes > 0 => Some(DiskDir::open(dir)?),
            _ => None,
        };
        let (tx, rx) = match disk {
            Some(_) => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let state = CacheState::new(&config, disk);
        Ok((
            Self {
                config,
                state: Mutex::new(state),
                wake: Arc::new(Notify::new()),
                disk_work: tx,
                layouts: Mutex::new(HashMap::new()),
            },
            rx,
        ))
    }

    pub fn enabled(&self) -> bool {
        self.config.mem_bytes > 0
    }

    pub fn disk_enabled(&self) -> bool {
        self.disk_work.is_some()
    }

    /// Runs `f` on the state, then hands the disk work it produced to the
    /// disk thread and wakes the prefetcher if it asked.
    fn with<R>(&self, f: impl FnOnce(&mut CacheState) -> R) -> R {
        let (r, work, wake) = {
            let mut st = lock(&self.state);
            let r = f(&mut st);
            #[cfg(test)]
            st.check_bounds();
            (
                r,
                std::mem::take(&mut st.disk_work),
                std::mem::take(&mut st.wake),
            )
        };
        if let Some(tx) = &self.disk_work {
            for w in work {
                // The receiver lives as long as the client; a send after
                // shutdown loses nothing that matters.
                let _ = tx.send(w);
            }
        }
        if wake {
            self.wake.notify_one();
        }
        r
    }

    /// Looks `[start, end)` of `ino` at `version` up; `first` marks a
    /// read's first attempt (it counts the read and consumes plan items).
    pub fn lookup(&self, ino: Ino, version: u64, start: u64, end: u64, first: bool) -> Lookup {
        self.with(|st| st.lookup(ino, version, start, end, first))
    }

    /// Counts a read that waited (for a fetch in flight, or a miss).
    pub fn note_stall(&self, waited: std::time::Duration, inflight: bool) {
        self.with(|st| st.note_stall(waited, inflight))
    }

    /// After a miss: counts it and keeps the data when worth it.
    pub fn fill(&self, ino: Ino, version: u64, start: u64, data: Vec<u8>) -> ReadBuf {
        self.with(|st| st.fill(ino, version, start, data))
    }

    /// Remembers a layout the prefetcher fetched, at file version
    /// `version`, for [`Self::recent_layout`] and, with
    /// `trust_layout_ms`, for opens.
    pub fn note_layout(&self, attr: &Attr, layout: &Layout, version: u64) {
        let max = if self.config.trust_layout_ms == 0 {
            RECENT_LAYOUTS_MAX
        } else {
            TRUSTED_LAYOUTS_MAX
        };
        let mut memo = lock(&self.layouts);
        if memo.len() >= max {
            memo.clear();
        }
        let noted = NotedLayout {
            attr: attr.clone(),
            layout: layout.clone(),
            version,
            at: Instant::now(),
        };
        memo.insert(attr.ino, noted);
    }

    /// The layout of `ino` the prefetcher fetched less than `window` ago.
    fn noted_layout(&self, ino: Ino, window: Duration) -> Option<(Attr, Layout)> {
        let memo = lock(&self.layouts);
        let noted = memo.get(&ino)?;
        (noted.at.elapsed() < window).then(|| (noted.attr.clone(), noted.layout.clone()))
    }

    /// A prefetched layout of `ino` young enough to open with.
    pub fn trusted_layout(&self, ino: Ino) -> Option<(Attr, Layout)> {
        let window = Duration::from_millis(self.config.trust_layout_ms);
        if window.is_zero() {
            return None;
        }
        self.noted_layout(ino, window)
    }

    /// A layout the prefetcher fetched for `ino` in the last
    /// [`PREFETCH_LAYOUT_REUSE_MS`], for another prefetch of that file
    /// (never for an open).
    pub fn recent_layout(&self, ino: Ino) -> Option<(Attr, Layout)> {
        self.noted_layout(ino, Duration::from_millis(PREFETCH_LAYOUT_REUSE_MS))
    }

    /// Drops every entry of `ino` (this client changed or removed it).
    pub fn invalidate(&self, ino: Ino) {
        lock(&self.layouts).remove(&ino);
        if self.enabled() {
            self.with(|st| st.invalidate(ino, None))
        }
    }

    /// Drops entries of `ino` at a version other than `version` (the file
    /// was changed elsewhere: found at open).
    pub fn validate(&self, ino: Ino, version: u64) {
        {
            let mut memo = lock(&self.layouts);
            if memo.get(&ino).is_some_and(|n| n.version != version) {
                memo.remove(&ino);
            }
        }
        if self.enabled() {
            self.with(|st| st.invalidate(ino, Some(version)))
        }
    }

    pub fn install_plan(&self, plan: Plan) -> Installed {
        self.with(|st| st.install_plan(plan))
    }

    pub fn note_plan_rejected(&self, err: &PlanError) {
        self.with(|st| st.note_plan_rejected(err))
    }

    pub fn path_at(&self, rank: u32, position: u64) -> Option<belady::ItemRef> {
        lock(&self.state).plans.path_at(rank, position)
    }

    /// A path's inode and size as last resolved (see `Plans::path_memo`).
    pub fn known_path(&self, path: &str) -> Option<(Ino, u64)> {
        lock(&self.state).plans.known_path(path)
    }

    pub fn note_path(&self, path: Arc<str>, ino: Ino, size_bytes: u64) {
        lock(&self.state).plans.note_path(path, ino, size_bytes)
    }

    pub fn names_ahead(&self, ahead: u64) -> Vec<Arc<str>> {
        lock(&self.state).plans.names_ahead(ahead)
    }

    pub fn resolve(&self, rank: u32, position: u64, slot: Slot) -> bool {
        self.with(|st| st.resolve(rank, position, slot))
    }

    /// See `CacheState::inos_ahead`.
    pub fn inos_ahead(&self, ahead: u64) -> Vec<Ino> {
        lock(&self.state).inos_ahead(ahead)
    }

    pub fn next_job(&self) -> Option<Job> {
        self.with(|st| st.next_job())
    }

    /// Reserves room for readahead of `[start, end)` (None: no room, or
    /// already cached or in flight).
    pub fn reserve_readahead(&self, ino: Ino, version: u64, start: u64, end: u64) -> Option<Job> {
        self.with(|st| st.reserve_readahead(ino, version, start, end))
    }

    /// A fetch finished: `Ok((version, data))` or failed.
    pub fn complete(&self, job: &Job, result: Result<(u64, Vec<u8>), ()>) {
        self.with(|st| st.complete(job, result))
    }

    pub fn demoted(&self, id: u64, ok: bool) {
        self.with(|st| st.demoted(id, ok))
    }

    /// Whether reads of `ino` should not trigger readahead (a plan covers it).
    pub fn is_planned(&self, ino: Ino) -> bool {
        lock(&self.state).plans.is_planned(ino)
    }

    /// Whether a plan reads `ino` by byte ranges.
    pub fn has_planned_ranges(&self, ino: Ino) -> bool {
        lock(&self.state).plans.has_ranges(ino)
    }

    /// The disk-tier file holding all of `ino` at `version` (`size_bytes`
    /// long), for FUSE passthrough; counts the open as a disk hit and
    /// consumes its plan item.
    pub fn backing_path(&self, ino: Ino, version: u64, size_bytes: u64) -> Option<PathBuf> {
        if !self.disk_enabled() || size_bytes == 0 {
            return None;
        }
        self.with(|st| st.backing_path(ino, version, size_bytes))
    }

    pub fn render_stats(
        &self,
        storage_read_bytes: u64,
        degraded_writes: u64,
        meta_requests: u64,
        transport: torchfs_rdma::TransportCounters,
        frozen: FrozenStats,
    ) -> String {
        let mut snap = lock(&self.state).snapshot();
        snap.storage_read_bytes = storage_read_bytes;
        snap.degraded_writes = degraded_writes;
        snap.meta_requests = meta_requests;
        snap.transport = transport;
        snap.frozen = frozen;
        snap.render()
    }
}

#[cfg(test)]
mod tests;
