//! What to fetch next and what happens when a fetch ends: the prefetcher's
//! choice along the plans (with room made first), readahead reservations,
//! completions, and demotions to the disk tier finishing.

use std::sync::Arc;

use tokio::sync::watch;
use torchfs_proto::meta::Ino;

use super::*;

impl CacheState {
    /// The next planned range to prefetch, with room made and reserved for
    /// it; None when nothing may be fetched now.
    pub fn next_job(&mut self) -> Option<Job> {
        if self.mem.budget_bytes == 0 || self.inflight_requests >= self.inflight_requests_max {
            return None;
        }
        loop {
            let mut best: Option<(u32, u64, Slot)> = None;
            for (&rank, r) in self.plans.ranks.iter_mut() {
                let limit = r.prefetch_limit(self.window_items, NEXT_PLAN_LEAD_ITEMS);
                let mut p = r.frontier.max(r.cursor);
                let mut candidate = None;
                while p < limit {
                    if r.is_consumed(p) {
                        p += 1;
                        continue;
                    }
                    let Some((plan, i)) = r.locate(p) else {
                        break;
                    };
                    match plan.slots[i] {
                        Slot::Unresolved => break,
                        Slot::Void => p += 1,
                        slot @ Slot::Resolved { ino, start, .. } => {
                            let end = start + slot.len_bytes();
                            if covered(&self.by_ino, &self.entries, ino, start, end, false) {
                                p += 1;
                                continue;
                            }
                            candidate = Some(slot);
                            break;
                        }
                    }
                }
                r.frontier = p;
                if let Some(slot) = candidate {
                    if best.is_none_or(|(_, bp, _)| p < bp) {
                        best = Some((rank, p, slot));
                    }
                }
            }
            let (rank, position, slot) = best?;
            let Slot::Resolved {
                ino, start, end, ..
            } = slot
            else {
                return None;
            };
            let len = slot.len_bytes();
            if len == 0 || len > self.mem.budget_bytes / 2 {
                // Too big to cache: leave it to the read path.
                if let Some(r) = self.plans.ranks.get_mut(&rank) {
                    r.frontier = position + 1;
                }
                continue;
            }
            if self.inflight_requests > 0 && self.inflight_bytes + len > self.inflight_bytes_max {
                return None;
            }
            let next_use = self.plans.next_use(ino, start, start + len);
            if !self.make_mem_room(len, next_use) {
                return None;
            }
            let (tx, _) = watch::channel(false);
            self.tick += 1;
            let id = self.add_entry(Entry {
                ino,
                start,
                end: start + len,
                version: None,
                data: Data::InFlight(tx),
                next_use,
                last_access: self.tick,
                prefetched: true,
                used: false,
            });
            self.reserve(len);
            self.counters.prefetch_issued += 1;
            if let Some(r) = self.plans.ranks.get_mut(&rank) {
                r.frontier = position + 1;
            }
            return Some(Job {
                id,
                ino,
                start,
                end: start + len,
                whole: end == WHOLE_FILE_END,
                reserved_bytes: len,
                readahead: false,
            });
        }
    }

    /// The inodes of the resolved plan items from each rank's prefetch
    /// frontier on, at most `ahead` items per rank: what the prefetcher
    /// fetches next (their layouts are fetched together).
    pub fn inos_ahead(&self, ahead: u64) -> Vec<Ino> {
        let mut out = Vec::new();
        for r in self.plans.ranks.values() {
            let from = r.frontier.max(r.cursor);
            for p in from..(from + ahead).min(r.end()) {
                if let Some((plan, i)) = r.locate(p) {
                    if let Slot::Resolved { ino, .. } = plan.slots[i] {
                        out.push(ino);
                    }
                }
            }
        }
        out
    }

    fn reserve(&mut self, len: u64) {
        self.inflight_bytes += len;
        self.inflight_requests += 1;
        let hw = &mut self.counters.inflight_bytes_high_water;
        *hw = (*hw).max(self.inflight_bytes);
    }

    pub fn reserve_readahead(
        &mut self,
        ino: Ino,
        version: u64,
        start: u64,
        end: u64,
    ) -> Option<Job> {
        let len = end.checked_sub(start).filter(|&l| l > 0)?;
        if self.mem.budget_bytes == 0
            || self.inflight_requests >= self.inflight_requests_max
            || self.inflight_bytes + len > self.inflight_bytes_max
            || len > self.mem.budget_bytes / 4
            || covered(&self.by_ino, &self.entries, ino, start, end, false)
        {
            return None;
        }
        let next_use = self.plans.next_use(ino, start, end);
        if !self.make_mem_room(len, next_use) {
            return None;
        }
        let (tx, _) = watch::channel(false);
        self.tick += 1;
        let id = self.add_entry(Entry {
            ino,
            start,
            end,
            version: Some(version),
            data: Data::InFlight(tx),
            next_use,
            last_access: self.tick,
            prefetched: true,
            used: false,
        });
        self.reserve(len);
        Some(Job {
            id,
            ino,
            start,
            end,
            whole: false,
            reserved_bytes: len,
            readahead: true,
        })
    }

    pub fn complete(&mut self, job: &Job, result: Result<(u64, Vec<u8>), ()>) {
        self.inflight_bytes -= job.reserved_bytes;
        self.inflight_requests -= 1;
        self.wake = true;
        let pending = self
            .entries
            .get(&job.id)
            .is_some_and(|e| matches!(e.data, Data::InFlight(_)));
        let (version, data) = match result {
            Ok(ok) if pending => ok,
            Ok((_, data)) => {
                self.counters.prefetch_discarded_bytes += data.len() as u64;
                return;
            }
            Err(()) => {
                self.counters.prefetch_failed += 1;
                self.unlink_entry(job.id);
                return;
            }
        };
        let len = data.len() as u64;
        let Some(mut e) = self.unlink_entry(job.id) else {
            return;
        };
        e.next_use = self.plans.next_use(job.ino, job.start, job.start + len);
        if len == 0 || !self.make_mem_room(len, e.next_use) {
            self.counters.prefetch_discarded_bytes += len;
            return;
        }
        e.end = e.start + len;
        e.version = Some(version);
        let old = std::mem::replace(&mut e.data, Data::Mem(Arc::new(data)));
        self.insert_entry(job.id, e);
        if job.readahead {
            self.counters.readahead_bytes += len;
        } else {
            self.counters.mem.prefetched_bytes += len;
        }
        if let Data::InFlight(tx) = old {
            let _ = tx.send(true);
        }
    }

    pub fn demoted(&mut self, id: u64, ok: bool) {
        self.wake = true;
        let moving = self
            .entries
            .get(&id)
            .is_some_and(|e| matches!(e.data, Data::Moving(_)));
        if !moving {
            // Dropped while being written: the file is garbage now.
            if let (true, Some(dir)) = (ok, &self.disk_dir) {
                self.disk_work.push(DiskWork::Remove(dir.path_of(id)));
            }
            return;
        }
        if !ok {
            self.drop_entry(id);
            return;
        }
        let (Some(mut e), Some(dir)) = (self.unlink_entry(id), &self.disk_dir) else {
            return;
        };
        e.data = Data::Disk(dir.path_of(id));
        self.counters.disk.prefetched_bytes += e.len();
        self.insert_entry(id, e);
    }
}
