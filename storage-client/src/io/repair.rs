//! Repair in place: the stored fragments of a stripe that are missing
//! (a degraded write, a node that came back without what it missed, a
//! replaced disk) or fail their checksum are rebuilt from k others and put
//! back where the map places them, restoring the stripe's redundancy.

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};
use torchfs_proto::meta::{Ino, StripeConfig, StripeEntry};
use torchfs_rdma::Transport;

use super::StorageClient;
use crate::error::StorageError;
use crate::map::locate;
use crate::stripe;

/// What repairing one stripe found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StripeRepair {
    /// Stored fragments checked.
    pub checked: u32,
    /// Fragments rebuilt and stored again.
    pub rebuilt: u32,
    /// Bytes rebuilt.
    pub rebuilt_bytes: u64,
    /// Fragments that needed rebuilding and could not be (their node is
    /// down, or fewer than k others could be read).
    pub failed: u32,
}

impl<T: Transport> StorageClient<T> {
    /// Checks every stored fragment of `entry` and rebuilds those that are
    /// missing or corrupt. `verify_whole` reads each fragment whole (every
    /// chunk's CRC checked: a scrub); otherwise one byte (the node checks
    /// the fragment's whole CRC against metad's and that it exists).
    pub async fn repair_stripe(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        verify_whole: bool,
    ) -> Result<StripeRepair, StorageError> {
        self.repair_fragments(ino, cfg, entry, 0..cfg.width(), verify_whole)
            .await
    }

    /// [`Self::repair_stripe`] for the fragments `indices` only (the slots
    /// of a placement group that moved to another node).
    pub async fn repair_fragments(
        &self,
        ino: Ino,
        cfg: &StripeConfig,
        entry: &StripeEntry,
        indices: impl IntoIterator<Item = usize>,
        verify_whole: bool,
    ) -> Result<StripeRepair, StorageError> {
        let mut out = StripeRepair::default();
        for i in indices.into_iter().filter(|i| *i < cfg.width()) {
            let stored = stripe::fragment_bytes(cfg, entry.encoded_bytes, i);
            if stored == 0 {
                continue;
            }
            out.checked += 1;
            let key = FragmentKey {
                ino,
                stripe: entry.stripe,
                generation: entry.generation,
                index: i as u8,
            };
            let probe_len = if verify_whole { stored as usize } else { 1 };
            let mut probe = vec![0u8; probe_len];
            let damaged = match self.get_fragment(key, entry, 0, &mut probe).await {
                Ok(()) => continue,
                Err(StorageError::Transport { source, .. })
                    if matches!(
                        source.code(),
                        Some(FragmentErrorCode::NotFound | FragmentErrorCode::ChecksumMismatch)
                    ) =>
                {
                    source.to_string()
                }
                // The node is down or unreachable: nothing to put it on now.
                Err(e) => {
                    tracing::debug!("repair: fragment {key} not checked: {e}");
                    out.failed += 1;
                    continue;
                }
            };
            let mut bytes = vec![0u8; stored as usize];
            if let Err(e) = self.degraded_read(ino, cfg, entry, i, 0, &mut bytes).await {
                tracing::warn!("repair: fragment {key} ({damaged}) cannot be rebuilt: {e}");
                out.failed += 1;
                continue;
            }
            let crc = crc32c::crc32c(&bytes);
            let want = entry.crcs.get(i).copied().unwrap_or(0);
            if crc != want {
                // Never store bytes that are not the fragment metad knows.
                tracing::warn!(
                    "repair: fragment {key} rebuilt to CRC32C {crc:#010x}, not {want:#010x}; not stored"
                );
                out.failed += 1;
                continue;
            }
            match self.put_fragment(key, &bytes).await {
                Ok(()) => {
                    tracing::info!("repair: fragment {key} ({damaged}) rebuilt, {stored} bytes");
                    out.rebuilt += 1;
                    out.rebuilt_bytes += u64::from(stored);
                }
                Err(e) => {
                    tracing::warn!("repair: fragment {key} rebuilt but not stored: {e}");
                    out.failed += 1;
                }
            }
        }
        Ok(out)
    }

    async fn put_fragment(&self, key: FragmentKey, bytes: &[u8]) -> Result<(), StorageError> {
        let target = locate(&self.map(), key)?;
        if !target.up {
            return Err(StorageError::NodeDown {
                node: target.node,
                key,
            });
        }
        self.put_to(&target, key, bytes).await
    }
}
