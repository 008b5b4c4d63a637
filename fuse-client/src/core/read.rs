//! The read path of open files: the epoch cache first, then the layout
//! this client knows, read by the storage client (degraded if need be,
//! docs/ARCHITECTURE.md: Data path), retried with a fresh layout while
//! other clients keep replacing stripes.

use std::sync::Arc;
use std::time::Instant;

use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::cache::{read_cache_file, Lookup, Piece, ReadBuf};
use super::control::is_control_fh;
use super::file::FileState;
use super::handles::OpenFile;
use torchfs_storage_client::StorageError;

use super::client::Client;
use super::error::{ClientError, FileHandle};
use super::meta::MetaService;
use crate::stripe::FragmentPiece;

/// Cache lookups one read makes at most (each wait for a fetch in flight
/// is followed by one more); past it the read goes to storage.
const CACHE_LOOKUPS_MAX: usize = 4;

/// Reads of an open file retried with a fresh layout while other clients
/// keep replacing its stripes, before the read answers EIO.
const STALE_READ_TRIES_MAX: usize = 8;

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Reads up to `size` bytes at `offset`; short at the end of the file.
    /// Served from the epoch cache when it holds the range (a hit on one
    /// cached buffer is returned without copying), else from storage.
    pub async fn read(
        &self,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<ReadBuf, ClientError> {
        if is_control_fh(fh) {
            return self
                .inner
                .control
                .read(fh, offset, size)
                .map(ReadBuf::Owned);
        }
        let (file, _) = self.inner.handles.get(fh)?;
        if self.inner.data_cache.enabled() {
            if let Some(buf) = self.read_cached(&file, offset, size).await? {
                return Ok(buf);
            }
        }
        let (data, _) = self.read_uncached(&file, offset, size).await?;
        Ok(ReadBuf::Owned(data))
    }

    /// The cache's part of a read; None when the cache cannot be used
    /// (this client holds unflushed changes to the file).
    async fn read_cached(
        &self,
        file: &Arc<OpenFile>,
        offset: u64,
        size: u32,
    ) -> Result<Option<ReadBuf>, ClientError> {
        let (version, file_size) = {
            let st = file.state.lock().await;
            if st.pending() {
                return Ok(None);
            }
            (st.version(), st.size)
        };
        let end = offset.saturating_add(size as u64).min(file_size);
        if offset >= end {
            return Ok(Some(ReadBuf::Owned(Vec::new())));
        }
        let cache = &self.inner.data_cache;
        let started = Instant::now();
        let mut waited = false;
        let mut found = None;
        for attempt in 0..CACHE_LOOKUPS_MAX {
            match cache.lookup(file.ino, version, offset, end, attempt == 0) {
                Lookup::Hit(pieces) => {
                    match self.assemble(pieces, (end - offset) as usize).await {
                        Ok(buf) => found = Some(buf),
                        // A disk-tier file evicted under the read: go to storage.
                        Err(e) => tracing::debug!("disk tier read of inode {}: {e}", file.ino),
                    }
                    break;
                }
                Lookup::Wait(mut done) => {
                    waited = true;
                    let _ = done.wait_for(|d| *d).await;
                }
                Lookup::Miss => break,
            }
        }
        let buf = match found {
            Some(buf) => {
                if waited {
                    cache.note_stall(started.elapsed(), true);
                }
                buf
            }
            None => {
                let (data, read_version) = self.read_uncached(file, offset, size).await?;
                cache.note_stall(started.elapsed(), waited);
                if read_version == version {
                    cache.fill(file.ino, version, offset, data)
                } else {
                    ReadBuf::Owned(data)
                }
            }
        };
        self.readahead(file, version, offset, end, file_size);
        Ok(Some(buf))
    }

    /// Joins cached pieces into one buffer (no copy for a single memory
    /// piece).
    async fn assemble(&self, mut pieces: Vec<Piece>, len: usize) -> std::io::Result<ReadBuf> {
        if pieces.len() == 1 && matches!(pieces[0], Piece::Mem { .. }) {
            if let Some(Piece::Mem { data, from, to }) = pieces.pop() {
                return Ok(ReadBuf::Shared {
                    data,
                    start: from,
                    end: to,
                });
            }
        }
        let mut out = Vec::with_capacity(len);
        for piece in pieces {
            match piece {
                Piece::Mem { data, from, to } => out.extend_from_slice(&data[from..to]),
                Piece::Disk { path, offset, len } => {
                    let bytes =
                        tokio::task::spawn_blocking(move || read_cache_file(&path, offset, len))
                            .await
                            .map_err(std::io::Error::other)??;
                    out.extend_from_slice(&bytes);
                }
            }
        }
        Ok(ReadBuf::Owned(out))
    }

    /// Reads from storage (or this client's buffers), again with a fresh
    /// layout when stripes were replaced under the open file (as long as
    /// metad's layout keeps changing: other writers, at most
    /// [`STALE_READ_TRIES_MAX`] times), or once with a newer cluster map.
    /// Returns the data and the layout version it was read at.
    async fn read_uncached(
        &self,
        file: &OpenFile,
        offset: u64,
        size: u32,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let mut result = self.read_once(file, offset, size).await;
        let mut map_refreshed = false;
        for _ in 0..STALE_READ_TRIES_MAX {
            // Another client may have replaced (and deleted) the stripes
            // this one opened: refetch the layout and try again before
            // reporting EIO.
            let Err(
                e @ ClientError::Storage(
                    StorageError::Unrecoverable { .. } | StorageError::Transport { .. },
                ),
            ) = result
            else {
                return result;
            };
            if self.revalidate_layout(file).await? {
                tracing::info!(
                    "inode {}: layout changed under an open file, read retried",
                    file.ino
                );
            } else if !map_refreshed && self.refresh_map_now().await {
                // Nodes that restarted may listen elsewhere now.
                map_refreshed = true;
                tracing::info!("inode {}: read retried with a newer cluster map", file.ino);
            } else {
                return Err(e);
            }
            result = self.read_once(file, offset, size).await;
        }
        result
    }

    /// `[start, end)` of an open file as of now, with its version
    /// (readahead).
    pub(super) async fn read_versioned(
        &self,
        file: &OpenFile,
        start: u64,
        end: u64,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let size = u32::try_from(end.saturating_sub(start)).unwrap_or(u32::MAX);
        self.read_once(file, start, size).await
    }

    async fn read_once(
        &self,
        file: &OpenFile,
        offset: u64,
        size: u32,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let (mut out, plan, cfg, version) = {
            let st = file.state.lock().await;
            let version = if st.pending() { 0 } else { st.version() };
            let end = offset.saturating_add(size as u64).min(st.size);
            if offset >= end {
                return Ok((Vec::new(), version));
            }
            let mut out = vec![0u8; (end - offset) as usize];
            let plan = st
                .plan_read(offset, &mut out)
                .map_err(|source| ClientError::Layout {
                    ino: st.ino,
                    source,
                })?;
            (out, plan, st.config, version)
        };
        self.fetch_pieces(file.ino, &cfg, &plan.entries, &plan.pieces, &mut out)
            .await?;
        Ok((out, version))
    }

    /// `len` bytes at `offset` of a file state not shared with any handle
    /// (prefetch), clipped to its size.
    pub(super) async fn fetch_range(
        &self,
        st: &FileState,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let end = offset.saturating_add(len).min(st.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let plan = st
            .plan_read(offset, &mut out)
            .map_err(|source| ClientError::Layout {
                ino: st.ino,
                source,
            })?;
        self.fetch_pieces(st.ino, &st.config, &plan.entries, &plan.pieces, &mut out)
            .await?;
        Ok(out)
    }

    /// Refetches the layout of an open file (keeping this client's
    /// unflushed writes); true when the view changed, and then cached data
    /// of any other version is dropped.
    pub(super) async fn revalidate_layout(&self, file: &OpenFile) -> Result<bool, ClientError> {
        let mut st = file.state.lock().await;
        let changed = self.refresh_view(&mut st).await?;
        file.publish(&st);
        if changed {
            self.inner.data_cache.validate(file.ino, st.version());
        }
        Ok(changed)
    }

    /// Brings this client's view of an open file (`st`) up to metad's,
    /// keeping its unflushed writes ([`FileState::adopt`]). Returns whether
    /// the view changed.
    pub(super) async fn refresh_view(&self, st: &mut FileState) -> Result<bool, ClientError> {
        let ino = st.ino;
        let (attr, layout) = self.inner.frozen.layout(&self.inner.meta, ino).await?;
        let fresh = FileState::from_layout(ino, attr.size, layout)
            .map_err(|source| ClientError::Layout { ino, source })?;
        self.cache_attr(attr);
        Ok(st.adopt(fresh))
    }

    /// Reads the first `len_bytes` of a stored stripe (the old content a
    /// read-modify-write starts from).
    pub(super) async fn read_stripe_prefix(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        len_bytes: u32,
    ) -> Result<Vec<u8>, ClientError> {
        Ok(self
            .inner
            .storage
            .read_stripe_prefix(ino, cfg, entry, len_bytes)
            .await?)
    }

    /// Fills `out` at each piece's `buf_offset` (see
    /// `StorageClient::read_pieces`).
    async fn fetch_pieces(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entries: &[StripeEntry],
        pieces: &[(FragmentPiece, usize)],
        out: &mut [u8],
    ) -> Result<(), ClientError> {
        Ok(self
            .inner
            .storage
            .read_pieces(ino, cfg, entries, pieces, out)
            .await?)
    }
}
