//! Opening files: how each open is answered (page cache, direct I/O, or
//! passthrough to the disk tier's file), for `open` and `create`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{FileHandle, FopenFlags, Generation, INodeNo, ReplyCreate, ReplyOpen, ReplyWrite};

use super::attr::file_attr;
use super::passthrough::OpenAs;
use super::{errno, Fs};
use crate::core::{MetaService, NewMode, Owner};
use torchfs_rdma::Transport;

/// How open(2) opens a file: for writing, truncating, appending.
#[derive(Clone, Copy)]
pub(super) struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    /// O_APPEND: each write goes to the file's end as this client knows it
    /// (the kernel's own idea of the end may be older), so the handle
    /// bypasses the page cache, which would hold the bytes where the kernel
    /// thought they went.
    pub append: bool,
}

/// What a create(2) with O_CREAT asks for besides the name.
pub(super) struct CreateOpen {
    pub exclusive: bool,
    pub truncate: bool,
    pub append: bool,
    pub mode: NewMode,
    pub owner: Owner,
}

impl<M: MetaService, T: Transport> Fs<M, T> {
    /// An open the frozen table answers (a read of a file of a frozen
    /// dataset version, no passthrough, no plan), answered at once on the
    /// thread that read it: a hand-off to a task costs a thread wake-up,
    /// more than the open itself. Otherwise the reply is handed back.
    pub(super) fn open_now(&self, ino: u64, mode: OpenMode, reply: ReplyOpen) -> Option<ReplyOpen> {
        if mode.write
            || mode.truncate
            || mode.append
            || self.passthrough.load(Ordering::Relaxed)
            || self.client.prefers_direct_io(ino)
        {
            return Some(reply);
        }
        let Some(fh) = self.client.open_now(ino) else {
            return Some(reply);
        };
        reply.opened(
            FileHandle(fh),
            FopenFlags::FOPEN_NOFLUSH | FopenFlags::FOPEN_KEEP_CACHE,
        );
        None
    }

    pub(super) async fn open(self: Arc<Self>, ino: u64, mode: OpenMode, reply: ReplyOpen) {
        let OpenMode {
            write,
            truncate,
            append,
        } = mode;
        let fh = match self.client.open(ino, write, truncate).await {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno(&e)),
        };
        // Control files: no page cache (their size is 0, stats change at
        // every open, and plan writes must reach the core as written).
        if self.client.is_control(ino) {
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        // A read-only handle has nothing to flush at close (its locks go
        // at release): spare the kernel that round trip. A file of a frozen
        // dataset version cannot change: the kernel keeps its pages across
        // opens (a warm epoch reads them from the page cache).
        let mut open_flags = if write {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        // Nor can one whose layout is the one its previous open here saw
        // (close-to-open, as NFS keeps its page cache).
        let keep_pages = !write && (self.client.is_immutable(ino) || self.client.pages_current(fh));
        if keep_pages {
            open_flags |= FopenFlags::FOPEN_KEEP_CACHE;
        }
        // Files a plan reads by ranges: no kernel readahead across ranges.
        let direct = append || self.client.prefers_direct_io(ino);
        if !self.passthrough.load(Ordering::Relaxed) {
            let flags = if direct {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::empty()
            };
            return reply.opened(FileHandle(fh), flags | open_flags);
        }
        if direct {
            self.io_modes.open_direct(ino, fh);
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | open_flags);
        }
        // Looked up before the I/O-mode decision, which must not wait.
        let file = if write {
            None
        } else {
            self.client.backing_file(fh).await
        };
        let answer = self.io_modes.open(ino, fh, !write, || {
            reply
                .open_backing(file.as_ref()?)
                .inspect_err(|e| tracing::warn!("passthrough of inode {ino}: {e}"))
                .ok()
        });
        match answer {
            OpenAs::Cached => reply.opened(FileHandle(fh), open_flags),
            OpenAs::Direct => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | open_flags)
            }
            // The kernel reads the backing file itself: no page cache.
            OpenAs::Passthrough(id) => {
                let flags = open_flags - FopenFlags::FOPEN_KEEP_CACHE;
                reply.opened_passthrough(FileHandle(fh), flags, &id)
            }
        }
    }

    pub(super) async fn create(
        self: Arc<Self>,
        parent: u64,
        name: String,
        open: CreateOpen,
        reply: ReplyCreate,
    ) {
        let result = self
            .client
            .create_open(
                parent,
                &name,
                open.mode,
                open.owner,
                open.exclusive,
                open.truncate,
            )
            .await;
        match result {
            Ok((attr, fh)) => {
                let mut flags = FopenFlags::empty();
                if open.append {
                    flags = FopenFlags::FOPEN_DIRECT_IO;
                    if self.passthrough.load(Ordering::Relaxed) {
                        self.io_modes.open_direct(attr.ino, fh);
                    }
                } else if self.passthrough.load(Ordering::Relaxed) {
                    if let OpenAs::Direct = self.io_modes.open(attr.ino, fh, false, || None) {
                        flags = FopenFlags::FOPEN_DIRECT_IO;
                    }
                }
                reply.created(
                    &self.options.entry_ttl,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    flags,
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl<M: MetaService, T: Transport> Fs<M, T> {
    /// A write to a handle opened with O_APPEND: at the end of the file as
    /// this client knows it (fresh after a lock: lock coherence), not at
    /// `offset`, the kernel's own idea of the end. When they differ, the
    /// kernel's attributes and pages of the file are stale: dropped.
    pub(super) async fn append(
        self: Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        data: Vec<u8>,
        reply: ReplyWrite,
    ) {
        match self.client.append(fh, &data).await {
            Ok((written, at)) => {
                if at != offset {
                    self.drop_kernel_cache(ino, true).await;
                }
                reply.written(written)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Tells the kernel to drop its cached attributes of `ino`, and with
    /// `pages` its cached pages (another client changed the file). The
    /// notification blocks until the kernel has dropped the pages: off the
    /// runtime's threads.
    pub(super) async fn drop_kernel_cache(&self, ino: u64, pages: bool) {
        let Some(notifier) = self.notifier.get().cloned() else {
            return;
        };
        // A negative offset drops the attributes only.
        let offset = if pages { 0 } else { -1 };
        let sent =
            tokio::task::spawn_blocking(move || notifier.inval_inode(INodeNo(ino), offset, 0))
                .await;
        match sent {
            Ok(Ok(())) => {}
            // The kernel holds nothing of an inode it has forgotten.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Ok(Err(e)) => tracing::warn!("drop the kernel's cache of inode {ino}: {e}"),
            Err(e) => tracing::warn!("drop the kernel's cache of inode {ino}: {e}"),
        }
    }
}
