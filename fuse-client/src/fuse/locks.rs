//! fcntl and flock locks through FUSE (the kernel sends them here once
//! FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS are granted): lock types and the
//! F_GETLK answer. A blocking lock waits in its request's task, like every
//! request, never on a FUSE worker thread.
//!
//! fuser does not pass FUSE_LK_FLOCK, so a flock arrives as a whole-file
//! lock owned by the open file: flock and fcntl locks share one lock space
//! on torchfs (Linux keeps them apart on a local filesystem).

use fuser::{Errno, ReplyEmpty, ReplyLock};
use torchfs_proto::meta::LockKind;

use super::Fs;
use crate::core::{Client, LockSpec, MetaService};
use torchfs_rdma::Transport;

/// The kernel's lock type (F_RDLCK, F_WRLCK, F_UNLCK) as a [`LockKind`].
fn lock_kind(typ: i32) -> Result<LockKind, Errno> {
    match typ {
        libc::F_RDLCK => Ok(LockKind::Read),
        libc::F_WRLCK => Ok(LockKind::Write),
        libc::F_UNLCK => Ok(LockKind::Unlock),
        _ => Err(Errno::EINVAL),
    }
}

fn lock_type(kind: LockKind) -> i32 {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
        LockKind::Unlock => libc::F_UNLCK,
    }
}

/// A getlk/setlk request as the core takes it; EINVAL for an unknown type.
pub(super) fn spec(
    owner: u64,
    pid: u32,
    typ: i32,
    start: u64,
    end: u64,
) -> Result<LockSpec, Errno> {
    Ok(LockSpec {
        owner,
        pid,
        kind: lock_kind(typ)?,
        start,
        end,
    })
}

/// F_GETLK: the conflicting lock, or F_UNLCK over the asked range.
pub(super) async fn getlk<M: MetaService, T: Transport>(
    client: &Client<M, T>,
    ino: u64,
    spec: LockSpec,
    reply: ReplyLock,
) {
    match client.get_lock(ino, spec).await {
        Ok(Some(l)) => reply.locked(l.start, l.end, lock_type(l.kind), l.pid),
        Ok(None) => reply.locked(spec.start, spec.end, libc::F_UNLCK, 0),
        Err(e) => reply.error(super::errno(&e)),
    }
}

impl<M: MetaService, T: Transport> Fs<M, T> {
    /// F_SETLK / F_SETLKW (`wait`). A lock taken drops the kernel's cached
    /// attributes of the file (they may be older than the client's view),
    /// and its pages too when another client changed the file, before the
    /// caller goes on (lock coherence).
    pub(super) async fn setlk(&self, ino: u64, spec: LockSpec, wait: bool, reply: ReplyEmpty) {
        match self.client.set_lock(ino, spec, wait).await {
            Ok(stale) => {
                if spec.kind != LockKind::Unlock {
                    self.drop_kernel_cache(ino, stale).await;
                }
                reply.ok()
            }
            Err(e) => reply.error(super::errno(&e)),
        }
    }
}
