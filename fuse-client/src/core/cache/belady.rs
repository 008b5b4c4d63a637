//! What the plans say about the future, and the eviction order built on it.
//!
//! [`Plans`] holds, per rank, up to two accepted plans (the epoch being read
//! and the next one) laid end to end on that rank's *virtual time*: item `i`
//! of a plan sits at position `base + i`, and the next epoch's plan starts
//! where the current one ends. A rank's cursor is the first position not
//! yet read. Ranks of a data-parallel job advance in lockstep (every step
//! waits for all of them), so positions of different ranks are compared
//! directly; a rank that starts late is aligned to the furthest cursor.
//!
//! The next use of a cached range is the smallest unread position of any
//! planned item overlapping it ([`NO_USE`] when none). [`Order`] sorts
//! cache entries by it: the victim is the entry needed furthest in the
//! future (Belady's MIN), and among entries with no known use the least
//! recently used one (so with no plan at all this is plain LRU).
//!
//! Admission ("do no harm"): a range needed at position `p` may only evict
//! entries needed after `p`; a range with no known use may only evict other
//! ranges with no known use. For unit-size items and demand fetching this
//! is exactly MIN with bypass, which the tests check against a brute-force
//! optimum.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use torchfs_proto::meta::Ino;

use super::plan::{Plan, PlanItem};

/// "Not needed by any known plan."
pub(crate) const NO_USE: u64 = u64::MAX;
/// End of a whole-file item: overlaps every range of its file.
pub(crate) const WHOLE_FILE_END: u64 = u64::MAX;
/// Plans kept per rank: the epoch being read and the next one.
const PLANS_PER_RANK_MAX: usize = 2;
/// Reads arrive out of order by up to the data loader's reorder window
/// (workers x prefetch factor x batch size). An item not read by the time
/// reads are this far past it is taken as skipped, so the cursor (and the
/// prefetch window with it) never sticks behind an item nobody reads.
pub(crate) const STRAGGLER_ITEMS: u64 = 4096;

/// What resolving an item's path gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Unresolved,
    /// Missing, not a regular file, or empty: nothing to fetch or wait for.
    Void,
    /// Bytes `[start, end)` of `ino`; `end` is [`WHOLE_FILE_END`] for a
    /// whole file, whose size is `size_bytes` as last seen.
    Resolved {
        ino: Ino,
        start: u64,
        end: u64,
        size_bytes: u64,
    },
}

impl Slot {
    /// Bytes the item occupies in the cache.
    pub fn len_bytes(&self) -> u64 {
        match *self {
            Slot::Resolved {
                start,
                end,
                size_bytes,
                ..
            } => end.min(size_bytes).saturating_sub(start),
            _ => 0,
        }
    }
}

/// A plan item as the resolver needs it: its path and byte range.
pub(crate) type ItemRef = (Arc<str>, Option<(u64, u64)>);

/// One planned read of a resolved item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Occurrence {
    pub rank: u32,
    pub position: u64,
    pub start: u64,
    pub end: u64,
}

/// Items of the next plan (the next epoch's, published with the current
/// one) the prefetcher fetches while the current plan is still being read:
/// enough for the next epoch's first batches (4 workers x 2 batches x 32
/// samples is 256) to find their data. Fetching further ahead churns the
/// cache: with only the cache as the bound, two epochs of 5,000 small
/// files with the cache at 50% read 1,123 MB from storage; with 512 items,
/// 960-1,010 MB (3 runs), and the second epoch ran 4-10% faster than with
/// no plan against 3-7%.
pub(crate) const NEXT_PLAN_LEAD_ITEMS: u64 = 512;

pub(crate) fn overlaps(a_start: u64, a_end: u64, b_start: u64, b_end: u64) -> bool {
    a_start < b_end && b_start < a_end
}

pub(crate) struct ActivePlan {
    pub epoch: u64,
    pub base: u64,
    pub digest: u64,
    pub items: Vec<PlanItem>,
    pub slots: Vec<Slot>,
}

impl ActivePlan {
    pub fn end(&self) -> u64 {
        self.base + self.items.len() as u64
    }
}

#[derive(Default)]
pub(crate) struct RankState {
    /// Oldest first.
    pub plans: VecDeque<ActivePlan>,
    /// First position not read (nor skipped).
    pub cursor: u64,
    /// Positions at or past the cursor already read (out of order).
    consumed: BTreeSet<u64>,
    /// Where the prefetcher's scan goes on from (>= cursor when used).
    pub frontier: u64,
    /// How far names have been looked up again just ahead of the reads.
    pub names_fresh_to: u64,
    /// Epoch and items of the last plan read to its end (for stats).
    pub finished: Option<(u64, u64)>,
}

impl RankState {
    pub fn is_consumed(&self, position: u64) -> bool {
        position < self.cursor || self.consumed.contains(&position)
    }

    /// The plan and index holding `position`.
    pub fn locate(&self, position: u64) -> Option<(&ActivePlan, usize)> {
        self.plans
            .iter()
            .find(|p| position >= p.base && position < p.end())
            .map(|p| (p, (position - p.base) as usize))
    }

    /// One past the furthest position read.
    pub fn head(&self) -> u64 {
        self.consumed
            .last()
            .map_or(self.cursor, |p| (p + 1).max(self.cursor))
    }

    pub fn end(&self) -> u64 {
        self.plans.back().map_or(self.cursor, |p| p.end())
    }

    /// Where the prefetcher's scan stops: `window` items past the head,
    /// and at most `next_lead` items into the plans after the one being
    /// read (see [`NEXT_PLAN_LEAD_ITEMS`]).
    pub fn prefetch_limit(&self, window: u64, next_lead: u64) -> u64 {
        let limit = (self.head() + window).min(self.end());
        match self.locate(self.cursor) {
            Some((plan, _)) => limit.min(plan.end() + next_lead),
            None => limit,
        }
    }

    /// Moves the cursor over read and void positions, and over a gap that
    /// a dropped plan left behind it (its unread items will not be read).
    fn advance(&mut self) {
        loop {
            if self.consumed.remove(&self.cursor) {
                self.cursor += 1;
                continue;
            }
            match self.locate(self.cursor) {
                Some((plan, i)) if plan.slots[i] == Slot::Void => self.cursor += 1,
                Some(_) => break,
                None => {
                    let Some(next) = self.plans.iter().map(|p| p.base).find(|b| *b > self.cursor)
                    else {
                        break;
                    };
                    self.consumed = self.consumed.split_off(&next);
                    self.cursor = next;
                }
            }
        }
        self.frontier = self.frontier.max(self.cursor);
    }
}

/// What installing a plan did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Installed {
    /// The same plan (rank, epoch, items) was already held.
    Unchanged,
    /// Accepted at `base`; `dropped` plans went (finished or superseded).
    New { base: u64, dropped: usize },
}

/// Path resolutions remembered at most (then the memo starts over).
const PATH_MEMO_MAX: usize = 1 << 22;

#[derive(Default)]
pub(crate) struct Plans {
    pub ranks: BTreeMap<u32, RankState>,
    by_ino: HashMap<Ino, Vec<Occurrence>>,
    /// Path -> (inode, size) as last resolved or looked up, so that the
    /// next epoch's plan (the same files in another order) is resolved
    /// without a metadata round trip per item. A stale resolution costs a
    /// wasted prefetch at most, never wrong data (entries are keyed by
    /// inode and layout version); the lookups made just ahead of the
    /// reads keep it current.
    path_memo: HashMap<Arc<str>, (Ino, u64)>,
}

impl Plans {
    /// Accepts a plan for (rank, epoch). It replaces a different plan of the
    /// same or a later epoch of that rank, and plans older than the epoch
    /// before it; it follows the previous epoch's plan when that is held.
    pub fn install(&mut self, plan: Plan) -> Installed {
        let leader = self.ranks.values().map(|r| r.cursor).max().unwrap_or(0);
        let rank_state = self.ranks.entry(plan.rank).or_default();
        if rank_state.plans.is_empty() && rank_state.cursor < leader {
            rank_state.cursor = leader;
            rank_state.frontier = leader;
        }
        if rank_state
            .plans
            .iter()
            .any(|p| p.epoch == plan.epoch && p.digest == plan.digest)
        {
            return Installed::Unchanged;
        }
        let mut dropped = Vec::new();
        let mut kept = VecDeque::new();
        for p in rank_state.plans.drain(..) {
            if p.epoch >= plan.epoch || p.epoch + 1 < plan.epoch {
                dropped.push(p);
            } else {
                kept.push_back(p);
            }
        }
        while kept.len() >= PLANS_PER_RANK_MAX {
            dropped.extend(kept.pop_front());
        }
        let base = match kept.back() {
            Some(prev) => prev.end(),
            None => rank_state.cursor,
        };
        rank_state.plans = kept;
        if rank_state.plans.is_empty() {
            rank_state.cursor = base;
            rank_state.consumed.clear();
        }
        let len = plan.items.len();
        rank_state.plans.push_back(ActivePlan {
            epoch: plan.epoch,
            base,
            digest: plan.digest,
            items: plan.items,
            slots: vec![Slot::Unresolved; len],
        });
        // A dropped plan may leave unread positions behind the kept ones.
        rank_state.advance();
        rank_state.frontier = rank_state.cursor;
        let rank = plan.rank;
        let n = dropped.len();
        for p in dropped {
            self.forget(rank, &p);
        }
        Installed::New { base, dropped: n }
    }

    fn forget(&mut self, rank: u32, plan: &ActivePlan) {
        for slot in &plan.slots {
            if let Slot::Resolved { ino, .. } = slot {
                if let Some(occ) = self.by_ino.get_mut(ino) {
                    occ.retain(|o| {
                        o.rank != rank || o.position < plan.base || o.position >= plan.end()
                    });
                    if occ.is_empty() {
                        self.by_ino.remove(ino);
                    }
                }
            }
        }
    }

    /// The item path at a position, if that plan is still held.
    pub fn path_at(&self, rank: u32, position: u64) -> Option<ItemRef> {
        let (plan, i) = self.ranks.get(&rank)?.locate(position)?;
        let item = &plan.items[i];
        Some((
            item.path.clone(),
            item.range.map(|r| (r.offset, r.offset + r.len_bytes)),
        ))
    }

    /// Paths of the items in `[head, head + ahead)` of every rank not yet
    /// handed out by an earlier call: their names are about to be opened.
    pub fn names_ahead(&mut self, ahead: u64) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for r in self.ranks.values_mut() {
            let from = r.names_fresh_to.max(r.head());
            let to = (r.head() + ahead).min(r.end());
            for p in from..to {
                if let Some((plan, i)) = r.locate(p) {
                    out.push(plan.items[i].path.clone());
                }
            }
            r.names_fresh_to = r.names_fresh_to.max(to);
        }
        out.dedup();
        out
    }

    pub fn known_path(&self, path: &str) -> Option<(Ino, u64)> {
        self.path_memo.get(path).copied()
    }

    pub fn note_path(&mut self, path: Arc<str>, ino: Ino, size_bytes: u64) {
        if self.path_memo.len() >= PATH_MEMO_MAX {
            self.path_memo.clear();
        }
        self.path_memo.insert(path, (ino, size_bytes));
    }

    /// Records the resolution of the item at `position`; false when that
    /// plan is gone (replaced meanwhile).
    pub fn resolve(&mut self, rank: u32, position: u64, slot: Slot) -> bool {
        let Some(state) = self.ranks.get_mut(&rank) else {
            return false;
        };
        let Some(plan) = state
            .plans
            .iter_mut()
            .find(|p| position >= p.base && position < p.end())
        else {
            return false;
        };
        let i = (position - plan.base) as usize;
        if plan.slots[i] != Slot::Unresolved {
            return true;
        }
        plan.slots[i] = slot;
        if let Slot::Resolved {
            ino, size_bytes, ..
        } = slot
        {
            let path = plan.items[i].path.clone();
            if self.path_memo.len() >= PATH_MEMO_MAX {
                self.path_memo.clear();
            }
            self.path_memo.insert(path, (ino, size_bytes));
        }
        if let Slot::Resolved {
            ino, start, end, ..
        } = slot
        {
            self.by_ino.entry(ino).or_default().push(Occurrence {
                rank,
                position,
                start,
                end,
            });
        }
        state.advance();
        true
    }

    fn consumed(&self, o: &Occurrence) -> bool {
        self.ranks
            .get(&o.rank)
            .is_none_or(|r| r.is_consumed(o.position))
    }

    /// The next unread position at which a plan reads any of `[start, end)`
    /// of `ino`.
    pub fn next_use(&self, ino: Ino, start: u64, end: u64) -> u64 {
        self.by_ino.get(&ino).map_or(NO_USE, |occ| {
            occ.iter()
                .filter(|o| overlaps(o.start, o.end, start, end) && !self.consumed(o))
                .map(|o| o.position)
                .min()
                .unwrap_or(NO_USE)
        })
    }

    /// Whether a plan reads byte ranges of `ino` (not the whole file).
    pub fn has_ranges(&self, ino: Ino) -> bool {
        self.by_ino
            .get(&ino)
            .is_some_and(|occ| occ.iter().any(|o| o.end != WHOLE_FILE_END))
    }

    pub fn is_planned(&self, ino: Ino) -> bool {
        self.by_ino.contains_key(&ino)
    }

    /// A read of `[start, end)` of `ino` consumes the earliest unread
    /// planned item that begins inside it (an item read in several pieces
    /// is consumed by the piece holding its first byte), if that item is
    /// within reach of its rank's cursor. Returns the item's range.
    pub fn consume(&mut self, ino: Ino, start: u64, end: u64) -> Option<(u64, u64)> {
        let occ = self.by_ino.get(&ino)?;
        let found = occ
            .iter()
            .filter(|o| o.start >= start && o.start < end.max(start + 1))
            .filter(|o| {
                self.ranks.get(&o.rank).is_some_and(|r| {
                    !r.is_consumed(o.position)
                        && o.position < r.head().max(r.cursor) + 2 * STRAGGLER_ITEMS
                })
            })
            .min_by_key(|o| o.position)
            .copied()?;
        let rank = self.ranks.get_mut(&found.rank)?;
        rank.consumed.insert(found.position);
        if found.position > rank.cursor + STRAGGLER_ITEMS {
            // Everything this far behind was skipped (or served without
            // reaching this client, e.g. from the kernel's page cache).
            let floor = found.position - STRAGGLER_ITEMS;
            rank.consumed = rank.consumed.split_off(&floor);
            rank.cursor = floor;
        }
        rank.advance();
        self.drop_finished(found.rank);
        Some((found.start, found.end))
    }

    /// Marks a whole-file read that bypasses this client's read path (a
    /// passthrough open) as done.
    pub fn consume_whole(&mut self, ino: Ino) -> bool {
        self.consume(ino, 0, 1).is_some()
    }

    /// Drops plans the rank's cursor has passed.
    fn drop_finished(&mut self, rank: u32) {
        let Some(state) = self.ranks.get_mut(&rank) else {
            return;
        };
        let mut done = Vec::new();
        while state.plans.front().is_some_and(|p| p.end() <= state.cursor) {
            if let Some(p) = state.plans.pop_front() {
                state.finished = Some((p.epoch, p.items.len() as u64));
                done.push(p);
            }
        }
        for p in done {
            self.forget(rank, &p);
        }
    }
}

/// Cache entries in eviction order: the last is the next victim.
#[derive(Default)]
pub(crate) struct Order {
    set: BTreeSet<(u64, Reverse<u64>, u64)>,
}

/// What the eviction order needs to know of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rank {
    pub next_use: u64,
    pub last_access: u64,
    pub id: u64,
}

impl Order {
    pub fn insert(&mut self, r: Rank) {
        self.set.insert((r.next_use, Reverse(r.last_access), r.id));
    }

    pub fn remove(&mut self, r: Rank) {
        self.set.remove(&(r.next_use, Reverse(r.last_access), r.id));
    }

    /// Victims to free `need` bytes for a range needed at `next_use`, in
    /// eviction order, or None when only entries needed no later than it
    /// could be evicted. `size` gives each entry's bytes.
    pub fn victims(&self, need: u64, next_use: u64, size: impl Fn(u64) -> u64) -> Option<Vec<u64>> {
        let mut freed = 0;
        let mut out = Vec::new();
        for &(use_at, _, id) in self.set.iter().rev() {
            if freed >= need {
                break;
            }
            let evictable = use_at > next_use || (use_at == NO_USE && next_use == NO_USE);
            if !evictable {
                return None;
            }
            freed += size(id);
            out.push(id);
        }
        (freed >= need).then_some(out)
    }
}

#[cfg(test)]
mod tests;
