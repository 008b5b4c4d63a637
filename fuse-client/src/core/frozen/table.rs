//! A frozen tree's table (every inode, name, attribute, layout and link
//! target of the tree, built from metad's pages), and the set of loaded
//! tables, found by any inode they hold.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use torchfs_proto::meta::{
    errno, Attr, DirEntry, FileKind, FrozenBody, FrozenEntry, Ino, Layout, MetaError,
};

use crate::core::error::FrozenTableError;

struct FrozenInode {
    attr: Attr,
    body: FrozenBody,
}

/// One frozen tree's metadata, immutable once built.
pub(crate) struct FrozenTable {
    pub(super) root: Ino,
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
    pub(super) fn claim_check(&self, now: Instant, interval: Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        self.check_due(now, interval)
            && self
                .checked_ms
                .compare_exchange(last, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether the root is due a recheck (`interval` since the last).
    pub(super) fn check_due(&self, now: Instant, interval: Duration) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let last = self.checked_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= interval.as_millis() as u64
    }

    /// Whether metad's current attributes of the root say the tree is
    /// unchanged since the load.
    pub(super) fn still_valid(&self, root_now: &Attr) -> bool {
        root_now.ino == self.root && root_now.frozen && root_now.ctime_ns == self.root_ctime_ns
    }
}

/// The loaded tables, found by any inode they hold.
#[derive(Default)]
pub(crate) struct FrozenTables {
    pub(super) by_ino: HashMap<Ino, Arc<FrozenTable>>,
    /// Roots of the loaded tables.
    roots: HashSet<Ino>,
    /// The names of loaded roots, by parent directory: metad refuses to
    /// unlink or rename a frozen inode, so a root's name is as stable as
    /// its contents.
    root_names: HashMap<Ino, Vec<(String, Ino)>>,
    /// Roots being loaded now (others go to metad meanwhile).
    pub(super) loading: HashSet<Ino>,
    /// Roots too large to load, with their ctime then (not retried until
    /// the tree changes).
    pub(super) refused: HashMap<Ino, i64>,
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
    pub(super) fn insert(&mut self, table: Arc<FrozenTable>, name: Option<(Ino, String)>) {
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
    pub(super) fn remove(&mut self, root: Ino) {
        self.by_ino.retain(|_, t| t.root != root);
        for names in self.root_names.values_mut() {
            names.retain(|(_, r)| *r != root);
        }
        self.root_names.retain(|_, names| !names.is_empty());
        self.roots.remove(&root);
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
