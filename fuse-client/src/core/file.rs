//! Per-inode state of an open file in this client: the layout as last
//! committed, stripes uploaded but not yet committed, and dirty stripe
//! buffers. Shared by every handle of the inode, so reads see this client's
//! unflushed writes. Pure logic (no I/O): the network steps (reading the old
//! stripe for a read-modify-write, uploading, committing) are done by the
//! caller around these methods.
//!
//! A dirty buffer always holds a prefix of its stripe: bytes
//! `[0, buf.len())` of the stripe's data, with everything past it zero (a
//! hole, or past the end of the file). The old content is read in before
//! the first write into a stripe that has any (read-modify-write), unless
//! that write covers all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rangemap::RangeSet;
use torchfs_proto::meta::{Ino, Layout, StripeBase, StripeConfig, StripeEntry};

use crate::stripe::{self, FragmentPiece, StripeError, StripePiece};

pub(crate) struct FileState {
    pub ino: Ino,
    pub config: StripeConfig,
    /// File size as this client sees it (including its unflushed writes).
    pub size: u64,
    /// Stripes as metad holds them (at open, plus this client's commits).
    pub committed: BTreeMap<u64, StripeEntry>,
    /// Uploaded by this client, not yet committed: their fragments exist
    /// only for this client until CommitLayout names them.
    pub uploaded: BTreeMap<u64, StripeEntry>,
    /// Stripe buffers not yet uploaded (prefix of the stripe, see above).
    pub dirty: BTreeMap<u64, Vec<u8>>,
    /// Full stripe buffers a task is uploading now (`upload::start_upload`):
    /// read like dirty ones; a write into one starts a dirty copy.
    pub uploading: BTreeMap<u64, Arc<Vec<u8>>>,
    /// The byte ranges of each stripe this client wrote since its last
    /// commit (in `dirty` or `uploaded`): what a merge re-applies over
    /// another client's version of the stripe.
    pub written: BTreeMap<u64, RangeSet<u32>>,
    /// The end of this client's writes since its last commit: the size
    /// its commit asks for (metad keeps the larger of it and the size).
    pub written_end: u64,
}

/// What a read must fetch from storage: `pieces` index into `entries`.
pub(crate) struct ReadPlan {
    pub entries: Vec<StripeEntry>,
    pub pieces: Vec<(FragmentPiece, usize)>,
}

impl FileState {
    pub fn from_layout(ino: Ino, size: u64, layout: Layout) -> Result<Self, StripeError> {
        stripe::validate_config(&layout.config)?;
        let mut committed = BTreeMap::new();
        for entry in layout.stripes {
            stripe::validate_entry(&layout.config, &entry)?;
            committed.insert(entry.stripe, entry);
        }
        Ok(Self {
            ino,
            config: layout.config,
            size,
            committed,
            uploaded: BTreeMap::new(),
            dirty: BTreeMap::new(),
            uploading: BTreeMap::new(),
            written: BTreeMap::new(),
            written_end: 0,
        })
    }

    /// A fingerprint of the committed content (size and every stripe's
    /// generation and extent): cached data is keyed by it, so data of a
    /// file changed elsewhere is not served once this client reopens it.
    /// Stripes get a new random generation on every write.
    pub fn version(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.size.hash(&mut h);
        self.config.unit_bytes.hash(&mut h);
        for e in self.committed.values() {
            (e.stripe, e.generation, e.encoded_bytes, e.valid_bytes).hash(&mut h);
        }
        h.finish()
    }

    /// The version of `stripe` this client's writes to it are merged into:
    /// the committed one as this client knows it.
    pub fn base(&self, stripe: u64) -> StripeBase {
        StripeBase::of(self.committed.get(&stripe))
    }

    /// Takes `fresh` (the file as metad holds it now) as this client's
    /// view, keeping this client's unflushed writes: a stripe it is writing
    /// keeps its base (its upload is merged at commit), and the size only
    /// grows. Returns whether the view changed.
    pub fn adopt(&mut self, fresh: FileState) -> bool {
        if !self.pending() {
            let changed = fresh.committed != self.committed
                || fresh.size != self.size
                || fresh.config != self.config;
            if changed {
                *self = fresh;
            }
            return changed;
        }
        if fresh.config != self.config {
            return false;
        }
        let mut changed = false;
        let stripes: BTreeSet<u64> = self
            .committed
            .keys()
            .chain(fresh.committed.keys())
            .copied()
            .filter(|s| {
                !(self.dirty.contains_key(s)
                    || self.uploading.contains_key(s)
                    || self.uploaded.contains_key(s))
            })
            .collect();
        for stripe in stripes {
            let now = fresh.committed.get(&stripe);
            if self.committed.get(&stripe) != now {
                changed = true;
                match now {
                    Some(entry) => self.committed.insert(stripe, entry.clone()),
                    None => self.committed.remove(&stripe),
                };
            }
        }
        if fresh.size > self.size {
            self.size = fresh.size;
            changed = true;
        }
        changed
    }

    /// Whether this client holds changes metad has not seen.
    pub fn pending(&self) -> bool {
        !self.dirty.is_empty() || !self.uploading.is_empty() || !self.uploaded.is_empty()
    }

    /// The buffer of `stripe` this client holds in memory, if any: dirty,
    /// else being uploaded.
    pub fn buffer(&self, stripe: u64) -> Option<&[u8]> {
        self.dirty
            .get(&stripe)
            .map(Vec::as_slice)
            .or_else(|| self.uploading.get(&stripe).map(|b| b.as_slice()))
    }

    /// The newest stored version of a stripe: uploaded, else committed.
    pub fn stored_entry(&self, stripe: u64) -> Option<&StripeEntry> {
        self.uploaded
            .get(&stripe)
            .or_else(|| self.committed.get(&stripe))
    }

    /// Bytes of the stripe's stored content that are still file data: the
    /// prefix a read-modify-write must bring in.
    fn stored_prefix_bytes(&self, stripe: u64) -> u32 {
        let Some(entry) = self.stored_entry(stripe) else {
            return 0;
        };
        let in_file = self
            .size
            .saturating_sub(stripe::stripe_start(&self.config, stripe));
        (entry.valid_bytes.min(entry.encoded_bytes) as u64).min(in_file) as u32
    }

    /// Before writing `piece` into a stripe with no dirty buffer: the stored
    /// entry and how many of its leading bytes must be read first. None when
    /// nothing needs reading (a buffer, a hole, or the write covers it all).
    pub fn rmw_source(&self, piece: &StripePiece) -> Option<(StripeEntry, u32)> {
        if self.dirty.contains_key(&piece.stripe) {
            return None;
        }
        let old_bytes = self.stored_prefix_bytes(piece.stripe);
        let covered = piece.offset == 0 && piece.len_bytes >= old_bytes;
        if old_bytes == 0 || covered {
            return None;
        }
        let entry = self.stored_entry(piece.stripe)?.clone();
        Some((entry, old_bytes))
    }

    /// Applies a write of `data` (`piece.len_bytes` long) to the stripe's
    /// buffer, creating it empty when absent (the caller has installed the
    /// old prefix first when [`Self::rmw_source`] asked for one). Returns
    /// whether the stripe is now completely written.
    pub fn apply_write(&mut self, piece: &StripePiece, data: &[u8]) -> bool {
        debug_assert_eq!(data.len(), piece.len_bytes as usize);
        let stripe_bytes = self.config.stripe_bytes() as usize;
        let buf = self.dirty.entry(piece.stripe).or_default();
        let start = piece.offset as usize;
        let end = start + data.len();
        if buf.len() < end {
            // Zero-fills a gap between the old end and the write.
            buf.resize(end, 0);
        }
        buf[start..end].copy_from_slice(data);
        let full = buf.len() >= stripe_bytes;
        if piece.len_bytes > 0 {
            self.written
                .entry(piece.stripe)
                .or_default()
                .insert(piece.offset..piece.offset + piece.len_bytes);
        }
        self.written_end = self
            .written_end
            .max(stripe::stripe_start(&self.config, piece.stripe) + end as u64);
        full
    }

    /// The dirty stripe to upload early when the buffer budget is spent:
    /// the fullest one (best use of an upload), never `keep`.
    pub fn eviction_candidate(&self, keep: u64) -> Option<u64> {
        self.dirty
            .iter()
            .filter(|(s, _)| **s != keep)
            .max_by_key(|(_, b)| b.len())
            .map(|(s, _)| *s)
    }

    /// Records an uploaded stripe; returns the uncommitted entry it
    /// supersedes (its fragments are garbage only this client knows of).
    pub fn record_upload(&mut self, entry: StripeEntry) -> Option<StripeEntry> {
        self.uploaded.insert(entry.stripe, entry)
    }

    /// After a successful CommitLayout: the uploaded entries are now the
    /// committed layout.
    pub fn record_commit(&mut self) {
        let uploaded = std::mem::take(&mut self.uploaded);
        self.committed.extend(uploaded);
        self.written.clear();
        self.written_end = 0;
    }

    /// For a merge after a commit that conflicted: `current` is another
    /// client's version of `stripe` (None: the stripe is gone) in a file
    /// of `size` bytes. Returns how many leading bytes of `current` the
    /// merged stripe keeps (0 when this client's writes cover them all)
    /// and the ranges of this client's writes to lay over them.
    pub fn merge_source(
        &self,
        stripe: u64,
        current: Option<&StripeEntry>,
        size: u64,
    ) -> (u32, RangeSet<u32>) {
        let ours = self.written.get(&stripe).cloned().unwrap_or_default();
        let in_file = size.saturating_sub(stripe::stripe_start(&self.config, stripe));
        let theirs = current.map_or(0, |e| {
            (e.valid_bytes.min(e.encoded_bytes) as u64).min(in_file) as u32
        });
        let covered = ours
            .iter()
            .next()
            .is_some_and(|r| r.start == 0 && r.end >= theirs);
        (if covered { 0 } else { theirs }, ours)
    }

    /// After a merged stripe is uploaded: `current` (None: a hole) is the
    /// version it is based on now.
    pub fn rebase(&mut self, stripe: u64, current: Option<StripeEntry>) {
        match current {
            Some(entry) => self.committed.insert(stripe, entry),
            None => self.committed.remove(&stripe),
        };
    }

    /// Applies a truncation to `size` to the local state (metad applies it
    /// to the committed layout itself). Returns uploaded-but-uncommitted
    /// entries that are now wholly past the end: their fragments must be
    /// deleted by the caller, since metad never heard of them.
    pub fn truncate(&mut self, size: u64) -> Vec<StripeEntry> {
        self.size = size;
        let cfg = self.config;
        let first_gone = size.div_ceil(cfg.stripe_bytes());
        // Bytes of the boundary stripe that stay (when size is unaligned).
        let boundary = stripe::stripe_of(&cfg, size);
        let keep_bytes = (size - stripe::stripe_start(&cfg, boundary)) as u32;

        self.dirty.retain(|s, _| *s < first_gone);
        if let Some(buf) = self.dirty.get_mut(&boundary) {
            buf.truncate(keep_bytes as usize);
        }
        // Uploads in flight past the end are dropped (their tasks find
        // them gone and delete what they stored); a cut one continues as
        // a dirty buffer.
        self.uploading.retain(|s, _| *s < first_gone);
        if let Some(buf) = self.uploading.remove(&boundary) {
            self.dirty
                .entry(boundary)
                .or_insert_with(|| buf[..keep_bytes as usize].to_vec());
        }
        // Written bytes past the end are gone: a merge must not bring
        // them back over another client's data.
        self.written.retain(|s, _| *s < first_gone);
        if let Some(ranges) = self.written.get_mut(&boundary) {
            ranges.remove(keep_bytes..u32::MAX);
        }
        self.written_end = self.written_end.min(size);
        self.committed.retain(|s, _| *s < first_gone);
        if let Some(e) = self.committed.get_mut(&boundary) {
            e.valid_bytes = e.valid_bytes.min(keep_bytes);
        }
        let dropped = self.uploaded.split_off(&first_gone).into_values().collect();
        if let Some(e) = self.uploaded.get_mut(&boundary) {
            e.valid_bytes = e.valid_bytes.min(keep_bytes);
        }
        dropped
    }

    /// Plans a read of `[offset, offset + out.len())`, which the caller has
    /// clipped to the file size and zeroed: copies what dirty buffers hold
    /// into `out` and lists what must come from storage. Holes and
    /// masked bytes stay zero.
    pub fn plan_read(&self, offset: u64, out: &mut [u8]) -> Result<ReadPlan, StripeError> {
        let mut plan = ReadPlan {
            entries: Vec::new(),
            pieces: Vec::new(),
        };
        for piece in stripe::split_stripes(&self.config, offset, out.len() as u64)? {
            if let Some(buf) = self.buffer(piece.stripe) {
                let start = (piece.offset as usize).min(buf.len());
                let end = (piece.offset as usize + piece.len_bytes as usize).min(buf.len());
                out[piece.buf_offset..piece.buf_offset + (end - start)]
                    .copy_from_slice(&buf[start..end]);
                continue;
            }
            let Some(entry) = self.stored_entry(piece.stripe) else {
                continue;
            };
            let index = plan.entries.len();
            let mut used = false;
            for fp in stripe::split_fragments(&self.config, piece) {
                if stripe::readable_bytes(&self.config, entry, fp.index, fp.offset, fp.len_bytes)
                    > 0
                {
                    plan.pieces.push((fp, index));
                    used = true;
                }
            }
            if used {
                plan.entries.push(entry.clone());
            }
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> StripeConfig {
        StripeConfig {
            k: 2,
            m: 1,
            unit_bytes: 10,
        }
    }

    fn entry(stripe: u64, encoded_bytes: u32) -> StripeEntry {
        StripeEntry {
            stripe,
            generation: 1,
            encoded_bytes,
            valid_bytes: encoded_bytes,
            crcs: vec![1, 2, 3],
        }
    }

    fn state(size: u64, stripes: Vec<StripeEntry>) -> FileState {
        FileState::from_layout(
            7,
            size,
            Layout {
                config: cfg(),
                stripes,
            },
        )
        .unwrap()
    }

    fn piece(stripe: u64, offset: u32, len_bytes: u32) -> StripePiece {
        StripePiece {
            stripe,
            offset,
            len_bytes,
            buf_offset: 0,
        }
    }

    #[test]
    fn rmw_needed_only_for_partial_overwrite_of_stored_data() {
        // 45 bytes: stripes 0, 1 full (20 each), stripe 2 holds 5.
        let st = state(45, vec![entry(0, 20), entry(1, 20), entry(2, 5)]);
        assert_eq!(
            st.rmw_source(&piece(0, 3, 2)).map(|(e, n)| (e.stripe, n)),
            Some((0, 20))
        );
        assert!(st.rmw_source(&piece(0, 0, 20)).is_none(), "full overwrite");
        assert!(
            st.rmw_source(&piece(2, 0, 5)).is_none(),
            "covers the stored prefix"
        );
        assert_eq!(st.rmw_source(&piece(2, 0, 4)).map(|(_, n)| n), Some(5));
        assert!(st.rmw_source(&piece(5, 3, 2)).is_none(), "hole");
        let mut st = st;
        st.dirty.insert(0, vec![1; 20]);
        assert!(st.rmw_source(&piece(0, 3, 2)).is_none(), "already buffered");
    }

    #[test]
    fn rmw_prefix_respects_truncation() {
        let mut st = state(40, vec![entry(0, 20), entry(1, 20)]);
        st.truncate(27);
        assert_eq!(st.committed[&1].valid_bytes, 7);
        assert_eq!(st.rmw_source(&piece(1, 10, 1)).map(|(_, n)| n), Some(7));
        st.truncate(20);
        assert!(!st.committed.contains_key(&1));
        assert!(st.rmw_source(&piece(1, 10, 1)).is_none());
    }

    #[test]
    fn writes_fill_gaps_with_zeros_and_report_full_stripes() {
        let mut st = state(0, vec![]);
        assert!(!st.apply_write(&piece(0, 4, 3), b"abc"));
        assert_eq!(st.dirty[&0], b"\0\0\0\0abc");
        assert!(!st.apply_write(&piece(0, 0, 2), b"xy"));
        assert_eq!(st.dirty[&0], b"xy\0\0abc");
        assert!(st.apply_write(&piece(0, 7, 13), &[9; 13]));
        assert_eq!(st.dirty[&0].len(), 20);
    }

    #[test]
    fn read_plan_mixes_buffers_holes_and_storage() {
        // Stripe 0 stored (20 bytes), stripe 1 dirty, stripe 2 hole,
        // stripe 3 stored with 5 bytes; size 65.
        let mut st = state(65, vec![entry(0, 20), entry(3, 5)]);
        st.dirty.insert(1, b"0123456789abc".to_vec());
        let mut out = vec![0u8; 65];
        let plan = st.plan_read(0, &mut out).unwrap();
        assert_eq!(&out[20..33], b"0123456789abc");
        assert!(out[33..].iter().all(|&b| b == 0));
        let got: Vec<_> = plan
            .pieces
            .iter()
            .map(|(p, e)| (p.stripe, p.index, p.offset, p.len_bytes, p.buf_offset, *e))
            .collect();
        // Stripe 3 ends at the file size (65).
        assert_eq!(
            got,
            vec![
                (0, 0, 0, 10, 0, 0),
                (0, 1, 0, 10, 10, 0),
                (3, 0, 0, 5, 60, 1)
            ]
        );
        assert_eq!(plan.entries.len(), 2);
    }

    #[test]
    fn truncate_cuts_buffers_and_drops_uncommitted_uploads() {
        let mut st = state(60, vec![entry(0, 20)]);
        st.dirty.insert(1, vec![1; 20]);
        st.dirty.insert(2, vec![2; 20]);
        st.record_upload(entry(2, 20));
        st.record_upload(entry(1, 20));
        let dropped = st.truncate(25);
        assert_eq!(st.size, 25);
        assert_eq!(st.dirty.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(st.dirty[&1].len(), 5);
        assert_eq!(
            dropped.iter().map(|e| e.stripe).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(st.uploaded[&1].valid_bytes, 5);
        // Extending keeps everything.
        assert!(st.truncate(100).is_empty());
        assert_eq!(st.dirty[&1].len(), 5);
        st.record_commit();
        assert!(st.uploaded.is_empty());
        assert_eq!(st.committed[&1].valid_bytes, 5);
    }

    #[test]
    fn version_follows_content_changes() {
        let st = state(45, vec![entry(0, 20), entry(1, 20), entry(2, 5)]);
        let v = st.version();
        assert_eq!(
            v,
            state(45, vec![entry(0, 20), entry(1, 20), entry(2, 5)]).version()
        );
        let mut other = entry(1, 20);
        other.generation = 2;
        assert_ne!(
            v,
            state(45, vec![entry(0, 20), other, entry(2, 5)]).version()
        );
        let mut cut = state(45, vec![entry(0, 20), entry(1, 20), entry(2, 5)]);
        cut.truncate(44);
        assert_ne!(v, cut.version());
    }

    #[test]
    fn eviction_prefers_the_fullest_other_stripe() {
        let mut st = state(0, vec![]);
        st.dirty.insert(0, vec![0; 3]);
        st.dirty.insert(1, vec![0; 15]);
        st.dirty.insert(2, vec![0; 9]);
        assert_eq!(st.eviction_candidate(5), Some(1));
        assert_eq!(st.eviction_candidate(1), Some(2));
    }

    #[test]
    fn invalid_layouts_are_refused() {
        let bad = Layout {
            config: StripeConfig {
                k: 0,
                m: 1,
                unit_bytes: 10,
            },
            stripes: vec![],
        };
        assert!(FileState::from_layout(1, 0, bad).is_err());
        let mut e = entry(0, 20);
        e.crcs.pop();
        assert!(FileState::from_layout(
            1,
            0,
            Layout {
                config: cfg(),
                stripes: vec![e]
            }
        )
        .is_err());
    }
}
