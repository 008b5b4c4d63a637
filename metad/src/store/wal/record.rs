//! The record format and the scan that checks a segment at open (the
//! torn-or-corrupt rule of the module docs above).

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use super::{io_err, zero_range, SegmentIndex, WalError, HEADER_BYTES, SECTOR_BYTES};

/// Checks one record at the start of `buf`; returns its payload.
pub(super) fn parse(buf: &[u8], index: u64) -> Result<&[u8], String> {
    if (buf.len() as u64) < HEADER_BYTES {
        return Err(format!("header cut short at {} bytes", buf.len()));
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap_or_default());
    let stored = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default());
    let payload = buf
        .get(HEADER_BYTES as usize..HEADER_BYTES as usize + len)
        .ok_or_else(|| format!("length {len} runs past the segment"))?;
    if stored != index {
        return Err(format!("holds index {stored}, expected {index}"));
    }
    let actual = record_crc(index, payload);
    if actual != crc {
        return Err(format!("checksum {actual:#010x}, expected {crc:#010x}"));
    }
    Ok(payload)
}

fn record_crc(index: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&index.to_le_bytes()), payload)
}

/// Appends record `index` to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record_crc(index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Reads a whole segment and indexes its records. In the last segment a
/// torn write is zeroed (see the module docs).
pub(super) fn scan(
    path: &Path,
    first: u64,
    last: bool,
    purged: Option<u64>,
) -> Result<SegmentIndex, WalError> {
    let bytes = fs::read(path).map_err(io_err("read Raft log segment", path))?;
    let mut offsets = vec![0u64];
    let mut at = 0usize;
    let mut index = first;
    while at + HEADER_BYTES as usize <= bytes.len() {
        let rest = &bytes[at..];
        if rest[..HEADER_BYTES as usize].iter().all(|b| *b == 0) {
            break;
        }
        match parse(rest, index) {
            Ok(payload) => {
                at += HEADER_BYTES as usize + payload.len();
                offsets.push(at as u64);
                index += 1;
            }
            Err(reason) => {
                let claimed = u32::from_le_bytes(rest[0..4].try_into().unwrap_or_default()) as u64;
                let next = at as u64 + HEADER_BYTES + claimed;
                // A purged record is never read again: stepping over it is
                // enough, where its length still leads somewhere.
                if purged.is_some_and(|p| index <= p) && next <= bytes.len() as u64 {
                    tracing::warn!(
                        "{}: purged record at offset {at} (index {index}) is bad: {reason}",
                        path.display()
                    );
                    at = next as usize;
                    offsets.push(next);
                    index += 1;
                    continue;
                }
                let span_end = (at as u64 + HEADER_BYTES + claimed).min(bytes.len() as u64);
                if last && holds_zero_sector(&bytes, at as u64, span_end) {
                    tracing::warn!(
                        "{}: dropping a record torn by a crash at offset {at} (index {index}): {reason}",
                        path.display()
                    );
                    let end = nonzero_end(&bytes);
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_err("open Raft log segment", path))?;
                    zero_range(&file, path, at as u64, end.max(at as u64))?;
                    break;
                }
                return Err(WalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: at as u64,
                    index,
                    reason,
                });
            }
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open Raft log segment", path))?;
    Ok(SegmentIndex {
        first,
        path: path.to_path_buf(),
        file: Arc::new(file),
        offsets,
        capacity: bytes.len() as u64,
    })
}

/// Whether a whole aligned sector in `from..to` is zero.
fn holds_zero_sector(bytes: &[u8], from: u64, to: u64) -> bool {
    let mut s = from.next_multiple_of(SECTOR_BYTES);
    while s + SECTOR_BYTES <= to {
        if bytes[s as usize..(s + SECTOR_BYTES) as usize]
            .iter()
            .all(|b| *b == 0)
        {
            return true;
        }
        s += SECTOR_BYTES;
    }
    false
}

fn nonzero_end(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |p| p as u64 + 1)
}
