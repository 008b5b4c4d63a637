//! rename(2) and renameat2(2): moving a name, replacing an existing target
//! (or refusing to, RENAME_NOREPLACE), and swapping two names
//! (RENAME_EXCHANGE). Every check runs before the first change.

use torchfs_proto::meta::{errno, FileKind, Ino, MetaReply, RenameMode};

use super::{check_name, fs, stamp_ctime, Body, Inode, Outcome, State};

impl State {
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

    fn is_dir(&self, ino: Ino) -> Result<bool, torchfs_proto::meta::MetaError> {
        Ok(self.inode(ino)?.attr.kind == FileKind::Dir)
    }

    /// Points a moved directory's `..` at its new parent.
    fn set_dir_parent(&mut self, dir: Ino, parent: Ino) {
        if let Some(Inode {
            body: Body::Dir { parent: p, .. },
            ..
        }) = self.inodes.get_mut(&dir)
        {
            *p = parent;
        }
    }

    pub(super) fn rename(
        &mut self,
        (parent, name): (Ino, &str),
        (new_parent, new_name): (Ino, &str),
        mode: RenameMode,
        now: i64,
        closed: &[Ino],
    ) -> Outcome {
        check_name(name)?;
        check_name(new_name)?;
        let src = self.entry(parent, name)?;
        let target = self.dir_entries(new_parent)?.get(new_name).copied();
        let src_is_dir = self.is_dir(src)?;
        let what =
            || format!("rename {name:?} in inode {parent} to {new_name:?} in inode {new_parent}");
        self.check_thawed(parent, what)?;
        self.check_thawed(new_parent, what)?;
        self.check_thawed(src, what)?;
        if let Some(t) = target {
            self.check_thawed(t, what)?;
        }
        match (mode, target) {
            (RenameMode::NoReplace, Some(_)) => {
                return Err(fs(errno::EEXIST, format!("{new_name:?} exists")))
            }
            (RenameMode::Exchange, None) => {
                return Err(fs(
                    errno::ENOENT,
                    format!("no entry {new_name:?} in inode {new_parent} to exchange with"),
                ))
            }
            (RenameMode::Exchange, Some(t)) => {
                return self.exchange((parent, name, src), (new_parent, new_name, t), now)
            }
            _ => {}
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
        let mut reply = MetaReply::Freed(Vec::new());
        if let Some(t) = target {
            if src_is_dir {
                self.inodes.remove(&t);
                self.drop_locks(t);
                self.add_nlink(new_parent, -1);
            } else {
                let freed = self.drop_link(t, now, closed);
                reply = MetaReply::Unlinked { ino: t, freed };
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
            self.set_dir_parent(src, new_parent);
        }
        if let Some(n) = self.inodes.get_mut(&src) {
            stamp_ctime(&mut n.attr, now);
        }
        self.touch_dir(parent, now);
        self.touch_dir(new_parent, now);
        Ok(reply)
    }

    /// RENAME_EXCHANGE: `a` and `b` (parent, name, inode) swap names; both
    /// exist and the thaw checks have run.
    fn exchange(&mut self, a: (Ino, &str, Ino), b: (Ino, &str, Ino), now: i64) -> Outcome {
        let (a_parent, a_name, a_ino) = a;
        let (b_parent, b_name, b_ino) = b;
        if a_ino == b_ino {
            return Ok(MetaReply::Freed(Vec::new()));
        }
        let a_is_dir = self.is_dir(a_ino)?;
        let b_is_dir = self.is_dir(b_ino)?;
        if (a_is_dir && self.is_within(b_parent, a_ino))
            || (b_is_dir && self.is_within(a_parent, b_ino))
        {
            return Err(fs(
                errno::EINVAL,
                format!("cannot exchange {a_name:?} and {b_name:?}: one contains the other"),
            ));
        }
        // All checks passed: from here on nothing fails.
        if let Ok(e) = self.dir_entries_mut(a_parent) {
            e.insert(a_name.to_string(), b_ino);
        }
        if let Ok(e) = self.dir_entries_mut(b_parent) {
            e.insert(b_name.to_string(), a_ino);
        }
        if a_parent != b_parent {
            let moved = i32::from(a_is_dir) - i32::from(b_is_dir);
            self.add_nlink(a_parent, -moved);
            self.add_nlink(b_parent, moved);
            if a_is_dir {
                self.set_dir_parent(a_ino, b_parent);
            }
            if b_is_dir {
                self.set_dir_parent(b_ino, a_parent);
            }
        }
        for ino in [a_ino, b_ino] {
            if let Some(n) = self.inodes.get_mut(&ino) {
                stamp_ctime(&mut n.attr, now);
            }
        }
        self.touch_dir(a_parent, now);
        self.touch_dir(b_parent, now);
        Ok(MetaReply::Freed(Vec::new()))
    }
}
