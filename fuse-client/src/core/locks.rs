//! fcntl and flock locks, held in metad so that they exclude each other
//! across mounts (metad's `locks`): this client's lease id names the
//! mount, the kernel's lock owner the holder within it. Locks go with the
//! lease: a mount that dies loses them once its lease ends.
//!
//! A blocking lock (F_SETLKW) polls metad with reads until nothing
//! conflicts and then tries; a close by its owner (flush) stops the wait,
//! so a process killed while waiting does not get the lock afterwards.
//! Which (inode, owner) pairs may hold locks is remembered here, so that
//! closing a file that was never locked costs no round trip.
//!
//! Lock coherence, as NFS gives it (docs/ARCHITECTURE.md, "Data path:
//! many writers"): taking a lock refetches the file's layout and, when it
//! changed, drops this client's view of the file (its state, cached data
//! and attributes) and tells the front-end to drop the kernel's; releasing
//! a lock, by unlock or by close, first commits this client's writes to
//! the file. An unlock whose flush fails keeps the lock and answers the
//! error: the next holder never starts from a half-written state.

use std::time::Duration;

use torchfs_proto::meta::{errno, FileLock, Ino, LockKind, MetaError, MetaReply, MetaRequest};
use torchfs_rdma::Transport;

use super::client::Client;
use super::error::{unexpected, ClientError};
use super::meta::MetaService;

/// The first and the longest pause between tries of a blocking lock.
const WAIT_FIRST_MS: u64 = 5;
const WAIT_MAX_MS: u64 = 200;

/// A lock request from a front-end: the kernel's owner and process, the
/// kind and the inclusive byte range.
#[derive(Clone, Copy, Debug)]
pub struct LockSpec {
    pub owner: u64,
    pub pid: u32,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

impl<M: MetaService, T: Transport> Client<M, T> {
    fn file_lock(&self, spec: LockSpec) -> FileLock {
        FileLock {
            client_id: self.inner.meta.lease_id,
            owner: spec.owner,
            pid: spec.pid,
            kind: spec.kind,
            start: spec.start,
            end: spec.end,
        }
    }

    /// F_GETLK: the first lock (of any mount) that conflicts with `spec`.
    pub async fn get_lock(
        &self,
        ino: Ino,
        spec: LockSpec,
    ) -> Result<Option<FileLock>, ClientError> {
        let req = MetaRequest::GetLock {
            ino,
            lock: self.file_lock(spec),
        };
        match self.meta_call(req).await? {
            MetaReply::Lock { conflict } => Ok(conflict),
            other => Err(unexpected("GetLock", other)),
        }
    }

    /// F_SETLK, or F_SETLKW with `wait` (then it returns once the lock is
    /// taken, or EINTR when the owner closed the file meanwhile). An unlock
    /// commits this client's writes to the file first. Answers whether the
    /// file changed since this client last saw it (a lock was taken and
    /// another client committed in between): the front-end then drops what
    /// it caches of the file (the kernel's pages and attributes).
    pub async fn set_lock(
        &self,
        ino: Ino,
        spec: LockSpec,
        wait: bool,
    ) -> Result<bool, ClientError> {
        if spec.kind == LockKind::Unlock {
            self.flush_ino(ino).await?;
            self.try_lock(ino, spec).await?;
            return Ok(false);
        }
        if wait {
            self.wait_lock(ino, spec).await?;
        } else {
            self.try_lock(ino, spec).await?;
        }
        // The lock is held now: a failed refetch (metad unreachable right
        // after it answered) must not make the caller believe otherwise.
        // The file's cached data goes instead; its layout is refetched at
        // the next open, or by a read that finds a stripe replaced.
        self.revalidate(ino).await.or_else(|e| {
            tracing::warn!("inode {ino}: lock taken, but its layout could not be refetched: {e}");
            self.inner.data_cache.invalidate(ino);
            Ok(true)
        })
    }

    /// F_SETLKW: tries, then waits with reads until nothing conflicts, and
    /// tries again; EINTR when the owner closed the file meanwhile.
    async fn wait_lock(&self, ino: Ino, spec: LockSpec) -> Result<(), ClientError> {
        let wait = self.inner.locks.begin_wait((ino, spec.owner));
        let mut pause = Duration::from_millis(WAIT_FIRST_MS);
        loop {
            match self.try_lock(ino, spec).await {
                Err(ClientError::Meta(MetaError::Fs { errno: e, .. })) if e == errno::EAGAIN => {}
                other => return other,
            }
            // Wait with reads (no log entries) until nothing conflicts.
            loop {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(WAIT_MAX_MS));
                if wait.closed() {
                    return Err(MetaError::fs(
                        libc::EINTR,
                        format!("lock wait on inode {ino}: the owner closed the file"),
                    )
                    .into());
                }
                if self.get_lock(ino, spec).await?.is_none() {
                    break;
                }
            }
        }
    }

    /// After a lock is taken: the file as metad holds it now becomes this
    /// client's view, unless it is the one this client has. Unflushed
    /// writes of this client stay, merged at their commit. Answers whether
    /// the view changed.
    async fn revalidate(&self, ino: Ino) -> Result<bool, ClientError> {
        let Some(file) = self.inner.handles.file_of(ino) else {
            // Not open here (the lock's handle just closed): nothing held.
            self.inner.data_cache.invalidate(ino);
            return Ok(true);
        };
        self.revalidate_layout(&file).await
    }

    /// Commits this client's writes to `ino`, if it has the file open.
    async fn flush_ino(&self, ino: Ino) -> Result<(), ClientError> {
        match self.inner.handles.file_of(ino) {
            Some(file) => self.flush_file(&file).await,
            None => Ok(()),
        }
    }

    async fn try_lock(&self, ino: Ino, spec: LockSpec) -> Result<(), ClientError> {
        let req = MetaRequest::SetLock {
            ino,
            lock: self.file_lock(spec),
        };
        let key = (ino, spec.owner);
        if spec.kind != LockKind::Unlock {
            // Before the request: a close racing with it must unlock.
            self.inner.locks.note_held(key);
        }
        match self.meta_call(req).await? {
            MetaReply::Unit => {
                if spec.kind == LockKind::Unlock && spec.start == 0 && spec.end == u64::MAX {
                    self.inner.locks.note_released(key);
                }
                Ok(())
            }
            other => Err(unexpected("SetLock", other)),
        }
    }

    /// A close by `owner` (flush for fcntl locks, release for flock):
    /// commits this client's writes to `ino`, then releases every lock the
    /// owner holds on it (POSIX: a close releases them even when the flush
    /// failed; the error is answered) and stops its waits. No round trip
    /// when it never locked.
    pub async fn unlock_owner(&self, ino: Ino, owner: u64) -> Result<(), ClientError> {
        if !self.inner.locks.note_close((ino, owner)) {
            return Ok(());
        }
        let flushed = self.flush_ino(ino).await;
        let unlocked = self.unlock_all(ino, owner).await;
        flushed.and(unlocked)
    }

    /// [`Self::unlock_owner`] when it needs no round trip (the owner holds
    /// no lock on `ino` here): done at once, true. False: nothing was done,
    /// call [`Self::unlock_owner`].
    pub(super) fn unlock_owner_now(&self, ino: Ino, owner: u64) -> bool {
        self.inner.locks.close_unheld((ino, owner))
    }

    /// Releases every lock `owner` holds on `ino`.
    async fn unlock_all(&self, ino: Ino, owner: u64) -> Result<(), ClientError> {
        let all = LockSpec {
            owner,
            pid: 0,
            kind: LockKind::Unlock,
            start: 0,
            end: u64::MAX,
        };
        self.try_lock(ino, all).await
    }
}
