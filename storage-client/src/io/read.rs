//! Ranged reads of stored stripes into the caller's buffer, many
//! fragments in parallel, and when a fragment cannot be had (node down,
//! unreachable, timed out, missing, checksum mismatch) the same column of
//! any k others, decoded.

use std::sync::atomic::Ordering;

use futures::stream::{self, StreamExt, TryStreamExt};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::StorageClient;
use crate::error::StorageError;
use crate::map::{locate, resolve};
use crate::stripe::{self, FragmentPiece, StripePiece};

/// Fragment pieces one read keeps in flight.
const READ_PIECES_IN_FLIGHT_MAX: usize = 16;

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

impl<T: Transport> StorageClient<T> {
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
    pub(super) async fn get_fragment(
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
    pub(super) async fn degraded_read(
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
