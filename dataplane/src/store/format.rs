//! The on-disk fragment format: one 4 KiB header block, then the data padded
//! to 4 KiB (so every read and write is O_DIRECT-aligned), in the file
//! `<key>.frag`.
//!
//! Header block layout (little endian), format version 2 (written now):
//! `0..8` magic `TFSFRAG\0`, `8..12` format version, `16..24` ino,
//! `24..32` stripe, `32..40` generation, `40` index, `48..52` data length
//! (bytes), `52..56` CRC32C of the whole data, `56..60` chunk size (bytes),
//! `60..64` CRC32C of the rest of the block (bytes `0..60` then `64..4096`),
//! `64..` the CRC32C of each chunk of data, in order; the rest is zero.
//!
//! Chunks let a ranged get read and check only the chunks its range
//! touches. The chunk size is [`CHUNK_BYTES_MIN`] (64 KiB), doubled for
//! fragments too large for the table to fit the one header block
//! ([`chunk_bytes_for`]: above 63 MiB, which takes 128 KiB chunks up to the
//! 64 MiB wire limit). Growing the chunk instead of the header keeps the
//! data at offset 4096 in every version and for every size, so a get can
//! read its data range at the same time as the header, before knowing
//! what the header says. 64 KiB bounds a 4 KiB read at 16x and a 128 KiB
//! read at 2x (3 chunks when unaligned) while keeping the table to 16
//! entries for the default 1 MiB fragment.
//!
//! A record of a shard's fragment log (`super::log`) is the same image,
//! with bytes `4072..4096` of the header block saying where it sits: the
//! segment's nonce, its sequence number and the record's offset (the
//! [`Stamp`]), covered by the header CRC; they are zero in a fragment file.
//! The chunk table of a record never reaches them (records are far smaller
//! than the [`STAMP_CHUNKS_MAX`] chunks that would).
//!
//! Version 1 (before chunks) is the same block with bytes `56..60` zero,
//! the header CRC over bytes `0..60` only and no table; such fragments are
//! still served, by reading and checking them whole.

use torchfs_proto::fragment::FragmentKey;

use super::crc;
use crate::io::BLOCK_BYTES;

pub const HEADER_BLOCK_BYTES: usize = BLOCK_BYTES;
pub const MAGIC: [u8; 8] = *b"TFSFRAG\0";
/// The version this node writes.
pub const FORMAT_VERSION: u32 = 2;
/// The first version (a whole-fragment CRC only): still read.
pub const FORMAT_VERSION_WHOLE: u32 = 1;
/// Chunk size of every fragment up to [`CHUNKS_MAX`] chunks of it.
pub const CHUNK_BYTES_MIN: u32 = 64 << 10;
const CHUNK_TABLE_AT: usize = 64;
/// Chunk CRCs that fit the header block after the fixed fields.
pub const CHUNKS_MAX: usize = (HEADER_BLOCK_BYTES - CHUNK_TABLE_AT) / 4;
/// Where a log record's [`Stamp`] sits in its header block.
pub const STAMP_AT: usize = HEADER_BLOCK_BYTES - 24;
/// Chunk CRCs that fit before the stamp.
pub const STAMP_CHUNKS_MAX: usize = (STAMP_AT - CHUNK_TABLE_AT) / 4;

/// Where a log record sits: its segment (a random nonce, so that a copy of
/// another segment's record found inside data is not taken for one, and
/// the sequence number) and its offset in the segment file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    pub nonce: u64,
    pub seq: u64,
    pub offset: u64,
}

impl Stamp {
    /// The stamp in a header block (zero for a fragment file). Only
    /// meaningful once [`FragmentHeader::decode`] accepted the block.
    pub fn read(block: &[u8]) -> Self {
        Self {
            nonce: u64_at(block, STAMP_AT),
            seq: u64_at(block, STAMP_AT + 8),
            offset: u64_at(block, STAMP_AT + 16),
        }
    }
}

/// Why a header block cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header block has {len_bytes} bytes, not {HEADER_BLOCK_BYTES}")]
    Short { len_bytes: usize },
    #[error("bad magic {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("header CRC32C {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("format version {version}: this node reads versions {FORMAT_VERSION_WHOLE} and {FORMAT_VERSION}")]
    UnknownVersion { version: u32 },
    #[error("chunk size {chunk_bytes} bytes is not a power of two of at least {BLOCK_BYTES}")]
    ChunkSize { chunk_bytes: u32 },
    #[error("{length_bytes} bytes in chunks of {chunk_bytes} need {chunks} chunk CRCs, the header holds at most {CHUNKS_MAX}")]
    TooManyChunks {
        length_bytes: u32,
        chunk_bytes: u32,
        chunks: usize,
    },
    #[error("whole-fragment CRC32C {stored:#010x} disagrees with {combined:#010x} combined from the chunk CRCs")]
    WholeChecksum { stored: u32, combined: u32 },
    #[error("the file holds fragment {found}")]
    WrongKey { found: FragmentKey },
    #[error("says {length_bytes} data bytes, the file has room for {room_bytes}")]
    PastEndOfFile { length_bytes: u32, room_bytes: u64 },
}

/// How a fragment's data is checksummed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksums {
    /// Version 1: only the whole-fragment CRC; a get reads everything.
    Whole,
    /// Version 2: one CRC32C per chunk of `chunk_bytes` (the last chunk
    /// is shorter), whose combination is the whole-fragment CRC.
    Chunks { chunk_bytes: u32, crc32cs: Vec<u32> },
}

/// What a header block says about the fragment after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FragmentHeader {
    pub key: FragmentKey,
    pub length_bytes: u32,
    /// CRC32C of the whole data. For version 2, decoding checks it equals
    /// the chunk CRCs combined.
    pub crc32c: u32,
    pub checksums: Checksums,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The chunk size this node writes for a fragment of `length_bytes`: the
/// smallest power of two from [`CHUNK_BYTES_MIN`] whose table fits.
/// Every size boundary (`CHUNKS_MAX << k`) is block-aligned, so the
/// fragment's block-aligned size gives the same answer as its length.
pub fn chunk_bytes_for(length_bytes: u32) -> u32 {
    let mut chunk_bytes = u64::from(CHUNK_BYTES_MIN);
    while u64::from(length_bytes).div_ceil(chunk_bytes) > CHUNKS_MAX as u64 {
        chunk_bytes *= 2;
    }
    // At most 2^32 / 1008 rounded up to a power of two (2^23): fits.
    chunk_bytes as u32
}

/// Chunks of `chunk_bytes` that `length_bytes` of data take.
pub fn chunk_count(length_bytes: u32, chunk_bytes: u32) -> usize {
    length_bytes.div_ceil(chunk_bytes) as usize
}

fn header_crc_v2(block: &[u8]) -> u32 {
    crc32c::crc32c_append(
        crc32c::crc32c(&block[0..60]),
        &block[64..HEADER_BLOCK_BYTES],
    )
}

impl FragmentHeader {
    /// The version-2 header of `data` stored as `key`: one pass over the
    /// data for the chunk CRCs, combined into the whole CRC.
    pub fn for_data(key: FragmentKey, data: &[u8]) -> Self {
        let length_bytes = data.len() as u32;
        let chunk_bytes = chunk_bytes_for(length_bytes);
        let crc32cs: Vec<u32> = data
            .chunks(chunk_bytes as usize)
            .map(crc32c::crc32c)
            .collect();
        Self {
            key,
            length_bytes,
            crc32c: crc::combine_chunks(&crc32cs, chunk_bytes, u64::from(length_bytes)),
            checksums: Checksums::Chunks {
                chunk_bytes,
                crc32cs,
            },
        }
    }

    /// Writes the version-2 header block into `block` (at least
    /// HEADER_BLOCK_BYTES). The header must come from [`Self::for_data`].
    pub fn encode(&self, block: &mut [u8]) {
        self.encode_stamped(block, Stamp::default());
    }

    /// [`Self::encode`] for a log record at `stamp`. The header must have
    /// at most [`STAMP_CHUNKS_MAX`] chunks.
    pub fn encode_stamped(&self, block: &mut [u8], stamp: Stamp) {
        let block = &mut block[..HEADER_BLOCK_BYTES];
        block.fill(0);
        block[0..8].copy_from_slice(&MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        self.encode_fields(block);
        if stamp != Stamp::default() {
            debug_assert!(match &self.checksums {
                Checksums::Chunks { crc32cs, .. } => crc32cs.len() <= STAMP_CHUNKS_MAX,
                Checksums::Whole => true,
            });
            block[STAMP_AT..STAMP_AT + 8].copy_from_slice(&stamp.nonce.to_le_bytes());
            block[STAMP_AT + 8..STAMP_AT + 16].copy_from_slice(&stamp.seq.to_le_bytes());
            block[STAMP_AT + 16..STAMP_AT + 24].copy_from_slice(&stamp.offset.to_le_bytes());
        }
        if let Checksums::Chunks {
            chunk_bytes,
            crc32cs,
        } = &self.checksums
        {
            block[56..60].copy_from_slice(&chunk_bytes.to_le_bytes());
            for (i, crc) in crc32cs.iter().enumerate() {
                let at = CHUNK_TABLE_AT + 4 * i;
                block[at..at + 4].copy_from_slice(&crc.to_le_bytes());
            }
        }
        let header_crc = header_crc_v2(block);
        block[60..64].copy_from_slice(&header_crc.to_le_bytes());
    }

    fn encode_fields(&self, block: &mut [u8]) {
        block[16..24].copy_from_slice(&self.key.ino.to_le_bytes());
        block[24..32].copy_from_slice(&self.key.stripe.to_le_bytes());
        block[32..40].copy_from_slice(&self.key.generation.to_le_bytes());
        block[40] = self.key.index;
        block[48..52].copy_from_slice(&self.length_bytes.to_le_bytes());
        block[52..56].copy_from_slice(&self.crc32c.to_le_bytes());
    }

    /// A version-1 header block, as nodes before chunk CRCs wrote it
    /// (tests of the old-format path).
    #[cfg(test)]
    pub fn encode_v1(&self, block: &mut [u8]) {
        let block = &mut block[..HEADER_BLOCK_BYTES];
        block.fill(0);
        block[0..8].copy_from_slice(&MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION_WHOLE.to_le_bytes());
        self.encode_fields(block);
        let header_crc = crc32c::crc32c(&block[0..60]);
        block[60..64].copy_from_slice(&header_crc.to_le_bytes());
    }

    /// Parses a header block of either version and checks it is
    /// consistent; every failed check says which.
    pub fn decode(block: &[u8]) -> Result<Self, HeaderError> {
        if block.len() < HEADER_BLOCK_BYTES {
            return Err(HeaderError::Short {
                len_bytes: block.len(),
            });
        }
        let block = &block[..HEADER_BLOCK_BYTES];
        if block[0..8] != MAGIC {
            let mut found = [0u8; 8];
            found.copy_from_slice(&block[0..8]);
            return Err(HeaderError::BadMagic { found });
        }
        let version = u32_at(block, 8);
        // The version picks which bytes the header CRC covers; a flipped
        // version byte then fails that check (or names no version).
        let computed = match version {
            FORMAT_VERSION_WHOLE => crc32c::crc32c(&block[0..60]),
            FORMAT_VERSION => header_crc_v2(block),
            _ => return Err(HeaderError::UnknownVersion { version }),
        };
        let stored = u32_at(block, 60);
        if computed != stored {
            return Err(HeaderError::HeaderChecksum { stored, computed });
        }
        let key = FragmentKey {
            ino: u64_at(block, 16),
            stripe: u64_at(block, 24),
            generation: u64_at(block, 32),
            index: block[40],
        };
        let length_bytes = u32_at(block, 48);
        let crc32c = u32_at(block, 52);
        let checksums = if version == FORMAT_VERSION_WHOLE {
            Checksums::Whole
        } else {
            let chunk_bytes = u32_at(block, 56);
            if !chunk_bytes.is_power_of_two() || (chunk_bytes as usize) < BLOCK_BYTES {
                return Err(HeaderError::ChunkSize { chunk_bytes });
            }
            let chunks = chunk_count(length_bytes, chunk_bytes);
            if chunks > CHUNKS_MAX {
                return Err(HeaderError::TooManyChunks {
                    length_bytes,
                    chunk_bytes,
                    chunks,
                });
            }
            let crc32cs: Vec<u32> = (0..chunks)
                .map(|i| u32_at(block, CHUNK_TABLE_AT + 4 * i))
                .collect();
            let combined = crc::combine_chunks(&crc32cs, chunk_bytes, u64::from(length_bytes));
            if combined != crc32c {
                return Err(HeaderError::WholeChecksum {
                    stored: crc32c,
                    combined,
                });
            }
            Checksums::Chunks {
                chunk_bytes,
                crc32cs,
            }
        };
        Ok(Self {
            key,
            length_bytes,
            crc32c,
            checksums,
        })
    }

    /// Data bytes to read and check to serve `start..end` (within the
    /// data): the chunks the range touches, or everything for version 1.
    pub fn covering(&self, start: u32, end: u32) -> std::ops::Range<u32> {
        match &self.checksums {
            Checksums::Whole => 0..self.length_bytes,
            Checksums::Chunks { chunk_bytes, .. } => {
                covering_chunks(start, end, *chunk_bytes, self.length_bytes)
            }
        }
    }
}

/// The chunk-aligned data range holding `start..end`, cut at the end of
/// the data (`length_bytes`). An empty range needs no chunk.
pub fn covering_chunks(
    start: u32,
    end: u32,
    chunk_bytes: u32,
    length_bytes: u32,
) -> std::ops::Range<u32> {
    if start >= end {
        return start..start;
    }
    let first = start / chunk_bytes * chunk_bytes;
    let last = (u64::from(end).div_ceil(u64::from(chunk_bytes)) * u64::from(chunk_bytes))
        .min(u64::from(length_bytes)) as u32;
    first..last
}

/// Bytes a fragment of `length_bytes` takes on disk.
pub fn file_bytes(length_bytes: u32) -> u64 {
    (HEADER_BLOCK_BYTES + crate::io::align_up(length_bytes as usize)) as u64
}

/// File name of a fragment: `<key>.frag`.
pub fn file_name(key: &FragmentKey) -> String {
    format!("{key}.frag")
}

/// Temporary name a put writes before renaming into place.
pub fn temp_name(key: &FragmentKey) -> String {
    format!("{key}.frag.tmp")
}

/// The key a `.frag` file name stands for (inverse of [`file_name`]).
pub fn parse_file_name(name: &str) -> Option<FragmentKey> {
    let stem = name.strip_suffix(".frag")?;
    let mut parts = stem.split('-');
    let ino = u64::from_str_radix(parts.next()?, 16).ok()?;
    let stripe = u64::from_str_radix(parts.next()?, 16).ok()?;
    let generation = u64::from_str_radix(parts.next()?, 16).ok()?;
    let index = u8::from_str_radix(parts.next()?, 16).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(FragmentKey {
        ino,
        stripe,
        generation,
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use torchfs_proto::fragment::FRAGMENT_BYTES_MAX;

    fn key() -> FragmentKey {
        FragmentKey {
            ino: 0xabc,
            stripe: 9,
            generation: 3,
            index: 5,
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn header_round_trip() {
        for len in [0usize, 1, 4096, 65_536, 65_537, 300_001] {
            let d = data(len);
            let h = FragmentHeader::for_data(key(), &d);
            assert_eq!(h.crc32c, crc32c::crc32c(&d), "{len}");
            let mut block = vec![0xffu8; HEADER_BLOCK_BYTES];
            h.encode(&mut block);
            assert_eq!(FragmentHeader::decode(&block).unwrap(), h, "{len}");
        }
    }

    #[test]
    fn a_stamp_rides_in_the_header_and_its_crc() {
        let d = data(200_000);
        let h = FragmentHeader::for_data(key(), &d);
        let stamp = Stamp {
            nonce: 0x1234_5678_9abc_def0,
            seq: 7,
            offset: 3 << 20,
        };
        let mut block = vec![0u8; HEADER_BLOCK_BYTES];
        h.encode_stamped(&mut block, stamp);
        assert_eq!(FragmentHeader::decode(&block).unwrap(), h);
        assert_eq!(Stamp::read(&block), stamp);
        block[STAMP_AT + 16] ^= 1;
        assert!(matches!(
            FragmentHeader::decode(&block),
            Err(HeaderError::HeaderChecksum { .. })
        ));
        h.encode(&mut block);
        assert_eq!(Stamp::read(&block), Stamp::default());
    }

    #[test]
    fn version_1_still_decodes() {
        let d = data(5000);
        let h = FragmentHeader {
            checksums: Checksums::Whole,
            ..FragmentHeader::for_data(key(), &d)
        };
        let mut block = vec![0u8; HEADER_BLOCK_BYTES];
        h.encode_v1(&mut block);
        assert_eq!(FragmentHeader::decode(&block).unwrap(), h);
        assert_eq!(h.covering(100, 200), 0..5000, "version 1 reads everything");
    }

    #[test]
    fn every_flipped_header_byte_is_caught() {
        let h = FragmentHeader::for_data(key(), &data(200_000));
        let mut block = vec![0u8; HEADER_BLOCK_BYTES];
        h.encode(&mut block);
        for i in 0..HEADER_BLOCK_BYTES {
            let mut bad = block.clone();
            bad[i] ^= 0x10;
            assert!(FragmentHeader::decode(&bad).is_err(), "byte {i}");
        }
        assert_eq!(
            FragmentHeader::decode(&block[..100]),
            Err(HeaderError::Short { len_bytes: 100 })
        );
        let mut v1 = vec![0u8; HEADER_BLOCK_BYTES];
        h.encode_v1(&mut v1);
        for i in 0..64 {
            let mut bad = v1.clone();
            bad[i] ^= 0x10;
            assert!(FragmentHeader::decode(&bad).is_err(), "version 1, byte {i}");
        }
    }

    #[test]
    fn chunk_table_disagreeing_with_whole_crc_is_caught() {
        let h = FragmentHeader::for_data(key(), &data(200_000));
        let mut block = vec![0u8; HEADER_BLOCK_BYTES];
        h.encode(&mut block);
        // A consistent header CRC over an inconsistent table.
        block[CHUNK_TABLE_AT] ^= 1;
        let header_crc = header_crc_v2(&block);
        block[60..64].copy_from_slice(&header_crc.to_le_bytes());
        assert!(matches!(
            FragmentHeader::decode(&block),
            Err(HeaderError::WholeChecksum { stored, .. }) if stored == h.crc32c
        ));
    }

    #[test]
    fn chunk_table_fits_the_header_for_every_fragment_size() {
        assert_eq!(chunk_bytes_for(0), CHUNK_BYTES_MIN);
        assert_eq!(chunk_bytes_for(1 << 20), 64 << 10);
        let limit = (CHUNKS_MAX as u32) * CHUNK_BYTES_MIN; // 63 MiB
        assert_eq!(chunk_bytes_for(limit), 64 << 10);
        assert_eq!(chunk_bytes_for(limit + 1), 128 << 10);
        assert_eq!(chunk_bytes_for(FRAGMENT_BYTES_MAX), 128 << 10);
        assert_eq!(
            limit as usize % BLOCK_BYTES,
            0,
            "boundaries are block-aligned"
        );
        for len in [0, 1, limit, limit + 1, FRAGMENT_BYTES_MAX, u32::MAX] {
            let c = chunk_bytes_for(len);
            assert!(chunk_count(len, c) <= CHUNKS_MAX, "{len}");
            assert_eq!(
                c,
                chunk_bytes_for(crate::io::align_up(len as usize).min(u32::MAX as usize) as u32)
            );
        }
    }

    #[test]
    fn covering_chunks_is_aligned_and_cut_at_the_end() {
        let c = 65_536;
        assert_eq!(covering_chunks(0, 10, c, 1 << 20), 0..c);
        assert_eq!(covering_chunks(c - 1, c + 1, c, 1 << 20), 0..2 * c);
        assert_eq!(covering_chunks(c, 2 * c, c, 1 << 20), c..2 * c);
        assert_eq!(covering_chunks(5, 300_000, c, 200_000), 0..200_000);
        assert_eq!(covering_chunks(7, 7, c, 200_000), 7..7);
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(parse_file_name(&file_name(&key())), Some(key()));
        assert_eq!(parse_file_name(&temp_name(&key())), None);
        assert_eq!(parse_file_name("node_id"), None);
        assert_eq!(file_bytes(0), 4096);
        assert_eq!(file_bytes(1), 8192);
        assert_eq!(file_bytes(4096), 8192);
    }
}
