//! What the request handlers share: argument checks (names, modes,
//! owners, times) and replies of the core's results.

use std::ffi::OsStr;
use std::time::Duration;

use fuser::{Errno, Generation, ReplyAttr, ReplyEmpty, ReplyEntry, Request, TimeOrNow};
use torchfs_proto::meta::{Attr, SetTime, NAME_BYTES_MAX};

use super::attr::{file_attr, negative_entry, system_time_ns};
use super::Fs;
use crate::core::{ClientError, MetaService, NewMode, Owner};
use torchfs_rdma::Transport;

/// The errno a failed request answers. An EIO is logged with its cause
/// (the application sees only "I/O error"); the others are the
/// filesystem's ordinary answers.
pub(super) fn errno(err: &ClientError) -> Errno {
    let errno = err.errno();
    if errno == libc::EIO {
        tracing::warn!("answered EIO: {err}");
    }
    Errno::from_i32(errno)
}

/// A request's name as text, or the request answered with the errno that
/// says why it cannot be one.
macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match name_str($name) {
            Ok(n) => n.to_owned(),
            Err(e) => return $reply.error(e),
        }
    };
}

/// Names arrive as bytes; torchfs names are UTF-8 (metad stores text).
pub(super) fn name_str(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    name.to_str().ok_or(Errno::EINVAL)
}

/// The mode a create-like request asks for (permission bits) and its umask.
pub(super) fn new_mode(mode: u32, umask: u32) -> NewMode {
    NewMode {
        mode: mode & 0o7777,
        umask: umask & 0o777,
    }
}

pub(super) fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

pub(super) fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::Ns(system_time_ns(at)),
    })
}

impl<M: MetaService, T: Transport> Fs<M, T> {
    /// How long the kernel may keep `attr` (and its name): `ttl`, or on a
    /// read-only mount `frozen_ttl` for a frozen dataset's inode (it cannot
    /// change until unfrozen), so a warm epoch sends no lookup or getattr.
    fn ttl_of(&self, attr: &Attr, ttl: Duration) -> Duration {
        if self.options.read_only && self.client.is_immutable(attr.ino) {
            self.options.frozen_ttl
        } else {
            ttl
        }
    }

    pub(super) fn reply_entry(&self, result: Result<Attr, ClientError>, reply: ReplyEntry) {
        match result {
            Ok(attr) => {
                let ttl = self.ttl_of(&attr, self.options.entry_ttl);
                reply.entry(&ttl, &file_attr(&attr), Generation(0))
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// A lookup's answer; ENOENT is a negative entry, which the kernel
    /// keeps for the entry TTL. Creates through this mount replace it;
    /// other mounts' are seen within the TTL, as for every entry.
    pub(super) fn reply_lookup(&self, result: Result<Attr, ClientError>, reply: ReplyEntry) {
        match result {
            Err(e) if e.errno() == libc::ENOENT => {
                reply.entry(&self.options.entry_ttl, &negative_entry(), Generation(0))
            }
            result => self.reply_entry(result, reply),
        }
    }

    pub(super) fn reply_attr(&self, result: Result<Attr, ClientError>, reply: ReplyAttr) {
        match result {
            Ok(attr) => reply.attr(
                &self.ttl_of(&attr, self.options.attr_ttl),
                &file_attr(&attr),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

pub(super) fn reply_empty(result: Result<(), ClientError>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// The rename a request's flags ask for; None for RENAME_WHITEOUT
/// (overlayfs) or a combination.
pub(super) fn rename_mode(flags: fuser::RenameFlags) -> Option<torchfs_proto::meta::RenameMode> {
    use fuser::RenameFlags;
    use torchfs_proto::meta::RenameMode;
    if flags.is_empty() {
        Some(RenameMode::Replace)
    } else if flags == RenameFlags::RENAME_NOREPLACE {
        Some(RenameMode::NoReplace)
    } else if flags == RenameFlags::RENAME_EXCHANGE {
        Some(RenameMode::Exchange)
    } else {
        None
    }
}
