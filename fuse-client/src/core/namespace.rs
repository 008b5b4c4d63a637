//! Namespace changes: creates, links, removals, renames and setattr (which
//! also touches the per-inode write state), each a metad call that keeps
//! the attribute and dentry cache true for this client's own changes
//! (lookups: `lookup`; opens: `open`).

use std::time::Instant;

use torchfs_proto::meta::{
    Attr, ChangedDir, FileKind, Ino, MetaReply, MetaRequest, RenameMode, SetAttr,
};
use torchfs_rdma::Transport;

use super::client::Client;
use super::control::{guard_name, is_control_ino};
use super::error::{unexpected, ClientError};
use super::meta::MetaService;
use super::sync::lock;

/// The mode a create-like call asks for and the caller's umask, which metad
/// applies unless the parent's default ACL replaces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewMode {
    pub mode: u32,
    pub umask: u32,
}

/// The owner of a new inode: the caller's uid and (primary) gid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// The attributes a reply of `request` carries.
fn attr_of(request: &'static str, reply: MetaReply) -> Result<Attr, ClientError> {
    match reply {
        MetaReply::Attr(attr) => Ok(attr),
        other => Err(unexpected(request, other)),
    }
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Changes attributes. A size change is applied by metad to the
    /// committed layout and here to this client's buffers and uncommitted
    /// uploads; freed fragments are deleted in the background.
    pub async fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attr, ClientError> {
        if is_control_ino(ino) {
            let size_only = set.mode.is_none() && set.uid.is_none() && set.gid.is_none();
            return self.inner.control.setattr(ino, size_only);
        }
        if set.size.is_some() {
            self.inner.data_cache.invalidate(ino);
        }
        let open = self.inner.handles.file_of(ino);
        let (Some(size), Some(file)) = (set.size, open) else {
            let reply = self.meta_call(MetaRequest::SetAttr { ino, set }).await?;
            return self.setattr_reply(ino, reply);
        };
        // Hold the inode's state so no write or flush interleaves.
        let mut st = file.state.lock().await;
        let reply = self.meta_call(MetaRequest::SetAttr { ino, set }).await?;
        let dropped = st.truncate(size);
        self.delete_in_background(ino, st.config, dropped);
        file.publish(&st);
        drop(st);
        self.setattr_reply(ino, reply)
    }

    /// Makes a regular file at least `size` bytes long (fallocate's
    /// default mode); a file already that long is left alone.
    pub async fn extend(&self, ino: Ino, size: u64) -> Result<(), ClientError> {
        let attr = self.getattr(ino).await?;
        if attr.kind != FileKind::File {
            return Err(ClientError::NotFile { ino });
        }
        if attr.size < size {
            let set = SetAttr {
                size: Some(size),
                ..SetAttr::default()
            };
            self.setattr(ino, set).await?;
        }
        Ok(())
    }

    fn setattr_reply(&self, ino: Ino, reply: MetaReply) -> Result<Attr, ClientError> {
        let (attr, freed) = match reply {
            MetaReply::Attr(attr) => (attr, Vec::new()),
            MetaReply::AttrFreed { attr, freed } => (attr, freed),
            other => return Err(unexpected("SetAttr", other)),
        };
        // A chmod rewrites the access ACL too: drop the cached xattrs.
        lock(&self.inner.cache).invalidate_attr(ino);
        let cfg = self.stripe_config_of(ino);
        self.delete_in_background(ino, cfg, freed);
        Ok(self.cache_attr(attr))
    }

    /// Creates (or with `exclusive` false, finds) a regular file. `mode`
    /// is the caller's, without its `umask` applied: metad applies it
    /// unless the parent has a default ACL (the same for mkdir and mknod).
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        mode: NewMode,
        owner: Owner,
        exclusive: bool,
    ) -> Result<Attr, ClientError> {
        guard_name(parent, name)?;
        let req = MetaRequest::Create {
            parent,
            name: name.to_string(),
            mode: mode.mode,
            umask: mode.umask,
            uid: owner.uid,
            gid: owner.gid,
            exclusive,
        };
        let (attr, dirs) = self.attr_reply_dirs("Create", req).await;
        let attr = self.unless_taken(parent, attr)?;
        Ok(self.created(parent, name, attr, dirs))
    }

    pub async fn mkdir(
        &self,
        parent: Ino,
        name: &str,
        mode: NewMode,
        owner: Owner,
    ) -> Result<Attr, ClientError> {
        guard_name(parent, name)?;
        let req = MetaRequest::Mkdir {
            parent,
            name: name.to_string(),
            mode: mode.mode,
            umask: mode.umask,
            uid: owner.uid,
            gid: owner.gid,
        };
        let asked_at = Instant::now();
        let (attr, dirs) = self.attr_reply_dirs("Mkdir", req).await;
        let attr = self.unless_taken(parent, attr)?;
        // New, so empty: complete from before it existed (the earliest
        // time its listing could be from), which lets the creates that
        // fill it skip their lookups.
        lock(&self.inner.cache).put_complete(attr.ino, attr.ctime_ns, asked_at);
        Ok(self.created(parent, name, attr, dirs))
    }

    /// Makes a FIFO, device node (`rdev`), socket or empty regular file.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        kind: FileKind,
        mode: NewMode,
        owner: Owner,
        rdev: u32,
    ) -> Result<Attr, ClientError> {
        guard_name(parent, name)?;
        let req = MetaRequest::Mknod {
            parent,
            name: name.to_string(),
            kind,
            mode: mode.mode,
            umask: mode.umask,
            uid: owner.uid,
            gid: owner.gid,
            rdev,
        };
        let (attr, dirs) = self.attr_reply_dirs("Mknod", req).await;
        let attr = self.unless_taken(parent, attr)?;
        Ok(self.created(parent, name, attr, dirs))
    }

    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        owner: Owner,
    ) -> Result<Attr, ClientError> {
        guard_name(parent, name)?;
        let req = MetaRequest::Symlink {
            parent,
            name: name.to_string(),
            target: target.to_string(),
            uid: owner.uid,
            gid: owner.gid,
        };
        let (attr, dirs) = self.attr_reply_dirs("Symlink", req).await;
        let attr = self.unless_taken(parent, attr)?;
        Ok(self.created(parent, name, attr, dirs))
    }

    pub async fn link(
        &self,
        ino: Ino,
        new_parent: Ino,
        new_name: &str,
    ) -> Result<Attr, ClientError> {
        guard_name(new_parent, new_name)?;
        if is_control_ino(ino) {
            return Err(ClientError::Control {
                reason: "control files cannot be linked",
            });
        }
        let req = MetaRequest::Link {
            ino,
            new_parent,
            new_name: new_name.to_string(),
        };
        let (attr, dirs) = self.attr_reply_dirs("Link", req).await;
        let attr = self.unless_taken(new_parent, attr)?;
        Ok(self.created(new_parent, new_name, attr, dirs))
    }

    /// Removes a name; when it was the last link, the file's fragments are
    /// deleted in the background.
    pub async fn unlink(&self, parent: Ino, name: &str) -> Result<(), ClientError> {
        guard_name(parent, name)?;
        let (reply, dirs) = self
            .meta_call_dirs(MetaRequest::Unlink {
                parent,
                name: name.to_string(),
            })
            .await;
        let removed = self.removed(parent, name, "Unlink", reply);
        self.note_dirs(dirs);
        removed
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> Result<(), ClientError> {
        guard_name(parent, name)?;
        let (reply, dirs) = self
            .meta_call_dirs(MetaRequest::Rmdir {
                parent,
                name: name.to_string(),
            })
            .await;
        let victim = lock(&self.inner.cache).last_known(parent, name);
        self.forget_name_unless(parent, name, victim, reply.is_ok());
        self.note_dirs(dirs);
        match reply? {
            MetaReply::Unit | MetaReply::Freed(_) => Ok(()),
            other => Err(unexpected("Rmdir", other)),
        }
    }

    /// Renames; a file replaced at the destination loses its fragments
    /// (in the background) when that was its last link. `mode` says what
    /// happens to an existing target (renameat2's flags).
    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        mode: RenameMode,
    ) -> Result<(), ClientError> {
        guard_name(parent, name)?;
        guard_name(new_parent, new_name)?;
        let req = MetaRequest::Rename {
            parent,
            name: name.to_string(),
            new_parent,
            new_name: new_name.to_string(),
            mode,
        };
        let (reply, dirs) = self.meta_call_dirs(req).await;
        let moved = lock(&self.inner.cache).last_known(parent, name);
        self.forget_name(parent, name, moved);
        let renamed = reply.is_ok();
        let removed = self.removed(new_parent, new_name, "Rename", reply);
        {
            let mut cache = lock(&self.inner.cache);
            match moved {
                // The moved name's new entry, so a directory held complete
                // stays so (`note_dirs` says whether it does).
                Some(ino) if renamed && mode != RenameMode::Exchange => {
                    cache.put_entry(new_parent, new_name, ino, Instant::now());
                }
                // An inode this client did not know, or two swapped.
                _ => {
                    cache.forget_complete(parent);
                    cache.forget_complete(new_parent);
                }
            }
        }
        self.note_dirs(dirs);
        removed
    }

    /// [`Self::attr_reply`] for a namespace write, with the directories it
    /// changed (see [`Self::note_dirs`]).
    async fn attr_reply_dirs(
        &self,
        request: &'static str,
        req: MetaRequest,
    ) -> (Result<Attr, ClientError>, Vec<ChangedDir>) {
        let (reply, dirs) = self.meta_call_dirs(req).await;
        (reply.and_then(|r| attr_of(request, r)), dirs)
    }

    pub(super) async fn attr_reply(
        &self,
        request: &'static str,
        req: MetaRequest,
    ) -> Result<Attr, ClientError> {
        attr_of(request, self.meta_call(req).await?)
    }

    /// After an unlink of `name`, or a rename over it: forgets the name and
    /// the inode metad says it led to, and deletes that inode's freed
    /// stripes in the background. The inode comes with the reply, never from
    /// a lookup made before (the name may have changed in between).
    fn removed(
        &self,
        parent: Ino,
        name: &str,
        request: &'static str,
        reply: Result<MetaReply, ClientError>,
    ) -> Result<(), ClientError> {
        let victim = match &reply {
            Ok(MetaReply::Unlinked { ino, .. }) => Some(*ino),
            // Failed, or nothing was replaced: whatever this client knew of
            // the name goes.
            _ => lock(&self.inner.cache).last_known(parent, name),
        };
        self.forget_name_unless(parent, name, victim, reply.is_ok());
        if let Some(ino) = victim {
            self.inner.data_cache.invalidate(ino);
        }
        let (ino, freed) = match reply? {
            MetaReply::Unit => return Ok(()),
            MetaReply::Unlinked { ino, freed } => (Some(ino), freed),
            // What a metad before `Unlinked` answers.
            MetaReply::Freed(freed) => (victim, freed),
            other => return Err(unexpected(request, other)),
        };
        match ino {
            _ if freed.is_empty() => {}
            Some(ino) => self.delete_in_background(ino, self.stripe_config_of(ino), freed),
            None => tracing::warn!(
                "{request} freed {} stripes of an unknown inode; left for GC",
                freed.len()
            ),
        }
        Ok(())
    }

    /// [`Self::forget_name`] after a removal that `succeeded` or not: when
    /// it failed the name may still be there, so `parent` is no longer
    /// held complete (its dentries no longer hold every name).
    fn forget_name_unless(&self, parent: Ino, name: &str, ino: Option<Ino>, succeeded: bool) {
        if !succeeded {
            lock(&self.inner.cache).forget_complete(parent);
        }
        self.forget_name(parent, name, ino);
    }

    /// Forgets a removed or moved name, and the attributes it changed.
    fn forget_name(&self, parent: Ino, name: &str, ino: Option<Ino>) {
        let mut cache = lock(&self.inner.cache);
        cache.remove_entry(parent, name);
        cache.invalidate_attr(parent);
        if let Some(ino) = ino {
            cache.invalidate_attr(ino);
        }
    }

    /// Passes a create-like call's answer on. After a failure `parent` is
    /// no longer held complete: EEXIST means it holds a name this client
    /// did not know of, and a write that timed out may have been applied.
    pub(super) fn unless_taken<R>(
        &self,
        parent: Ino,
        answer: Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        if answer.is_err() {
            lock(&self.inner.cache).forget_complete(parent);
        }
        answer
    }

    /// Caches what a create-like call returned. metad took a new entry in
    /// `parent`, so a frozen table holding it is out of date (thawed).
    /// `dirs`: the directories' attributes metad sent with the reply.
    pub(super) fn created(
        &self,
        parent: Ino,
        name: &str,
        attr: Attr,
        dirs: Vec<ChangedDir>,
    ) -> Attr {
        self.inner.frozen.changed(parent);
        {
            let mut cache = lock(&self.inner.cache);
            let now = Instant::now();
            cache.invalidate_attr(parent);
            cache.put_entry(parent, name, attr.ino, now);
            cache.put_attr(attr.clone(), now);
        }
        self.note_dirs(dirs);
        attr
    }

    /// The stripe configuration of an inode: its open state's, else the
    /// cluster's (per-directory configs do not exist yet).
    fn stripe_config_of(&self, ino: Ino) -> torchfs_proto::meta::StripeConfig {
        match self.inner.handles.file_of(ino) {
            Some(file) => match file.state.try_lock() {
                Ok(st) => st.config,
                Err(_) => self.inner.storage.map().config,
            },
            None => self.inner.storage.map().config,
        }
    }
}
