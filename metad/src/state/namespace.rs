//! The directory tree: creating, linking and unlinking entries, and setattr
//! (including truncation, which frees stripes). Renames are in `rename`.
//!
//! Each command checks everything before its first change (see the module
//! above): the helpers that change state run only after those checks.

use std::collections::BTreeMap;

use torchfs_proto::meta::{
    errno, Attr, FileKind, Ino, Layout, MetaError, MetaReply, SetAttr, SetTime, StripeEntry,
};

use super::layout::truncate_layout;
use super::{acl, check_name, fs, stamp_ctime, xattrs, Body, Inode, Outcome, State};

/// Longest symlink target accepted (bytes), as Linux's PATH_MAX.
const SYMLINK_BYTES_MAX: usize = 4096;
/// The set-group-ID mode bit.
const S_ISGID: u32 = 0o2000;

/// The mode a create-like request asks for, and the caller's umask (which
/// a default ACL on the parent replaces).
#[derive(Clone, Copy, Debug)]
pub(super) struct NewMode(pub u32, pub u32);

/// What a new inode takes from its parent directory.
struct Inherited {
    mode: u32,
    gid: u32,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn resolve(t: SetTime, now_ns: i64) -> i64 {
    match t {
        SetTime::Now => now_ns,
        SetTime::Ns(ns) => ns,
    }
}

fn new_attr(ino: Ino, kind: FileKind, mode: u32, uid: u32, gid: u32, now: i64) -> Attr {
    Attr {
        rdev: 0,
        has_xattrs: false,
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
    pub(super) fn touch_dir(&mut self, ino: Ino, now: i64) {
        if let Some(d) = self.inodes.get_mut(&ino) {
            d.attr.mtime_ns = now;
            stamp_ctime(&mut d.attr, now);
        }
    }

    pub(super) fn add_nlink(&mut self, ino: Ino, delta: i32) {
        if let Some(d) = self.inodes.get_mut(&ino) {
            d.attr.nlink = d.attr.nlink.saturating_add_signed(delta);
        }
    }

    /// What a new inode in `parent` starts with (as Linux's
    /// `inode_init_owner` and `posix_acl_create`): the requested mode less
    /// the umask, or masked by the parent's default ACL, which it then
    /// inherits; in a set-group-ID directory the directory's group, and a
    /// new directory keeps the set-group-ID bit.
    fn inherit(&self, parent: Ino, kind: FileKind, mode: NewMode, gid: u32) -> Inherited {
        let NewMode(mode, umask) = mode;
        let dir = self.inodes.get(&parent);
        // Symlinks take no ACL (their mode is always 0o777).
        let default_acl = dir
            .filter(|_| kind != FileKind::Symlink)
            .and_then(|d| d.xattrs.get(xattrs::ACL_DEFAULT));
        let (mut mode, xattrs) = match acl::inherit(default_acl, kind, mode) {
            Some((mode, xattrs)) => (mode, xattrs.into_iter().collect()),
            None => (mode & !umask, BTreeMap::new()),
        };
        let mut gid = gid;
        if let Some(d) = dir.filter(|d| d.attr.mode & S_ISGID != 0) {
            gid = d.attr.gid;
            if kind == FileKind::Dir {
                mode |= S_ISGID;
            }
        }
        Inherited {
            mode: mode & 0o7777,
            gid,
            xattrs,
        }
    }

    /// Checks that `name` may be created in `parent`; Ok(Some(ino)) when it
    /// already exists.
    fn check_new_entry(&self, parent: Ino, name: &str) -> Result<Option<Ino>, MetaError> {
        check_name(name)?;
        Ok(self.dir_entries(parent)?.get(name).copied())
    }

    /// Creates an inode named `name` in `parent` (checked by the caller)
    /// with what it inherits from `parent`, and touches `parent`. Fails,
    /// changing nothing, only when inode numbers are exhausted.
    fn alloc(
        &mut self,
        (parent, name): (Ino, &str),
        (kind, mode): (FileKind, NewMode),
        (uid, gid): (u32, u32),
        body: Body,
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
        let inherited = self.inherit(parent, kind, mode, gid);
        let mut attr = new_attr(ino, kind, inherited.mode, uid, inherited.gid, now);
        attr.has_xattrs = !inherited.xattrs.is_empty();
        match &body {
            Body::Symlink { target } => attr.size = target.len() as u64,
            Body::Dir { .. } => self.add_nlink(parent, 1),
            _ => {}
        }
        let mut inode = Inode::new(attr.clone(), body);
        inode.xattrs = inherited.xattrs;
        self.inodes.insert(ino, inode);
        if let Ok(entries) = self.dir_entries_mut(parent) {
            entries.insert(name.to_string(), ino);
        }
        self.touch_dir(parent, now);
        Ok(attr)
    }

    fn empty_file(&self) -> Body {
        Body::File {
            layout: Layout {
                config: self.config,
                stripes: Vec::new(),
            },
        }
    }

    pub(super) fn create(
        &mut self,
        (parent, name): (Ino, &str),
        mode: NewMode,
        owner: (u32, u32),
        exclusive: bool,
        now: i64,
    ) -> Outcome {
        if let Some(existing) = self.check_new_entry(parent, name)? {
            let node = self.inode(existing)?;
            return match node.attr.kind {
                _ if exclusive => Err(fs(errno::EEXIST, format!("{name:?} exists"))),
                FileKind::File => Ok(MetaReply::Attr(node.attr.clone())),
                FileKind::Dir => Err(fs(errno::EISDIR, format!("{name:?} is a directory"))),
                _ => Err(fs(errno::EEXIST, format!("{name:?} exists"))),
            };
        }
        self.check_thawed(parent, || format!("create {name:?} in inode {parent}"))?;
        let body = self.empty_file();
        let attr = self.alloc((parent, name), (FileKind::File, mode), owner, body, now)?;
        Ok(MetaReply::Attr(attr))
    }

    /// mknod(2): a FIFO, device node, socket, or an empty regular file.
    pub(super) fn mknod(
        &mut self,
        (parent, name): (Ino, &str),
        kind: FileKind,
        mode: NewMode,
        owner: (u32, u32),
        rdev: u32,
        now: i64,
    ) -> Outcome {
        if !kind.is_node() {
            return Err(fs(
                errno::EINVAL,
                format!("mknod cannot make a {kind:?} (use mkdir or symlink)"),
            ));
        }
        if self.check_new_entry(parent, name)?.is_some() {
            return Err(fs(errno::EEXIST, format!("{name:?} exists")));
        }
        self.check_thawed(parent, || format!("mknod {name:?} in inode {parent}"))?;
        let body = match kind {
            FileKind::File => self.empty_file(),
            _ => Body::Node,
        };
        let mut attr = self.alloc((parent, name), (kind, mode), owner, body, now)?;
        if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            attr.rdev = rdev;
            self.inode_mut(attr.ino)?.attr.rdev = rdev;
        }
        Ok(MetaReply::Attr(attr))
    }

    pub(super) fn mkdir(
        &mut self,
        (parent, name): (Ino, &str),
        mode: NewMode,
        owner: (u32, u32),
        now: i64,
    ) -> Outcome {
        if self.check_new_entry(parent, name)?.is_some() {
            return Err(fs(errno::EEXIST, format!("{name:?} exists")));
        }
        self.check_thawed(parent, || format!("mkdir {name:?} in inode {parent}"))?;
        let body = Body::Dir {
            parent,
            entries: BTreeMap::new(),
        };
        let attr = self.alloc((parent, name), (FileKind::Dir, mode), owner, body, now)?;
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
        let body = Body::Symlink {
            target: target.to_string(),
        };
        let attr = self.alloc(
            (parent, name),
            (FileKind::Symlink, NewMode(0o777, 0)),
            (uid, gid),
            body,
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
        stamp_ctime(&mut node.attr, now);
        let attr = node.attr.clone();
        self.touch_dir(new_parent, now);
        Ok(MetaReply::Attr(attr))
    }

    /// Drops one link of a non-directory. When none is left, a regular
    /// file the leader did not vouch `closed` becomes an orphan (open
    /// handles keep using it); anything else is freed, and the stripes no
    /// longer referenced are returned for the caller to delete.
    pub(super) fn drop_link(&mut self, ino: Ino, now: i64, closed: &[Ino]) -> Vec<StripeEntry> {
        let Some(node) = self.inodes.get_mut(&ino) else {
            return Vec::new();
        };
        node.attr.nlink = node.attr.nlink.saturating_sub(1);
        stamp_ctime(&mut node.attr, now);
        if node.attr.nlink > 0 {
            return Vec::new();
        }
        if matches!(node.body, Body::File { .. }) && !closed.contains(&ino) {
            self.orphans.insert(ino, now);
            return Vec::new();
        }
        self.drop_locks(ino);
        match self.inodes.remove(&ino) {
            Some(Inode {
                body: Body::File { layout },
                ..
            }) => layout.stripes,
            _ => Vec::new(),
        }
    }

    pub(super) fn unlink(&mut self, parent: Ino, name: &str, now: i64, closed: &[Ino]) -> Outcome {
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
        let freed = self.drop_link(ino, now, closed);
        Ok(MetaReply::Unlinked { ino, freed })
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
        self.drop_locks(ino);
        self.add_nlink(parent, -1);
        self.touch_dir(parent, now);
        Ok(MetaReply::Freed(Vec::new()))
    }

    pub(super) fn setattr(&mut self, ino: Ino, set: &SetAttr, now: i64) -> Outcome {
        self.check_thawed(ino, || "setattr".to_string())?;
        if set.size.is_some() {
            // Only a regular file has a size to set (EISDIR, EINVAL).
            self.file(ino)?;
        }
        let node = self.inode_mut(ino)?;
        if let Some(mode) = set.mode {
            // chmod of an inode with an access ACL changes the ACL too.
            if let Some(acl) = node.xattrs.get_mut(xattrs::ACL_ACCESS) {
                acl::chmod_acl(acl, mode);
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
        stamp_ctime(a, now);
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
