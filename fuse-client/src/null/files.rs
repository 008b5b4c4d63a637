//! The null namespace's files: opens and layouts, leases and the orphans
//! they keep, setattr (truncation) and stripe commits over their bases.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use torchfs_proto::meta::{
    errno, FileLayout, Garbage, Ino, Layout, MetaError, MetaReply, SetAttr, SetTime, StripeBase,
    StripeEntry,
};

use super::namespace::{Body, Lease, Namespace, Node, LEASE_MS};

impl Namespace {
    /// Open (and CreateOpen): the file's attributes and layout; client
    /// `client_id` holds it open from now on, until a keep-alive of its
    /// leaves it out or its lease ends.
    pub(super) fn open(
        &mut self,
        ino: Ino,
        client_id: u64,
        now: Instant,
    ) -> Result<MetaReply, MetaError> {
        let reply = self.layout_reply(ino)?;
        let lease = self.leases.entry(client_id).or_insert_with(|| Lease {
            seen: now,
            open: HashSet::new(),
        });
        lease.seen = now;
        lease.open.insert(ino);
        Ok(reply)
    }

    /// GetLayouts: those of `inos` that exist and are regular files.
    pub(super) fn layouts(&self, inos: &[Ino]) -> Vec<FileLayout> {
        inos.iter()
            .filter_map(|ino| match self.nodes.get(ino)? {
                Node {
                    attr,
                    body: Body::File(layout),
                } => Some(FileLayout {
                    attr: attr.clone(),
                    layout: layout.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// KeepAlive: client `client_id` holds `open` now; the garbage to hand
    /// it (orphans nobody holds open any more).
    pub(super) fn keep_alive(
        &mut self,
        client_id: u64,
        open: Vec<Ino>,
        now: Instant,
    ) -> Vec<Garbage> {
        self.leases.insert(
            client_id,
            Lease {
                seen: now,
                open: open.into_iter().collect(),
            },
        );
        self.reclaim(now)
    }

    pub(super) fn layout_reply(&self, ino: Ino) -> Result<MetaReply, MetaError> {
        let node = self.node(ino)?;
        let layout = match &node.body {
            Body::File(layout) => layout.clone(),
            Body::Dir { .. } => Layout {
                config: self.map.config,
                stripes: Vec::new(),
            },
        };
        Ok(MetaReply::Layout {
            attr: node.attr.clone(),
            layout,
        })
    }

    /// A file lost a name: with none left it goes, unless a client holds it
    /// open (then it is an orphan until no client does). The stripes it
    /// freed.
    pub(super) fn drop_link(&mut self, ino: Ino, now: Instant, now_ns: i64) -> Vec<StripeEntry> {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return Vec::new();
        };
        node.attr.nlink = node.attr.nlink.saturating_sub(1);
        node.attr.ctime_ns = now_ns;
        if node.attr.nlink > 0 {
            return Vec::new();
        }
        if self.is_open(ino, now) {
            self.orphans.insert(ino);
            return Vec::new();
        }
        self.locks.drop_inode(ino);
        match self.nodes.remove(&ino).map(|n| n.body) {
            Some(Body::File(layout)) => layout.stripes,
            _ => Vec::new(),
        }
    }

    pub(super) fn lease_live(&self, lease: &Lease, now: Instant) -> bool {
        now.duration_since(lease.seen) < Duration::from_millis(LEASE_MS)
    }

    pub(super) fn is_open(&self, ino: Ino, now: Instant) -> bool {
        self.leases
            .values()
            .any(|l| self.lease_live(l, now) && l.open.contains(&ino))
    }

    /// Forgets clients whose lease ended (and their locks), and hands out
    /// the orphans no client holds open any more: the caller deletes their
    /// fragments.
    pub(super) fn reclaim(&mut self, now: Instant) -> Vec<Garbage> {
        let ended: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| !self.lease_live(l, now))
            .map(|(&id, _)| id)
            .collect();
        for id in &ended {
            self.leases.remove(id);
        }
        self.locks.release_clients(&ended);
        let closed: Vec<Ino> = self
            .orphans
            .iter()
            .copied()
            .filter(|&ino| !self.is_open(ino, now))
            .collect();
        closed
            .into_iter()
            .filter_map(|ino| {
                self.orphans.remove(&ino);
                self.locks.drop_inode(ino);
                match self.nodes.remove(&ino)?.body {
                    Body::File(layout) => Some(Garbage { ino, layout }),
                    Body::Dir { .. } => None,
                }
            })
            .collect()
    }

    pub(super) fn setattr(
        &mut self,
        ino: Ino,
        set: SetAttr,
        now_ns: i64,
    ) -> Result<MetaReply, MetaError> {
        let node = self
            .nodes
            .get_mut(&ino)
            .ok_or_else(|| MetaError::fs(errno::ENOENT, format!("no inode {ino}")))?;
        let mut freed = Vec::new();
        if let Some(size) = set.size {
            let Body::File(layout) = &mut node.body else {
                return Err(MetaError::fs(
                    errno::EISDIR,
                    format!("inode {ino} is a directory"),
                ));
            };
            let stripe_bytes = layout.config.stripe_bytes();
            let (kept, dropped) = std::mem::take(&mut layout.stripes)
                .into_iter()
                .partition::<Vec<_>, _>(|e| e.stripe.saturating_mul(stripe_bytes) < size);
            layout.stripes = kept;
            for e in &mut layout.stripes {
                let left = size - e.stripe * stripe_bytes;
                e.valid_bytes = e.valid_bytes.min(u32::try_from(left).unwrap_or(u32::MAX));
            }
            freed = dropped;
            node.attr.size = size;
            node.attr.mtime_ns = now_ns;
        }
        if let Some(mode) = set.mode {
            node.attr.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            node.attr.uid = uid;
        }
        if let Some(gid) = set.gid {
            node.attr.gid = gid;
        }
        let at = |t: SetTime| match t {
            SetTime::Now => now_ns,
            SetTime::Ns(ns) => ns,
        };
        if let Some(t) = set.atime {
            node.attr.atime_ns = at(t);
        }
        if let Some(t) = set.mtime {
            node.attr.mtime_ns = at(t);
        }
        node.attr.ctime_ns = now_ns;
        Ok(MetaReply::AttrFreed {
            attr: node.attr.clone(),
            freed,
        })
    }

    /// CommitStripes: the stripes replace theirs if each is still at its
    /// base, else nothing changes and the current entries come back.
    pub(super) fn commit(
        &mut self,
        ino: Ino,
        size_at_least: u64,
        stripes: Vec<StripeEntry>,
        bases: Vec<StripeBase>,
        now_ns: i64,
    ) -> Result<MetaReply, MetaError> {
        if stripes.len() != bases.len() {
            return Err(MetaError::Invalid(format!(
                "{} stripes with {} bases",
                stripes.len(),
                bases.len()
            )));
        }
        let node = self
            .nodes
            .get_mut(&ino)
            .ok_or_else(|| MetaError::fs(errno::ENOENT, format!("no inode {ino}")))?;
        let Body::File(layout) = &mut node.body else {
            return Err(MetaError::fs(
                errno::EISDIR,
                format!("inode {ino} is a directory"),
            ));
        };
        let current = |s: u64| layout.stripes.iter().find(|e| e.stripe == s);
        let moved = stripes
            .iter()
            .zip(&bases)
            .any(|(e, base)| StripeBase::of(current(e.stripe)) != *base);
        if moved {
            let now = stripes
                .iter()
                .filter_map(|e| current(e.stripe).cloned())
                .collect();
            return Ok(MetaReply::Conflict {
                attr: node.attr.clone(),
                stripes: now,
            });
        }
        let mut replaced = Vec::new();
        for e in stripes {
            match layout.stripes.binary_search_by_key(&e.stripe, |o| o.stripe) {
                Ok(i) => replaced.push(std::mem::replace(&mut layout.stripes[i], e)),
                Err(i) => layout.stripes.insert(i, e),
            }
        }
        node.attr.size = node.attr.size.max(size_at_least);
        node.attr.mtime_ns = now_ns;
        node.attr.ctime_ns = now_ns;
        Ok(MetaReply::Committed {
            attr: node.attr.clone(),
            replaced,
        })
    }
}
