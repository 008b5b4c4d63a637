//! The cache's state under its mutex: entries, the per-inode index, tier
//! accounting, the plans, and the decisions made on them (what to fetch
//! next, what to evict, whether to keep a missed read). No I/O happens
//! here: disk-tier work is queued in `disk_work` and the prefetcher is
//! woken through `wake`, both drained by [`super::EpochCache`] after the
//! lock is released.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use torchfs_proto::meta::Ino;

use super::belady::{
    overlaps, Installed, Plans, Rank, Slot, NEXT_PLAN_LEAD_ITEMS, NO_USE, WHOLE_FILE_END,
};
use super::plan::{Plan, PlanError};
use super::stats::{Counters, RankGauges, Snapshot, TierCounters, TierGauges};
use super::tiers::{DiskDir, Tier};
use super::{CacheConfig, DiskWork, ReadBuf};

mod fetches;
mod report;

/// Entries examined, nearest first, when looking for one covering an
/// offset (entries of one inode rarely overlap, so the first usually does).
const COVER_CANDIDATES_MAX: usize = 16;

/// Where a piece of a hit comes from.
pub(crate) enum Piece {
    Mem {
        data: Arc<Vec<u8>>,
        from: usize,
        to: usize,
    },
    Disk {
        path: PathBuf,
        offset: u64,
        len: usize,
    },
}

pub(crate) enum Lookup {
    /// The range is cached: these pieces, in order, cover it.
    Hit(Vec<Piece>),
    /// A fetch of (part of) the range is in flight: wait, then look again.
    Wait(watch::Receiver<bool>),
    Miss,
}

/// A fetch to run: bytes `[start, end)` of `ino` (to the end of the file
/// when `whole`), with `reserved_bytes` of the memory budget held for it.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub id: u64,
    pub ino: Ino,
    pub start: u64,
    pub end: u64,
    pub whole: bool,
    pub reserved_bytes: u64,
    pub readahead: bool,
}

enum Data {
    /// Dropping the sender wakes the waiters too (the fetch was abandoned).
    InFlight(watch::Sender<bool>),
    Mem(Arc<Vec<u8>>),
    /// Being written to the disk tier; still readable from memory.
    Moving(Arc<Vec<u8>>),
    Disk(PathBuf),
}

struct Entry {
    ino: Ino,
    start: u64,
    end: u64,
    /// Layout version the bytes belong to; None while a prefetch has not
    /// fetched the layout yet.
    version: Option<u64>,
    data: Data,
    next_use: u64,
    last_access: u64,
    prefetched: bool,
    used: bool,
}

impl Entry {
    fn len(&self) -> u64 {
        self.end - self.start
    }

    fn rank(&self, id: u64) -> Rank {
        Rank {
            next_use: self.next_use,
            last_access: self.last_access,
            id,
        }
    }

    fn ready(&self) -> bool {
        !matches!(self.data, Data::InFlight(_))
    }
}

pub(crate) struct CacheState {
    window_items: u64,
    inflight_bytes_max: u64,
    inflight_requests_max: u64,
    entries: HashMap<u64, Entry>,
    /// (start, end, id) of each inode's entries.
    by_ino: HashMap<Ino, BTreeSet<(u64, u64, u64)>>,
    mem: Tier,
    disk: Tier,
    disk_dir: Option<DiskDir>,
    inflight_bytes: u64,
    inflight_requests: u64,
    pub plans: Plans,
    counters: Counters,
    last_plan_error: Option<String>,
    tick: u64,
    next_id: u64,
    /// Drained by the caller after every operation.
    pub disk_work: Vec<DiskWork>,
    pub wake: bool,
}

/// Whether some entry of `ino` (ready ones only, if `ready`) holds all of
/// `[start, end)`.
fn covered(
    by_ino: &HashMap<Ino, BTreeSet<(u64, u64, u64)>>,
    entries: &HashMap<u64, Entry>,
    ino: Ino,
    start: u64,
    end: u64,
    ready: bool,
) -> bool {
    by_ino.get(&ino).is_some_and(|set| {
        set.range(..=(start, u64::MAX, u64::MAX))
            .rev()
            .take(COVER_CANDIDATES_MAX)
            .any(|&(s, e, id)| {
                s <= start && e >= end && (!ready || entries.get(&id).is_some_and(Entry::ready))
            })
    })
}

impl CacheState {
    pub fn new(config: &CacheConfig, disk_dir: Option<DiskDir>) -> Self {
        let disk_budget = if disk_dir.is_some() {
            config.disk_bytes
        } else {
            0
        };
        Self {
            window_items: config.window_items.max(1),
            inflight_bytes_max: config.inflight_bytes_max.max(1),
            inflight_requests_max: config.inflight_requests_max.max(1),
            entries: HashMap::new(),
            by_ino: HashMap::new(),
            mem: Tier::new(config.mem_bytes),
            disk: Tier::new(disk_budget),
            disk_dir,
            inflight_bytes: 0,
            inflight_requests: 0,
            plans: Plans::default(),
            counters: Counters::default(),
            last_plan_error: None,
            tick: 0,
            next_id: 1,
            disk_work: Vec::new(),
            wake: false,
        }
    }

    /// The bounds the cache promises, checked after every operation in
    /// tests.
    #[cfg(test)]
    pub fn check_bounds(&self) {
        assert!(
            self.mem_used() <= self.mem.budget_bytes,
            "memory: {} cached + {} moving + {} in flight > {} budget",
            self.mem.cached_bytes,
            self.mem.moving_bytes,
            self.inflight_bytes,
            self.mem.budget_bytes
        );
        assert!(self.disk.cached_bytes + self.disk.moving_bytes <= self.disk.budget_bytes);
        assert!(
            self.inflight_requests <= 1 || self.inflight_bytes <= self.inflight_bytes_max,
            "{} bytes in flight in {} requests > {}",
            self.inflight_bytes,
            self.inflight_requests,
            self.inflight_bytes_max
        );
    }

    fn mem_used(&self) -> u64 {
        self.mem.cached_bytes + self.mem.moving_bytes + self.inflight_bytes
    }

    fn add_entry(&mut self, e: Entry) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.insert_entry(id, e);
        id
    }

    /// Indexes an entry; ready entries join their tier's order and bytes.
    fn insert_entry(&mut self, id: u64, e: Entry) {
        self.by_ino
            .entry(e.ino)
            .or_default()
            .insert((e.start, e.end, id));
        match &e.data {
            Data::Mem(_) => {
                self.mem.cached_bytes += e.len();
                self.mem.order.insert(e.rank(id));
            }
            Data::Disk(_) => {
                self.disk.cached_bytes += e.len();
                self.disk.order.insert(e.rank(id));
            }
            Data::InFlight(_) | Data::Moving(_) => {}
        }
        self.entries.insert(id, e);
    }

    /// Unindexes an entry and releases its bytes (not an in-flight
    /// reservation: that goes when its fetch completes).
    fn unlink_entry(&mut self, id: u64) -> Option<Entry> {
        let e = self.entries.remove(&id)?;
        if let Some(set) = self.by_ino.get_mut(&e.ino) {
            set.remove(&(e.start, e.end, id));
            if set.is_empty() {
                self.by_ino.remove(&e.ino);
            }
        }
        let len = e.len();
        match &e.data {
            Data::Mem(_) => {
                self.mem.order.remove(e.rank(id));
                self.mem.cached_bytes -= len;
            }
            Data::Moving(_) => {
                self.mem.moving_bytes -= len;
                self.disk.moving_bytes -= len;
            }
            Data::Disk(_) => {
                self.disk.order.remove(e.rank(id));
                self.disk.cached_bytes -= len;
            }
            Data::InFlight(_) => {}
        }
        Some(e)
    }

    /// Removes an entry for good, counting it as evicted (and wasted if it
    /// was prefetched and never read).
    fn drop_entry(&mut self, id: u64) {
        let Some(e) = self.unlink_entry(id) else {
            return;
        };
        let len = e.len();
        let tier: Option<&mut TierCounters> = match &e.data {
            Data::Mem(_) => Some(&mut self.counters.mem),
            Data::Moving(_) | Data::Disk(_) => Some(&mut self.counters.disk),
            Data::InFlight(_) => None,
        };
        if let Some(t) = tier {
            t.evicted_bytes += len;
            if e.prefetched && !e.used {
                t.wasted_bytes += len;
            }
        }
        if let (Data::Disk(path), Some(_)) = (e.data, &self.disk_dir) {
            self.disk_work.push(DiskWork::Remove(path));
        }
        self.wake = true;
    }

    fn reorder(&mut self, id: u64, next_use: Option<u64>, touch: bool) {
        self.tick += 1;
        let tick = self.tick;
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let old = e.rank(id);
        if let Some(n) = next_use {
            e.next_use = n;
        }
        if touch {
            e.last_access = tick;
        }
        let new = e.rank(id);
        let order = match e.data {
            Data::Mem(_) => &mut self.mem.order,
            Data::Disk(_) => &mut self.disk.order,
            _ => return,
        };
        order.remove(old);
        order.insert(new);
    }

    /// Recomputes the next use of `ino`'s entries overlapping `[start, end)`.
    fn refresh_next_use(&mut self, ino: Ino, start: u64, end: u64) {
        let Some(set) = self.by_ino.get(&ino) else {
            return;
        };
        let ids: Vec<(u64, u64, u64)> = set
            .iter()
            .filter(|(s, e, _)| overlaps(*s, *e, start, end))
            .copied()
            .collect();
        for (s, e, id) in ids {
            let n = self.plans.next_use(ino, s, e);
            self.reorder(id, Some(n), false);
        }
    }

    /// Moves a memory entry out: to the disk tier when it has a known next
    /// use and the disk tier takes it, else drops it.
    fn evict_mem(&mut self, id: u64) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        let (len, next_use) = (e.len(), e.next_use);
        let demote = self.disk_dir.is_some()
            && next_use != NO_USE
            && len <= self.disk.budget_bytes
            && self.make_disk_room(len, next_use);
        if !demote {
            self.drop_entry(id);
            return;
        }
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        let Data::Mem(data) = &e.data else {
            return;
        };
        let data = data.clone();
        e.data = Data::Moving(data.clone());
        let rank = e.rank(id);
        self.mem.order.remove(rank);
        self.mem.cached_bytes -= len;
        self.mem.moving_bytes += len;
        self.disk.moving_bytes += len;
        self.counters.mem.evicted_bytes += len;
        if let Some(dir) = &self.disk_dir {
            let path = dir.path_of(id);
            self.disk_work.push(DiskWork::Demote { id, path, data });
        }
    }

    fn make_disk_room(&mut self, need: u64, next_use: u64) -> bool {
        let used = self.disk.cached_bytes + self.disk.moving_bytes;
        if used + need <= self.disk.budget_bytes {
            return true;
        }
        let short = used + need - self.disk.budget_bytes;
        let entries = &self.entries;
        let Some(victims) = self
            .disk
            .order
            .victims(short, next_use, |id| entries.get(&id).map_or(0, Entry::len))
        else {
            return false;
        };
        for v in victims {
            self.drop_entry(v);
        }
        self.disk.cached_bytes + self.disk.moving_bytes + need <= self.disk.budget_bytes
    }

    /// Makes `need` bytes of the memory budget free now for a range needed
    /// at `next_use`, evicting only entries needed later. False when that
    /// is not possible now (demotions under way will free room later).
    fn make_mem_room(&mut self, need: u64, next_use: u64) -> bool {
        let used = self.mem_used();
        if used + need <= self.mem.budget_bytes {
            return true;
        }
        let short = used + need - self.mem.budget_bytes;
        if self.mem.moving_bytes >= short {
            return false;
        }
        let entries = &self.entries;
        let Some(victims) = self
            .mem
            .order
            .victims(short - self.mem.moving_bytes, next_use, |id| {
                entries.get(&id).map_or(0, Entry::len)
            })
        else {
            return false;
        };
        for v in victims {
            self.evict_mem(v);
        }
        self.mem_used() + need <= self.mem.budget_bytes
    }

    /// Looks a read up. The read consumes its plan item when it is served
    /// (hit) or goes to storage (miss), not while it waits for a fetch in
    /// flight: a consumed item is the first eviction victim, and the data
    /// the reader waits for must not be evicted before it is read.
    pub fn lookup(&mut self, ino: Ino, version: u64, start: u64, end: u64, first: bool) -> Lookup {
        if first {
            self.counters.reads += 1;
        }
        let found = self.find(ino, version, start, end);
        if !matches!(found, Lookup::Wait(_)) {
            if let Some((s, e)) = self.plans.consume(ino, start, end) {
                self.refresh_next_use(ino, s, e);
                self.wake = true;
            }
        }
        found
    }

    fn find(&mut self, ino: Ino, version: u64, start: u64, end: u64) -> Lookup {
        let Some(set) = self.by_ino.get(&ino) else {
            return Lookup::Miss;
        };
        let mut pos = start;
        let mut pieces = Vec::new();
        let mut ids = Vec::new();
        let mut on_disk = false;
        while pos < end {
            let mut found = None;
            let candidates = set.range(..=(pos, u64::MAX, u64::MAX)).rev();
            for &(s, e, id) in candidates.take(COVER_CANDIDATES_MAX) {
                let Some(entry) = self.entries.get(&id) else {
                    continue;
                };
                if e <= pos {
                    continue;
                }
                let to = e.min(end);
                let piece = match &entry.data {
                    Data::InFlight(tx) if entry.version.is_none_or(|v| v == version) => {
                        return Lookup::Wait(tx.subscribe());
                    }
                    _ if entry.version != Some(version) => continue,
                    Data::InFlight(_) => continue,
                    Data::Mem(d) | Data::Moving(d) => Piece::Mem {
                        data: d.clone(),
                        from: (pos - s) as usize,
                        to: (to - s) as usize,
                    },
                    Data::Disk(path) => {
                        on_disk = true;
                        Piece::Disk {
                            path: path.clone(),
                            offset: pos - s,
                            len: (to - pos) as usize,
                        }
                    }
                };
                found = Some((id, to, piece));
                break;
            }
            let Some((id, to, piece)) = found else {
                return Lookup::Miss;
            };
            pieces.push(piece);
            ids.push(id);
            pos = to;
        }
        for id in ids {
            self.reorder(id, None, true);
            if let Some(e) = self.entries.get_mut(&id) {
                e.used = true;
            }
        }
        let tier = if on_disk {
            &mut self.counters.disk
        } else {
            &mut self.counters.mem
        };
        tier.hits += 1;
        tier.hit_bytes += end - start;
        Lookup::Hit(pieces)
    }

    pub fn note_stall(&mut self, waited: Duration, inflight: bool) {
        self.counters.stalls += 1;
        self.counters.stall_ns += waited.as_nanos() as u64;
        if inflight {
            self.counters.inflight_waits += 1;
        }
    }

    /// A missed read's data: counted, and kept when a plan needs it again
    /// (or, for files no plan names, by LRU) and room can be made now.
    pub fn fill(&mut self, ino: Ino, version: u64, start: u64, data: Vec<u8>) -> ReadBuf {
        let len = data.len() as u64;
        self.counters.misses += 1;
        self.counters.miss_bytes += len;
        if len == 0 || len > self.mem.budget_bytes / 4 {
            return ReadBuf::Owned(data);
        }
        let end = start + len;
        let next_use = self.plans.next_use(ino, start, end);
        let overlapping = self
            .by_ino
            .get(&ino)
            .is_some_and(|set| set.iter().any(|(s, e, _)| overlaps(*s, *e, start, end)));
        let planned_and_done = next_use == NO_USE && self.plans.is_planned(ino);
        if planned_and_done || overlapping || !self.make_mem_room(len, next_use) {
            return ReadBuf::Owned(data);
        }
        let data = Arc::new(data);
        self.tick += 1;
        self.add_entry(Entry {
            ino,
            start,
            end,
            version: Some(version),
            data: Data::Mem(data.clone()),
            next_use,
            last_access: self.tick,
            prefetched: false,
            used: true,
        });
        ReadBuf::Shared {
            data,
            start: 0,
            end: len as usize,
        }
    }

    /// Drops `ino`'s entries: all of them, or those of another version.
    pub fn invalidate(&mut self, ino: Ino, keep_version: Option<u64>) {
        let Some(set) = self.by_ino.get(&ino) else {
            return;
        };
        let ids: Vec<u64> = set
            .iter()
            .map(|&(_, _, id)| id)
            .filter(|id| match keep_version {
                None => true,
                Some(v) => self
                    .entries
                    .get(id)
                    .is_some_and(|e| e.version.is_some_and(|ev| ev != v)),
            })
            .collect();
        for id in ids {
            self.drop_entry(id);
        }
    }

    pub fn install_plan(&mut self, plan: Plan) -> Installed {
        let outcome = self.plans.install(plan);
        self.counters.plans_accepted += 1;
        self.last_plan_error = None;
        if matches!(outcome, Installed::New { .. }) {
            let ids: Vec<u64> = self.entries.keys().copied().collect();
            for id in ids {
                let Some(e) = self.entries.get(&id) else {
                    continue;
                };
                let n = self.plans.next_use(e.ino, e.start, e.end);
                self.reorder(id, Some(n), false);
            }
            self.wake = true;
        }
        outcome
    }

    pub fn note_plan_rejected(&mut self, err: &PlanError) {
        self.counters.plans_rejected += 1;
        self.last_plan_error = Some(err.to_string());
    }

    pub fn resolve(&mut self, rank: u32, position: u64, slot: Slot) -> bool {
        let held = self.plans.resolve(rank, position, slot);
        match slot {
            Slot::Resolved {
                ino, start, end, ..
            } if held => {
                self.refresh_next_use(ino, start, end);
            }
            Slot::Void if held => self.counters.plan_items_unresolved += 1,
            _ => {}
        }
        self.wake = true;
        held
    }
}
