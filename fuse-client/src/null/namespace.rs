//! The null backend's namespace: inodes, directory entries, layouts,
//! client leases and orphans, changed as metad changes them (the same
//! errors, the same replies), without a log or a disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::time::Instant;

use torchfs_proto::meta::{
    errno, Attr, ClusterMap, DirEntry, FileKind, FileLock, Ino, Layout, MetaError, MetaReply,
    NamedAttr, RenameMode, StatFs, FILES_MAX, NAME_BYTES_MAX, READDIR_PLUS_MAX, ROOT_INO,
};

use super::locks::Locks;

/// How long a client's lease lasts without a keep-alive (the value metad
/// uses): files it held open stop counting as open after that.
pub(super) const LEASE_MS: u64 = 5_000;

/// Capacity `statfs` reports: large enough that no benchmark fills it
/// (nothing is stored).
pub(super) const CAPACITY_BYTES: u64 = 1 << 50;

fn new_attr(ino: Ino, kind: FileKind, mode: u32, (uid, gid): (u32, u32), now: i64) -> Attr {
    Attr {
        ino,
        kind,
        mode: mode & 0o7777,
        uid,
        gid,
        size: 0,
        nlink: if kind == FileKind::Dir { 2 } else { 1 },
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        rdev: 0,
        has_xattrs: false,
        frozen: false,
    }
}

/// The names metad refuses (the kernel never sends them; a library
/// caller might).
fn check_name(name: &str) -> Result<(), MetaError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(MetaError::fs(
            errno::ENAMETOOLONG,
            format!("name of {} bytes", name.len()),
        ));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(MetaError::fs(
            errno::EINVAL,
            format!("{name:?} is not a name"),
        ));
    }
    Ok(())
}

/// An inode: its attributes and what a regular file or directory holds.
pub(super) struct Node {
    pub(super) attr: Attr,
    pub(super) body: Body,
}

pub(super) enum Body {
    /// The stripes committed (their fragments were dropped).
    File(Layout),
    /// `parent` is for the checks that keep renames from making cycles.
    Dir {
        parent: Ino,
        entries: BTreeMap<String, Ino>,
    },
}

/// A client's lease: when it was last heard from, what it holds open.
pub(super) struct Lease {
    pub(super) seen: Instant,
    pub(super) open: HashSet<Ino>,
}

pub(super) struct Namespace {
    pub(super) nodes: HashMap<Ino, Node>,
    pub(super) next_ino: Ino,
    /// Files with no name left, kept while a client holds them open.
    pub(super) orphans: HashSet<Ino>,
    /// Per client id.
    pub(super) leases: HashMap<u64, Lease>,
    pub(super) locks: Locks,
    pub(super) map: ClusterMap,
}

impl Namespace {
    /// The root directory (mode 0755, owned by root) and nothing else;
    /// files are cut into stripes of `map.config`.
    pub(super) fn new(map: ClusterMap, now_ns: i64) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_INO,
            Node {
                attr: new_attr(ROOT_INO, FileKind::Dir, 0o755, (0, 0), now_ns),
                body: Body::Dir {
                    parent: ROOT_INO,
                    entries: BTreeMap::new(),
                },
            },
        );
        Self {
            nodes,
            next_ino: ROOT_INO + 1,
            orphans: HashSet::new(),
            leases: HashMap::new(),
            locks: Locks::default(),
            map,
        }
    }

    pub(super) fn map(&self) -> &ClusterMap {
        &self.map
    }

    pub(super) fn attr(&self, ino: Ino) -> Result<&Attr, MetaError> {
        Ok(&self.node(ino)?.attr)
    }

    pub(super) fn lookup(&self, parent: Ino, name: &str) -> Result<&Attr, MetaError> {
        self.attr(self.entry(parent, name)?)
    }

    /// The names of `names` found in `parent`, in the order asked.
    pub(super) fn lookup_many(
        &self,
        parent: Ino,
        names: Vec<String>,
    ) -> Result<Vec<NamedAttr>, MetaError> {
        let entries = self.dir_entries(parent)?;
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let attr = self.nodes.get(entries.get(&name)?)?.attr.clone();
                Some(NamedAttr { name, attr })
            })
            .collect())
    }

    /// Entries of `dir` from the name `from` on (`from` included or not),
    /// at most `limit`, in name order.
    pub(super) fn listed(
        &self,
        dir: Ino,
        from: Bound<&str>,
        limit: usize,
    ) -> Result<impl Iterator<Item = (&String, &Node)>, MetaError> {
        let entries = self.dir_entries(dir)?;
        Ok(entries
            .range::<str, _>((from, Bound::Unbounded))
            .take(limit)
            .filter_map(|(name, child)| Some((name, self.nodes.get(child)?))))
    }

    /// ReadDir: names after `after`, at most `limit` (0: all).
    pub(super) fn readdir(
        &self,
        dir: Ino,
        after: &str,
        limit: u32,
    ) -> Result<Vec<DirEntry>, MetaError> {
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        Ok(self
            .listed(dir, Bound::Excluded(after), limit)?
            .map(|(name, node)| DirEntry {
                name: name.clone(),
                ino: node.attr.ino,
                kind: node.attr.kind,
            })
            .collect())
    }

    /// ReadDirPlus: names from `start` on, with their attributes.
    pub(super) fn readdir_plus(
        &self,
        dir: Ino,
        start: &str,
        limit: u32,
    ) -> Result<Vec<NamedAttr>, MetaError> {
        let limit = match limit {
            0 => READDIR_PLUS_MAX,
            n => n.min(READDIR_PLUS_MAX),
        };
        Ok(self
            .listed(dir, Bound::Included(start), limit as usize)?
            .map(|(name, node)| NamedAttr {
                name: name.clone(),
                attr: node.attr.clone(),
            })
            .collect())
    }

    pub(super) fn mkdir(
        &mut self,
        parent: Ino,
        name: &str,
        (mode, umask): (u32, u32),
        owner: (u32, u32),
        now_ns: i64,
    ) -> Result<Attr, MetaError> {
        self.make(parent, name, FileKind::Dir, mode & !umask, owner, now_ns)
    }

    /// Unlink: the inode the name led to and the stripes freed.
    pub(super) fn unlink(
        &mut self,
        parent: Ino,
        name: &str,
        now: Instant,
        now_ns: i64,
    ) -> Result<MetaReply, MetaError> {
        let ino = self.entry(parent, name)?;
        if self.node(ino)?.attr.kind == FileKind::Dir {
            return Err(MetaError::fs(
                errno::EISDIR,
                format!("{name:?} is a directory"),
            ));
        }
        self.remove_entry(parent, name, now_ns);
        let freed = self.drop_link(ino, now, now_ns);
        Ok(MetaReply::Unlinked { ino, freed })
    }

    pub(super) fn rmdir(&mut self, parent: Ino, name: &str, now_ns: i64) -> Result<(), MetaError> {
        let ino = self.entry(parent, name)?;
        match &self.node(ino)?.body {
            Body::Dir { entries, .. } if !entries.is_empty() => {
                return Err(MetaError::fs(
                    errno::ENOTEMPTY,
                    format!("{name:?} is not empty"),
                ))
            }
            Body::Dir { .. } => {}
            Body::File(_) => {
                return Err(MetaError::fs(
                    errno::ENOTDIR,
                    format!("{name:?} is not a directory"),
                ))
            }
        }
        self.remove_entry(parent, name, now_ns);
        self.nodes.remove(&ino);
        self.add_nlink(parent, -1);
        Ok(())
    }

    pub(super) fn set_lock(
        &mut self,
        ino: Ino,
        lock: &FileLock,
        now: Instant,
    ) -> Result<(), MetaError> {
        if let Some(lease) = self.leases.get_mut(&lock.client_id) {
            lease.seen = now;
        }
        let exists = self.nodes.contains_key(&ino);
        self.locks.set(ino, lock, exists)
    }

    pub(super) fn get_lock(
        &self,
        ino: Ino,
        lock: &FileLock,
    ) -> Result<Option<FileLock>, MetaError> {
        self.node(ino)?;
        self.locks.get(ino, lock)
    }

    pub(super) fn node(&self, ino: Ino) -> Result<&Node, MetaError> {
        self.nodes
            .get(&ino)
            .ok_or_else(|| MetaError::fs(errno::ENOENT, format!("no inode {ino}")))
    }

    pub(super) fn dir_entries(&self, ino: Ino) -> Result<&BTreeMap<String, Ino>, MetaError> {
        match &self.node(ino)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File(_) => Err(MetaError::fs(
                errno::ENOTDIR,
                format!("inode {ino} is not a directory"),
            )),
        }
    }

    pub(super) fn entry(&self, parent: Ino, name: &str) -> Result<Ino, MetaError> {
        self.dir_entries(parent)?.get(name).copied().ok_or_else(|| {
            MetaError::fs(
                errno::ENOENT,
                format!("no entry {name:?} in inode {parent}"),
            )
        })
    }

    pub(super) fn statfs(&self) -> StatFs {
        let used_bytes = self.nodes.values().map(|n| n.attr.size).sum();
        let files = self.nodes.len() as u64;
        StatFs {
            total_bytes: CAPACITY_BYTES,
            used_bytes,
            files,
            files_free: FILES_MAX.saturating_sub(files),
        }
    }

    /// Marks a directory changed: a new mtime and ctime, the ctime strictly
    /// later than before (clients tell changes apart by it, as metad's).
    pub(super) fn touch_dir(&mut self, dir: Ino, now_ns: i64) {
        if let Some(node) = self.nodes.get_mut(&dir) {
            let at = now_ns.max(node.attr.ctime_ns.saturating_add(1));
            node.attr.mtime_ns = at;
            node.attr.ctime_ns = at;
        }
    }

    pub(super) fn add_nlink(&mut self, ino: Ino, delta: i32) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.attr.nlink = node.attr.nlink.saturating_add_signed(delta);
        }
    }

    /// A new inode named `name` in `parent`.
    pub(super) fn make(
        &mut self,
        parent: Ino,
        name: &str,
        kind: FileKind,
        mode: u32,
        owner: (u32, u32),
        now_ns: i64,
    ) -> Result<Attr, MetaError> {
        check_name(name)?;
        if self.dir_entries(parent)?.contains_key(name) {
            return Err(MetaError::fs(
                errno::EEXIST,
                format!("{name:?} exists in inode {parent}"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let attr = new_attr(ino, kind, mode, owner, now_ns);
        let body = match kind {
            FileKind::Dir => Body::Dir {
                parent,
                entries: BTreeMap::new(),
            },
            _ => Body::File(Layout {
                config: self.map.config,
                stripes: Vec::new(),
            }),
        };
        self.nodes.insert(
            ino,
            Node {
                attr: attr.clone(),
                body,
            },
        );
        if let Some(Node {
            body: Body::Dir { entries, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            entries.insert(name.to_string(), ino);
        }
        if kind == FileKind::Dir {
            self.add_nlink(parent, 1);
        }
        self.touch_dir(parent, now_ns);
        Ok(attr)
    }

    /// Create: a new regular file, or (not `exclusive`) the one there.
    pub(super) fn create(
        &mut self,
        parent: Ino,
        name: &str,
        (mode, umask): (u32, u32),
        owner: (u32, u32),
        exclusive: bool,
        now_ns: i64,
    ) -> Result<Attr, MetaError> {
        if let Some(&ino) = self.dir_entries(parent)?.get(name) {
            if exclusive {
                return Err(MetaError::fs(
                    errno::EEXIST,
                    format!("{name:?} exists in inode {parent}"),
                ));
            }
            return Ok(self.node(ino)?.attr.clone());
        }
        self.make(parent, name, FileKind::File, mode & !umask, owner, now_ns)
    }

    pub(super) fn remove_entry(&mut self, parent: Ino, name: &str, now_ns: i64) {
        if let Some(Node {
            body: Body::Dir { entries, .. },
            ..
        }) = self.nodes.get_mut(&parent)
        {
            entries.remove(name);
        }
        self.touch_dir(parent, now_ns);
    }

    /// rename(2) and RENAME_NOREPLACE; every check before the first change.
    pub(super) fn rename(
        &mut self,
        (parent, name): (Ino, &str),
        (new_parent, new_name): (Ino, &str),
        mode: RenameMode,
        now: Instant,
        now_ns: i64,
    ) -> Result<MetaReply, MetaError> {
        if mode == RenameMode::Exchange {
            return Err(MetaError::fs(
                errno::EOPNOTSUPP,
                "the null backend (FUSE ceiling) does not serve RENAME_EXCHANGE",
            ));
        }
        check_name(new_name)?;
        let src = self.entry(parent, name)?;
        let target = self.dir_entries(new_parent)?.get(new_name).copied();
        let src_is_dir = self.node(src)?.attr.kind == FileKind::Dir;
        if target.is_some() && mode == RenameMode::NoReplace {
            return Err(MetaError::fs(errno::EEXIST, format!("{new_name:?} exists")));
        }
        if target == Some(src) {
            return Ok(MetaReply::Freed(Vec::new()));
        }
        if src_is_dir && self.is_within(new_parent, src) {
            return Err(MetaError::fs(
                errno::EINVAL,
                format!("cannot move directory {name:?} into its own subtree"),
            ));
        }
        if let Some(t) = target {
            match (&self.node(t)?.body, src_is_dir) {
                (Body::Dir { entries, .. }, true) if !entries.is_empty() => {
                    return Err(MetaError::fs(
                        errno::ENOTEMPTY,
                        format!("{new_name:?} is not empty"),
                    ))
                }
                (Body::Dir { .. }, false) => {
                    return Err(MetaError::fs(
                        errno::EISDIR,
                        format!("{new_name:?} is a directory"),
                    ))
                }
                (Body::File(_), true) => {
                    return Err(MetaError::fs(
                        errno::ENOTDIR,
                        format!("{new_name:?} is not a directory"),
                    ))
                }
                _ => {}
            }
        }
        // All checks passed: nothing below fails.
        let mut reply = MetaReply::Freed(Vec::new());
        if let Some(t) = target {
            self.remove_entry(new_parent, new_name, now_ns);
            if src_is_dir {
                self.nodes.remove(&t);
                self.add_nlink(new_parent, -1);
            } else {
                let freed = self.drop_link(t, now, now_ns);
                reply = MetaReply::Unlinked { ino: t, freed };
            }
        }
        self.remove_entry(parent, name, now_ns);
        if let Some(Node {
            body: Body::Dir { entries, .. },
            ..
        }) = self.nodes.get_mut(&new_parent)
        {
            entries.insert(new_name.to_string(), src);
        }
        self.touch_dir(new_parent, now_ns);
        if src_is_dir && parent != new_parent {
            self.add_nlink(parent, -1);
            self.add_nlink(new_parent, 1);
            if let Some(Node {
                body: Body::Dir { parent: p, .. },
                ..
            }) = self.nodes.get_mut(&src)
            {
                *p = new_parent;
            }
        }
        if let Some(node) = self.nodes.get_mut(&src) {
            node.attr.ctime_ns = now_ns;
        }
        Ok(reply)
    }

    /// Whether `ino` is `ancestor` or lies below it.
    pub(super) fn is_within(&self, mut ino: Ino, ancestor: Ino) -> bool {
        // Bounded: the walk cannot loop however the tree looks.
        for _ in 0..=self.nodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).map(|n| &n.body) {
                Some(Body::Dir { parent, .. }) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
        false
    }
}
