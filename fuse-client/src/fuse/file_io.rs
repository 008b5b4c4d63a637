//! Reads, fsyncs and closes (flush, release) of open files, with or
//! without a handle (a read-only mount's reads come with none: see
//! `no_open`).

use std::sync::Arc;

use fuser::{Errno, ReplyData, ReplyEmpty};

use super::no_open::{Dropped, NO_OPEN_FH};
use super::request::{errno, reply_empty};
use super::Fs;
use crate::core::{ClientError, MetaService, ReadBuf};
use torchfs_rdma::Transport;

impl<M: MetaService, T: Transport> Fs<M, T> {
    pub(super) async fn read(
        self: Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let read = if fh == NO_OPEN_FH {
            self.read_no_open(ino, offset, size).await
        } else {
            self.client.read(fh, offset, size).await
        };
        match read {
            Ok(data) => reply.data(&data[..]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// A read with no handle (a read-only mount: see `no_open`), through
    /// the inode's kept handle, opened (again) when it has none or an
    /// old one of a file that can change.
    pub(super) async fn read_no_open(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<ReadBuf, ClientError> {
        let fresh_for = (!self.client.is_immutable(ino)).then_some(self.options.attr_ttl);
        let mut retried = false;
        loop {
            let fh = match self.no_open.get(ino, fresh_for) {
                Some(fh) => fh,
                None => {
                    let fh = match self.client.open_now(ino) {
                        Some(fh) => fh,
                        None => self.client.open(ino, false, false).await?,
                    };
                    let dropped = self.no_open.insert(ino, fh);
                    self.release_kept(dropped).await;
                    fh
                }
            };
            match self.client.read(fh, offset, size).await {
                // Replaced and released by a read beside this one.
                Err(ClientError::BadHandle { .. }) if !retried => retried = true,
                read => return read,
            }
        }
    }

    /// Releases handles [`super::no_open::InodeHandles`] no longer keeps.
    pub(super) async fn release_kept(&self, dropped: Vec<Dropped>) {
        for (ino, fh) in dropped {
            let released = match self.client.release_now(ino, fh, None) {
                Some(done) => done,
                None => self.client.release(fh).await,
            };
            if let Err(e) = released {
                tracing::debug!("release kept handle {fh} of inode {ino}: {e}");
            }
        }
    }

    pub(super) async fn fsync(self: Arc<Self>, fh: u64, reply: ReplyEmpty) {
        // A read-only mount's files: nothing to sync.
        if fh == NO_OPEN_FH {
            return reply.ok();
        }
        reply_empty(self.client.fsync(fh).await, reply)
    }

    /// A flush answered at once (nothing to write, no lock of the owner
    /// held; or a read-only mount: ENOSYS, and the kernel stops sending
    /// them); otherwise the reply comes back for [`Self::flush`].
    pub(super) fn flush_now(
        &self,
        ino: u64,
        fh: u64,
        lock_owner: u64,
        reply: ReplyEmpty,
    ) -> Option<ReplyEmpty> {
        if self.options.read_only {
            reply.error(Errno::ENOSYS);
            return None;
        }
        match self.client.flush_now(ino, fh, lock_owner) {
            Some(done) => {
                reply_empty(done, reply);
                None
            }
            None => Some(reply),
        }
    }

    pub(super) async fn flush(
        self: Arc<Self>,
        ino: u64,
        fh: u64,
        lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        let unlocked = self.client.unlock_owner(ino, lock_owner).await;
        reply_empty(self.client.flush(fh).await.and(unlocked), reply);
    }

    /// A release answered at once when nothing is left to do; otherwise
    /// the reply comes back for [`Self::release`].
    pub(super) fn release_now(
        &self,
        ino: u64,
        fh: u64,
        lock_owner: Option<u64>,
        reply: ReplyEmpty,
    ) -> Option<ReplyEmpty> {
        self.io_modes.release(fh);
        match self.client.release_now(ino, fh, lock_owner) {
            Some(done) => {
                reply_empty(done, reply);
                None
            }
            None => Some(reply),
        }
    }

    pub(super) async fn release(
        self: Arc<Self>,
        ino: u64,
        fh: u64,
        lock_owner: Option<u64>,
        reply: ReplyEmpty,
    ) {
        // Set when the file held a flock: its owner is the open file.
        let unlocked = match lock_owner {
            Some(owner) => self.client.unlock_owner(ino, owner).await,
            None => Ok(()),
        };
        reply_empty(self.client.release(fh).await.and(unlocked), reply);
    }
}
