//! What the cache tells outside its own reads: passthrough files for
//! opens, and the stats snapshot.

use std::path::PathBuf;

use torchfs_proto::meta::Ino;

use super::*;

impl CacheState {
    pub fn backing_path(&mut self, ino: Ino, version: u64, size_bytes: u64) -> Option<PathBuf> {
        let set = self.by_ino.get(&ino)?;
        let (id, path) = set.iter().find_map(|&(s, e, id)| {
            let entry = self.entries.get(&id)?;
            match &entry.data {
                Data::Disk(path) if s == 0 && e >= size_bytes && entry.version == Some(version) => {
                    Some((id, path.clone()))
                }
                _ => None,
            }
        })?;
        self.reorder(id, None, true);
        if let Some(e) = self.entries.get_mut(&id) {
            e.used = true;
        }
        self.counters.reads += 1;
        self.counters.disk.hits += 1;
        self.counters.disk.hit_bytes += size_bytes;
        self.counters.passthrough_opens += 1;
        if self.plans.consume_whole(ino) {
            self.refresh_next_use(ino, 0, size_bytes);
            self.wake = true;
        }
        Some(path)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut mem_entries = 0;
        let mut disk_entries = 0;
        for e in self.entries.values() {
            match e.data {
                Data::Mem(_) | Data::Moving(_) => mem_entries += 1,
                Data::Disk(_) => disk_entries += 1,
                Data::InFlight(_) => {}
            }
        }
        let ranks = self
            .plans
            .ranks
            .iter()
            .map(|(&rank, r)| {
                let mut g = RankGauges {
                    rank,
                    issued_ahead_items: r.frontier.saturating_sub(r.cursor),
                    ..RankGauges::default()
                };
                if let (None, Some((epoch, items))) = (r.plans.front(), r.finished) {
                    (g.epoch, g.items, g.resolved, g.position) = (Some(epoch), items, items, items);
                }
                if let Some(cur) = r.plans.front() {
                    g.epoch = Some(cur.epoch);
                    g.items = cur.items.len() as u64;
                    g.resolved =
                        cur.slots.iter().filter(|s| **s != Slot::Unresolved).count() as u64;
                    g.position = r.cursor.saturating_sub(cur.base).min(g.items);
                }
                g.next_epoch = r.plans.get(1).map(|p| p.epoch);
                let limit = (r.cursor + self.window_items).min(r.end());
                for p in r.cursor..limit {
                    if r.is_consumed(p) {
                        continue;
                    }
                    match r.locate(p).map(|(plan, i)| plan.slots[i]) {
                        Some(Slot::Void) => continue,
                        Some(slot @ Slot::Resolved { ino, start, .. }) => {
                            let end = start + slot.len_bytes();
                            if !covered(&self.by_ino, &self.entries, ino, start, end, true) {
                                break;
                            }
                            g.lead_items += 1;
                            g.lead_bytes += slot.len_bytes();
                        }
                        _ => break,
                    }
                }
                g
            })
            .collect();
        Snapshot {
            counters: self.counters,
            mem: TierGauges {
                enabled: self.mem.budget_bytes > 0,
                budget_bytes: self.mem.budget_bytes,
                cached_bytes: self.mem.cached_bytes + self.mem.moving_bytes,
                entries: mem_entries,
            },
            disk: TierGauges {
                enabled: self.disk_dir.is_some(),
                budget_bytes: self.disk.budget_bytes,
                cached_bytes: self.disk.cached_bytes,
                entries: disk_entries,
            },
            inflight_bytes: self.inflight_bytes,
            inflight_bytes_max: self.inflight_bytes_max,
            inflight_requests: self.inflight_requests,
            window_items: self.window_items,
            storage_read_bytes: 0,
            degraded_writes: 0,
            transport: Default::default(),
            meta_requests: 0,
            frozen: Default::default(),
            ranks,
            last_plan_error: self.last_plan_error.clone(),
        }
    }
}
