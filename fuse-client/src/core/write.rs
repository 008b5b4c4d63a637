//! The write path: buffer writes per stripe, encode and upload a stripe as
//! soon as it is complete (or earlier when the file's buffer budget is
//! spent), and commit the layout on flush (close-to-open, docs/ARCHITECTURE.md: Data path).
//!
//! No degraded writes in v0: a stripe is uploaded only when all k+m of its
//! nodes take their fragment; a node down or failing makes the write (or
//! flush) fail with EIO and the data stays buffered for a retry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, MetaReply, MetaRequest, StripeBase, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::control::is_control_fh;
use super::file::FileState;
use super::handles::OpenFile;
use super::map::{locate, resolve};
use super::{unexpected, Client, ClientError, FileHandle, MetaService};
use crate::stripe::{self, StripePiece};

/// Deletes one background cleanup keeps in flight.
const DELETES_IN_FLIGHT_MAX: usize = 16;

/// Commits a flush tries before it gives up on a stripe that other
/// clients keep committing (a hot stripe): then the flush fails with EIO
/// and the writes stay buffered for the next flush.
pub(super) const COMMIT_TRIES_MAX: u32 = 16;

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
            return self.control_write(fh, offset, data);
        }
        let file = self.inner.handles.writable(fh)?;
        let mut st = file.state.lock().await;
        self.write_locked(&file, &mut st, offset, data).await
    }

    /// A write to a handle opened with O_APPEND: `data` goes to the end of
    /// the file as this client knows it (with its own unflushed writes;
    /// fresh from metad after a lock is taken). Answers the bytes written
    /// and where they went.
    pub async fn append(&self, fh: FileHandle, data: &[u8]) -> Result<(u32, u64), ClientError> {
        let file = self.inner.handles.writable(fh)?;
        let mut st = file.state.lock().await;
        let offset = st.size;
        let written = self.write_locked(&file, &mut st, offset, data).await?;
        Ok((written, offset))
    }

    async fn write_locked(
        &self,
        file: &OpenFile,
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
                    if let Some(old) = self.rmw_read(st, &piece).await? {
                        st.dirty.insert(piece.stripe, old);
                    }
                }
                let chunk = &data[piece.buf_offset..piece.buf_offset + piece.len_bytes as usize];
                if st.apply_write(&piece, chunk) {
                    self.upload_dirty(st, piece.stripe).await?;
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
                Err(ClientError::Unrecoverable { .. } | ClientError::Transport { .. })
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
            return self.control_flush(fh);
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
            return self.control_release(fh);
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
        if !(st.dirty.is_empty() && st.uploaded.is_empty()) {
            return None;
        }
        then()
    }

    pub(super) async fn flush_file(&self, file: &Arc<OpenFile>) -> Result<(), ClientError> {
        let mut st = file.state.lock().await;
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

    /// Commits the uploaded stripes, each over the version it was merged
    /// into. When another client committed one of them in between, its
    /// version becomes the base: this client's written ranges are laid
    /// over it, the stripe is uploaded again and the commit retried
    /// (docs/ARCHITECTURE.md, "Data path: many writers").
    async fn commit(&self, st: &mut FileState) -> Result<(), ClientError> {
        // The last merge that could not read the other version, if the
        // tries end on one: that error says more than the conflicts.
        let mut unreadable = None;
        for attempt in 0..COMMIT_TRIES_MAX {
            let req = MetaRequest::CommitStripes {
                ino: st.ino,
                size_at_least: st.written_end,
                bases: st.uploaded.keys().map(|s| st.base(*s)).collect(),
                stripes: st.uploaded.values().cloned().collect(),
            };
            let (attr, current) = match self.meta_call(req).await? {
                MetaReply::Committed { attr, replaced } => {
                    st.record_commit();
                    st.size = attr.size;
                    self.cache_attr(attr);
                    self.delete_in_background(st.ino, st.config, replaced);
                    return Ok(());
                }
                MetaReply::Conflict { attr, stripes } => (attr, stripes),
                other => return Err(unexpected("CommitStripes", other)),
            };
            tracing::debug!(
                "inode {}: commit {attempt} conflicted on {} stripes",
                st.ino,
                current.len()
            );
            st.size = attr.size.max(st.written_end);
            let mut current: BTreeMap<u64, StripeEntry> =
                current.into_iter().map(|e| (e.stripe, e)).collect();
            let moved: Vec<u64> = st
                .uploaded
                .keys()
                .copied()
                .filter(|s| StripeBase::of(current.get(s)) != st.base(*s))
                .collect();
            for stripe in moved {
                unreadable = self
                    .merge(st, stripe, current.remove(&stripe), attr.size)
                    .await?;
                if unreadable.is_some() {
                    break;
                }
            }
            // Two writers that keep colliding should not retry in step.
            let pause_ms = rand::random::<u64>() % (1 << attempt.min(6));
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        Err(unreadable.unwrap_or(ClientError::CommitConflict {
            ino: st.ino,
            tries: COMMIT_TRIES_MAX,
        }))
    }

    /// Lays this client's written ranges of `stripe` over `current` (another
    /// client's committed version, None: gone) and uploads the result as
    /// this client's new version of the stripe, based on `current`.
    /// `Some(error)`: `current` could not be read (nothing changed).
    async fn merge(
        &self,
        st: &mut FileState,
        stripe: u64,
        current: Option<StripeEntry>,
        size: u64,
    ) -> Result<Option<ClientError>, ClientError> {
        let cfg = st.config;
        let Some(ours) = st.uploaded.get(&stripe).cloned() else {
            return Ok(None);
        };
        let (theirs_bytes, ranges) = st.merge_source(stripe, current.as_ref(), size);
        let ours_end = ranges.iter().map(|r| r.end).max().unwrap_or(0);
        let mut buf = match &current {
            Some(entry) if theirs_bytes > 0 => {
                match self
                    .read_stripe_prefix(st.ino, &cfg, entry, theirs_bytes)
                    .await
                {
                    Ok(buf) => buf,
                    // Replaced (and deleted) again since the conflict: the
                    // next commit learns the newer version.
                    Err(e) => return Ok(Some(e)),
                }
            }
            _ => Vec::new(),
        };
        let ours_bytes = ours_end.min(ours.valid_bytes.min(ours.encoded_bytes));
        let mine = self
            .read_stripe_prefix(st.ino, &cfg, &ours, ours_bytes)
            .await?;
        buf.resize(buf.len().max(ours_end as usize), 0);
        for r in ranges.iter() {
            let (start, end) = (r.start as usize, r.end as usize);
            let have = end.min(mine.len()).max(start);
            buf[start..have].copy_from_slice(&mine[start..have]);
            buf[have..end].fill(0);
        }
        st.dirty.insert(stripe, buf);
        self.upload_dirty(st, stripe).await?;
        // Only now: until the merged stripe is stored, the upload this
        // client holds is still based on the old version.
        st.rebase(stripe, current);
        Ok(None)
    }

    /// Encodes and uploads the dirty buffer of `stripe`, recording the new
    /// entry as uploaded. On failure the buffer stays dirty.
    async fn upload_dirty(&self, st: &mut FileState, stripe: u64) -> Result<(), ClientError> {
        let Some(mut buf) = st.dirty.remove(&stripe) else {
            return Ok(());
        };
        let result = self
            .upload_stripe(st.ino, &st.config, stripe, &mut buf)
            .await;
        match result {
            Ok(entry) => {
                if let Some(old) = st.record_upload(entry) {
                    self.delete_in_background(st.ino, st.config, vec![old]);
                }
                Ok(())
            }
            Err(e) => {
                st.dirty.insert(stripe, buf);
                Err(e)
            }
        }
    }

    /// Encodes a stripe buffer (a prefix of the stripe) and stores its
    /// fragments under a new generation, all k+m in parallel. The buffer is
    /// zero-padded in place for encoding and cut back before returning.
    async fn upload_stripe(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        stripe: u64,
        buf: &mut Vec<u8>,
    ) -> Result<StripeEntry, ClientError> {
        let encoded_bytes = buf.len() as u32;
        let mut result = self
            .upload_padded(ino, cfg, stripe, buf, encoded_bytes)
            .await;
        // A node that restarted may listen elsewhere now: with a newer map
        // the upload is worth one more try (under a new generation).
        if result
            .as_ref()
            .is_err_and(ClientError::may_pass_with_newer_map)
            && self.refresh_map_now().await
        {
            buf.truncate(encoded_bytes as usize);
            result = self
                .upload_padded(ino, cfg, stripe, buf, encoded_bytes)
                .await;
        }
        buf.truncate(encoded_bytes as usize);
        result
    }

    async fn upload_padded(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        stripe: u64,
        buf: &mut Vec<u8>,
        encoded_bytes: u32,
    ) -> Result<StripeEntry, ClientError> {
        let k = cfg.k as usize;
        let unit = cfg.unit_bytes as usize;
        let generation = rand::random::<u64>().max(1);
        let mut entry = StripeEntry {
            stripe,
            generation,
            encoded_bytes,
            valid_bytes: encoded_bytes,
            crcs: vec![0; cfg.width()],
        };
        if encoded_bytes == 0 {
            return Ok(entry);
        }
        let parity_bytes = stripe::parity_fragment_bytes(cfg, encoded_bytes) as usize;
        let data_stored = (encoded_bytes as usize).div_ceil(unit);
        // Pad the last stored data fragment to the parity length; data
        // fragments past it are all zeros and share one zero buffer.
        buf.resize((data_stored - 1) * unit + parity_bytes, 0);
        let zeros = if data_stored < k {
            vec![0u8; parity_bytes]
        } else {
            Vec::new()
        };
        let mut parity = vec![vec![0u8; parity_bytes]; cfg.m as usize];
        {
            let data: Vec<&[u8]> = (0..k)
                .map(|i| {
                    if i < data_stored {
                        &buf[i * unit..i * unit + parity_bytes]
                    } else {
                        zeros.as_slice()
                    }
                })
                .collect();
            let mut outputs: Vec<&mut [u8]> = parity.iter_mut().map(|p| p.as_mut_slice()).collect();
            self.codec(cfg)?.encode(&data, &mut outputs)?;
        }
        // The stored bytes of each fragment (short data fragments unpadded).
        let mut fragments: Vec<(usize, &[u8])> = Vec::with_capacity(data_stored + parity.len());
        for i in 0..data_stored {
            let n = stripe::data_fragment_bytes(cfg, encoded_bytes, i) as usize;
            fragments.push((i, &buf[i * unit..i * unit + n]));
        }
        for (j, p) in parity.iter().enumerate() {
            fragments.push((k + j, p.as_slice()));
        }
        for (i, bytes) in &fragments {
            entry.crcs[*i] = crc32c::crc32c(bytes);
        }

        let map = self.inner.map.get();
        let mut puts = Vec::with_capacity(fragments.len());
        for (i, bytes) in fragments {
            let key = FragmentKey {
                ino,
                stripe,
                generation,
                index: i as u8,
            };
            let target = locate(&map, key).inspect_err(|_| self.request_map_refresh())?;
            if !target.up {
                return Err(ClientError::NodeDown {
                    node: target.node,
                    key,
                });
            }
            puts.push((key, target, bytes));
        }
        let results =
            futures::future::join_all(puts.into_iter().map(|(key, target, bytes)| async move {
                let addr = resolve(&target).await?;
                let _slot = self.inner.io_slots.acquire().await;
                self.inner
                    .transport
                    .put(addr, key, bytes)
                    .await
                    .map_err(|source| ClientError::Transport {
                        node: target.node,
                        key,
                        source: Box::new(source),
                    })
            }))
            .await;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            self.request_map_refresh();
            // Whatever was stored under this generation is garbage now.
            self.delete_in_background(ino, *cfg, vec![entry]);
            return Err(err);
        }
        Ok(entry)
    }

    /// Deletes the stored fragments of `entries`, best effort, in a task of
    /// its own (freed space is reclaimed later; nothing waits on it).
    pub(super) fn delete_in_background(
        &self,
        ino: Ino,
        cfg: StripeConfig,
        entries: Vec<StripeEntry>,
    ) {
        if entries.is_empty() {
            return;
        }
        let client = self.clone();
        self.inner
            .runtime
            .spawn(async move { client.delete_entries(ino, cfg, entries).await });
    }

    /// Deletes the stored fragments of `entries`, best effort: a fragment
    /// that cannot be deleted now is left for repair/GC.
    pub(super) async fn delete_entries(
        &self,
        ino: Ino,
        cfg: StripeConfig,
        entries: Vec<StripeEntry>,
    ) {
        let keys = entries.iter().flat_map(|e| {
            // A config that does not match the entry: try every index.
            let width = e.crcs.len().max(cfg.width());
            (0..width)
                .filter(move |&i| {
                    e.crcs.len() != cfg.width()
                        || stripe::fragment_bytes(&cfg, e.encoded_bytes, i) > 0
                })
                .map(move |i| FragmentKey {
                    ino,
                    stripe: e.stripe,
                    generation: e.generation,
                    index: i as u8,
                })
        });
        stream::iter(keys)
            .for_each_concurrent(DELETES_IN_FLIGHT_MAX, |key| async move {
                if let Err(e) = self.delete_fragment(key).await {
                    tracing::debug!("delete of fragment {key} failed (left for repair/GC): {e}");
                }
            })
            .await;
    }

    async fn delete_fragment(&self, key: FragmentKey) -> Result<(), ClientError> {
        let target = locate(&self.inner.map.get(), key)?;
        let addr = resolve(&target).await?;
        let _slot = self.inner.io_slots.acquire().await;
        self.inner
            .transport
            .delete(addr, key)
            .await
            .map_err(|source| ClientError::Transport {
                node: target.node,
                key,
                source: Box::new(source),
            })
    }
}
