//! Opening files: close-to-open revalidation with metad, create-and-open
//! in one write, and the disk-tier file a read-only open may hand to the
//! kernel (passthrough).

use std::sync::Arc;

use torchfs_proto::meta::{
    Attr, FileKind, Ino, Layout, MetaError, MetaReply, MetaRequest, SetAttr,
};
use torchfs_rdma::Transport;

use super::client::Client;
use super::control::{guard_name, is_control_fh, is_control_ino};
use super::error::{unexpected, ClientError, FileHandle};
use super::file::FileState;
use super::handles::OpenFile;
use super::meta::MetaService;
use super::namespace::{NewMode, Owner};
use super::sync::lock;

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Opens a regular file. Always revalidates with metad (close-to-open:
    /// the layout and size are fetched fresh; stripes this client holds
    /// unflushed writes to keep theirs, merged at commit), unless the file
    /// is in a loaded frozen tree (it cannot have changed).
    pub async fn open(
        &self,
        ino: Ino,
        write: bool,
        truncate: bool,
    ) -> Result<FileHandle, ClientError> {
        if is_control_ino(ino) {
            return self.inner.control.open(ino, write, || self.stats_text());
        }
        let trusted = if write || truncate {
            None
        } else {
            self.inner.data_cache.trusted_layout(ino)
        };
        let (attr, layout) = match trusted {
            Some(known) => known,
            None => match self.inner.frozen.open_layout(&self.inner.meta, ino).await {
                Ok(found) => found,
                Err(e) => return Err(self.stale_if_gone(ino, e)),
            },
        };
        // A file with no name left can only be reached through a name
        // cached before another client unlinked it (an open by path always
        // has a name). Opens of a file this client holds open
        // (`/proc/PID/fd`) go on.
        if attr.nlink == 0 && self.inner.handles.file_of(ino).is_none() {
            let gone = MetaError::fs(libc::ENOENT, format!("inode {ino} has no name left"));
            return Err(self.stale_if_gone(ino, gone.into()));
        }
        self.open_with(attr, layout, write, truncate).await
    }

    /// [`Self::open`] for reading of a file of a loaded frozen table (no
    /// recheck due): done at once, so a front-end answers on the thread
    /// that read the request. None: call [`Self::open`].
    pub fn open_now(&self, ino: Ino) -> Option<FileHandle> {
        let (attr, layout) = self.inner.frozen.table_now(ino)?.layout(ino)?;
        if attr.kind != FileKind::File {
            return None;
        }
        let fresh = FileState::from_layout(ino, attr.size, layout).ok()?;
        let (fh, open_already) = self.install(attr, fresh, false);
        // A frozen file cannot have changed: a state held busy by another
        // handle is as good as the table's.
        if let Some((file, fresh)) = open_already {
            if let Ok(mut st) = file.state.try_lock() {
                st.adopt(fresh);
            }
        }
        Some(fh)
    }

    /// A new handle on the file `fresh` describes (as just fetched):
    /// close-to-open, so cached data of any other version is stale now.
    /// When the inode is open here already, its shared state comes back
    /// with `fresh` for the caller to adopt.
    fn install(
        &self,
        attr: Attr,
        fresh: FileState,
        write: bool,
    ) -> (FileHandle, Option<(Arc<OpenFile>, FileState)>) {
        let (ino, version) = (attr.ino, fresh.version());
        self.inner.data_cache.validate(ino, version);
        self.cache_attr(attr);
        let mut fresh = Some(fresh);
        let (fh, file, created) = self
            .inner
            .handles
            .open(ino, write, version, || fresh.take().expect("taken once"));
        let open_already = if created {
            None
        } else {
            fresh.map(|fresh| (file, fresh))
        };
        (fh, open_already)
    }

    /// Creates (or, without `exclusive`, opens an existing) regular file
    /// and opens it for writing, in one metad write: the reply carries the
    /// layout an `Open` would fetch, and metad counts the file as held
    /// open by this client from the moment it exists.
    pub async fn create_open(
        &self,
        parent: Ino,
        name: &str,
        mode: NewMode,
        owner: Owner,
        exclusive: bool,
        truncate: bool,
    ) -> Result<(Attr, FileHandle), ClientError> {
        guard_name(parent, name)?;
        let req = MetaRequest::CreateOpen {
            parent,
            name: name.to_string(),
            mode: mode.mode,
            umask: mode.umask,
            uid: owner.uid,
            gid: owner.gid,
            exclusive,
            client_id: self.inner.meta.lease_id,
        };
        let (answer, dirs) = self.meta_call_dirs(req).await;
        let (attr, layout) = match self.unless_taken(parent, answer)? {
            MetaReply::Layout { attr, layout } => (attr, layout),
            other => return Err(unexpected("CreateOpen", other)),
        };
        let attr = self.created(parent, name, attr, dirs);
        // The kernel sends a create only for a name its lookup did not find,
        // so the file is new and empty: O_TRUNC (`open(.., "w")`, `cp`, `tar`,
        // Rust's `File::create`) has nothing to cut, and a truncate would be
        // a second metad write per file. A file another client created in
        // between is truncated if it holds data; if it is empty, only its
        // times are not touched.
        let truncate = truncate && attr.size > 0;
        let fh = self.open_with(attr.clone(), layout, true, truncate).await?;
        Ok((attr, fh))
    }

    /// The part of an open after metad answered: checks the kind, installs
    /// the layout as the handle's state and truncates if asked.
    async fn open_with(
        &self,
        attr: Attr,
        layout: Layout,
        write: bool,
        truncate: bool,
    ) -> Result<FileHandle, ClientError> {
        let ino = attr.ino;
        if attr.frozen && (write || truncate) {
            return Err(MetaError::fs(
                torchfs_proto::meta::errno::EROFS,
                format!("inode {ino} is in a frozen dataset version"),
            )
            .into());
        }
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(ClientError::IsDir { ino }),
            _ => return Err(ClientError::NotFile { ino }),
        }
        let fresh = FileState::from_layout(ino, attr.size, layout)
            .map_err(|source| ClientError::Layout { ino, source })?;
        let (fh, open_already) = self.install(attr, fresh, write);
        // Unflushed writes of this client stay (and keep their bases).
        if let Some((file, fresh)) = open_already {
            let mut st = file.state.lock().await;
            st.adopt(fresh);
            file.publish(&st);
        }
        if truncate && write {
            if let Err(e) = self
                .setattr(
                    ino,
                    SetAttr {
                        size: Some(0),
                        ..SetAttr::default()
                    },
                )
                .await
            {
                let _ = self.inner.handles.close(fh);
                return Err(e);
            }
        }
        Ok(fh)
    }

    /// An open of an inode with no name left (or none at all): the kernel
    /// reached it through a name another client has since removed. The
    /// names cached here for it go, and the answer is ESTALE, on which the
    /// kernel looks the name up again and opens what it names now.
    fn stale_if_gone(&self, ino: Ino, e: ClientError) -> ClientError {
        match e {
            ClientError::Meta(MetaError::Fs { errno, message }) if errno == libc::ENOENT => {
                lock(&self.inner.cache).forget_inode(ino);
                MetaError::fs(libc::ESTALE, message).into()
            }
            other => other,
        }
    }

    /// For FUSE passthrough: the disk-tier file holding all of a file
    /// opened read-only, when the cache has it at the open version. The
    /// caller hands it to the kernel, whose reads then bypass this client
    /// (the open counts as one disk-tier hit).
    pub async fn backing_file(&self, fh: FileHandle) -> Option<std::fs::File> {
        if is_control_fh(fh) {
            return None;
        }
        let (file, writable) = self.inner.handles.get(fh).ok()?;
        if writable {
            return None;
        }
        let (version, size) = {
            let st = file.state.lock().await;
            if st.pending() {
                return None;
            }
            (st.version(), st.size)
        };
        let path = self
            .inner
            .data_cache
            .backing_path(file.ino, version, size)?;
        std::fs::File::open(&path)
            .inspect_err(|e| tracing::debug!("passthrough file {}: {e}", path.display()))
            .ok()
    }

    /// Whether `ino` is a file of a loaded frozen dataset version: it
    /// cannot change while frozen, so a front-end may keep its cached
    /// pages across opens. A thaw is seen when the table goes (within
    /// `frozen_check_ms`, as for every answer from the table).
    pub fn is_immutable(&self, ino: Ino) -> bool {
        self.inner.frozen.holds(ino)
    }

    /// Whether the file `fh` opened is at the version its previous open
    /// here saw (close-to-open, as NFS): the front-end may keep the pages
    /// its page cache holds of it (FUSE: `FOPEN_KEEP_CACHE`).
    pub fn pages_current(&self, fh: FileHandle) -> bool {
        self.inner.handles.pages_current(fh)
    }

    /// Whether an inode is one of the `.torchfs/` control files (front-ends
    /// serve them without a page cache).
    pub fn is_control(&self, ino: Ino) -> bool {
        is_control_ino(ino)
    }

    /// Whether front-ends should bypass their page cache for `ino`: a plan
    /// reads it by byte ranges. The kernel's readahead would otherwise read
    /// past each range into neighbouring planned ranges (consuming them
    /// out of plan order and reading bytes the cache already holds), and
    /// its pages are dropped at the next open anyway.
    pub fn prefers_direct_io(&self, ino: Ino) -> bool {
        is_control_ino(ino) || self.inner.data_cache.has_planned_ranges(ino)
    }
}
