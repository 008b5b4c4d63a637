//! Stripes to storage: encode, and put the k+m fragments under a new
//! generation, leaving out nodes that are down (a degraded write).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::{padded_bytes, StorageClient};
use crate::error::StorageError;
use crate::map::{locate, resolve, Target};
use crate::stripe;

/// A stripe stored, and how many of its fragments were left out.
#[derive(Debug)]
pub struct Stored {
    pub entry: StripeEntry,
    /// The indices of the fragments not stored (their nodes down or
    /// unreachable), for repair to put back.
    pub missing: Vec<u8>,
    /// Of those, fragments whose node the map showed up but that could not
    /// be reached: a newer map may place them (a node that restarted on
    /// other ports).
    pub unreachable: usize,
}

impl<T: Transport> StorageClient<T> {
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
    ) -> Result<Stored, StorageError> {
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
            return Ok(Stored {
                entry,
                missing: Vec::new(),
                unreachable: 0,
            });
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
                (i, self.put_to(&target, key, bytes).await)
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
            let unreachable = missing
                .iter()
                .filter(|(_, e)| !matches!(e, StorageError::NodeDown { .. }))
                .count();
            return Ok(Stored {
                entry,
                missing: missing.iter().map(|(i, _)| *i as u8).collect(),
                unreachable,
            });
        }
        if let Some(err) = refused.or_else(|| missing.into_iter().next().map(|(_, e)| e)) {
            self.note_stale();
            // Whatever was stored under this generation is garbage now.
            self.delete_in_background(ino, *cfg, vec![entry]);
            return Err(err);
        }
        Ok(Stored {
            entry,
            missing: Vec::new(),
            unreachable: 0,
        })
    }

    /// Puts one fragment on `target`, under the in-flight bound.
    pub(super) async fn put_to(
        &self,
        target: &Target,
        key: FragmentKey,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        let addr = resolve(target).await?;
        let _slot = self.io_slots.acquire().await;
        self.transport
            .put(addr, key, bytes)
            .await
            .map_err(|source| StorageError::Transport {
                node: target.node,
                key,
                source: Box::new(source),
            })
    }
}
