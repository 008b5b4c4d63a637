//! File layouts: reading one, committing written stripes, and cutting one
//! down on truncation. Only regular files have a layout; asking it of a
//! directory is EISDIR and of a symlink EINVAL.

use std::collections::BTreeSet;
use std::ops::Bound;

use torchfs_proto::meta::{
    errno, group_of, Attr, FileLayout, FragmentRef, Ino, Layout, MetaError, MetaReply, NodeId,
    StripeBase, StripeEntry, LAYOUTS_MAX,
};

use torchfs_storage_client::stripe;

use super::{fs, stamp_ctime, Body, Outcome, State};

/// The error for a file-only operation on `body`, which is not a file.
fn not_a_file(ino: Ino, body: &Body) -> MetaError {
    match body {
        Body::Dir { .. } => fs(errno::EISDIR, format!("inode {ino} is a directory")),
        Body::File { .. } | Body::Symlink { .. } | Body::Node => {
            fs(errno::EINVAL, format!("inode {ino} is not a regular file"))
        }
    }
}

impl State {
    /// A regular file's attributes and layout.
    pub(super) fn file(&self, ino: Ino) -> Result<(&Attr, &Layout), MetaError> {
        let node = self.inode(ino)?;
        match &node.body {
            Body::File { layout } => Ok((&node.attr, layout)),
            other => Err(not_a_file(ino, other)),
        }
    }

    /// [`State::file`], mutable.
    pub(super) fn file_mut(&mut self, ino: Ino) -> Result<(&mut Attr, &mut Layout), MetaError> {
        let node = self.inode_mut(ino)?;
        match &mut node.body {
            Body::File { layout } => Ok((&mut node.attr, layout)),
            other => Err(not_a_file(ino, other)),
        }
    }

    pub(super) fn get_layout(&self, ino: Ino) -> Outcome {
        let (attr, layout) = self.file(ino)?;
        Ok(MetaReply::Layout {
            attr: attr.clone(),
            layout: layout.clone(),
        })
    }

    /// [`Self::get_layout`] of each of `inos` that is a regular file, in
    /// the order asked; the others are left out.
    pub(super) fn get_layouts(&self, inos: &[Ino]) -> Outcome {
        if inos.len() > LAYOUTS_MAX {
            return Err(MetaError::Invalid(format!(
                "GetLayouts of {} inodes: at most {LAYOUTS_MAX}",
                inos.len()
            )));
        }
        let found = inos
            .iter()
            .filter_map(|ino| self.file(*ino).ok())
            .map(|(attr, layout)| FileLayout {
                attr: attr.clone(),
                layout: layout.clone(),
            })
            .collect();
        Ok(MetaReply::Layouts(found))
    }

    /// The node fragment `f` lives on by the layouts and the placement:
    /// the `index`th node of its stripe's group, when a file's layout holds
    /// that stripe at that generation. None: no layout references it.
    pub fn fragment_home(&self, f: &FragmentRef) -> Option<NodeId> {
        let (_, layout) = self.file(f.ino).ok()?;
        let entry = layout.stripes.iter().find(|e| e.stripe == f.stripe)?;
        if entry.generation != f.generation {
            return None;
        }
        let group = group_of(&self.groups, f.ino, f.stripe)?;
        group.nodes.get(usize::from(f.index)).copied()
    }

    /// The layouts of regular files with inodes above `after`, in inode
    /// order, at most `limit` (0 or more than `LAYOUTS_MAX`: that many).
    pub(super) fn scan_layouts(&self, after: Ino, limit: u32) -> Outcome {
        let limit = match limit as usize {
            0 => LAYOUTS_MAX,
            n => n.min(LAYOUTS_MAX),
        };
        let found = self
            .inodes
            .range((Bound::Excluded(after), Bound::Unbounded))
            .filter_map(|(_, node)| match &node.body {
                Body::File { layout } => Some(FileLayout {
                    attr: node.attr.clone(),
                    layout: layout.clone(),
                }),
                _ => None,
            })
            .take(limit)
            .collect();
        Ok(MetaReply::Layouts(found))
    }

    /// Replaces the given stripes of a file's layout (inserting new ones in
    /// stripe order) and sets its size; answers the stripes replaced.
    pub(super) fn commit_layout(
        &mut self,
        ino: Ino,
        size: u64,
        stripes: &[StripeEntry],
        now: i64,
    ) -> Outcome {
        self.check_thawed(ino, || {
            format!("commit the layout of {} stripes", stripes.len())
        })?;
        let (attr, layout) = self.file_mut(ino)?;
        check_entries(layout, stripes)?;
        let replaced = replace_stripes(layout, stripes);
        attr.size = size;
        attr.mtime_ns = now;
        stamp_ctime(attr, now);
        Ok(MetaReply::Committed {
            attr: attr.clone(),
            replaced,
        })
    }

    /// [`Self::commit_layout`] for a file other clients may write too: each
    /// stripe commits only over the version it was merged into (`bases`);
    /// if any stripe moved on, nothing changes and the answer is
    /// `Conflict` with every named stripe as it is now (those that exist).
    /// The size only grows.
    /// docs/ARCHITECTURE.md, "Data path: many writers".
    pub(super) fn commit_stripes(
        &mut self,
        ino: Ino,
        size_at_least: u64,
        stripes: &[StripeEntry],
        bases: &[StripeBase],
        now: i64,
    ) -> Outcome {
        self.check_thawed(ino, || format!("commit {} stripes", stripes.len()))?;
        let (attr, layout) = self.file_mut(ino)?;
        if bases.len() != stripes.len() {
            return Err(MetaError::Invalid(format!(
                "{} stripes with {} bases",
                stripes.len(),
                bases.len()
            )));
        }
        check_entries(layout, stripes)?;
        let mut now_entries = Vec::new();
        let mut conflicted = false;
        for (s, base) in stripes.iter().zip(bases) {
            let current = layout
                .stripes
                .binary_search_by_key(&s.stripe, |e| e.stripe)
                .ok()
                .map(|i| &layout.stripes[i]);
            conflicted |= StripeBase::of(current) != *base;
            now_entries.extend(current.cloned());
        }
        if conflicted {
            return Ok(MetaReply::Conflict {
                attr: attr.clone(),
                stripes: now_entries,
            });
        }
        let replaced = replace_stripes(layout, stripes);
        attr.size = attr.size.max(size_at_least);
        attr.mtime_ns = now;
        stamp_ctime(attr, now);
        Ok(MetaReply::Committed {
            attr: attr.clone(),
            replaced,
        })
    }
}

/// Refuses entries that do not fit `layout` (the stripe rules every
/// client reads by: checksum count, sizes) or name a stripe twice.
fn check_entries(layout: &Layout, stripes: &[StripeEntry]) -> Result<(), MetaError> {
    let mut seen = BTreeSet::new();
    for s in stripes {
        stripe::validate_entry(&layout.config, s).map_err(|e| MetaError::Invalid(e.to_string()))?;
        if !seen.insert(s.stripe) {
            return Err(MetaError::Invalid(format!(
                "stripe {} given twice",
                s.stripe
            )));
        }
    }
    Ok(())
}

/// Puts `stripes` into `layout` (in stripe order); answers those replaced.
fn replace_stripes(layout: &mut Layout, stripes: &[StripeEntry]) -> Vec<StripeEntry> {
    let mut replaced = Vec::new();
    for s in stripes {
        match layout.stripes.binary_search_by_key(&s.stripe, |e| e.stripe) {
            Ok(i) => replaced.push(std::mem::replace(&mut layout.stripes[i], s.clone())),
            Err(i) => layout.stripes.insert(i, s.clone()),
        }
    }
    replaced
}

/// Cuts a layout down to `size` bytes: stripes wholly past it are dropped
/// (returned, to be freed) and the boundary stripe's `valid_bytes` clamped.
pub(super) fn truncate_layout(layout: &mut Layout, size: u64) -> Vec<StripeEntry> {
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
        // start < size, and the clamp only lowers valid_bytes (a u32).
        let keep = size - start;
        if keep < u64::from(s.valid_bytes) {
            s.valid_bytes = keep as u32;
        }
        true
    });
    freed
}
