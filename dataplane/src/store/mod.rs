//! The chunk store: where a shard keeps its fragments. [`FragmentStore`] is
//! the contract; [`dma::DmaStore`] keeps fragments on local disk with
//! O_DIRECT (small ones in the shard's [`log`]), [`memory::MemoryStore`]
//! in memory (to isolate unit tests).
//! Every implementation passes [`conformance::run`].
//!
//! Contract shared by all stores:
//! - `put` checks the data against the sender's CRC32C before storing
//!   anything, and replaces a fragment atomically (a failed put leaves the
//!   old one intact).
//! - `get`, ranged or not, refuses a fragment whose stored whole-fragment
//!   CRC32C differs from the caller's `expected_crc32c` (a stale or
//!   misdirected fragment), checks every byte it serves against stored
//!   CRCs (a flipped byte in the range is always caught; one outside it
//!   may go unnoticed by that get: the disk store checks only the chunks
//!   the range touches), and clamps the range to the fragment's end
//!   (`offset` past the end is an error).

use std::ops::Deref;

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey, FragmentResponse};

use format::HeaderError;

pub mod conformance;
pub mod crc;
pub mod dma;
pub mod format;
mod group_sync;
pub mod log;
pub mod memory;
pub mod place;

/// Why a store refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("fragment {key} not found")]
    NotFound { key: FragmentKey },
    #[error("fragment {key}: CRC32C mismatch: expected {expected:#010x}, computed {actual:#010x}")]
    ChecksumMismatch {
        key: FragmentKey,
        expected: u32,
        actual: u32,
    },
    /// One chunk of the data does not match its stored CRC. `expected` is
    /// the caller's whole-fragment CRC, `actual` what the whole fragment
    /// hashes to with this chunk as read.
    #[error("fragment {key}: chunk {chunk} (bytes {start_bytes}..{end_bytes}): CRC32C mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChunkChecksumMismatch {
        key: FragmentKey,
        chunk: u32,
        start_bytes: u32,
        end_bytes: u32,
        stored: u32,
        computed: u32,
        expected: u32,
        actual: u32,
    },
    #[error(
        "fragment {key}: no space for {needed_bytes} bytes ({used_bytes} of {capacity_bytes} used)"
    )]
    NoSpace {
        key: FragmentKey,
        needed_bytes: u64,
        used_bytes: u64,
        capacity_bytes: u64,
    },
    #[error("fragment {key}: offset {offset} is past its end ({length_bytes} bytes)")]
    BadRange {
        key: FragmentKey,
        offset: u32,
        length_bytes: u32,
    },
    /// The stored header block is damaged or belongs to another fragment.
    #[error("fragment {key}: stored header is corrupt: {source}")]
    CorruptHeader {
        key: FragmentKey,
        source: HeaderError,
    },
    #[error("fragment {key}: {op}: {source}")]
    Io {
        key: FragmentKey,
        op: &'static str,
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn code(&self) -> FragmentErrorCode {
        match self {
            StoreError::NotFound { .. } => FragmentErrorCode::NotFound,
            // A damaged header is as bad as damaged data: the client
            // treats both like a missing fragment and repairs.
            StoreError::ChecksumMismatch { .. }
            | StoreError::ChunkChecksumMismatch { .. }
            | StoreError::CorruptHeader { .. } => FragmentErrorCode::ChecksumMismatch,
            StoreError::NoSpace { .. } => FragmentErrorCode::NoSpace,
            StoreError::BadRange { .. } => FragmentErrorCode::BadRequest,
            StoreError::Io { .. } => FragmentErrorCode::Io,
        }
    }

    /// The wire response for this error.
    pub fn to_response(&self) -> FragmentResponse {
        let (expected, actual) = match self {
            StoreError::ChecksumMismatch {
                expected, actual, ..
            }
            | StoreError::ChunkChecksumMismatch {
                expected, actual, ..
            } => (*expected, *actual),
            _ => (0, 0),
        };
        FragmentResponse::Error {
            code: self.code(),
            message: self.to_string(),
            expected,
            actual,
        }
    }
}

/// A byte range of a buffer, served without copying it out.
pub struct Slice<B> {
    buf: B,
    start: usize,
    end: usize,
}

impl<B: Deref<Target = [u8]>> Slice<B> {
    /// `start..end` must lie inside `buf`.
    pub fn new(buf: B, start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= buf.len());
        Self { buf, start, end }
    }
}

impl<B: Deref<Target = [u8]>> Deref for Slice<B> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// A shard's fragment store. Not `Send`: each shard executor owns its own.
#[allow(async_fn_in_trait)]
pub trait FragmentStore {
    /// Where a put's bulk bytes are received (straight off the socket), so
    /// that the store can write them without copying.
    type PutBuf: AsMut<[u8]>;
    /// The bytes of a get, served straight to the socket.
    type GetBuf: Deref<Target = [u8]>;

    /// A buffer exposing exactly `length_bytes` to fill with a put's data.
    fn put_buffer(&self, length_bytes: u32) -> Self::PutBuf;
    /// Stores `data` (from [`Self::put_buffer`]) as `key`, after checking it
    /// hashes to `crc32c`. Replaces an existing fragment atomically.
    async fn put(
        &self,
        key: FragmentKey,
        data: Self::PutBuf,
        crc32c: u32,
    ) -> Result<(), StoreError>;
    /// Bytes `offset..min(offset + length, end)` of `key`, after the
    /// checks of the module docs.
    async fn get(
        &self,
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: u32,
    ) -> Result<Self::GetBuf, StoreError>;
    async fn delete(&self, key: FragmentKey) -> Result<(), StoreError>;
    /// Reads `key` whole and checks every byte against what the store
    /// keeps of it (its chunk CRCs, its whole CRC); answers the whole
    /// CRC and the length. A scrub at rest: no caller's expected CRC is
    /// needed.
    async fn scrub(&self, key: FragmentKey) -> Result<(u32, u32), StoreError>;
    /// Every stored key, in key order.
    fn list(&self) -> Vec<FragmentKey>;
    /// Bytes the stored fragments take (on disk, including headers and padding).
    fn used_bytes(&self) -> u64;
}
