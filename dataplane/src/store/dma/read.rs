//! The read path of [`DmaStore`] (see the module docs above: **Get**):
//! a fragment's header and the chunks a range touches, read together
//! when the guess of the chunk size allows, then checked against the
//! header's CRCs and the caller's expected whole CRC.

use std::io;
use std::ops::Range;

use torchfs_proto::fragment::FragmentKey;

use super::{DmaStore, Place, ROOM_BYTES_MAX};
use crate::io::{align_up, DiskIo};
use crate::store::format::{self, Checksums, FragmentHeader, HeaderError, HEADER_BLOCK_BYTES};
use crate::store::{crc, Slice, StoreError};

/// Data bytes `start..end` of a fragment, held in `buf` from index `at`.
struct Extent<B> {
    buf: B,
    at: usize,
    start: u32,
    end: u32,
}

impl<B: std::ops::Deref<Target = [u8]>> Extent<B> {
    fn covers(&self, range: &Range<u32>) -> bool {
        range.is_empty() || (self.start <= range.start && range.end <= self.end)
    }

    /// Where `range` (which must be covered) sits in `buf`.
    fn index(&self, range: &Range<u32>) -> Range<usize> {
        if range.is_empty() {
            return 0..0;
        }
        self.at + (range.start - self.start) as usize..self.at + (range.end - self.start) as usize
    }
}

impl<I: DiskIo + 'static> DmaStore<I> {
    /// Reads data bytes `range` (block-aligned start) of the fragment
    /// whose header block is at `base` of `file`.
    async fn read_extent(
        &self,
        key: FragmentKey,
        file: &I::File,
        base: u64,
        range: Range<u32>,
    ) -> Result<Extent<I::ReadBuf>, StoreError> {
        let len_bytes = align_up((range.end - range.start) as usize);
        let buf = self
            .io
            .read_at(
                file,
                base + (HEADER_BLOCK_BYTES as u64) + u64::from(range.start),
                len_bytes,
            )
            .await
            .map_err(read_error(key))?;
        Ok(Extent {
            buf,
            at: 0,
            start: range.start,
            end: range.start + len_bytes as u32,
        })
    }

    /// The header and the data range most likely needed for a get of
    /// `offset..offset + length`, read together. The guess takes the chunk
    /// size this node writes for a fragment filling the file; the header
    /// read alongside decides.
    async fn read_header_and_guess(
        &self,
        key: FragmentKey,
        file: &I::File,
        base: u64,
        room_bytes: u32,
        offset: u32,
        length: u32,
    ) -> Result<(FragmentHeader, Extent<I::ReadBuf>), StoreError> {
        let end = offset.saturating_add(length).min(room_bytes);
        let guess = format::covering_chunks(
            offset.min(end),
            end,
            format::chunk_bytes_for(room_bytes),
            room_bytes,
        );
        let corrupt = |source| StoreError::CorruptHeader { key, source };
        if guess.start == 0 {
            // Header and data are contiguous: one read.
            let data_bytes = align_up(guess.end as usize);
            let buf = self
                .io
                .read_at(file, base, HEADER_BLOCK_BYTES + data_bytes)
                .await
                .map_err(read_error(key))?;
            let header = FragmentHeader::decode(&buf).map_err(corrupt)?;
            let extent = Extent {
                buf,
                at: HEADER_BLOCK_BYTES,
                start: 0,
                end: data_bytes as u32,
            };
            return Ok((header, extent));
        }
        let (block, extent) = futures::join!(
            self.io.read_at(file, base, HEADER_BLOCK_BYTES),
            self.read_extent(key, file, base, guess)
        );
        let block = block.map_err(read_error(key))?;
        let header = FragmentHeader::decode(&block).map_err(corrupt)?;
        Ok((header, extent?))
    }

    /// [`Self::read_checked`] of `key` wherever the index places it.
    pub(super) async fn read_placed(
        &self,
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: Option<u32>,
    ) -> Result<(FragmentHeader, Slice<I::ReadBuf>), StoreError> {
        let Some(place) = self.index.borrow().get(&key).copied() else {
            return Err(StoreError::NotFound { key });
        };
        match place {
            Place::File { bytes } => {
                let file = self
                    .io
                    .open(&self.path_of(&key))
                    .await
                    .map_err(read_error(key))?;
                let result = self
                    .read_checked(key, &file, 0, bytes, offset, length, expected_crc32c)
                    .await;
                self.io.close(file).await;
                result
            }
            Place::Log {
                seq,
                offset: base,
                bytes,
            } => {
                let file = self.log.file(seq).await.map_err(read_error(key))?;
                self.read_checked(key, &file, base, bytes, offset, length, expected_crc32c)
                    .await
            }
        }
    }

    /// The checked bytes `offset..offset + length` of the fragment at
    /// `base` of `file`, `file_bytes` long there (see the module docs).
    /// `expected_crc32c` None: checked against the header's whole CRC only
    /// (a scrub).
    #[allow(clippy::too_many_arguments)]
    async fn read_checked(
        &self,
        key: FragmentKey,
        file: &I::File,
        base: u64,
        file_bytes: u64,
        offset: u32,
        length: u32,
        expected_crc32c: Option<u32>,
    ) -> Result<(FragmentHeader, Slice<I::ReadBuf>), StoreError> {
        // Data bytes the file has room for, block-aligned and within u32
        // (a larger file is not one this node wrote: its header will say
        // more data than the room, or the reads come up short).
        let room_bytes = file_bytes
            .saturating_sub(HEADER_BLOCK_BYTES as u64)
            .min(u64::from(ROOM_BYTES_MAX)) as u32;
        let (header, mut extent) = self
            .read_header_and_guess(key, file, base, room_bytes, offset, length)
            .await?;
        let corrupt = |source| StoreError::CorruptHeader { key, source };
        if header.key != key {
            return Err(corrupt(HeaderError::WrongKey { found: header.key }));
        }
        let length_bytes = header.length_bytes;
        if length_bytes > room_bytes {
            return Err(corrupt(HeaderError::PastEndOfFile {
                length_bytes,
                room_bytes: u64::from(room_bytes),
            }));
        }
        let expected_crc32c = expected_crc32c.unwrap_or(header.crc32c);
        if matches!(header.checksums, Checksums::Chunks { .. }) && header.crc32c != expected_crc32c
        {
            return Err(StoreError::ChecksumMismatch {
                key,
                expected: expected_crc32c,
                actual: header.crc32c,
            });
        }
        let in_range = offset <= length_bytes;
        let end = if in_range {
            (u64::from(offset) + u64::from(length)).min(u64::from(length_bytes)) as u32
        } else {
            offset
        };
        let need = match header.checksums {
            Checksums::Whole => 0..length_bytes,
            Checksums::Chunks { .. } if in_range => header.covering(offset, end),
            Checksums::Chunks { .. } => 0..0,
        };
        if !extent.covers(&need) {
            extent = self.read_extent(key, file, base, need.clone()).await?;
        }
        match &header.checksums {
            Checksums::Whole => {
                let actual = crc32c::crc32c(&extent.buf[extent.index(&need)]);
                if actual != header.crc32c || actual != expected_crc32c {
                    return Err(StoreError::ChecksumMismatch {
                        key,
                        expected: expected_crc32c,
                        actual,
                    });
                }
            }
            Checksums::Chunks {
                chunk_bytes,
                crc32cs,
            } => verify_chunks(
                key,
                &header,
                *chunk_bytes,
                crc32cs,
                &extent,
                &need,
                expected_crc32c,
            )?,
        }
        if !in_range {
            return Err(StoreError::BadRange {
                key,
                offset,
                length_bytes,
            });
        }
        let served = extent.index(&(offset..end));
        Ok((header, Slice::new(extent.buf, served.start, served.end)))
    }
}

/// Checks every chunk of `need` (chunk-aligned, within the data) in
/// `extent` against its stored CRC.
fn verify_chunks<B: std::ops::Deref<Target = [u8]>>(
    key: FragmentKey,
    header: &FragmentHeader,
    chunk_bytes: u32,
    crc32cs: &[u32],
    extent: &Extent<B>,
    need: &Range<u32>,
    expected_crc32c: u32,
) -> Result<(), StoreError> {
    if need.is_empty() {
        return Ok(());
    }
    let first = (need.start / chunk_bytes) as usize;
    for (i, stored) in crc32cs.iter().enumerate().skip(first) {
        let start = i as u64 * u64::from(chunk_bytes);
        if start >= u64::from(need.end) {
            break;
        }
        let end = (start + u64::from(chunk_bytes)).min(u64::from(header.length_bytes)) as u32;
        let chunk = start as u32..end;
        let computed = crc32c::crc32c(&extent.buf[extent.index(&chunk)]);
        if computed != *stored {
            return Err(StoreError::ChunkChecksumMismatch {
                key,
                chunk: i as u32,
                start_bytes: chunk.start,
                end_bytes: chunk.end,
                stored: *stored,
                computed,
                expected: expected_crc32c,
                // What the whole fragment hashes to with this chunk as
                // read (and the others as stored): never the expected CRC.
                actual: crc::substitute(
                    header.crc32c,
                    *stored,
                    computed,
                    u64::from(header.length_bytes - end),
                ),
            });
        }
    }
    Ok(())
}

/// A failed read of `key`'s file as a store error.
fn read_error(key: FragmentKey) -> impl Fn(io::Error) -> StoreError {
    move |source| {
        if source.kind() == io::ErrorKind::NotFound {
            StoreError::NotFound { key }
        } else {
            StoreError::Io {
                key,
                op: "read",
                source,
            }
        }
    }
}
