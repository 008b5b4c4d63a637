//! The storage node's own small disk I/O trait ([`DiskIo`]) and its glommio
//! implementation ([`GlommioDisk`]: O_DIRECT through io_uring). Everything
//! the chunk store does to the disk goes through this trait, so glommio can
//! be replaced without touching the store, and faults can be injected here
//! (feature `testing`) to exercise the store's real failure paths: the
//! switches of [`crate::faults`] inside [`GlommioDisk`], the seeded disk
//! faults by `FaultyDisk` wrapped around it (`io/faulty.rs`).

use std::io;
use std::ops::Deref;
use std::path::Path;

use glommio::io::{Directory, DmaBuffer, DmaFile, ReadResult};
use glommio::GlommioError;

use crate::faults::Faults;

#[cfg(feature = "testing")]
mod faulty;
#[cfg(feature = "testing")]
pub use faulty::{FaultyDisk, FaultyRead};

/// Alignment of every O_DIRECT buffer, offset and length (bytes).
pub const BLOCK_BYTES: usize = 4096;

/// Rounds `len_bytes` up to a whole number of blocks.
pub fn align_up(len_bytes: usize) -> usize {
    len_bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Direct (page-cache bypassing) file I/O on the current executor. Not
/// `Send`: one instance per shard executor.
#[allow(async_fn_in_trait)]
pub trait DiskIo {
    /// An aligned buffer to write from.
    type WriteBuf: AsRef<[u8]> + AsMut<[u8]>;
    /// Bytes read from disk.
    type ReadBuf: Deref<Target = [u8]>;
    /// A file open for reading; several reads of it may be in flight.
    type File;
    /// A directory open for syncing, kept open across puts.
    type Dir;

    /// A block-aligned buffer of `len_bytes` (a multiple of [`BLOCK_BYTES`]).
    fn alloc(&self, len_bytes: usize) -> Self::WriteBuf;
    /// Creates `path` (which must not be in use), writes `buf` at offset 0
    /// and makes it durable (fdatasync) before returning.
    async fn write_new(&self, path: &Path, buf: Self::WriteBuf) -> io::Result<()>;
    async fn open(&self, path: &Path) -> io::Result<Self::File>;
    /// Reads exactly `len_bytes` at `offset_bytes` (both block-aligned);
    /// fewer bytes in the file is an `UnexpectedEof` error.
    async fn read_at(
        &self,
        file: &Self::File,
        offset_bytes: u64,
        len_bytes: usize,
    ) -> io::Result<Self::ReadBuf>;
    async fn close(&self, file: Self::File);
    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    async fn remove(&self, path: &Path) -> io::Result<()>;
    async fn open_dir(&self, path: &Path) -> io::Result<Self::Dir>;
    /// Makes renames and removals in `dir` done before the call durable.
    async fn sync_dir(&self, dir: &Self::Dir) -> io::Result<()>;

    /// Creates `path` (which must not exist) with `head` (block-aligned)
    /// at offset 0 and `len_bytes` allocated (the rest reads as zeros),
    /// durable, and returns it open for reading and writing.
    async fn create_preallocated(
        &self,
        path: &Path,
        len_bytes: u64,
        head: Self::WriteBuf,
    ) -> io::Result<Self::File>;
    /// Opens `path` for reading, writing and punching holes.
    async fn open_rw(&self, path: &Path) -> io::Result<Self::File>;
    /// Writes all of `buf` at `offset_bytes` (block-aligned) of a file
    /// from [`Self::create_zeroed`] or [`Self::open_rw`]; durable only
    /// after a [`Self::sync_data`] that starts after it ends.
    async fn write_at(
        &self,
        file: &Self::File,
        offset_bytes: u64,
        buf: Self::WriteBuf,
    ) -> io::Result<()>;
    async fn sync_data(&self, file: &Self::File) -> io::Result<()>;
    /// Frees bytes `offset_bytes..offset_bytes + len_bytes` (block-aligned)
    /// of a file open for writing: they read as zeros from then on.
    async fn punch(&self, file: &Self::File, offset_bytes: u64, len_bytes: u64) -> io::Result<()>;
}

/// Keeps the OS error number (ENOSPC must stay recognisable): glommio's
/// own conversion to `io::Error` flattens it into a message.
fn os_error(e: GlommioError<()>) -> io::Error {
    match e {
        GlommioError::IoError(e) => e,
        GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::other(other.to_string()),
    }
}

/// A disk operation that failed: what it was doing, and the OS error.
#[derive(Debug)]
pub struct DiskError {
    pub op: &'static str,
    pub source: io::Error,
}

impl DiskError {
    /// Wraps an `io::Error` of `op` (for `map_err`).
    pub fn of(op: &'static str) -> impl Fn(io::Error) -> Self {
        move |source| Self { op, source }
    }
}

/// Whether `e` means the disk is full.
pub fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull
}

/// [`DiskIo`] over glommio's `DmaFile` (O_DIRECT, io_uring).
pub struct GlommioDisk {
    faults: Faults,
}

impl GlommioDisk {
    pub fn new(faults: Faults) -> Self {
        Self { faults }
    }
}

impl DiskIo for GlommioDisk {
    type WriteBuf = DmaBuffer;
    type ReadBuf = ReadResult;
    type File = DmaFile;
    type Dir = Directory;

    fn alloc(&self, len_bytes: usize) -> DmaBuffer {
        glommio::allocate_dma_buffer(len_bytes)
    }

    async fn write_new(&self, path: &Path, buf: DmaBuffer) -> io::Result<()> {
        let file = DmaFile::create(path).await.map_err(os_error)?;
        let len_bytes = buf.len();
        let written = async {
            // Injected here, after the create, so the caller's cleanup of a
            // half-written temp file is what gets tested.
            self.faults.on_write()?;
            let n = file.write_at(buf, 0).await.map_err(os_error)?;
            if n != len_bytes {
                // A short O_DIRECT write is how some filesystems report a
                // full disk.
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            file.fdatasync().await.map_err(os_error)
        }
        .await;
        let closed = file.close().await.map_err(os_error);
        written.and(closed)
    }

    async fn open(&self, path: &Path) -> io::Result<DmaFile> {
        DmaFile::open(path).await.map_err(os_error)
    }

    async fn read_at(
        &self,
        file: &DmaFile,
        offset_bytes: u64,
        len_bytes: usize,
    ) -> io::Result<ReadResult> {
        self.faults.on_read()?;
        let data = file
            .read_at_aligned(offset_bytes, len_bytes)
            .await
            .map_err(os_error)?;
        if data.len() != len_bytes {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: read {} of {len_bytes} bytes at offset {offset_bytes}",
                    file.path()
                        .map_or_else(String::new, |p| p.display().to_string()),
                    data.len()
                ),
            ));
        }
        Ok(data)
    }

    async fn close(&self, file: DmaFile) {
        let _ = file.close().await;
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        glommio::io::rename(from, to).await.map_err(os_error)
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        glommio::io::remove(path).await.map_err(os_error)
    }

    async fn open_dir(&self, path: &Path) -> io::Result<Directory> {
        Directory::open(path).await.map_err(os_error)
    }

    async fn sync_dir(&self, dir: &Directory) -> io::Result<()> {
        dir.sync().await.map_err(os_error)
    }

    async fn create_preallocated(
        &self,
        path: &Path,
        len_bytes: u64,
        head: DmaBuffer,
    ) -> io::Result<DmaFile> {
        // Write-only until the head is written: glommio probes whether the
        // device can be polled with a read of the first block of the first
        // file it opens there, and an empty or unwritten block answers that
        // read with success, which would turn on the poll ring for a device
        // without one (every later I/O then fails with EOPNOTSUPP).
        let file = glommio::io::OpenOptions::new()
            .write(true)
            .create_new(true)
            .dma_open(path)
            .await
            .map_err(os_error)?;
        let made = async {
            file.pre_allocate(len_bytes, false)
                .await
                .map_err(os_error)?;
            let head_bytes = head.len();
            if file.write_at(head, 0).await.map_err(os_error)? != head_bytes {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            file.fdatasync().await.map_err(os_error)
        }
        .await;
        let closed = file.close().await.map_err(os_error);
        made.and(closed)?;
        self.open_rw(path).await
    }

    async fn open_rw(&self, path: &Path) -> io::Result<DmaFile> {
        glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(path)
            .await
            .map_err(os_error)
    }

    async fn write_at(&self, file: &DmaFile, offset_bytes: u64, buf: DmaBuffer) -> io::Result<()> {
        self.faults.on_write()?;
        let len_bytes = buf.len();
        let n = file.write_at(buf, offset_bytes).await.map_err(os_error)?;
        if n != len_bytes {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }

    async fn sync_data(&self, file: &DmaFile) -> io::Result<()> {
        file.fdatasync().await.map_err(os_error)
    }

    async fn punch(&self, file: &DmaFile, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        file.deallocate(offset_bytes, len_bytes)
            .await
            .map_err(os_error)
    }
}
