//! The write path: buffer writes per stripe, encode and upload a stripe as
//! soon as it is complete (or earlier when the file's buffer budget is
//! spent), and commit on flush, fsync and close (close-to-open,
//! docs/ARCHITECTURE.md: Data path; the commit itself is `commit.rs`, the
//! uploads `upload.rs`).
//!
//! No degraded writes in v0: a stripe is uploaded only when all k+m of its
//! nodes take their fragment; a node down or failing makes the write (or
//! flush) fail with EIO and the data stays buffered for a retry.

use std::sync::Arc;

use torchfs_proto::meta::Ino;
use torchfs_rdma::Transport;

use super::control::is_control_fh;
use super::file::FileState;
use super::handles::OpenFile;
use torchfs_storage_client::StorageError;

use super::client::Client;
use super::error::{ClientError, FileHandle};
use super::meta::MetaService;
use crate::stripe::{self, StripePiece};

/// Commits a flush tries before it gives up on a stripe that other
/// clients keep committing (a hot stripe): then the flush fails with EIO
/// and the writes stay buffered for the next flush.
pub(super) const COMMIT_TRIES_MAX: u32 = 16;

/// Full stripes of one file whose uploads may be in flight while its
/// writers go on (16 MiB at 4 x 1 MiB units); a writer past it waits for
/// one to end.
const UPLOADS_IN_FLIGHT_MAX: usize = 4;

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Writes `data` at `offset` into this client's buffers (uploading
    /// complete stripes on the way); visible to other clients after flush.
    /// No degraded writes in v0: an upload needs all k+m nodes of the
    /// stripe's group, else EIO (the data stays buffered for a retry).
    pub async fn write(
        &self,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, ClientError> {
        if is_control_fh(fh) {
            return self.inner.control.write(fh, offset, data);
        }
        let file = self.inner.handles.writable(fh)?;
        let mut st = state_when(&file, |st| st.uploading.len() < UPLOADS_IN_FLIGHT_MAX).await;
        self.write_locked(&file, &mut st, offset, data).await
    }

    /// A write to a handle opened with O_APPEND: `data` goes to the end of
    /// the file as this client knows it (with its own unflushed writes;
    /// fresh from metad after a lock is taken). Answers the bytes written
    /// and where they went.
    pub async fn append(&self, fh: FileHandle, data: &[u8]) -> Result<(u32, u64), ClientError> {
        let file = self.inner.handles.writable(fh)?;
        let mut st = state_when(&file, |st| st.uploading.len() < UPLOADS_IN_FLIGHT_MAX).await;
        let offset = st.size;
        let written = self.write_locked(&file, &mut st, offset, data).await?;
        Ok((written, offset))
    }

    async fn write_locked(
        &self,
        file: &Arc<OpenFile>,
        st: &mut FileState,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, ClientError> {
        // Cached bytes of this inode are stale from here on.
        self.inner.data_cache.invalidate(file.ino);
        let len_bytes = data.len() as u64;
        // Refuse before buffering anything: the end must be a file offset.
        offset
            .checked_add(len_bytes)
            .ok_or(ClientError::TooLarge { offset, len_bytes })?;
        let cfg = st.config;
        let pieces = stripe::split_stripes(&cfg, offset, len_bytes).map_err(|source| {
            ClientError::Layout {
                ino: file.ino,
                source,
            }
        })?;
        let result = async {
            for piece in pieces {
                if !st.dirty.contains_key(&piece.stripe) {
                    // Bounded memory: make room before starting a buffer.
                    while st.dirty.len() >= self.inner.config.dirty_stripes_max.max(1) {
                        let Some(victim) = st.eviction_candidate(piece.stripe) else {
                            break;
                        };
                        self.upload_dirty(st, victim).await?;
                    }
                    // A stripe being uploaded: its buffer is the old
                    // content (rewritten stripes are rare: a copy).
                    let uploading = st.uploading.get(&piece.stripe).map(|b| b.to_vec());
                    if let Some(old) = uploading {
                        st.dirty.insert(piece.stripe, old);
                    } else if let Some(old) = self.rmw_read(st, &piece).await? {
                        st.dirty.insert(piece.stripe, old);
                    }
                }
                let chunk = &data[piece.buf_offset..piece.buf_offset + piece.len_bytes as usize];
                if st.apply_write(&piece, chunk) {
                    // The writer goes on while the stripe's puts are in
                    // flight (at most UPLOADS_IN_FLIGHT_MAX per file).
                    self.start_upload(file, st, piece.stripe);
                }
                st.size = st.size.max(
                    stripe::stripe_start(&cfg, piece.stripe)
                        + piece.offset as u64
                        + piece.len_bytes as u64,
                );
            }
            Ok::<(), ClientError>(())
        }
        .await;
        file.publish(st);
        result.map(|()| data.len() as u32)
    }

    /// The stored bytes a write of `piece` must start its stripe buffer
    /// from (read-modify-write), if any. A version another client replaced
    /// may be deleted by now: then the stripe is read again as metad holds
    /// it, as long as metad's version keeps changing (other writers of the
    /// stripe), at most [`COMMIT_TRIES_MAX`] times.
    async fn rmw_read(
        &self,
        st: &mut FileState,
        piece: &StripePiece,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let cfg = st.config;
        for _ in 0..COMMIT_TRIES_MAX {
            let Some((entry, old_bytes)) = st.rmw_source(piece) else {
                return Ok(None);
            };
            let read = self
                .read_stripe_prefix(st.ino, &cfg, &entry, old_bytes)
                .await;
            let stale = matches!(
                read,
                Err(ClientError::Storage(
                    StorageError::Unrecoverable { .. } | StorageError::Transport { .. }
                ))
            ) && !st.uploaded.contains_key(&piece.stripe);
            if !stale || !self.refresh_view(st).await? {
                return read.map(Some);
            }
            tracing::info!(
                "inode {}: stripe {} changed under an open file, read-modify-write retried",
                st.ino,
                piece.stripe
            );
        }
        Err(ClientError::CommitConflict {
            ino: st.ino,
            tries: COMMIT_TRIES_MAX,
        })
    }

    /// Uploads remaining dirty stripes and commits the layout.
    pub async fn flush(&self, fh: FileHandle) -> Result<(), ClientError> {
        if is_control_fh(fh) {
            let plan = self.inner.control.flush(fh, &self.inner.data_cache)?;
            if let Some(plan) = plan {
                self.accept_plan(plan);
            }
            return Ok(());
        }
        let (file, _) = self.inner.handles.get(fh)?;
        self.flush_file(&file).await
    }

    /// Same as [`Self::flush`]: fragments are durable once stored (the
    /// storage nodes write them O_DIRECT) and the commit goes through Raft.
    pub async fn fsync(&self, fh: FileHandle) -> Result<(), ClientError> {
        if is_control_fh(fh) {
            return Ok(());
        }
        self.flush(fh).await
    }

    /// Flushes (when the inode has changes) and forgets the handle. The
    /// handle is gone even when the flush fails; the error is returned so
    /// close(2) can report it.
    pub async fn release(&self, fh: FileHandle) -> Result<(), ClientError> {
        if is_control_fh(fh) {
            let plan = self.inner.control.release(fh, &self.inner.data_cache)?;
            if let Some(plan) = plan {
                self.accept_plan(plan);
            }
            return Ok(());
        }
        let (file, _) = self.inner.handles.get(fh)?;
        let result = self.flush_file(&file).await;
        self.inner.handles.close(fh)?;
        result
    }

    /// A close's [`Self::unlock_owner`] and [`Self::flush`] when neither
    /// has anything to do (`owner` holds no lock on `ino` here, and the
    /// file has nothing unflushed): done at once, so a front-end replies on
    /// the thread that read the request (a thread wake-up costs more).
    /// `None`: nothing was done, call the async ones.
    pub fn flush_now(
        &self,
        ino: Ino,
        fh: FileHandle,
        owner: u64,
    ) -> Option<Result<(), ClientError>> {
        self.when_clean(fh, || self.unlock_owner_now(ino, owner).then_some(Ok(())))
    }

    /// [`Self::release`] (with the flock `owner`'s unlock, if any) when it
    /// has nothing to flush or unlock: done at once (see
    /// [`Self::flush_now`]). `None`: nothing was done, call the async ones.
    pub fn release_now(
        &self,
        ino: Ino,
        fh: FileHandle,
        owner: Option<u64>,
    ) -> Option<Result<(), ClientError>> {
        self.when_clean(fh, || {
            if owner.is_some_and(|owner| !self.unlock_owner_now(ino, owner)) {
                return None;
            }
            Some(self.inner.handles.close(fh))
        })
    }

    /// `then()` while `fh` has nothing unflushed (and no flush holds its
    /// state); `None` otherwise. An unknown handle is answered at once.
    fn when_clean(
        &self,
        fh: FileHandle,
        then: impl FnOnce() -> Option<Result<(), ClientError>>,
    ) -> Option<Result<(), ClientError>> {
        if is_control_fh(fh) {
            return None;
        }
        let file = match self.inner.handles.get(fh) {
            Ok((file, _)) => file,
            Err(e) => return Some(Err(e)),
        };
        let st = file.state.try_lock().ok()?;
        if st.pending() {
            return None;
        }
        then()
    }

    pub(super) async fn flush_file(&self, file: &Arc<OpenFile>) -> Result<(), ClientError> {
        // Uploads in flight end first (a failed one is dirty again).
        let mut st = state_when(file, |st| st.uploading.is_empty()).await;
        let result = async {
            while let Some(stripe) = st.dirty.keys().next().copied() {
                self.upload_dirty(&mut st, stripe).await?;
            }
            if st.uploaded.is_empty() {
                return Ok(());
            }
            self.commit(&mut st).await
        }
        .await;
        file.publish(&st);
        result
    }
}

/// The file's state, locked once `ready` holds for it: the wait (for
/// stripe uploads in flight to end, which need the lock to finish) holds
/// no lock.
async fn state_when<'a>(
    file: &'a OpenFile,
    ready: impl Fn(&FileState) -> bool,
) -> tokio::sync::MutexGuard<'a, FileState> {
    loop {
        // Registered before the check, so an upload ending between the
        // check and the wait still wakes it.
        let done = file.uploads_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        let st = file.state.lock().await;
        if ready(&st) {
            return st;
        }
        drop(st);
        done.await;
    }
}
