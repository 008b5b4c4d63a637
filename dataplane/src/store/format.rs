//! The on-disk fragment format: a 4 KiB header block, then the data padded
//! to 4 KiB (so the whole file is read and written with O_DIRECT).
//!
//! Header block layout (little endian):
//! `0..8` magic `TFSFRAG\0`, `8..12` format version, `16..24` ino,
//! `24..32` stripe, `32..40` generation, `40` index, `48..52` data length
//! (bytes), `52..56` CRC32C of the data, `60..64` CRC32C of bytes `0..60`
//! (so a flipped header byte is caught too); the rest is zero.

use torchfs_proto::fragment::FragmentKey;

use crate::io::BLOCK_BYTES;

pub const HEADER_BLOCK_BYTES: usize = BLOCK_BYTES;
pub const MAGIC: [u8; 8] = *b"TFSFRAG\0";
pub const FORMAT_VERSION: u32 = 1;

/// What a header block says about the fragment after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentHeader {
    pub key: FragmentKey,
    pub length_bytes: u32,
    pub crc32c: u32,
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

impl FragmentHeader {
    /// Writes the header block into `block` (at least HEADER_BLOCK_BYTES).
    pub fn encode(&self, block: &mut [u8]) {
        let block = &mut block[..HEADER_BLOCK_BYTES];
        block.fill(0);
        block[0..8].copy_from_slice(&MAGIC);
        block[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        block[16..24].copy_from_slice(&self.key.ino.to_le_bytes());
        block[24..32].copy_from_slice(&self.key.stripe.to_le_bytes());
        block[32..40].copy_from_slice(&self.key.generation.to_le_bytes());
        block[40] = self.key.index;
        block[48..52].copy_from_slice(&self.length_bytes.to_le_bytes());
        block[52..56].copy_from_slice(&self.crc32c.to_le_bytes());
        let header_crc = crc32c::crc32c(&block[0..60]);
        block[60..64].copy_from_slice(&header_crc.to_le_bytes());
    }

    /// Parses a header block; every check that fails says which.
    pub fn decode(block: &[u8]) -> Result<Self, String> {
        if block.len() < HEADER_BLOCK_BYTES {
            return Err(format!(
                "header block has {} bytes, not {HEADER_BLOCK_BYTES}",
                block.len()
            ));
        }
        if block[0..8] != MAGIC {
            return Err("bad magic".into());
        }
        let header_crc = crc32c::crc32c(&block[0..60]);
        let stored = u32_at(block, 60);
        if header_crc != stored {
            return Err(format!(
                "header CRC32C {stored:#010x}, computed {header_crc:#010x}"
            ));
        }
        let version = u32_at(block, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this node reads {FORMAT_VERSION}"
            ));
        }
        Ok(Self {
            key: FragmentKey {
                ino: u64_at(block, 16),
                stripe: u64_at(block, 24),
                generation: u64_at(block, 32),
                index: block[40],
            },
            length_bytes: u32_at(block, 48),
            crc32c: u32_at(block, 52),
        })
    }
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

    fn key() -> FragmentKey {
        FragmentKey {
            ino: 0xabc,
            stripe: 9,
            generation: 3,
            index: 5,
        }
    }

    #[test]
    fn header_round_trip() {
        let h = FragmentHeader {
            key: key(),
            length_bytes: 12345,
            crc32c: 0xfeed_f00d,
        };
        let mut block = vec![0xffu8; HEADER_BLOCK_BYTES];
        h.encode(&mut block);
        assert_eq!(FragmentHeader::decode(&block).unwrap(), h);
    }

    #[test]
    fn every_flipped_header_byte_is_caught() {
        let h = FragmentHeader {
            key: key(),
            length_bytes: 1,
            crc32c: 2,
        };
        let mut block = vec![0u8; HEADER_BLOCK_BYTES];
        h.encode(&mut block);
        for i in 0..64 {
            let mut bad = block.clone();
            bad[i] ^= 0x10;
            assert!(FragmentHeader::decode(&bad).is_err(), "byte {i}");
        }
        assert!(FragmentHeader::decode(&block[..100]).is_err());
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
