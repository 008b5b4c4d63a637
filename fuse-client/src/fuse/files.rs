//! Opening files: how each open is answered (page cache, direct I/O, or
//! passthrough to the disk tier's file), for `open` and `create`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::{FileHandle, FopenFlags, Generation, ReplyCreate, ReplyOpen};

use super::attr::file_attr;
use super::passthrough::OpenAs;
use super::{errno, Fs};
use crate::core::{NewMode, Owner};

/// What a create(2) with O_CREAT asks for besides the name.
pub(super) struct CreateOpen {
    pub exclusive: bool,
    pub truncate: bool,
    pub mode: NewMode,
    pub owner: Owner,
}

impl Fs {
    pub(super) async fn open(
        self: Arc<Self>,
        ino: u64,
        write: bool,
        truncate: bool,
        reply: ReplyOpen,
    ) {
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
        // at release): spare the kernel that round trip.
        let no_flush = if write {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        // Files a plan reads by ranges: no kernel readahead across ranges.
        let direct = self.client.prefers_direct_io(ino);
        if !self.passthrough.load(Ordering::Relaxed) {
            let flags = if direct {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::empty()
            };
            return reply.opened(FileHandle(fh), flags | no_flush);
        }
        if direct {
            self.io_modes.open_direct(ino, fh);
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | no_flush);
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
            OpenAs::Cached => reply.opened(FileHandle(fh), no_flush),
            OpenAs::Direct => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | no_flush),
            OpenAs::Passthrough(id) => reply.opened_passthrough(FileHandle(fh), no_flush, &id),
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
                if self.passthrough.load(Ordering::Relaxed) {
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
