//! Commits of a file's uploaded stripes when several clients may write
//! it (docs/ARCHITECTURE.md, "Data path: many writers"): each stripe
//! commits over the version it was merged into; on a conflict this
//! client's written ranges are laid over the newer version, uploaded
//! again, and the commit retried, a bounded number of times.

use std::collections::BTreeMap;
use std::time::Duration;

use torchfs_proto::meta::{MetaReply, MetaRequest, StripeBase, StripeEntry};
use torchfs_rdma::Transport;

use super::client::Client;
use super::error::{unexpected, ClientError};
use super::file::FileState;
use super::meta::MetaService;
use super::write::COMMIT_TRIES_MAX;

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Commits the uploaded stripes, each over the version it was merged
    /// into. When another client committed one of them in between, its
    /// version becomes the base: this client's written ranges are laid
    /// over it, the stripe is uploaded again and the commit retried
    /// (docs/ARCHITECTURE.md, "Data path: many writers").
    pub(super) async fn commit(&self, st: &mut FileState) -> Result<(), ClientError> {
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
}
