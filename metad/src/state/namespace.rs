//! The directory tree: creating, linking, unlinking and renaming entries,
//! and setattr (including truncation, which frees stripes).
//!
//! Each command checks everything before its first change (see the module
//! above): the helpers that change state run only after those checks.

use std::collections::BTreeMap;

use torchfs_proto::meta::{
    errno, Attr, FileKind, Ino, Layout, MetaError, MetaReply, SetAttr, SetTime, StripeEntry,
};

use super::layout::truncate_layout;
use super::{check_name, fs, Body, Inode, Outcome, State};

/// Longest symlink target accepted (bytes), as Linux's PATH_MAX.
const SYMLINK_BYTES_MAX: usize = 4096;

fn resolve(t: SetTime, now_ns: i64) -> i64 {
    match t {
        SetTime::Now => now_ns,
        SetTime::Ns(ns) => ns,
    }
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
        frozen: false,
    }
}

impl State {
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

    /// Creates an inode named `name` in `parent` (checked by the caller) and
    /// touches `parent`. Fails, changing nothing, only when inode numbers
    /// are exhausted.
    fn alloc(
        &mut self,
        attr_of: impl FnOnce(Ino) -> Attr,
        body: Body,
        parent: Ino,
        name: &str,
        now: i64,
    ) -> Result<Attr, MetaError> {
        let ino = self.next_ino;
        // Wrapping would reuse the root's number (and every other one).
        self.next_ino = ino.checked_add(1).ok_or_else(|| {
            fs(
                errno::ENOSPC,
                format!("inode numbers exhausted (next inode would be {ino})"),
            )
        })?;
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
        self.touch_dir(parent, now);
        Ok(attr)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create(
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
        self.check_thawed(parent, || format!("create {name:?} in inode {parent}"))?;
        let layout = Layout {
            config: self.config,
            stripes: Vec::new(),
        };
        let attr = self.alloc(
            |ino| new_attr(ino, FileKind::File, mode, uid, gid, now),
            Body::File { layout },
            parent,
            name,
            now,
        )?;
        Ok(MetaReply::Attr(attr))
    }

    pub(super) fn mkdir(
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
        self.check_thawed(parent, || format!("mkdir {name:?} in inode {parent}"))?;
        let attr = self.alloc(
            |ino| new_attr(ino, FileKind::Dir, mode, uid, gid, now),
            Body::Dir {
                parent,
                entries: BTreeMap::new(),
            },
            parent,
            name,
            now,
        )?;
        self.add_nlink(parent, 1);
        Ok(MetaReply::Attr(attr))
    }

    pub(super) fn symlink(
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
        self.check_thawed(parent, || format!("symlink {name:?} in inode {parent}"))?;
        let attr = self.alloc(
            |ino| Attr {
                size: target.len() as u64,
                ..new_attr(ino, FileKind::Symlink, 0o777, uid, gid, now)
            },
            Body::Symlink {
                target: target.to_string(),
            },
            parent,
            name,
            now,
        )?;
        Ok(MetaReply::Attr(attr))
    }

    pub(super) fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &str, now: i64) -> Outcome {
        if self.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(fs(errno::EPERM, format!("inode {ino} is a directory")));
        }
        if self.check_new_entry(new_parent, new_name)?.is_some() {
            return Err(fs(errno::EEXIST, format!("{new_name:?} exists")));
        }
        let what = || format!("link inode {ino} as {new_name:?} in inode {new_parent}");
        self.check_thawed(ino, what)?;
        self.check_thawed(new_parent, what)?;
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

    pub(super) fn unlink(&mut self, parent: Ino, name: &str, now: i64) -> Outcome {
        check_name(name)?;
        let ino = self.entry(parent, name)?;
        let what = || format!("unlink {name:?} (inode {ino}) in inode {parent}");
        self.check_thawed(parent, what)?;
        self.check_thawed(ino, what)?;
        if self.inode(ino)?.attr.kind == FileKind::Dir {
            return Err(fs(errno::EISDIR, format!("{name:?} is a directory")));
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.touch_dir(parent, now);
        Ok(MetaReply::Freed(self.drop_link(ino, now)))
    }

    pub(super) fn rmdir(&mut self, parent: Ino, name: &str, now: i64) -> Outcome {
        check_name(name)?;
        let ino = self.entry(parent, name)?;
        let what = || format!("rmdir {name:?} (inode {ino}) in inode {parent}");
        self.check_thawed(parent, what)?;
        self.check_thawed(ino, what)?;
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

    pub(super) fn rename(
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
        let what =
            || format!("rename {name:?} in inode {parent} to {new_name:?} in inode {new_parent}");
        self.check_thawed(parent, what)?;
        self.check_thawed(new_parent, what)?;
        self.check_thawed(src, what)?;
        if let Some(t) = target {
            self.check_thawed(t, what)?;
        }
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

    pub(super) fn setattr(&mut self, ino: Ino, set: &SetAttr, now: i64) -> Outcome {
        self.check_thawed(ino, || "setattr".to_string())?;
        if set.size.is_some() {
            // Only a regular file has a size to set (EISDIR, EINVAL).
            self.file(ino)?;
        }
        let node = self.inode_mut(ino)?;
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
}
