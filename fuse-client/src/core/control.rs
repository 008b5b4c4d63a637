//! The control directory `<mount>/.torchfs/`, served by the core itself so
//! that every front-end has it:
//!
//! - `plan` (write-only in effect, mode 0666): a plan written in one open
//!   is parsed when the file is flushed (close) and, if valid, accepted; a
//!   malformed one makes close() fail with EINVAL and changes nothing (the
//!   reason is logged and shown as `last_plan_error` in `stats`). Format:
//!   [`crate::core::cache::plan`].
//! - `stats` (read-only): the cache's JSON counters, rendered once at open
//!   so one open reads one consistent snapshot, then read by offset.
//!
//! The control inodes sit in a range metad never allocates (it counts up
//! from the root, inode 1). `.torchfs` is found by lookup in the root only
//! and is not listed by readdir of the root, so `ls`, `find` and dataset
//! scanners never see it. Front-ends should open control files without
//! the kernel page cache (FUSE: `FOPEN_DIRECT_IO`): `stats` reports size 0
//! and its content changes at every open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use torchfs_proto::meta::{Attr, DirEntry, FileKind, Ino, MetaError, ROOT_INO};

use super::cache::plan::{parse_plan, Plan, PlanError, PLAN_BYTES_MAX};
use super::cache::EpochCache;
use super::error::{ClientError, FileHandle};
use super::sync::lock;

/// Name of the control directory in the mount root.
pub const CONTROL_DIR_NAME: &str = ".torchfs";
/// First inode of the reserved control range.
pub const CONTROL_INO_BASE: Ino = u64::MAX - 0xFF;
pub const CONTROL_DIR_INO: Ino = CONTROL_INO_BASE;
pub const PLAN_INO: Ino = CONTROL_INO_BASE + 1;
pub const STATS_INO: Ino = CONTROL_INO_BASE + 2;
/// Control file handles carry this bit; ordinary handles count up from 1.
const CONTROL_FH_BIT: FileHandle = 1 << 63;

/// Whether `ino` is one of the control directory's inodes.
pub fn is_control_ino(ino: Ino) -> bool {
    ino >= CONTROL_INO_BASE
}

pub(crate) fn is_control_fh(fh: FileHandle) -> bool {
    fh & CONTROL_FH_BIT != 0
}

/// Refuses namespace changes inside `.torchfs/` or of the name `.torchfs`
/// in the root.
pub(crate) fn guard_name(parent: Ino, name: &str) -> Result<(), ClientError> {
    if is_control_ino(parent)
        || (parent == torchfs_proto::meta::ROOT_INO && name == CONTROL_DIR_NAME)
    {
        return Err(ClientError::Control {
            reason: "the .torchfs directory is reserved",
        });
    }
    Ok(())
}

enum ControlFile {
    /// Bytes written so far; `dirty` until parsed at flush.
    Plan {
        buf: Vec<u8>,
        dirty: bool,
    },
    Stats {
        text: Vec<u8>,
    },
}

/// The control view: the top of the core's metadata views, answering for
/// the control directory's inodes (nothing below it knows of them), and
/// the open control files.
#[derive(Default)]
pub(crate) struct ControlHandles {
    open: Mutex<HashMap<FileHandle, ControlFile>>,
    next: AtomicU64,
}

fn control_attr(ino: Ino) -> Attr {
    let (kind, mode, nlink) = match ino {
        CONTROL_DIR_INO => (FileKind::Dir, 0o555, 2),
        PLAN_INO => (FileKind::File, 0o666, 1),
        _ => (FileKind::File, 0o444, 1),
    };
    Attr {
        ino,
        kind,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        nlink,
        atime_ns: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        rdev: 0,
        has_xattrs: false,
        frozen: false,
    }
}

fn not_found(what: &str) -> ClientError {
    ClientError::Meta(MetaError::fs(
        torchfs_proto::meta::errno::ENOENT,
        format!("{what}: no such control file"),
    ))
}

fn refuse(reason: &'static str) -> ClientError {
    ClientError::Control { reason }
}

impl ControlHandles {
    /// Lookups the control directory answers itself (None: not ours).
    pub fn lookup(&self, parent: Ino, name: &str) -> Option<Result<Attr, ClientError>> {
        if parent == ROOT_INO && name == CONTROL_DIR_NAME {
            return Some(Ok(control_attr(CONTROL_DIR_INO)));
        }
        if parent != CONTROL_DIR_INO {
            return None;
        }
        Some(match name {
            "plan" => Ok(control_attr(PLAN_INO)),
            "stats" => Ok(control_attr(STATS_INO)),
            other => Err(not_found(other)),
        })
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr, ClientError> {
        match ino {
            CONTROL_DIR_INO | PLAN_INO | STATS_INO => Ok(control_attr(ino)),
            _ => Err(not_found(&format!("inode {ino}"))),
        }
    }

    /// setattr on a control inode: truncating `plan` (shell `>`) is a
    /// no-op; nothing else may change.
    pub fn setattr(&self, ino: Ino, size_only: bool) -> Result<Attr, ClientError> {
        if ino == PLAN_INO && size_only {
            return Ok(control_attr(ino));
        }
        Err(refuse("control files' attributes cannot change"))
    }

    pub fn readdir(&self, ino: Ino, after: &str) -> Result<Vec<DirEntry>, ClientError> {
        if ino != CONTROL_DIR_INO {
            return Err(ClientError::NotFile { ino });
        }
        Ok([("plan", PLAN_INO), ("stats", STATS_INO)]
            .into_iter()
            .filter(|(name, _)| *name > after)
            .map(|(name, ino)| DirEntry {
                name: name.to_string(),
                ino,
                kind: FileKind::File,
            })
            .collect())
    }

    /// Opens a control file; `stats` renders `.torchfs/stats` (called only
    /// for it).
    pub fn open(
        &self,
        ino: Ino,
        write: bool,
        stats: impl FnOnce() -> String,
    ) -> Result<FileHandle, ClientError> {
        let file = match ino {
            CONTROL_DIR_INO => return Err(ClientError::IsDir { ino }),
            PLAN_INO => ControlFile::Plan {
                buf: Vec::new(),
                dirty: false,
            },
            STATS_INO if write => return Err(refuse("stats is read-only")),
            STATS_INO => ControlFile::Stats {
                text: stats().into_bytes(),
            },
            _ => return Err(not_found(&format!("inode {ino}"))),
        };
        let handles = self;
        let fh = CONTROL_FH_BIT | (handles.next.fetch_add(1, Ordering::Relaxed) + 1);
        lock(&handles.open).insert(fh, file);
        Ok(fh)
    }

    pub fn read(&self, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, ClientError> {
        let open = lock(&self.open);
        let text: &[u8] = match open.get(&fh) {
            Some(ControlFile::Stats { text }) => text,
            Some(ControlFile::Plan { .. }) => &[],
            None => return Err(ClientError::BadHandle { fh }),
        };
        let start = (offset as usize).min(text.len());
        let end = start.saturating_add(size as usize).min(text.len());
        Ok(text[start..end].to_vec())
    }

    pub fn write(&self, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, ClientError> {
        let mut open = lock(&self.open);
        let Some(ControlFile::Plan { buf, dirty }) = open.get_mut(&fh) else {
            return match open.get(&fh) {
                Some(_) => Err(ClientError::NotWritable { fh }),
                None => Err(ClientError::BadHandle { fh }),
            };
        };
        let end = offset.saturating_add(data.len() as u64);
        if end > PLAN_BYTES_MAX as u64 {
            return Err(ClientError::Plan(PlanError::TooLarge {
                bytes: end,
                max: PLAN_BYTES_MAX as u64,
            }));
        }
        let (start, end) = (offset as usize, end as usize);
        if buf.len() < end {
            buf.resize(end, 0);
        }
        buf[start..end].copy_from_slice(data);
        *dirty = true;
        Ok(data.len() as u32)
    }

    /// Parses what was written since the last flush, if anything: the plan
    /// for the caller to accept. A rejected plan is noted in `cache`'s
    /// stats and leaves the accepted ones as they were.
    pub fn flush(&self, fh: FileHandle, cache: &EpochCache) -> Result<Option<Plan>, ClientError> {
        let bytes = {
            let mut open = lock(&self.open);
            match open.get_mut(&fh) {
                Some(ControlFile::Plan { buf, dirty }) if *dirty => {
                    *dirty = false;
                    std::mem::take(buf)
                }
                Some(_) => return Ok(None),
                None => return Err(ClientError::BadHandle { fh }),
            }
        };
        match parse_plan(&bytes) {
            Ok(plan) => {
                tracing::info!(
                    "plan accepted: rank {} epoch {}, {} items",
                    plan.rank,
                    plan.epoch,
                    plan.items.len()
                );
                Ok(Some(plan))
            }
            Err(e) => {
                tracing::warn!("plan rejected: {e}");
                cache.note_plan_rejected(&e);
                Err(ClientError::Plan(e))
            }
        }
    }

    /// [`Self::flush`], then the handle is gone.
    pub fn release(&self, fh: FileHandle, cache: &EpochCache) -> Result<Option<Plan>, ClientError> {
        let result = self.flush(fh, cache);
        lock(&self.open).remove(&fh);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_range_is_far_above_metad_inodes() {
        assert!(!is_control_ino(ROOT_INO));
        assert!(!is_control_ino(1 << 62));
        for ino in [CONTROL_DIR_INO, PLAN_INO, STATS_INO] {
            assert!(is_control_ino(ino));
        }
        assert!(is_control_fh(CONTROL_FH_BIT | 5));
        assert!(!is_control_fh(5));
    }
}
