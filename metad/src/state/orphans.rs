//! Files unlinked while open (POSIX keeps them readable and writable
//! through the open handles until the last close).
//!
//! The state machine cannot know who holds what open: that is volatile,
//! leader-local knowledge (clients' leases, see `leases` in the crate). So
//! the leader vouches, in each command, for the inodes it knows no client
//! holds open; a file losing its last link that nobody vouched for becomes
//! an orphan: it keeps its inode (nlink 0, no name) and its layout. When
//! the leader sees that no live client holds an orphan open, it proposes a
//! `Reclaim`, which frees it; the freed stripes become garbage, handed to
//! clients (in keep-alive replies) to delete, and dropped when one reports
//! that it did.

use torchfs_proto::meta::{Ino, Layout, MetaReply};

use super::{Body, State};

impl State {
    /// Orphans and when each lost its last link.
    pub fn orphans(&self) -> &std::collections::BTreeMap<Ino, i64> {
        &self.orphans
    }

    /// Freed files whose fragments are still to delete.
    pub fn garbage(&self) -> &std::collections::BTreeMap<Ino, Layout> {
        &self.garbage
    }

    /// The inode `name` in `parent` names now, if any (the leader's guess
    /// of what an unlink or rename will drop).
    pub fn entry_ino(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.dir_entries(parent).ok()?.get(name).copied()
    }

    pub(super) fn reclaim(&mut self, inos: &[Ino]) -> MetaReply {
        for ino in inos {
            if self.orphans.remove(ino).is_none() {
                continue;
            }
            self.drop_locks(*ino);
            if let Some(node) = self.inodes.remove(ino) {
                if let Body::File { layout } = node.body {
                    if !layout.stripes.is_empty() {
                        self.garbage.insert(*ino, layout);
                    }
                }
            }
        }
        MetaReply::Unit
    }

    pub(super) fn drop_garbage(&mut self, inos: &[Ino]) -> MetaReply {
        for ino in inos {
            self.garbage.remove(ino);
        }
        MetaReply::Unit
    }
}
