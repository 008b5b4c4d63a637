//! Stripes to storage: encode a stripe buffer and put its k+m fragments
//! under a new generation (all in parallel, one retry with a newer cluster
//! map), and delete the fragments of replaced versions in the background.
//!
//! No degraded writes in v0: a stripe is stored only when all k+m of its
//! nodes take their fragment.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::file::FileState;
use super::handles::OpenFile;
use super::map::{locate, resolve};
use super::{Client, ClientError, MetaService};
use crate::stripe;

/// Deletes one background cleanup keeps in flight.
const DELETES_IN_FLIGHT_MAX: usize = 16;

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Encodes and uploads the dirty buffer of `stripe`, recording the new
    /// entry as uploaded. On failure the buffer stays dirty.
    pub(super) async fn upload_dirty(
        &self,
        st: &mut FileState,
        stripe: u64,
    ) -> Result<(), ClientError> {
        let Some(mut buf) = st.dirty.remove(&stripe) else {
            return Ok(());
        };
        // A dirty buffer of a stripe whose upload is in flight started from
        // that upload's buffer: it supersedes it (the task then finds its
        // upload gone and deletes what it stored).
        st.uploading.remove(&stripe);
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

    /// Starts the upload of the full dirty stripe `stripe` in a task of its
    /// own, so the writer goes on with the next stripe while its k+m puts
    /// are in flight (the writer bounds how many: `uploads_in_flight_max`).
    /// Until it ends the buffer stays readable (`uploading`); then the new
    /// entry is recorded as uploaded, unless a truncation or a newer upload
    /// of the stripe replaced this one meanwhile (its fragments are garbage
    /// then). A failed upload puts the buffer back as dirty: the next flush
    /// uploads it again and answers the error if it fails again.
    pub(super) fn start_upload(&self, file: &Arc<OpenFile>, st: &mut FileState, stripe: u64) {
        let Some(buf) = st.dirty.remove(&stripe) else {
            return;
        };
        let buf = Arc::new(buf);
        st.uploading.insert(stripe, buf.clone());
        let (client, file, ino, cfg) = (self.clone(), file.clone(), st.ino, st.config);
        self.inner.runtime.spawn(async move {
            let encoded_bytes = buf.len() as u32;
            let result = client
                .store_padded(ino, &cfg, stripe, &buf, encoded_bytes)
                .await;
            let mut st = file.state.lock().await;
            let current = st
                .uploading
                .get(&stripe)
                .is_some_and(|b| Arc::ptr_eq(b, &buf));
            if current {
                st.uploading.remove(&stripe);
            }
            match result {
                Ok(entry) if current => {
                    if let Some(old) = st.record_upload(entry) {
                        client.delete_in_background(ino, cfg, vec![old]);
                    }
                }
                Ok(superseded) => client.delete_in_background(ino, cfg, vec![superseded]),
                Err(e) => {
                    tracing::debug!("upload of stripe {stripe} of inode {ino} failed (kept for the next flush): {e}");
                    // A newer buffer of the stripe started from this one.
                    if current && !st.dirty.contains_key(&stripe) {
                        st.dirty.insert(stripe, Arc::unwrap_or_clone(buf));
                    }
                }
            }
            file.publish(&st);
            drop(st);
            file.uploads_done.notify_waiters();
        });
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
        buf.resize(padded_bytes(cfg, encoded_bytes), 0);
        let result = self
            .store_padded(ino, cfg, stripe, buf, encoded_bytes)
            .await;
        buf.truncate(encoded_bytes as usize);
        result
    }

    /// Stores a padded stripe buffer ([`padded_bytes`] long) holding
    /// `encoded_bytes` of file data. A node that restarted may listen
    /// elsewhere now: with a newer map the upload is worth one more try
    /// (under a new generation).
    async fn store_padded(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        stripe: u64,
        padded: &[u8],
        encoded_bytes: u32,
    ) -> Result<StripeEntry, ClientError> {
        let result = self
            .put_padded(ino, cfg, stripe, padded, encoded_bytes)
            .await;
        if result
            .as_ref()
            .is_err_and(ClientError::may_pass_with_newer_map)
            && self.refresh_map_now().await
        {
            return self
                .put_padded(ino, cfg, stripe, padded, encoded_bytes)
                .await;
        }
        result
    }

    async fn put_padded(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        stripe: u64,
        buf: &[u8],
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

/// How long a stripe buffer holding `encoded_bytes` of file data is once
/// padded for encoding: the last stored data fragment padded to the parity
/// length (a full stripe needs no padding).
fn padded_bytes(cfg: &StripeConfig, encoded_bytes: u32) -> usize {
    if encoded_bytes == 0 {
        return 0;
    }
    let unit = cfg.unit_bytes as usize;
    let parity_bytes = stripe::parity_fragment_bytes(cfg, encoded_bytes) as usize;
    (encoded_bytes as usize).div_ceil(unit).saturating_sub(1) * unit + parity_bytes
}
