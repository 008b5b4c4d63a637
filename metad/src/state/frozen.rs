//! Frozen dataset versions (docs/ARCHITECTURE.md: Metadata): a directory tree made immutable
//! so that clients may load its whole metadata table once
//! ([`MetaRequest::ReadFrozen`]) and serve it from memory.
//!
//! - `Freeze` marks a directory and every inode below it `frozen`.
//! - `Unfreeze` thaws a whole frozen tree; only its root may be named (a
//!   frozen directory whose parent is not frozen).
//! - Every namespace or layout change that would touch a frozen inode, or
//!   the entries of a frozen directory, is refused with EROFS
//!   ([`State::check_thawed`], called by each command before its first
//!   change).
//!
//! Invariant: every inode reachable from a frozen directory is frozen.
//! Nothing can be linked into or moved into a frozen directory, and
//! `Unfreeze` keeps a hard-linked file frozen while another frozen tree
//! still names it.
//!
//! Every walk of a tree is iterative, with an explicit stack, and enters
//! each directory at most once: a corrupt tree (a directory named twice, a
//! cycle) cannot make it loop, and the stack never holds more frames than
//! there are directories.
//!
//! [`MetaRequest::ReadFrozen`]: torchfs_proto::meta::MetaRequest::ReadFrozen

use std::collections::{btree_map, BTreeSet};
use std::ops::ControlFlow;

use torchfs_proto::meta::{
    errno, FrozenBody, FrozenEntry, Ino, MetaError, MetaReply, FROZEN_PAGE_ENTRIES_MAX,
};

use super::{fs, stamp_ctime, Body, Inode, Outcome, State};

impl State {
    /// EROFS when `ino` is frozen; `what` names the change refused (e.g.
    /// `create "x" in inode 5`). A missing `ino` passes: the caller's own
    /// lookups answer ENOENT for it.
    pub(super) fn check_thawed(
        &self,
        ino: Ino,
        what: impl FnOnce() -> String,
    ) -> Result<(), MetaError> {
        match self.inodes.get(&ino) {
            Some(node) if node.attr.frozen => Err(fs(
                errno::EROFS,
                format!(
                    "{}: inode {ino} is frozen (part of a dataset version)",
                    what()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The directory `ino`, or ENOENT / ENOTDIR.
    fn frozen_dir_candidate(&self, ino: Ino) -> Result<&Inode, MetaError> {
        let node = self.inode(ino)?;
        match node.body {
            Body::Dir { .. } => Ok(node),
            _ => Err(fs(
                errno::ENOTDIR,
                format!("inode {ino} is not a directory"),
            )),
        }
    }

    /// Visits every entry strictly below the directory `root` in
    /// depth-first preorder, each directory's entries in name order:
    /// `visit(parent, name, ino, inode)`. A directory named twice (only in
    /// a corrupt tree) is listed each time but entered once. An entry
    /// naming a missing inode is ENOENT.
    fn walk_below<'a>(
        &'a self,
        root: Ino,
        mut visit: impl FnMut(Ino, &'a str, Ino, &'a Inode) -> ControlFlow<()>,
    ) -> Result<(), MetaError> {
        let mut entered = BTreeSet::from([root]);
        let mut stack: Vec<(Ino, btree_map::Iter<'a, String, Ino>)> =
            vec![(root, self.dir_entries(root)?.iter())];
        while let Some((parent, entries)) = stack.last_mut() {
            let parent = *parent;
            let Some((name, &ino)) = entries.next() else {
                stack.pop();
                continue;
            };
            let node = self.inodes.get(&ino).ok_or_else(|| {
                fs(
                    errno::ENOENT,
                    format!("entry {name:?} in inode {parent} names missing inode {ino}"),
                )
            })?;
            if visit(parent, name, ino, node).is_break() {
                return Ok(());
            }
            if let Body::Dir { entries, .. } = &node.body {
                if entered.insert(ino) {
                    stack.push((ino, entries.iter()));
                }
            }
        }
        Ok(())
    }

    /// `root` and every inode below it, each once.
    fn subtree(&self, root: Ino) -> Result<BTreeSet<Ino>, MetaError> {
        let mut inos = BTreeSet::from([root]);
        self.walk_below(root, |_, _, ino, _| {
            inos.insert(ino);
            ControlFlow::Continue(())
        })?;
        Ok(inos)
    }

    pub(super) fn freeze(&mut self, ino: Ino, now: i64) -> Outcome {
        let root = self.frozen_dir_candidate(ino)?;
        if root.attr.frozen {
            return Ok(MetaReply::Attr(root.attr.clone()));
        }
        let inos = self.subtree(ino)?;
        // All checks passed: from here on nothing fails.
        for i in &inos {
            if let Some(node) = self.inodes.get_mut(i) {
                if !node.attr.frozen {
                    node.attr.frozen = true;
                    stamp_ctime(&mut node.attr, now);
                }
            }
        }
        Ok(MetaReply::Attr(self.inode(ino)?.attr.clone()))
    }

    pub(super) fn unfreeze(&mut self, ino: Ino, now: i64) -> Outcome {
        let root = self.frozen_dir_candidate(ino)?;
        if !root.attr.frozen {
            return Ok(MetaReply::Attr(root.attr.clone()));
        }
        if let Body::Dir { parent, .. } = root.body {
            // The root directory is its own parent; it is always a tree's root.
            if parent != ino && self.inode(parent)?.attr.frozen {
                return Err(fs(
                    errno::EROFS,
                    format!(
                        "inode {ino} is inside a frozen tree (its parent inode {parent} is \
                         frozen); unfreeze its root"
                    ),
                ));
            }
        }
        let mut inos = self.subtree(ino)?;
        for keep in self.named_by_other_frozen_trees(&inos) {
            inos.remove(&keep);
        }
        // All checks passed: from here on nothing fails.
        for i in &inos {
            if let Some(node) = self.inodes.get_mut(i) {
                if node.attr.frozen {
                    node.attr.frozen = false;
                    stamp_ctime(&mut node.attr, now);
                }
            }
        }
        Ok(MetaReply::Attr(self.inode(ino)?.attr.clone()))
    }

    /// The hard-linked files of `tree` that a frozen directory outside it
    /// also names: thawing `tree` must leave them frozen. Scans every
    /// directory, but only when some file of `tree` has a link outside it.
    fn named_by_other_frozen_trees(&self, tree: &BTreeSet<Ino>) -> BTreeSet<Ino> {
        let linked_outside: BTreeSet<Ino> = tree
            .iter()
            .filter(|i| {
                self.inodes
                    .get(i)
                    .is_some_and(|n| matches!(n.body, Body::File { .. }) && n.attr.nlink > 1)
            })
            .copied()
            .collect();
        if linked_outside.is_empty() {
            return linked_outside;
        }
        let mut keep = BTreeSet::new();
        for (dir, node) in &self.inodes {
            if !node.attr.frozen || tree.contains(dir) {
                continue;
            }
            if let Body::Dir { entries, .. } = &node.body {
                keep.extend(entries.values().filter(|i| linked_outside.contains(i)));
            }
        }
        keep
    }

    /// One page of the frozen tree below `ino`: see
    /// [`torchfs_proto::meta::MetaRequest::ReadFrozen`].
    pub(super) fn read_frozen(&self, ino: Ino, offset: u64, limit: u32) -> Outcome {
        let root = self.frozen_dir_candidate(ino)?;
        if !root.attr.frozen {
            return Err(fs(errno::EINVAL, format!("inode {ino} is not frozen")));
        }
        let limit = match limit {
            0 => FROZEN_PAGE_ENTRIES_MAX,
            l => l.min(FROZEN_PAGE_ENTRIES_MAX),
        } as usize;
        let mut entries = Vec::new();
        let mut more = false;
        let mut index = 0u64;
        self.walk_below(ino, |parent, name, _, node| {
            index += 1;
            if index <= offset {
                return ControlFlow::Continue(());
            }
            if entries.len() == limit {
                more = true;
                return ControlFlow::Break(());
            }
            entries.push(FrozenEntry {
                parent,
                name: name.to_string(),
                attr: node.attr.clone(),
                body: match &node.body {
                    Body::File { layout } => FrozenBody::File(layout.clone()),
                    Body::Dir { .. } => FrozenBody::Dir,
                    Body::Symlink { target } => FrozenBody::Symlink(target.clone()),
                    Body::Node => FrozenBody::Node,
                },
            });
            ControlFlow::Continue(())
        })?;
        Ok(MetaReply::Frozen {
            root: root.attr.clone(),
            entries,
            more,
        })
    }
}
