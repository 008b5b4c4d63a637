//! Stripe I/O over a transport (docs/ARCHITECTURE.md: Data path): encode a
//! stripe and put its k+m fragments under a new generation; read ranges of
//! data fragments straight into the caller's buffer, many in parallel, and
//! when a fragment cannot be had (node down, unreachable, timed out,
//! missing, checksum mismatch) fetch the same column of any k others and
//! decode it; delete replaced versions. Bounded: one semaphore caps the
//! fragment requests a client keeps in flight.
//!
//! Writes are degraded when nodes fail: a stripe is stored when k of its
//! k+m fragments are (see [`StorageClient::put_stripe`]); nothing rebuilds
//! the missing ones yet (repair is planned).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::{Notify, Semaphore};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{ClusterMap, Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use crate::codec::ReedSolomon;
use crate::error::StorageError;
use crate::map::{locate, resolve, MapCache};
use crate::stripe::{self, FragmentPiece, StripePiece};

/// Fragment requests (get/put/delete) one client keeps in flight at most.
pub const FRAGMENT_REQUESTS_IN_FLIGHT_MAX: usize = 64;
/// Fragment pieces one read keeps in flight.
const READ_PIECES_IN_FLIGHT_MAX: usize = 16;
/// Deletes one background cleanup keeps in flight.
const DELETES_IN_FLIGHT_MAX: usize = 16;

/// Which fragments a degraded read of one column of fragment `want` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DegradedPlan {
    /// Fragments that are all zeros in the column (not stored, or stored
    /// shorter than the column's start): available without a request.
    pub free: Vec<usize>,
    /// Fragments to fetch, in order of preference (data before parity:
    /// data fragments are on the normal read path's nodes anyway).
    pub candidates: Vec<usize>,
}

/// Plans the degraded read of bytes `[offset, ...)` of fragment `want` of
/// `entry`; `usable(i)` says whether fragment `i`'s node may be asked.
pub fn plan_degraded(
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

/// How long a stripe buffer holding `encoded_bytes` of file data is once
/// padded for encoding: the last stored data fragment padded to the parity
/// length (a full stripe needs no padding).
pub fn padded_bytes(cfg: &StripeConfig, encoded_bytes: u32) -> usize {
    if encoded_bytes == 0 {
        return 0;
    }
    let unit = cfg.unit_bytes as usize;
    let parity_bytes = stripe::parity_fragment_bytes(cfg, encoded_bytes) as usize;
    (encoded_bytes as usize).div_ceil(unit).saturating_sub(1) * unit + parity_bytes
}

/// Stripe I/O for one client: the cluster map it works from, the
/// transport, the in-flight bound and the codecs. Knows nothing of FUSE,
/// open files or caches.
pub struct StorageClient<T: Transport> {
    map: MapCache,
    transport: T,
    io_slots: Semaphore,
    codecs: Mutex<HashMap<(u8, u8), Arc<ReedSolomon>>>,
    read_bytes: AtomicU64,
    /// Stripes stored with some fragments missing (nodes down).
    degraded_writes: AtomicU64,
    /// Notified when a failure suggests the map is stale; whoever owns the
    /// map's source refreshes it (`set_map`).
    map_stale: Arc<Notify>,
    runtime: tokio::runtime::Handle,
}

impl<T: Transport> StorageClient<T> {
    /// `runtime` runs background deletes; `map_stale` is notified when a
    /// fragment's node looked unreachable or unknown.
    pub fn new(
        transport: T,
        map: ClusterMap,
        runtime: tokio::runtime::Handle,
        map_stale: Arc<Notify>,
    ) -> Self {
        transport.learn_nodes(&map.nodes);
        Self {
            map: MapCache::new(map),
            transport,
            io_slots: Semaphore::new(FRAGMENT_REQUESTS_IN_FLIGHT_MAX),
            codecs: Mutex::new(HashMap::new()),
            read_bytes: AtomicU64::new(0),
            degraded_writes: AtomicU64::new(0),
            map_stale,
            runtime,
        }
    }

    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.get()
    }

    /// Installs a newer map (an older one is ignored) and tells the
    /// transport what the nodes advertise.
    pub fn set_map(&self, map: ClusterMap) {
        self.transport.learn_nodes(&map.nodes);
        self.map.set(map);
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Bytes asked of storage nodes by reads so far.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.load(Ordering::Relaxed)
    }

    /// Stripes stored so far with fragments missing (their nodes were down
    /// or unreachable), each still decodable.
    pub fn degraded_writes(&self) -> u64 {
        self.degraded_writes.load(Ordering::Relaxed)
    }

    fn note_stale(&self) {
        self.map_stale.notify_one();
    }

    pub fn codec(&self, cfg: &StripeConfig) -> Result<Arc<ReedSolomon>, StorageError> {
        let mut codecs = self.codecs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rs) = codecs.get(&(cfg.k, cfg.m)) {
            return Ok(rs.clone());
        }
        let rs = Arc::new(ReedSolomon::new(cfg.k as usize, cfg.m as usize)?);
        codecs.insert((cfg.k, cfg.m), rs.clone());
        Ok(rs)
    }

    /// Encodes a padded stripe buffer ([`padded_bytes`] long) holding
    /// `encoded_bytes` of file data and puts its fragments under a new
    /// generation, all in parallel.
    ///
    /// A degraded write: fragments whose node is down or unreachable are
    /// left out as long as k of the k+m remain (all-zero fragments, never
    /// stored, count), so up to m failed nodes do not stop a write; reads
    /// of the missing ones decode. A node that refuses a fragment (no
    /// space, bad request) fails the write with its answer. On failure,
    /// whatever was stored under that generation is deleted in the
    /// background.
    pub async fn put_stripe(
        self: &Arc<Self>,
        ino: Ino,
        cfg: &StripeConfig,
        stripe: u64,
        buf: &[u8],
        encoded_bytes: u32,
    ) -> Result<StripeEntry, StorageError> {
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
        debug_assert_eq!(buf.len(), padded_bytes(cfg, encoded_bytes));
        // Data fragments past the last stored one are all zeros and share
        // one zero buffer.
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

        let map = self.map.get();
        let mut puts = Vec::with_capacity(fragments.len());
        // Fragments that could not be stored because their node is down or
        // unreachable (not because a live node refused them).
        let mut missing: Vec<(usize, StorageError)> = Vec::new();
        for (i, bytes) in fragments {
            let key = FragmentKey {
                ino,
                stripe,
                generation,
                index: i as u8,
            };
            let target = locate(&map, key).inspect_err(|_| self.note_stale())?;
            if !target.up {
                missing.push((
                    i,
                    StorageError::NodeDown {
                        node: target.node,
                        key,
                    },
                ));
                continue;
            }
            puts.push((i, key, target, bytes));
        }
        let results =
            futures::future::join_all(puts.into_iter().map(|(i, key, target, bytes)| async move {
                let put = async {
                    let addr = resolve(&target).await?;
                    let _slot = self.io_slots.acquire().await;
                    self.transport
                        .put(addr, key, bytes)
                        .await
                        .map_err(|source| StorageError::Transport {
                            node: target.node,
                            key,
                            source: Box::new(source),
                        })
                };
                (i, put.await)
            }))
            .await;
        let mut refused = None;
        for (i, result) in results {
            match result {
                Ok(()) => {}
                // The node judged the fragment (no space, bad request): a
                // live node's answer, reported as it is.
                Err(e @ StorageError::Transport { .. }) if !e.may_pass_with_newer_map() => {
                    refused.get_or_insert(e);
                }
                Err(e) => missing.push((i, e)),
            }
        }
        // Fragments not stored on purpose (all zeros) count as present.
        let available = cfg.width() - missing.len();
        if refused.is_none() && !missing.is_empty() && available >= k {
            // A degraded write: decodable now, with m - missing further
            // losses to spare until repair restores the rest.
            self.note_stale();
            self.degraded_writes.fetch_add(1, Ordering::Relaxed);
            let lost: Vec<String> = missing.iter().map(|(i, e)| format!("{i} ({e})")).collect();
            tracing::warn!(
                "stripe {stripe} of inode {ino} stored without {} of its {} fragments: {}",
                missing.len(),
                cfg.width(),
                lost.join("; ")
            );
            return Ok(entry);
        }
        if let Some(err) = refused.or_else(|| missing.into_iter().next().map(|(_, e)| e)) {
            self.note_stale();
            // Whatever was stored under this generation is garbage now.
            self.delete_in_background(ino, *cfg, vec![entry]);
            return Err(err);
        }
        Ok(entry)
    }

    /// Reads the first `len_bytes` of a stored stripe (the old content a
    /// read-modify-write starts from).
    pub async fn read_stripe_prefix(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        len_bytes: u32,
    ) -> Result<Vec<u8>, StorageError> {
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
        self.read_pieces(ino, cfg, std::slice::from_ref(entry), &pieces, &mut out)
            .await?;
        Ok(out)
    }

    /// Fills `out` at each piece's `buf_offset` from fragment piece
    /// `pieces[i].0` of stripe `entries[pieces[i].1]` (pieces are disjoint
    /// and in buffer order, as the stripe math yields them).
    pub async fn read_pieces(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entries: &[StripeEntry],
        pieces: &[(FragmentPiece, usize)],
        out: &mut [u8],
    ) -> Result<(), StorageError> {
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
            .map(|(piece, entry, buf)| self.read_piece(ino, cfg, entry, piece, buf))
            .collect();
        stream::iter(fetches)
            .buffer_unordered(READ_PIECES_IN_FLIGHT_MAX)
            .try_collect::<()>()
            .await
    }

    /// Fetches one piece of a data fragment; bytes past what the stripe
    /// holds stay zero. Falls back to decoding when the fragment fails.
    async fn read_piece(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        piece: FragmentPiece,
        buf: &mut [u8],
    ) -> Result<(), StorageError> {
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
    ) -> Result<(), StorageError> {
        let target = locate(&self.map.get(), key).inspect_err(|_| self.note_stale())?;
        if !target.up {
            return Err(StorageError::NodeDown {
                node: target.node,
                key,
            });
        }
        let addr = resolve(&target).await?;
        let crc = entry.crcs.get(key.index as usize).copied().unwrap_or(0);
        self.read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let result = {
            let _slot = self.io_slots.acquire().await;
            self.transport.get(addr, key, offset, crc, buf).await
        };
        result.map_err(|source| {
            self.note_stale();
            StorageError::Transport {
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
    ) -> Result<(), StorageError> {
        let codec = self.codec(cfg)?;
        let k = cfg.k as usize;
        let len = out.len();
        let map = self.map.get();
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
                return Err(StorageError::Unrecoverable {
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

    /// Deletes the stored fragments of `entries`, best effort, in a task of
    /// its own (freed space is reclaimed later; nothing waits on it).
    pub fn delete_in_background(
        self: &Arc<Self>,
        ino: Ino,
        cfg: StripeConfig,
        entries: Vec<StripeEntry>,
    ) {
        if entries.is_empty() {
            return;
        }
        let this = self.clone();
        self.runtime
            .spawn(async move { this.delete_entries(ino, cfg, entries).await });
    }

    /// Deletes the stored fragments of `entries`, best effort: a fragment
    /// that cannot be deleted now is left for repair/GC.
    pub async fn delete_entries(&self, ino: Ino, cfg: StripeConfig, entries: Vec<StripeEntry>) {
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

    async fn delete_fragment(&self, key: FragmentKey) -> Result<(), StorageError> {
        let target = locate(&self.map.get(), key)?;
        let addr = resolve(&target).await?;
        let _slot = self.io_slots.acquire().await;
        self.transport
            .delete(addr, key)
            .await
            .map_err(|source| StorageError::Transport {
                node: target.node,
                key,
                source: Box::new(source),
            })
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

    #[test]
    fn padding_reaches_the_parity_length() {
        let cfg = StripeConfig {
            k: 4,
            m: 2,
            unit_bytes: 100,
        };
        assert_eq!(padded_bytes(&cfg, 0), 0);
        assert_eq!(padded_bytes(&cfg, 30), 30);
        assert_eq!(padded_bytes(&cfg, 250), 300);
        assert_eq!(padded_bytes(&cfg, 400), 400);
    }
}
