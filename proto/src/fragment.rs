//! Fragment data-path messages (schema `schema/fragment.capnp`) and their
//! framing. A frame on a byte stream is
//! `u32 LE header length | Cap'n Proto header | bulk bytes`; the header says
//! how many bulk bytes follow, and those bytes are never copied into the
//! Cap'n Proto message.

use serde::{Deserialize, Serialize};

use crate::meta::Ino;

/// Identity of one stored fragment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragmentKey {
    pub ino: Ino,
    pub stripe: u64,
    pub generation: u64,
    /// 0..k are data fragments, k..k+m parity.
    pub index: u8,
}

impl FragmentKey {
    /// Which of `shards` executors of a storage node owns this key.
    pub fn shard(&self, shards: usize) -> usize {
        if shards == 0 {
            return 0;
        }
        let h = crate::meta::placement_hash(self.ino ^ self.generation.rotate_left(17), self.stripe)
            ^ self.index as u64;
        (h % shards as u64) as usize
    }
}

impl std::fmt::Display for FragmentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:016x}-{:016x}-{:016x}-{:02x}",
            self.ino, self.stripe, self.generation, self.index
        )
    }
}

/// Largest fragment a node accepts (bytes). Guards the bulk length read off
/// the wire before any buffer is allocated.
pub const FRAGMENT_BYTES_MAX: u32 = 64 << 20;
/// Largest Cap'n Proto header accepted (bytes).
pub const HEADER_BYTES_MAX: u32 = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragmentRequest {
    /// `length` bulk bytes follow, with CRC32C `crc32c`.
    Put { key: FragmentKey, length: u32, crc32c: u32 },
    /// Read `length` bytes at `offset`; the node checks the whole fragment
    /// against its own CRC and `expected_crc32c` (the one metad holds).
    Get { key: FragmentKey, offset: u32, length: u32, expected_crc32c: u32 },
    Delete { key: FragmentKey },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FragmentErrorCode {
    NotFound,
    ChecksumMismatch,
    NoSpace,
    Io,
    BadRequest,
    WrongShard,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FragmentResponse {
    /// `length` bulk bytes follow (a get), else 0.
    Ok { length: u32 },
    Error {
        code: FragmentErrorCode,
        message: String,
        /// For ChecksumMismatch: the CRC expected and the one computed.
        expected: u32,
        actual: u32,
    },
}
