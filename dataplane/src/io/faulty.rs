//! [`FaultyDisk`]: the seeded disk faults of [`crate::faults::DiskFaults`]
//! (feature `testing`) as a [`DiskIo`] over the real one, so the store's
//! own failure paths run against them: opens, reads, writes, fdatasyncs
//! and directory fsyncs can fail with EIO, writes with ENOSPC or torn
//! (a prefix written, then EIO), reads can return a flipped bit, and any
//! of them can be held back. Closes, renames, removals and hole punches
//! pass through untouched. With no faults set, each operation costs one
//! atomic load.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

use super::{DiskIo, BLOCK_BYTES};
use crate::faults::{DiskFault, DiskOp, Faults, TORN_BLOCK_BYTES};

const _: () = assert!(TORN_BLOCK_BYTES == BLOCK_BYTES as u64);

/// [`DiskIo`] `D` with the seeded faults of one shard.
pub struct FaultyDisk<D> {
    inner: D,
    faults: Faults,
    /// Which node's shard this is (see [`crate::faults::stream`]).
    stream: u64,
    /// How many times each (operation, offset, length) was made: a retry
    /// is a new draw, and the same sequence of operations meets the same
    /// faults whatever else runs beside it.
    attempts: RefCell<HashMap<(DiskOp, u64, u64), u32>>,
}

/// Bytes read through a [`FaultyDisk`]: the real buffer, or a copy with a
/// bit flipped.
pub enum FaultyRead<R, W> {
    Real(R),
    Flipped(W),
}

impl<R: Deref<Target = [u8]>, W: AsRef<[u8]>> Deref for FaultyRead<R, W> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FaultyRead::Real(r) => r,
            FaultyRead::Flipped(w) => w.as_ref(),
        }
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// The error a failed operation returns (a torn write ends with EIO).
fn error_of(fault: DiskFault) -> io::Error {
    match fault {
        DiskFault::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
        DiskFault::Eio | DiskFault::Torn { .. } | DiskFault::BitFlip { .. } => eio(),
    }
}

impl<D: DiskIo> FaultyDisk<D> {
    /// `inner` with the seeded faults `faults` holds (now or later), drawn
    /// in `stream`.
    pub fn new(inner: D, faults: Faults, stream: u64) -> Self {
        Self {
            inner,
            faults,
            stream,
            attempts: RefCell::new(HashMap::new()),
        }
    }

    /// Draws the fate of an operation, waits out its delay, and returns
    /// the fault it is to meet.
    async fn enter(&self, op: DiskOp, offset_bytes: u64, len_bytes: u64) -> Option<DiskFault> {
        let faults = self.faults.disk()?;
        let attempt = {
            let mut attempts = self.attempts.borrow_mut();
            let n = attempts.entry((op, offset_bytes, len_bytes)).or_insert(0);
            *n += 1;
            *n
        };
        let fate = faults.fate(self.stream, op, offset_bytes, len_bytes, attempt);
        if fate.delay_ms > 0 {
            glommio::timer::sleep(Duration::from_millis(fate.delay_ms)).await;
        }
        if let Some(fault) = fate.fault {
            tracing::info!(
                "injected disk fault (seed {}): {op:?} of {len_bytes} bytes at {offset_bytes}: \
                 {fault:?}",
                faults.seed
            );
        }
        fate.fault
    }

    /// The first `blocks` blocks of `buf`, in a buffer of their own.
    fn prefix(&self, buf: &D::WriteBuf, blocks: u64) -> D::WriteBuf {
        let len_bytes = blocks as usize * BLOCK_BYTES;
        let mut out = self.inner.alloc(len_bytes);
        out.as_mut().copy_from_slice(&buf.as_ref()[..len_bytes]);
        out
    }

    /// Fails an operation that moves no bytes, as its fault says.
    async fn fail_or_pass(&self, op: DiskOp) -> io::Result<()> {
        match self.enter(op, 0, 0).await {
            Some(fault) => Err(error_of(fault)),
            None => Ok(()),
        }
    }
}

impl<D: DiskIo> DiskIo for FaultyDisk<D> {
    type WriteBuf = D::WriteBuf;
    type ReadBuf = FaultyRead<D::ReadBuf, D::WriteBuf>;
    type File = D::File;
    type Dir = D::Dir;

    fn alloc(&self, len_bytes: usize) -> Self::WriteBuf {
        self.inner.alloc(len_bytes)
    }

    async fn write_new(&self, path: &Path, buf: Self::WriteBuf) -> io::Result<()> {
        let len_bytes = buf.as_ref().len() as u64;
        match self.enter(DiskOp::Write, 0, len_bytes).await {
            None => self.inner.write_new(path, buf).await,
            Some(DiskFault::Torn { blocks_kept }) => {
                if blocks_kept > 0 {
                    self.inner
                        .write_new(path, self.prefix(&buf, blocks_kept))
                        .await?;
                }
                Err(eio())
            }
            Some(fault) => Err(error_of(fault)),
        }
    }

    async fn open(&self, path: &Path) -> io::Result<Self::File> {
        self.fail_or_pass(DiskOp::Open).await?;
        self.inner.open(path).await
    }

    async fn read_at(
        &self,
        file: &Self::File,
        offset_bytes: u64,
        len_bytes: usize,
    ) -> io::Result<Self::ReadBuf> {
        match self
            .enter(DiskOp::Read, offset_bytes, len_bytes as u64)
            .await
        {
            None => Ok(FaultyRead::Real(
                self.inner.read_at(file, offset_bytes, len_bytes).await?,
            )),
            Some(DiskFault::BitFlip { bit }) => {
                let read = self.inner.read_at(file, offset_bytes, len_bytes).await?;
                let mut copy = self.inner.alloc(read.len());
                copy.as_mut().copy_from_slice(&read);
                copy.as_mut()[(bit / 8) as usize] ^= 1 << (bit % 8);
                Ok(FaultyRead::Flipped(copy))
            }
            Some(fault) => Err(error_of(fault)),
        }
    }

    async fn close(&self, file: Self::File) {
        self.inner.close(file).await
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to).await
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path).await
    }

    async fn open_dir(&self, path: &Path) -> io::Result<Self::Dir> {
        self.fail_or_pass(DiskOp::Open).await?;
        self.inner.open_dir(path).await
    }

    async fn sync_dir(&self, dir: &Self::Dir) -> io::Result<()> {
        self.fail_or_pass(DiskOp::Sync).await?;
        self.inner.sync_dir(dir).await
    }

    async fn create_preallocated(
        &self,
        path: &Path,
        len_bytes: u64,
        head: Self::WriteBuf,
    ) -> io::Result<Self::File> {
        // A torn head (one block) is a head never written: nothing is made.
        let head_bytes = head.as_ref().len() as u64;
        if let Some(fault) = self.enter(DiskOp::Write, 0, head_bytes).await {
            return Err(error_of(fault));
        }
        self.inner.create_preallocated(path, len_bytes, head).await
    }

    async fn open_rw(&self, path: &Path) -> io::Result<Self::File> {
        self.fail_or_pass(DiskOp::Open).await?;
        self.inner.open_rw(path).await
    }

    async fn write_at(
        &self,
        file: &Self::File,
        offset_bytes: u64,
        buf: Self::WriteBuf,
    ) -> io::Result<()> {
        let len_bytes = buf.as_ref().len() as u64;
        match self.enter(DiskOp::Write, offset_bytes, len_bytes).await {
            None => self.inner.write_at(file, offset_bytes, buf).await,
            Some(DiskFault::Torn { blocks_kept }) => {
                if blocks_kept > 0 {
                    self.inner
                        .write_at(file, offset_bytes, self.prefix(&buf, blocks_kept))
                        .await?;
                }
                Err(eio())
            }
            Some(fault) => Err(error_of(fault)),
        }
    }

    async fn sync_data(&self, file: &Self::File) -> io::Result<()> {
        self.fail_or_pass(DiskOp::Sync).await?;
        self.inner.sync_data(file).await
    }

    async fn punch(&self, file: &Self::File, offset_bytes: u64, len_bytes: u64) -> io::Result<()> {
        self.inner.punch(file, offset_bytes, len_bytes).await
    }
}
