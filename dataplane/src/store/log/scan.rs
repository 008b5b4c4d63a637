//! The log's walk at start (see the parent module's docs): plain
//! synchronous I/O, run before the shard's executor serves.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use torchfs_proto::fragment::FragmentKey;

use crate::io::BLOCK_BYTES;
use crate::store::format::{self, FragmentHeader, Stamp};
use crate::store::place::Place;

/// A segment found at start that holds records the index points at.
#[derive(Debug)]
pub struct ScannedSegment {
    pub seq: u64,
    pub nonce: u64,
    pub path: PathBuf,
    /// Records of it in the index.
    pub live: u32,
}

/// Bytes read at once while stepping over blocks that are not records.
const WINDOW_BYTES: usize = 256 << 10;
const BLOCK: u64 = BLOCK_BYTES as u64;

/// What a segment's first block starts with.
const FIRST_BLOCK_MAGIC: [u8; 8] = *b"TFSLOG\0\0";

/// A segment's first block: magic, sequence number, nonce, then zeros.
pub(crate) fn encode_first_block(block: &mut [u8], seq: u64, nonce: u64) {
    block.fill(0);
    block[0..8].copy_from_slice(&FIRST_BLOCK_MAGIC);
    block[8..16].copy_from_slice(&seq.to_le_bytes());
    block[16..24].copy_from_slice(&nonce.to_le_bytes());
}

/// Whether `block` is the first block of segment `seq` with `nonce`.
fn is_first_block(block: &[u8], seq: u64, nonce: u64) -> bool {
    let mut expected = [0u8; 24];
    encode_first_block(&mut expected, seq, nonce);
    block.len() >= 24 && block[..24] == expected[..]
}

/// `<seq>-<nonce>.seg`, both 16 hex digits (so names sort by sequence).
pub(crate) fn segment_name(seq: u64, nonce: u64) -> String {
    format!("{seq:016x}-{nonce:016x}.seg")
}

fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let (seq, nonce) = name.strip_suffix(".seg")?.split_once('-')?;
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(nonce, 16).ok()?,
    ))
}

fn punch(file: &File, offset: u64, len_bytes: u64) -> io::Result<()> {
    if len_bytes == 0 {
        return Ok(());
    }
    // SAFETY: a valid open descriptor; fallocate reads no memory.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len_bytes as libc::off_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The first offset at or after `offset` that is not a hole; `None` past
/// the last data.
fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    // SAFETY: a valid open descriptor.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Reads blocks of one segment file, a window at a time.
struct Blocks<'a> {
    file: &'a File,
    len_bytes: u64,
    window: Vec<u8>,
    window_at: u64,
}

impl Blocks<'_> {
    fn covers(&self, offset: u64) -> bool {
        offset >= self.window_at && offset + BLOCK <= self.window_at + self.window.len() as u64
    }

    /// The block at `offset`; reading a whole window when `wide`.
    fn block(&mut self, offset: u64, wide: bool) -> io::Result<&[u8]> {
        if !self.covers(offset) {
            let want = if wide { WINDOW_BYTES } else { BLOCK_BYTES };
            let n = want.min((self.len_bytes - offset) as usize) / BLOCK_BYTES * BLOCK_BYTES;
            self.window.resize(n, 0);
            self.file.read_exact_at(&mut self.window, offset)?;
            self.window_at = offset;
        }
        let at = (offset - self.window_at) as usize;
        Ok(&self.window[at..at + BLOCK_BYTES])
    }
}

/// A record found by [`walk`]: key, offset, bytes.
type Found = (FragmentKey, u64, u64);
/// A run of blocks that are not records: offset, bytes.
type Gap = (u64, u64);

/// The records of segment `seq` (see the parent module's docs), and the
/// gaps between them (blocks that are not records), to punch.
fn walk(file: &File, seq: u64, nonce: u64) -> io::Result<(Vec<Found>, Vec<Gap>)> {
    let len_bytes = file.metadata()?.len();
    let mut blocks = Blocks {
        file,
        len_bytes,
        window: Vec::new(),
        window_at: 0,
    };
    let mut records = Vec::new();
    let mut gaps = Vec::new();
    if len_bytes < BLOCK || !is_first_block(blocks.block(0, false)?, seq, nonce) {
        // Records carry their own stamps, so they are still found; but
        // the file is not what its name says.
        tracing::warn!("log segment {seq:016x}: its first block is not a segment's first block");
    }
    // End of the last record (or of the first block): where the current
    // gap starts.
    let mut end = BLOCK;
    let mut offset = BLOCK;
    // Stepping over non-records: read whole windows.
    let mut wide = false;
    while offset + BLOCK <= len_bytes {
        if !blocks.covers(offset) {
            match seek_data(file, offset)? {
                None => break,
                Some(data) if data > offset => {
                    offset = data.div_ceil(BLOCK) * BLOCK;
                    continue;
                }
                Some(_) => {}
            }
        }
        let block = blocks.block(offset, wide)?;
        let here = Stamp { nonce, seq, offset };
        match FragmentHeader::decode(block) {
            Ok(h)
                if Stamp::read(block) == here
                    && offset + format::file_bytes(h.length_bytes) <= len_bytes =>
            {
                let bytes = format::file_bytes(h.length_bytes);
                if offset > end {
                    gaps.push((end, offset - end));
                }
                records.push((h.key, offset, bytes));
                offset += bytes;
                end = offset;
                wide = false;
            }
            _ => {
                offset += BLOCK;
                wide = true;
            }
        }
    }
    if len_bytes > end {
        gaps.push((end, len_bytes - end));
    }
    Ok((records, gaps))
}

/// Whether the record at `offset` of `file` (`bytes` long) holds the data
/// its header says: read whole and checked against the header's CRC of
/// the whole data. A header block is written with its data, so one can
/// land without the rest.
fn is_whole(file: &File, offset: u64, bytes: u64) -> io::Result<bool> {
    let mut image = vec![0u8; bytes as usize];
    file.read_exact_at(&mut image, offset)?;
    let Ok(header) = FragmentHeader::decode(&image[..BLOCK_BYTES]) else {
        return Ok(false);
    };
    let data_end = BLOCK_BYTES + header.length_bytes as usize;
    Ok(image
        .get(BLOCK_BYTES..data_end)
        .is_some_and(|data| crc32c::crc32c(data) == header.crc32c))
}

/// Walks the segments of the shard directory `dir` in sequence order and
/// adds their records to `fragments` (which holds the fragment files):
/// a record replaces a file of its key (removed) or an earlier record of
/// it (punched), once read whole and found whole ([`is_whole`]; a torn
/// one is punched instead). Punches the gaps, removes segments left with
/// no record, and returns the others.
pub fn scan(
    dir: &Path,
    fragments: &mut BTreeMap<FragmentKey, Place>,
) -> io::Result<Vec<ScannedSegment>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some((seq, nonce)) = name.to_str().and_then(parse_segment_name) {
            found.push((seq, nonce, entry.path()));
        }
    }
    found.sort();
    let mut segments: BTreeMap<u64, (ScannedSegment, File)> = BTreeMap::new();
    for (seq, nonce, path) in found {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let (records, gaps) = walk(&file, seq, nonce)?;
        for (offset, len_bytes) in gaps {
            punch(&file, offset, len_bytes)?;
        }
        segments.insert(
            seq,
            (
                ScannedSegment {
                    seq,
                    nonce,
                    path,
                    live: 0,
                },
                file,
            ),
        );
        for (key, offset, bytes) in records {
            if fragments.contains_key(&key) {
                if let Some((_, f)) = segments.get(&seq) {
                    if !is_whole(f, offset, bytes)? {
                        // A replacement torn mid-write (a crash, a failed
                        // device; never acknowledged): the whole fragment
                        // it was to replace stays.
                        tracing::warn!(
                            "log segment {seq:016x}: the record of {key} at {offset} is torn; \
                             keeping the fragment it was to replace"
                        );
                        punch(f, offset, bytes)?;
                        continue;
                    }
                }
            }
            let old = fragments.insert(key, Place::Log { seq, offset, bytes });
            match old {
                Some(Place::File { .. }) => {
                    match std::fs::remove_file(dir.join(format::file_name(&key))) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                Some(Place::Log {
                    seq: old_seq,
                    offset: old_offset,
                    bytes: old_bytes,
                }) => {
                    if let Some((s, f)) = segments.get_mut(&old_seq) {
                        punch(f, old_offset, old_bytes)?;
                        s.live -= 1;
                    }
                }
                None => {}
            }
            if let Some((s, _)) = segments.get_mut(&seq) {
                s.live += 1;
            }
        }
    }
    let mut kept = Vec::new();
    for (_, (segment, file)) in segments {
        drop(file);
        if segment.live == 0 {
            std::fs::remove_file(&segment.path)?;
        } else {
            kept.push(segment);
        }
    }
    Ok(kept)
}

/// Moves the record at `offset` of segment `seq` (`bytes` long) out to
/// the fragment file `to` (made durable), then punches it; a segment left
/// with no record is removed. For a change of shard count, at start.
pub fn move_record_to_file(
    segments: &mut Vec<ScannedSegment>,
    seq: u64,
    offset: u64,
    bytes: u64,
    to: &Path,
) -> io::Result<()> {
    let Some(at) = segments.iter().position(|s| s.seq == seq) else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("log segment {seq} not found"),
        ));
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segments[at].path)?;
    let mut image = vec![0u8; bytes as usize];
    file.read_exact_at(&mut image, offset)?;
    // The stamp stays in the header block: covered by its CRC, and
    // ignored in a fragment file.
    let mut out = File::create(to)?;
    out.write_all(&image)?;
    out.sync_data()?;
    punch(&file, offset, bytes)?;
    segments[at].live -= 1;
    if segments[at].live == 0 {
        std::fs::remove_file(&segments[at].path)?;
        segments.remove(at);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort_by_sequence() {
        let a = segment_name(2, u64::MAX);
        let b = segment_name(10, 1);
        assert_eq!(parse_segment_name(&a), Some((2, u64::MAX)));
        assert_eq!(parse_segment_name(&b), Some((10, 1)));
        assert!(a < b);
        assert_eq!(parse_segment_name("00-01.frag"), None);
        assert_eq!(parse_segment_name("zz-01.seg"), None);
    }
}
