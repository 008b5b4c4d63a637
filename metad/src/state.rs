//! The namespace state machine: inodes, directory entries, file layouts,
//! the storage-node registry and placement groups.
//!
//! `apply` must be deterministic: every voter applies the same log and must
//! end in the same state, so the leader stamps the time into each
//! [`Command`] before proposing it and nothing here reads a clock, a random
//! source or a hash map's iteration order (all maps are `BTreeMap`).

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use torchfs_proto::meta::{
    errno, Attr, DirEntry, FileKind, Ino, Layout, MetaError, MetaReply, MetaRequest, NodeId,
    NodeInfo, PlacementGroup, SetAttr, SetTime, StripeConfig, StripeEntry, NAME_BYTES_MAX,
    ROOT_INO,
};

/// Longest symlink target accepted (bytes), as Linux's PATH_MAX.
const SYMLINK_BYTES_MAX: usize = 4096;

/// One entry of the Raft log: a mutating request and the leader's clock when
/// it was proposed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub now_ns: i64,
    pub req: MetaRequest,
}

/// What `apply` answers for one command; this is also openraft's response type.
pub type Outcome = Result<MetaReply, MetaError>;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
enum Body {
    File {
        layout: Layout,
    },
    /// `parent` of the root is the root itself.
    Dir {
        parent: Ino,
        entries: BTreeMap<String, Ino>,
    },
    Symlink {
        target: String,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Inode {
    attr: Attr,
    body: Body,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct State {
    config: StripeConfig,
    inodes: BTreeMap<Ino, Inode>,
    next_ino: Ino,
    nodes: BTreeMap<NodeId, NodeInfo>,
    groups: Vec<PlacementGroup>,
    /// Bumped whenever nodes or groups change.
    epoch: u64,
}

fn fs(errno: i32, what: impl Into<String>) -> MetaError {
    MetaError::fs(errno, what)
}

fn check_name(name: &str) -> Result<(), MetaError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(fs(
            errno::ENAMETOOLONG,
            format!("name is {} bytes, at most {NAME_BYTES_MAX}", name.len()),
        ));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(fs(errno::EINVAL, format!("invalid name {name:?}")));
    }
    Ok(())
}

fn resolve(t: SetTime, now_ns: i64) -> i64 {
    match t {
        SetTime::Now => now_ns,
        SetTime::Ns(ns) => ns,
    }
}

impl State {
    /// A fresh namespace: only the root directory (ino 1, mode 0o755).
    pub fn new(config: StripeConfig) -> Self {
        let root = Inode {
            attr: Attr {
                ino: ROOT_INO,
                kind: FileKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                nlink: 2,
                atime_ns: 0,
                mtime_ns: 0,
                ctime_ns: 0,
            },
            body: Body::Dir {
                parent: ROOT_INO,
                entries: BTreeMap::new(),
            },
        };
        Self {
            config,
            inodes: BTreeMap::from([(ROOT_INO, root)]),
            next_ino: ROOT_INO + 1,
            nodes: BTreeMap::new(),
            groups: Vec::new(),
            epoch: 0,
        }
    }

    pub fn config(&self) -> StripeConfig {
        self.config
    }
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.nodes
    }
    pub fn groups(&self) -> &[PlacementGroup] {
        &self.groups
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn file_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    // ------------------------------------------------------------- reads

    /// Answers a read-only namespace request. Cluster-level reads (statfs,
    /// cluster map/status, heartbeat) need the leader's volatile node
    /// liveness and are answered by the service.
    pub fn read(&self, req: &MetaRequest) -> Outcome {
        match req {
            MetaRequest::Lookup { parent, name } => {
                check_name(name)?;
                let ino = self.entry(*parent, name)?;
                Ok(MetaReply::Attr(self.inode(ino)?.attr.clone()))
            }
            MetaRequest::GetAttr { ino } => Ok(MetaReply::Attr(self.inode(*ino)?.attr.clone())),
            MetaRequest::ReadDir { ino, after, limit } => self.readdir(*ino, after, *limit),
            MetaRequest::ReadLink { ino } => match &self.inode(*ino)?.body {
                Body::Symlink { target } => Ok(MetaReply::Link(target.clone())),
                _ => Err(fs(errno::EINVAL, format!("inode {ino} is not a symlink"))),
            },
            MetaRequest::GetLayout { ino } => {
                let node = self.inode(*ino)?;
                match &node.body {
                    Body::File { layout } => Ok(MetaReply::Layout {
                        attr: node.attr.clone(),
                        layout: layout.clone(),
                    }),
                    Body::Dir { .. } => {
                        Err(fs(errno::EISDIR, format!("inode {ino} is a directory")))
                    }
                    Body::Symlink { .. } => {
                        Err(fs(errno::EINVAL, format!("inode {ino} is a symlink")))
                    }
                }
            }
            other => Err(MetaError::Invalid(format!(
                "not a namespace read: {other:?}"
            ))),
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, MetaError> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| fs(errno::ENOENT, format!("no inode {ino}")))
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, MetaError> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| fs(errno::ENOENT, format!("no inode {ino}")))
    }

    fn dir_entries(&self, ino: Ino) -> Result<&BTreeMap<String, Ino>, MetaError> {
        match &self.inode(ino)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(fs(
                errno::ENOTDIR,
                format!("inode {ino} is not a directory"),
            )),
        }
    }

    fn dir_entries_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<String, Ino>, MetaError> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(fs(
                errno::ENOTDIR,
                format!("inode {ino} is not a directory"),
            )),
        }
    }

    fn entry(&self, parent: Ino, name: &str) -> Result<Ino, MetaError> {
        self.dir_entries(parent)?.get(name).copied().ok_or_else(|| {
            fs(
                errno::ENOENT,
                format!("no entry {name:?} in inode {parent}"),
            )
        })
    }

    fn readdir(&self, ino: Ino, after: &str, limit: u32) -> Outcome {
        let entries = self.dir_entries(ino)?;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.to_string())
        };
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut out = Vec::new();
        for (name, child) in entries.range((start, Bound::Unbounded)).take(limit) {
            out.push(DirEntry {
                name: name.clone(),
                ino: *child,
                kind: self.inode(*child)?.attr.kind,
            });
        }
        Ok(MetaReply::Entries(out))
    }

    // ------------------------------------------------------------ writes

    /// Applies one committed command. Errors are answers (ENOENT ...), not
    /// failures of the state machine: the state is unchanged when one is
    /// returned, because every check runs before the first change.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        let now = cmd.now_ns;
        match &cmd.req {
            MetaRequest::SetAttr { ino, set } => self.setattr(*ino, set, now),
            MetaRequest::Create {
                parent,
                name,
                mode,
                uid,
                gid,
                exclusive,
            } => self.create(*parent, name, *mode, *uid, *gid, *exclusive, now),
            MetaRequest::Mkdir {
                parent,
                name,
                mode,
                uid,
                gid,
            } => self.mkdir(*parent, name, *mode, *uid, *gid, now),
            MetaRequest::Unlink { parent, name } => self.unlink(*parent, name, now),
            MetaRequest::Rmdir { parent, name } => self.rmdir(*parent, name, now),
            MetaRequest::Rename {
                parent,
                name,
                new_parent,
                new_name,
            } => self.rename(*parent, name, *new_parent, new_name, now),
            MetaRequest::Link {
                ino,
                new_parent,
                new_name,
            } => self.link(*ino, *new_parent, new_name, now),
            MetaRequest::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => self.symlink(*parent, name, target, *uid, *gid, now),
            MetaRequest::CommitLayout { ino, size, stripes } => {
                self.commit_layout(*ino, *size, stripes, now)
            }
            MetaRequest::RegisterNode { info } => self.register_node(info),
            other => Err(MetaError::Invalid(format!("not a log command: {other:?}"))),
        }
    }

    fn touch_dir(&mut self, ino: Ino, now: i64) {
        if let Some(d) = self.inodes.get_mut(&ino) {
            d.attr.mtime_ns = now;
            d.attr.ctime_ns = now;
        }
    }

    fn add_nlink(&mut self, ino: Ino, delta: i32) {
        if let Some(d) = self.inodes.get_mut(&ino) {
            d.attr.nlink = d.attr.nlink.saturating_add_signed(delta);
        }
    }

    /// Checks that `name` may be created in `parent`; Ok(Some(ino)) when it
    /// already exists.
    fn check_new_entry(&self, parent: Ino, name: &str) -> Result<Option<Ino>, MetaError> {
        check_name(name)?;
        Ok(self.dir_entries(parent)?.get(name).copied())
    }

    fn alloc(
        &mut self,
        attr_of: impl FnOnce(Ino) -> Attr,
        body: Body,
        parent: Ino,
        name: &str,
    ) -> Attr {
        let ino = self.next_ino;
        self.next_ino += 1;
        let attr = attr_of(ino);
        self.inodes.insert(
            ino,
            Inode {
                attr: attr.clone(),
                body,
            },
        );
        if let Ok(entries) = self.dir_entries_mut(parent) {
            entries.insert(name.to_string(), ino);
        }
        attr
    }

    fn new_attr(ino: Ino, kind: FileKind, mode: u32, uid: u32, gid: u32, now: i64) -> Attr {
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
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &mut self,
        parent: Ino,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        now: i64,
    ) -> Outcome {
        if let Some(existing) = self.check_new_entry(parent, name)? {
            let node = self.inode(existing)?;
            return match node.attr.kind {
                _ if exclusive => Err(fs(errno::EEXIST, format!("{name:?} exists"))),
                FileKind::File => Ok(MetaReply::Attr(node.attr.clone())),
                FileKind::Dir => Err(fs(errno::EISDIR, format!("{name:?} is a directory"))),
                FileKind::Symlink => Err(fs(errno::EEXIST, format!("{name:?} is a symlink"))),
            };
        }
        let layout = Layout {
            config: self.config,
            stripes: Vec::new(),
        };
        let attr = self.alloc(
            |ino| Self::new_attr(ino, FileKind::File, mode, uid, gid, now),
            Body::File { layout },
            parent,
            name,
        );
        self.touch_dir(parent, now);
        Ok(MetaReply::Attr(attr))
    }

    fn mkdir(
        &mut self,
        parent: Ino,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        now: i64,
    ) -> Outcome {
        if self.check_new_entry(parent, name)?.is_some() {
            return Err(fs(errno::EEXIST, format!("{name:?} exists")));
        }
        let attr = self.alloc(
            |ino| Self::new_attr(ino, FileKind::Dir, mode, uid, gid, now),
            Body::Dir {
                parent,
                entries: BTreeMap::new(),
            },
            parent,
            name,
        );
        self.add_nlink(parent, 1);
        self.touch_dir(parent, now);
        Ok(MetaReply::Attr(attr))
    }

    fn symlink(
        &mut self,
        parent: Ino,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
        now: i64,
    ) -> Outcome {
        if target.is_empty() {
            return Err(fs(errno::ENOENT, "empty symlink target"));
        }
        if target.len() > SYMLINK_BYTES_MAX || target.contains('\0') {
            return Err(fs(
                errno::ENAMETOOLONG,
                format!(
                    "symlink target is {} bytes, at most {SYMLINK_BYTES_MAX}",
                    target.len()
                ),
            ));
        }
        if self.check_new_entry(parent, name)?.is_some() {
            return Err(fs(errno::EEXIST, format!("{name:?} exists")));
        }
        let attr = self.alloc(
            |ino| Attr {
                size: target.len() as u64,
                ..Self::new_attr(ino, FileKind::Symlink, 0o777, uid, gid, now)
            },
            Body::Symlink {
                target: target.to_string(),
            },
            parent,
            name,
        );
        self.touch_dir(parent, now);
        Ok(MetaReply::Attr(attr))
    }

    fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &str, now: i64) -> Outcome {
        if self.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(fs(errno::EPERM, format!("inode {ino} is a directory")));
        }
        if self.check_new_entry(new_parent, new_name)?.is_some() {
            return Err(fs(errno::EEXIST, format!("{new_name:?} exists")));
        }
        self.dir_entries_mut(new_parent)?
            .insert(new_name.to_string(), ino);
        let node = self.inode_mut(ino)?;
        node.attr.nlink = node.attr.nlink.saturating_add(1);
        node.attr.ctime_ns = now;
        let attr = node.attr.clone();
        self.touch_dir(new_parent, now);
        Ok(MetaReply::Attr(attr))
    }

    /// Drops one link of a non-directory; frees it when none is left and
    /// returns the stripes that are no longer referenced.
    fn drop_link(&mut self, ino: Ino, now: i64) -> Vec<StripeEntry> {
        let Some(node) = self.inodes.get_mut(&ino) else {
            return Vec::new();
        };
        node.attr.nlink = node.attr.nlink.saturating_sub(1);
        node.attr.ctime_ns = now;
        if node.attr.nlink > 0 {
            return Vec::new();
        }
        match self.inodes.remove(&ino) {
            Some(Inode {
                body: Body::File { layout },
                ..
            }) => layout.stripes,
            _ => Vec::new(),
        }
    }

    fn unlink(&mut self, parent: Ino, name: &str, now: i64) -> Outcome {
        check_name(name)?;
        let ino = self.entry(parent, name)?;
        if self.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(fs(errno::EISDIR, format!("{name:?} is a directory")));
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.touch_dir(parent, now);
        Ok(MetaReply::Freed(self.drop_link(ino, now)))
    }

    fn rmdir(&mut self, parent: Ino, name: &str, now: i64) -> Outcome {
        check_name(name)?;
        let ino = self.entry(parent, name)?;
        match &self.inode(ino)?.body {
            Body::Dir { entries, .. } if !entries.is_empty() => {
                return Err(fs(errno::ENOTEMPTY, format!("{name:?} is not empty")))
            }
            Body::Dir { .. } => {}
            _ => return Err(fs(errno::ENOTDIR, format!("{name:?} is not a directory"))),
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.inodes.remove(&ino);
        self.add_nlink(parent, -1);
        self.touch_dir(parent, now);
        Ok(MetaReply::Freed(Vec::new()))
    }

    /// Whether `ino` is `ancestor` or lies below it.
    fn is_within(&self, mut ino: Ino, ancestor: Ino) -> bool {
        // Bounded walk: a corrupt parent chain must not loop forever.
        for _ in 0..=self.inodes.len() {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino).map(|n| &n.body) {
                Some(Body::Dir { parent, .. }) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
        false
    }

    fn rename(
        &mut self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        now: i64,
    ) -> Outcome {
        check_name(name)?;
        check_name(new_name)?;
        let src = self.entry(parent, name)?;
        let target = self.dir_entries(new_parent)?.get(new_name).copied();
        let src_is_dir = self.inode(src)?.attr.kind == FileKind::Dir;
        if target == Some(src) {
            // Same inode (same entry, or two hard links): POSIX says do nothing.
            return Ok(MetaReply::Freed(Vec::new()));
        }
        if src_is_dir && self.is_within(new_parent, src) {
            return Err(fs(
                errno::EINVAL,
                format!("cannot move directory {name:?} into its own subtree"),
            ));
        }
        if let Some(t) = target {
            match (&self.inode(t)?.body, src_is_dir) {
                (Body::Dir { entries, .. }, true) if !entries.is_empty() => {
                    return Err(fs(errno::ENOTEMPTY, format!("{new_name:?} is not empty")))
                }
                (Body::Dir { .. }, true) => {}
                (Body::Dir { .. }, false) => {
                    return Err(fs(errno::EISDIR, format!("{new_name:?} is a directory")))
                }
                (_, true) => {
                    return Err(fs(
                        errno::ENOTDIR,
                        format!("{new_name:?} is not a directory"),
                    ))
                }
                (_, false) => {}
            }
        }
        // All checks passed: from here on nothing fails.
        let mut freed = Vec::new();
        if let Some(t) = target {
            if src_is_dir {
                self.inodes.remove(&t);
                self.add_nlink(new_parent, -1);
            } else {
                freed = self.drop_link(t, now);
            }
        }
        if let Ok(e) = self.dir_entries_mut(parent) {
            e.remove(name);
        }
        if let Ok(e) = self.dir_entries_mut(new_parent) {
            e.insert(new_name.to_string(), src);
        }
        if src_is_dir && parent != new_parent {
            self.add_nlink(parent, -1);
            self.add_nlink(new_parent, 1);
            if let Some(Inode {
                body: Body::Dir { parent: p, .. },
                ..
            }) = self.inodes.get_mut(&src)
            {
                *p = new_parent;
            }
        }
        if let Some(n) = self.inodes.get_mut(&src) {
            n.attr.ctime_ns = now;
        }
        self.touch_dir(parent, now);
        self.touch_dir(new_parent, now);
        Ok(MetaReply::Freed(freed))
    }

    fn setattr(&mut self, ino: Ino, set: &SetAttr, now: i64) -> Outcome {
        let node = self.inode_mut(ino)?;
        if set.size.is_some() {
            match node.attr.kind {
                FileKind::File => {}
                FileKind::Dir => {
                    return Err(fs(errno::EISDIR, format!("inode {ino} is a directory")))
                }
                FileKind::Symlink => {
                    return Err(fs(errno::EINVAL, format!("inode {ino} is a symlink")))
                }
            }
        }
        let a = &mut node.attr;
        if let Some(mode) = set.mode {
            a.mode = mode & 0o7777;
        }
        if let Some(uid) = set.uid {
            a.uid = uid;
        }
        if let Some(gid) = set.gid {
            a.gid = gid;
        }
        if let Some(t) = set.atime {
            a.atime_ns = resolve(t, now);
        }
        if let Some(t) = set.mtime {
            a.mtime_ns = resolve(t, now);
        }
        a.ctime_ns = now;
        let Some(size) = set.size else {
            return Ok(MetaReply::Attr(node.attr.clone()));
        };
        let mut freed = Vec::new();
        if size != node.attr.size && set.mtime.is_none() {
            // truncate(2) updates mtime unless the caller set it explicitly.
            node.attr.mtime_ns = now;
        }
        if let Body::File { layout } = &mut node.body {
            if size < node.attr.size {
                freed = truncate_layout(layout, size);
            }
        }
        node.attr.size = size;
        Ok(MetaReply::AttrFreed {
            attr: node.attr.clone(),
            freed,
        })
    }

    fn commit_layout(&mut self, ino: Ino, size: u64, stripes: &[StripeEntry], now: i64) -> Outcome {
        let node = self.inode_mut(ino)?;
        let layout = match &mut node.body {
            Body::File { layout } => layout,
            Body::Dir { .. } => {
                return Err(fs(errno::EISDIR, format!("inode {ino} is a directory")))
            }
            Body::Symlink { .. } => {
                return Err(fs(errno::EINVAL, format!("inode {ino} is a symlink")))
            }
        };
        let width = layout.config.width();
        let stripe_bytes = layout.config.stripe_bytes();
        let mut seen = std::collections::BTreeSet::new();
        for s in stripes {
            if s.crcs.len() != width {
                return Err(MetaError::Invalid(format!(
                    "stripe {} has {} checksums, the layout has {width} fragments",
                    s.stripe,
                    s.crcs.len()
                )));
            }
            if s.valid_bytes > s.encoded_bytes || s.encoded_bytes as u64 > stripe_bytes {
                return Err(MetaError::Invalid(format!(
                    "stripe {}: valid {} / encoded {} bytes, stripe holds {stripe_bytes}",
                    s.stripe, s.valid_bytes, s.encoded_bytes
                )));
            }
            if !seen.insert(s.stripe) {
                return Err(MetaError::Invalid(format!(
                    "stripe {} given twice",
                    s.stripe
                )));
            }
        }
        let mut replaced = Vec::new();
        for s in stripes {
            match layout.stripes.binary_search_by_key(&s.stripe, |e| e.stripe) {
                Ok(i) => replaced.push(std::mem::replace(&mut layout.stripes[i], s.clone())),
                Err(i) => layout.stripes.insert(i, s.clone()),
            }
        }
        node.attr.size = size;
        node.attr.mtime_ns = now;
        node.attr.ctime_ns = now;
        Ok(MetaReply::Committed {
            attr: node.attr.clone(),
            replaced,
        })
    }

    fn register_node(&mut self, info: &NodeInfo) -> Outcome {
        if info.host.is_empty() {
            return Err(MetaError::Invalid(format!("node {} has no host", info.id)));
        }
        self.nodes.insert(info.id, info.clone());
        self.epoch += 1;
        let width = self.config.width();
        if self.groups.is_empty() && width > 0 && self.nodes.len() >= width {
            self.groups = placement_groups(&self.nodes.keys().copied().collect::<Vec<_>>(), width);
        }
        Ok(MetaReply::Unit)
    }
}

/// Cuts a layout down to `size` bytes: stripes wholly past it are dropped
/// (returned, to be freed) and the boundary stripe's `valid_bytes` clamped.
fn truncate_layout(layout: &mut Layout, size: u64) -> Vec<StripeEntry> {
    let stripe_bytes = layout.config.stripe_bytes();
    if stripe_bytes == 0 {
        return Vec::new();
    }
    let mut freed = Vec::new();
    layout.stripes.retain_mut(|s| {
        let start = s.stripe.saturating_mul(stripe_bytes);
        if start >= size {
            freed.push(s.clone());
            return false;
        }
        let keep = size - start;
        if keep < s.valid_bytes as u64 {
            s.valid_bytes = keep as u32;
        }
        true
    });
    freed
}

/// N groups over N nodes sorted by id: group g = nodes[(g + j) % N] for j in
/// 0..width, so every node leads one group and appears in `width` groups.
pub fn placement_groups(sorted_ids: &[NodeId], width: usize) -> Vec<PlacementGroup> {
    let n = sorted_ids.len();
    (0..n)
        .map(|g| PlacementGroup {
            id: g as u32,
            nodes: (0..width).map(|j| sorted_ids[(g + j) % n]).collect(),
        })
        .collect()
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
