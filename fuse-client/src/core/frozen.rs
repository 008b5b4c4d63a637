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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use torchfs_proto::meta::{
    errno, Attr, DirEntry, FileKind, FrozenBody, FrozenEntry, Ino, Layout, MetaError, MetaReply,
    MetaRequest,
};

use super::cache::FrozenStats;
use super::error::{unexpected, ClientError, FrozenTableError};
use super::meta::{Meta, MetaService};

/// Times a table load restarts because the tree changed between pages.
const LOAD_ATTEMPTS_MAX: usize = 3;

struct FrozenInode {
    attr: Attr,
    body: FrozenBody,
}

/// One frozen tree's metadata, immutable once built.
pub(crate) struct FrozenTable {
    root: Ino,
    /// The root's ctime when loaded: metad bumps it on unfreeze and freeze.
    root_ctime_ns: i64,
    inodes: HashMap<Ino, FrozenInode>,
    /// Each directory's entries, in name order (readdir pages through them).
    dirs: HashMap<Ino, BTreeMap<String, Ino>>,
    /// When the root was last rechecked with metad (or the load), as
    /// milliseconds since `epoch` so that racing readers claim it atomically.
    checked_ms: AtomicU64,
    epoch: Instant,
}

impl FrozenTable {
    /// Builds a table from the root's attributes and its entries in
    /// depth-first order, as `ReadFrozen` pages list them.
    pub fn build(
        root: Attr,
        entries: impl IntoIterator<Item = FrozenEntry>,
        entries_max: usize,
    ) -> Result<Self, FrozenTableError> {
        let root_ino = root.ino;
        let mut dirs: HashMap<Ino, BTreeMap<String, Ino>> =
            HashMap::from([(root_ino, BTreeMap::new())]);
        let mut inodes = HashMap::from([(
            root_ino,
            FrozenInode {
                attr: root.clone(),
                body: FrozenBody::Dir,
            },
        )]);
        for (n, e) in entries.into_iter().enumerate() {
            if n >= entries_max {
                return Err(FrozenTableError::TooLarge {
                    root: root_ino,
                    entries_max,
                });
            }
            if !e.attr.frozen {
                return Err(FrozenTableError::NotFrozen {
                    root: root_ino,
                    ino: e.attr.ino,
                    name: e.name,
                });
            }
            let Some(parent) = dirs.get_mut(&e.parent) else {
                return Err(FrozenTableError::Orphan {
                    ino: e.attr.ino,
                    parent: e.parent,
                    name: e.name,
                });
            };
            parent.insert(e.name, e.attr.ino);
            if e.attr.kind == FileKind::Dir {
                dirs.entry(e.attr.ino).or_default();
            }
            inodes.insert(
                e.attr.ino,
                FrozenInode {
                    attr: e.attr,
                    body: e.body,
                },
            );
        }
        Ok(Self {
            root: root_ino,
            root_ctime_ns: root.ctime_ns,
            inodes,
            dirs,
            checked_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// Inodes in the table, the root included.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    pub fn attr(&self, ino: Ino) -> Option<Attr> {
        self.inodes.get(&ino).map(|i| i.attr.clone())
    }

    /// A name in a directory of the table: None when `parent` is not one
    /// of its directories, else the answer (ENOENT is authoritative).
    pub fn lookup(&self, parent: Ino, name: &str) -> Option<Result<Attr, MetaError>> {
        let entries = self.dirs.get(&parent)?;
        Some(match entries.get(name).and_then(|ino| self.attr(*ino)) {
            Some(attr) => Ok(attr),
            None => Err(MetaError::fs(
                errno::ENOENT,
                format!("no entry {name:?} in frozen directory {parent}"),
            )),
        })
    }

    /// Up to `limit` (0: all) entries of a directory after `after`.
    pub fn readdir(&self, ino: Ino, after: &str, limit: u32) -> Option<Vec<DirEntry>> {
        let entries = self.dirs.get(&ino)?;
        let start = match after {
            "" => Bound::Unbounded,
            a => Bound::Excluded(a),
        };
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        Some(
            entries
                .range::<str, _>((start, Bound::Unbounded))
                .take(limit)
                .filter_map(|(name, ino)| {
                    let kind = self.inodes.get(ino)?.attr.kind;
                    Some(DirEntry {
                        name: name.clone(),
                        ino: *ino,
                        kind,
                    })
                })
                .collect(),
        )
    }

    /// A file's attributes and layout.
    pub fn layout(&self, ino: Ino) -> Option<(Attr, Layout)> {
        match self.inodes.get(&ino)? {
            FrozenInode {
                attr,
                body: FrozenBody::File(layout),
            } => Some((attr.clone(), layout.clone())),
            _ => None,
        }
    }

    pub fn target(&self, ino: Ino) -> Option<String> {
        match &self.inodes.get(&ino)?.body {
            FrozenBody::Symlink(t) => Some(t.clone()),
            _ => None,
        }
    }

    /// Claims the recheck when the last one is older than `interval`: true
    /// for exactly one caller per interval.
    fn claim_check(&self, now: Instant, interval: Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        self.check_due(now, interval)
            && self
                .checked_ms
                .compare_exchange(last, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the root is due a recheck (`interval` since the last).
    fn check_due(&self, now: Instant, interval: Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= interval.as_millis() as u64
    }

    /// Whether metad's current attributes of the root say the tree is
    /// unchanged since the load.
    fn still_valid(&self, root_now: &Attr) -> bool {
        root_now.ino == self.root && root_now.frozen && root_now.ctime_ns == self.root_ctime_ns
    }
}

/// The loaded tables, found by any inode they hold.
#[derive(Default)]
pub(crate) struct FrozenTables {
    by_ino: HashMap<Ino, Arc<FrozenTable>>,
    /// Roots of the loaded tables.
    roots: HashSet<Ino>,
    /// The names of loaded roots, by parent directory: metad refuses to
    /// unlink or rename a frozen inode, so a root's name is as stable as
    /// its contents.
    root_names: HashMap<Ino, Vec<(String, Ino)>>,
    /// Roots being loaded now (others go to metad meanwhile).
    loading: HashSet<Ino>,
    /// Roots too large to load, with their ctime then (not retried until
    /// the tree changes).
    refused: HashMap<Ino, i64>,
}

impl FrozenTables {
    pub fn get(&self, ino: Ino) -> Option<Arc<FrozenTable>> {
        self.by_ino.get(&ino).cloned()
    }

    /// Inodes held by all tables.
    pub fn entries(&self) -> usize {
        self.roots
            .iter()
            .filter_map(|r| self.by_ino.get(r))
            .map(|t| t.len())
            .sum()
    }

    pub fn tables(&self) -> usize {
        self.roots.len()
    }

    /// The root a name in a (not frozen) directory points to, if loaded.
    pub fn root_named(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.root_names
            .get(&parent)?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, root)| *root)
    }

    /// Installs a table, replacing any table it covers (a subtree loaded
    /// before its ancestor was seen frozen). `name` is the entry that names
    /// its root, when known.
    fn insert(&mut self, table: Arc<FrozenTable>, name: Option<(Ino, String)>) {
        for covered in self
            .roots
            .iter()
            .copied()
            .filter(|r| table.inodes.contains_key(r))
            .collect::<Vec<_>>()
        {
            self.remove(covered);
        }
        for ino in table.inodes.keys() {
            self.by_ino.insert(*ino, table.clone());
        }
        if let Some((parent, name)) = name {
            self.root_names
                .entry(parent)
                .or_default()
                .push((name, table.root));
        }
        self.roots.insert(table.root);
    }

    /// Drops the table rooted at `root` (it changed or vanished).
    fn remove(&mut self, root: Ino) {
        self.by_ino.retain(|_, t| t.root != root);
        for names in self.root_names.values_mut() {
            names.retain(|(_, r)| *r != root);
        }
        self.root_names.retain(|_, names| !names.is_empty());
        self.roots.remove(&root);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use torchfs_proto::meta::StripeConfig;

    fn attr(ino: Ino, kind: FileKind) -> Attr {
        Attr {
            ino,
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 10,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 77,
            rdev: 0,
            has_xattrs: false,
            frozen: true,
        }
    }

    fn entry(parent: Ino, name: &str, ino: Ino, kind: FileKind) -> FrozenEntry {
        FrozenEntry {
            parent,
            name: name.into(),
            attr: attr(ino, kind),
            body: match kind {
                FileKind::File => FrozenBody::File(Layout {
                    config: StripeConfig::DEFAULT,
                    stripes: vec![],
                }),
                FileKind::Dir => FrozenBody::Dir,
                FileKind::Symlink => FrozenBody::Symlink("t".into()),
                _ => FrozenBody::Node,
            },
        }
    }

    /// /r(10): a(11) d(12)/ [ b(13) c(14 -> t) ]
    fn tree() -> Vec<FrozenEntry> {
        vec![
            entry(10, "a", 11, FileKind::File),
            entry(10, "d", 12, FileKind::Dir),
            entry(12, "b", 13, FileKind::File),
            entry(12, "c", 14, FileKind::Symlink),
        ]
    }

    #[test]
    fn table_answers_lookups_readdir_layouts_and_links() {
        let t = FrozenTable::build(attr(10, FileKind::Dir), tree(), 100).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t.lookup(10, "d").unwrap().unwrap().ino, 12);
        assert_eq!(t.lookup(12, "b").unwrap().unwrap().ino, 13);
        let missing = t.lookup(12, "zz").unwrap().unwrap_err();
        assert_eq!(missing.errno(), errno::ENOENT);
        assert!(t.lookup(11, "x").is_none(), "a file is no directory");
        assert!(t.lookup(99, "x").is_none(), "not in the table");
        let names = |v: Vec<DirEntry>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        assert_eq!(names(t.readdir(12, "", 0).unwrap()), ["b", "c"]);
        assert_eq!(names(t.readdir(12, "b", 0).unwrap()), ["c"]);
        assert_eq!(names(t.readdir(10, "", 1).unwrap()), ["a"]);
        assert!(t.layout(13).is_some() && t.layout(12).is_none());
        assert_eq!(t.target(14).as_deref(), Some("t"));
        assert_eq!(t.attr(10).unwrap().kind, FileKind::Dir);
    }

    #[test]
    fn malformed_pages_make_no_table() {
        let mut orphan = tree();
        orphan.swap(1, 2); // b listed before its directory d
        assert!(matches!(
            FrozenTable::build(attr(10, FileKind::Dir), orphan, 100),
            Err(FrozenTableError::Orphan { ino: 13, .. })
        ));
        let mut thawed = tree();
        thawed[3].attr.frozen = false;
        assert!(matches!(
            FrozenTable::build(attr(10, FileKind::Dir), thawed, 100),
            Err(FrozenTableError::NotFrozen { ino: 14, .. })
        ));
        assert!(matches!(
            FrozenTable::build(attr(10, FileKind::Dir), tree(), 3),
            Err(FrozenTableError::TooLarge { entries_max: 3, .. })
        ));
    }

    #[test]
    fn one_recheck_per_interval() {
        let t = FrozenTable::build(attr(10, FileKind::Dir), tree(), 100).unwrap();
        let interval = Duration::from_millis(1000);
        let t0 = t.epoch + Duration::from_secs(5);
        assert!(t.claim_check(t0, interval));
        assert!(!t.claim_check(t0, interval), "claimed once");
        assert!(!t.claim_check(t0 + Duration::from_millis(999), interval));
        assert!(t.claim_check(t0 + Duration::from_millis(1000), interval));
        let mut root = attr(10, FileKind::Dir);
        assert!(t.still_valid(&root));
        root.ctime_ns += 1;
        assert!(!t.still_valid(&root));
        root.ctime_ns -= 1;
        root.frozen = false;
        assert!(!t.still_valid(&root));
    }

    #[test]
    fn an_ancestor_table_replaces_a_subtree_table() {
        let mut tables = FrozenTables::default();
        let sub = FrozenTable::build(
            attr(12, FileKind::Dir),
            vec![entry(12, "b", 13, FileKind::File)],
            100,
        )
        .unwrap();
        tables.insert(Arc::new(sub), None);
        assert_eq!((tables.tables(), tables.entries()), (1, 2));
        let whole = FrozenTable::build(attr(10, FileKind::Dir), tree(), 100).unwrap();
        tables.insert(Arc::new(whole), Some((1, "ds".into())));
        assert_eq!((tables.tables(), tables.entries()), (1, 5));
        assert_eq!(tables.get(13).unwrap().root, 10);
        assert_eq!(tables.root_named(1, "ds"), Some(10));
        assert_eq!(tables.root_named(1, "other"), None);
        tables.remove(10);
        assert_eq!(tables.root_named(1, "ds"), None);
        assert!(tables.get(13).is_none() && tables.get(10).is_none());
        assert_eq!(tables.entries(), 0);
    }
}
