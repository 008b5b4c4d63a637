//! Frozen dataset versions (docs/ARCHITECTURE.md: Metadata): the whole metadata of a frozen
//! tree, loaded from metad once, serves lookup, getattr, readdir, readlink
//! and the layouts of opens and prefetches with no metadata round trip.
//!
//! metad refuses every change inside a frozen tree, so a loaded table stays
//! true until the tree is thawed (`Unfreeze`). The client notices that by
//! rechecking the root's attributes at most every `frozen_check_ms`, on
//! access, off the critical path of all but one call per interval. While
//! metad is unreachable, tables keep serving: a frozen dataset stays
//! readable without the metadata service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use torchfs_proto::meta::{Attr, FileKind, Ino, Layout, MetaError, MetaReply, MetaRequest};

use super::cache::FrozenStats;
use super::error::{unexpected, ClientError, FrozenTableError};
use super::meta::{Meta, MetaService};

mod table;
pub(crate) use table::{FrozenTable, FrozenTables};

/// Times a table load restarts because the tree changed between pages.
const LOAD_ATTEMPTS_MAX: usize = 3;

/// The frozen-table view: answers metadata calls inside loaded frozen
/// trees and passes the rest down to metad.
pub(crate) struct FrozenState {
    tables: RwLock<FrozenTables>,
    hits: AtomicU64,
    checks: AtomicU64,
    /// How often a table's root is rechecked with metad.
    check_interval: Duration,
    /// Inodes a tree may have to be loaded (0: never load).
    entries_max: usize,
}

impl FrozenState {
    pub fn new(check_interval: Duration, entries_max: usize) -> Self {
        Self {
            tables: RwLock::default(),
            hits: AtomicU64::new(0),
            checks: AtomicU64::new(0),
            check_interval,
            entries_max,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FrozenTables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FrozenTables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn stats(&self) -> FrozenStats {
        let t = self.read();
        FrozenStats {
            tables: t.tables(),
            entries: t.entries(),
            hits: self.hits.load(Ordering::Relaxed),
            checks: self.checks.load(Ordering::Relaxed),
        }
    }
}

impl FrozenState {
    /// The table holding `ino`, after a recheck of its root when one is
    /// due. Counts a hit: the caller answers from it.
    pub async fn table<M: MetaService>(
        &self,
        meta: &Meta<M>,
        ino: Ino,
    ) -> Option<Arc<FrozenTable>> {
        let table = self.read().get(ino)?;
        let interval = self.check_interval;
        if table.claim_check(Instant::now(), interval) {
            self.checks.fetch_add(1, Ordering::Relaxed);
            match meta.call(MetaRequest::GetAttr { ino: table.root }).await {
                Ok(MetaReply::Attr(root)) if table.still_valid(&root) => {}
                Ok(_) | Err(ClientError::Meta(MetaError::Fs { .. })) => {
                    tracing::info!("frozen tree {} changed; dropping its table", table.root);
                    self.write().remove(table.root);
                    return None;
                }
                // metad unreachable: the tree cannot have changed without
                // it, and the next interval checks again.
                Err(e) => tracing::debug!("recheck frozen tree {}: {e}", table.root),
            }
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(table)
    }

    /// [`Self::table`] when no recheck of the root is due: the table
    /// holding `ino`, at once (front-ends answer from it on the thread that
    /// read the request). None when none holds it or a recheck is due
    /// (the async path does it). Counts a hit.
    pub fn table_now(&self, ino: Ino) -> Option<Arc<FrozenTable>> {
        let table = self.read().get(ino)?;
        let interval = self.check_interval;
        if table.check_due(Instant::now(), interval) {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(table)
    }

    /// A lookup of a loaded frozen root by its name in the directory above.
    pub async fn root_lookup<M: MetaService>(
        &self,
        meta: &Meta<M>,
        parent: Ino,
        name: &str,
    ) -> Option<Attr> {
        let root = self.read().root_named(parent, name)?;
        self.table(meta, root).await?.attr(root)
    }

    /// Loads the table of a frozen directory just seen in a reply from
    /// metad (`name`: the entry it was looked up by), unless one holds it
    /// already, another call is loading it, or it is too large. Failures
    /// only log: metad keeps answering.
    pub async fn note<M: MetaService>(
        &self,
        meta: &Meta<M>,
        attr: &Attr,
        name: Option<(Ino, &str)>,
    ) {
        if !attr.frozen || attr.kind != FileKind::Dir || self.entries_max == 0 {
            return;
        }
        {
            let mut t = self.write();
            if t.by_ino.contains_key(&attr.ino)
                || t.loading.contains(&attr.ino)
                || t.refused.get(&attr.ino) == Some(&attr.ctime_ns)
            {
                return;
            }
            t.loading.insert(attr.ino);
        }
        let loaded = self.load(meta, attr.ino).await;
        let mut t = self.write();
        t.loading.remove(&attr.ino);
        match loaded {
            Ok(table) => {
                tracing::info!("loaded frozen tree {} ({} inodes)", table.root, table.len());
                t.insert(
                    Arc::new(table),
                    name.map(|(parent, n)| (parent, n.to_string())),
                );
            }
            Err(ClientError::FrozenTable(e @ FrozenTableError::TooLarge { .. })) => {
                tracing::warn!("{e}; serving it from metad");
                t.refused.insert(attr.ino, attr.ctime_ns);
            }
            Err(e) => tracing::warn!("load frozen tree {}: {e}", attr.ino),
        }
    }

    /// Reads a frozen tree page by page; restarts when its root changed
    /// between pages.
    async fn load<M: MetaService>(
        &self,
        meta: &Meta<M>,
        root: Ino,
    ) -> Result<FrozenTable, ClientError> {
        let entries_max = self.entries_max;
        let mut last_change = None;
        for _ in 0..LOAD_ATTEMPTS_MAX {
            let mut entries = Vec::new();
            let mut first_root: Option<Attr> = None;
            let mut changed = false;
            loop {
                let req = MetaRequest::ReadFrozen {
                    ino: root,
                    offset: entries.len() as u64,
                    limit: 0,
                };
                let (page_root, page, more) = match meta.call(req).await? {
                    MetaReply::Frozen {
                        root,
                        entries,
                        more,
                    } => (root, entries, more),
                    other => return Err(unexpected("ReadFrozen", other)),
                };
                match &first_root {
                    Some(r) if r.ctime_ns != page_root.ctime_ns || !page_root.frozen => {
                        changed = true;
                        last_change = Some(page_root.ctime_ns);
                        break;
                    }
                    Some(_) => {}
                    None => first_root = Some(page_root),
                }
                if entries.len() + page.len() > entries_max {
                    return Err(FrozenTableError::TooLarge { root, entries_max }.into());
                }
                let empty = page.is_empty();
                entries.extend(page);
                if !more || empty {
                    break;
                }
            }
            if changed {
                continue;
            }
            let Some(root_attr) = first_root else {
                continue;
            };
            return Ok(FrozenTable::build(root_attr, entries, entries_max)?);
        }
        Err(ClientError::Meta(MetaError::Unavailable(format!(
            "frozen tree {root} kept changing while loading (root ctime {last_change:?})"
        ))))
    }

    /// Drops the table holding `ino`: metad accepted a change to it, so its
    /// tree was thawed.
    pub fn changed(&self, ino: Ino) {
        let Some(root) = self.read().get(ino).map(|t| t.root) else {
            return;
        };
        tracing::info!("frozen tree {root} changed (thawed); dropping its table");
        self.write().remove(root);
    }

    /// Whether a loaded table holds `ino` (no recheck, no hit counted).
    pub fn holds(&self, ino: Ino) -> bool {
        self.read().get(ino).is_some()
    }

    /// A file's attributes and layout: from its frozen table when one
    /// holds it, else fresh from metad.
    pub async fn layout<M: MetaService>(
        &self,
        meta: &Meta<M>,
        ino: Ino,
    ) -> Result<(Attr, Layout), ClientError> {
        if let Some(known) = self.table(meta, ino).await.and_then(|t| t.layout(ino)) {
            return Ok(known);
        }
        match meta.call(MetaRequest::GetLayout { ino }).await? {
            MetaReply::Layout { attr, layout } => Ok((attr, layout)),
            other => Err(unexpected("GetLayout", other)),
        }
    }

    /// Like [`Self::layout`], for an open: metad learns that this
    /// client holds the inode (an unlink leaves it readable here).
    pub async fn open_layout<M: MetaService>(
        &self,
        meta: &Meta<M>,
        ino: Ino,
    ) -> Result<(Attr, Layout), ClientError> {
        if let Some(known) = self.table(meta, ino).await.and_then(|t| t.layout(ino)) {
            return Ok(known);
        }
        let req = MetaRequest::Open {
            ino,
            client_id: meta.lease_id,
        };
        match meta.call(req).await? {
            MetaReply::Layout { attr, layout } => Ok((attr, layout)),
            other => Err(unexpected("Open", other)),
        }
    }
}
