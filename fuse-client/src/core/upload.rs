//! Stripe buffers of open files to storage: pipelined uploads of dirty
//! stripes through the storage client (which encodes and puts the k+m
//! fragments under a new generation), one retry with a newer cluster map,
//! and deletes of replaced versions.

use std::sync::Arc;

use torchfs_proto::meta::{FragmentRef, Ino, MetaRequest, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::client::Client;
use super::error::ClientError;
use super::file::FileState;
use super::handles::OpenFile;
use super::meta::MetaService;
use torchfs_storage_client::io::{padded_bytes, Stored};

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
            let stored = self
                .put_padded(ino, cfg, stripe, padded, encoded_bytes)
                .await?;
            self.report_missing(ino, &stored);
            return Ok(stored.entry);
        }
        let stored = result?;
        // Stored degraded because nodes the map showed up could not be
        // reached: if a newer map says where they are now (a restart on
        // other ports), store the stripe again and keep the better copy.
        if stored.unreachable > 0 && self.refresh_map_now().await {
            if let Ok(again) = self
                .put_padded(ino, cfg, stripe, padded, encoded_bytes)
                .await
            {
                let (keep, drop) = if again.missing.len() < stored.missing.len() {
                    (again, stored)
                } else {
                    (stored, again)
                };
                self.delete_in_background(ino, *cfg, vec![drop.entry]);
                self.report_missing(ino, &keep);
                return Ok(keep.entry);
            }
        }
        self.report_missing(ino, &stored);
        Ok(stored.entry)
    }

    /// Records for repair the fragments a degraded write left out: metad
    /// hands them to the repair service, which puts each back once its
    /// node is up (or replaced) and the stripe is committed. Best effort,
    /// in the background: a report lost is found by the service's next
    /// full pass.
    fn report_missing(&self, ino: Ino, stored: &Stored) {
        if stored.missing.is_empty() {
            return;
        }
        let fragments = stored
            .missing
            .iter()
            .map(|index| FragmentRef {
                ino,
                stripe: stored.entry.stripe,
                generation: stored.entry.generation,
                index: *index,
            })
            .collect();
        let client = self.clone();
        self.inner.runtime.spawn(async move {
            let req = MetaRequest::ReportBadFragments { node: 0, fragments };
            if let Err(e) = client.inner.meta.call_background(req).await {
                tracing::warn!("inode {ino}: fragments left out not reported for repair: {e}");
            }
        });
    }

    async fn put_padded(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        stripe: u64,
        buf: &[u8],
        encoded_bytes: u32,
    ) -> Result<Stored, ClientError> {
        Ok(self
            .inner
            .storage
            .put_stripe(ino, cfg, stripe, buf, encoded_bytes)
            .await?)
    }

    /// Deletes the stored fragments of `entries`, best effort, in a task of
    /// its own (freed space is reclaimed later; nothing waits on it).
    pub(super) fn delete_in_background(
        &self,
        ino: Ino,
        cfg: StripeConfig,
        entries: Vec<StripeEntry>,
    ) {
        self.inner.storage.delete_in_background(ino, cfg, entries);
    }

    /// Deletes the stored fragments of `entries`, best effort: a fragment
    /// that cannot be deleted now is left for repair/GC.
    pub(super) async fn delete_entries(
        &self,
        ino: Ino,
        cfg: StripeConfig,
        entries: Vec<StripeEntry>,
    ) {
        self.inner.storage.delete_entries(ino, cfg, entries).await
    }
}
