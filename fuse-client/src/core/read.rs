//! The read path: fetch the needed ranges of data fragments straight into
//! the caller's buffer (many fragments in parallel, bounded), and when a
//! fragment cannot be had (node down, unreachable, timed out, missing,
//! checksum mismatch) fetch the same column of any k other fragments and
//! decode it (docs/ARCHITECTURE.md: Data path, degraded read).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::cache::{read_cache_file, Lookup, Piece, ReadBuf};
use super::control::is_control_fh;
use super::file::FileState;
use super::handles::OpenFile;
use super::map::{locate, resolve};
use super::{Client, ClientError, FileHandle, MetaService};
use crate::stripe::{self, FragmentPiece, StripePiece};

/// Fragment pieces one read request keeps in flight.
const READ_PIECES_IN_FLIGHT_MAX: usize = 16;
/// Cache lookups one read makes at most (each wait for a fetch in flight
/// is followed by one more); past it the read goes to storage.
const CACHE_LOOKUPS_MAX: usize = 4;

/// Which fragments a degraded read of one column of fragment `want` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DegradedPlan {
    /// Fragments that are all zeros in the column (not stored, or stored
    /// shorter than the column's start): available without a request.
    pub free: Vec<usize>,
    /// Fragments to fetch, in order of preference (data before parity:
    /// data fragments are on the normal read path's nodes anyway).
    pub candidates: Vec<usize>,
}

/// Plans the degraded read of bytes `[offset, ...)` of fragment `want` of
/// `entry`; `usable(i)` says whether fragment `i`'s node may be asked.
pub(crate) fn plan_degraded(
    cfg: &StripeConfig,
    entry: &StripeEntry,
    want: usize,
    offset: u32,
    usable: impl Fn(usize) -> bool,
) -> DegradedPlan {
    let mut plan = DegradedPlan {
        free: Vec::new(),
        candidates: Vec::new(),
    };
    for i in (0..cfg.width()).filter(|&i| i != want) {
        if stripe::fragment_bytes(cfg, entry.encoded_bytes, i) <= offset {
            plan.free.push(i);
        } else if usable(i) {
            plan.candidates.push(i);
        }
    }
    plan
}

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
            return self.control_read(fh, offset, size).map(ReadBuf::Owned);
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
            let Err(e @ (ClientError::Unrecoverable { .. } | ClientError::Transport { .. })) =
                result
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
        let (attr, layout) = self.current_layout(ino).await?;
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
        let mut out = vec![0u8; len_bytes as usize];
        let whole = StripePiece {
            stripe: entry.stripe,
            offset: 0,
            len_bytes,
            buf_offset: 0,
        };
        let pieces: Vec<(FragmentPiece, usize)> = stripe::split_fragments(cfg, whole)
            .map(|p| (p, 0))
            .collect();
        self.fetch_pieces(ino, cfg, std::slice::from_ref(entry), &pieces, &mut out)
            .await?;
        Ok(out)
    }

    /// Fills `out` at each piece's `buf_offset` (pieces are disjoint and in
    /// buffer order, as the stripe math yields them).
    async fn fetch_pieces(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entries: &[StripeEntry],
        pieces: &[(FragmentPiece, usize)],
        out: &mut [u8],
    ) -> Result<(), ClientError> {
        // Carve `out` into one disjoint slice per piece so they can be
        // filled concurrently without copies.
        let mut jobs = Vec::with_capacity(pieces.len());
        let mut rest = out;
        let mut consumed = 0usize;
        for (piece, e) in pieces {
            let skip = piece.buf_offset - consumed;
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(skip);
            let (mine, tail) = tail.split_at_mut(piece.len_bytes as usize);
            rest = tail;
            consumed = piece.buf_offset + piece.len_bytes as usize;
            jobs.push((*piece, &entries[*e], mine));
        }
        // The futures are made before the stream (not by a closure inside
        // it), so the whole read stays Send for spawned prefetch tasks.
        let fetches: Vec<_> = jobs
            .into_iter()
            .map(|(piece, entry, buf)| self.fetch_piece(ino, cfg, entry, piece, buf))
            .collect();
        stream::iter(fetches)
            .buffer_unordered(READ_PIECES_IN_FLIGHT_MAX)
            .try_collect::<()>()
            .await
    }

    /// Fetches one piece of a data fragment; bytes past what the stripe
    /// holds stay zero. Falls back to decoding when the fragment fails.
    async fn fetch_piece(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        piece: FragmentPiece,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        let n =
            stripe::readable_bytes(cfg, entry, piece.index, piece.offset, piece.len_bytes) as usize;
        if n == 0 {
            return Ok(());
        }
        let key = FragmentKey {
            ino,
            stripe: entry.stripe,
            generation: entry.generation,
            index: piece.index as u8,
        };
        let cause = match self
            .get_fragment(key, entry, piece.offset, &mut buf[..n])
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        tracing::warn!("fragment {key} unavailable, degraded read: {cause}");
        buf[..n].fill(0);
        self.degraded_read(ino, cfg, entry, piece.index, piece.offset, &mut buf[..n])
            .await
    }

    /// One fragment range from its node, per the current map. A node the
    /// map says is down is not asked.
    async fn get_fragment(
        &self,
        key: FragmentKey,
        entry: &StripeEntry,
        offset: u32,
        buf: &mut [u8],
    ) -> Result<(), ClientError> {
        let target =
            locate(&self.inner.map.get(), key).inspect_err(|_| self.request_map_refresh())?;
        if !target.up {
            return Err(ClientError::NodeDown {
                node: target.node,
                key,
            });
        }
        let addr = resolve(&target).await?;
        let crc = entry.crcs.get(key.index as usize).copied().unwrap_or(0);
        self.inner
            .storage_read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let result = {
            let _slot = self.inner.io_slots.acquire().await;
            self.inner.transport.get(addr, key, offset, crc, buf).await
        };
        result.map_err(|source| {
            self.request_map_refresh();
            ClientError::Transport {
                node: target.node,
                key,
                source: Box::new(source),
            }
        })
    }

    /// Rebuilds `out` = bytes `[offset, offset + out.len())` of fragment
    /// `want` from the same column of k other fragments.
    async fn degraded_read(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        want: usize,
        offset: u32,
        out: &mut [u8],
    ) -> Result<(), ClientError> {
        let codec = self.codec(cfg)?;
        let k = cfg.k as usize;
        let len = out.len();
        let map = self.inner.map.get();
        let plan = plan_degraded(cfg, entry, want, offset, |i| {
            let key = FragmentKey {
                ino,
                stripe: entry.stripe,
                generation: entry.generation,
                index: i as u8,
            };
            locate(&map, key).map(|t| t.up).unwrap_or(false)
        });
        let mut columns: Vec<Vec<u8>> = vec![vec![0u8; len]; cfg.width()];
        let mut present = vec![false; cfg.width()];
        for &i in &plan.free {
            present[i] = true;
        }
        let mut available = plan.free.len();
        let mut candidates = plan.candidates.iter().copied();
        let mut last_error = String::from("no candidate fragments");
        while available < k {
            let batch: Vec<usize> = candidates.by_ref().take(k - available).collect();
            if batch.is_empty() {
                return Err(ClientError::Unrecoverable {
                    ino,
                    stripe: entry.stripe,
                    available,
                    needed: k,
                    last_error,
                });
            }
            let fetches = columns
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| batch.contains(i))
                .map(|(i, col)| async move {
                    let key = FragmentKey {
                        ino,
                        stripe: entry.stripe,
                        generation: entry.generation,
                        index: i as u8,
                    };
                    // A data fragment shorter than the column end: the rest of
                    // the column is zero padding.
                    let stored = stripe::fragment_bytes(cfg, entry.encoded_bytes, i);
                    let n = ((stored - offset) as usize).min(len);
                    (
                        i,
                        self.get_fragment(key, entry, offset, &mut col[..n]).await,
                    )
                });
            for (i, result) in futures::future::join_all(fetches).await {
                match result {
                    Ok(()) => {
                        present[i] = true;
                        available += 1;
                    }
                    Err(e) => {
                        tracing::warn!("degraded read of stripe {} of inode {ino}: fragment {i} failed too: {e}", entry.stripe);
                        last_error = e.to_string();
                    }
                }
            }
        }
        let mut views: Vec<&mut [u8]> = columns.iter_mut().map(|c| c.as_mut_slice()).collect();
        codec.reconstruct(&mut views, &present, &[want])?;
        out.copy_from_slice(&columns[want]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(encoded_bytes: u32) -> StripeEntry {
        StripeEntry {
            stripe: 0,
            generation: 1,
            encoded_bytes,
            valid_bytes: encoded_bytes,
            crcs: vec![0; 6],
        }
    }

    #[test]
    fn degraded_plan_uses_implicit_zeros_first() {
        let cfg = StripeConfig {
            k: 4,
            m: 2,
            unit_bytes: 100,
        };
        // Small file: only fragment 0 and the parities are stored.
        let plan = plan_degraded(&cfg, &entry(30), 0, 0, |_| true);
        assert_eq!(plan.free, vec![1, 2, 3]);
        assert_eq!(plan.candidates, vec![4, 5]);
        // Full stripe, fragment 1 lost, node of fragment 2 down.
        let plan = plan_degraded(&cfg, &entry(400), 1, 0, |i| i != 2);
        assert!(plan.free.is_empty());
        assert_eq!(plan.candidates, vec![0, 3, 4, 5]);
        // 250 bytes: fragment 2 holds 50; a column from offset 60 of
        // fragment 0 finds fragment 2 (and 3) all zeros there.
        let plan = plan_degraded(&cfg, &entry(250), 0, 60, |_| true);
        assert_eq!(plan.free, vec![2, 3]);
        assert_eq!(plan.candidates, vec![1, 4, 5]);
    }
}
