//! The FUSE front-end: POSIX requests from the kernel translated into
//! client-core calls. Nothing here knows how data is stored; it maps
//! inodes, attributes, handles and errors.
//!
//! fuser's worker threads read requests and check their arguments, and
//! answer what the cache answers (lookups, getattrs, closes with nothing to
//! do) at once; every other request is a task on the client's runtime,
//! which replies when the core answers. A request waiting on metad or a storage node pins no
//! thread, so a mount has as many requests in flight as the kernel sends
//! (the kernel bounds them: one per blocked syscall, plus `max_background`
//! for readahead and writeback).
//!
//! - this file: the `Filesystem` dispatch; the namespace requests are
//!   answered here.
//! - `session`: mounting ([`mount`], [`FuseOptions`]) and the state the
//!   request tasks share.
//! - `files`: how open and create are answered (page cache, direct I/O,
//!   passthrough); `file_io`: reads, fsyncs and closes of open files.
//! - `request`: argument checks and replies every handler shares.
//! - `init`: what the mount asks of the kernel.
//! - `mounted`: a mount with the runtime its client runs on, and the
//!   defaults a mount takes (what `torchfs mount` and the FUSE ceiling
//!   share).
//! - `no_open`: the handle per inode a read-only mount reads through (the
//!   kernel sends it no opens).
//! - `attr`, `dirs`, `locks`, `xattr`, `passthrough`, `readahead`: what
//!   their names say.

mod attr;
#[macro_use]
mod request;
mod dirs;
mod file_io;
mod files;
mod init;
mod locks;
mod mounted;
mod no_open;
mod passthrough;
mod readahead;
mod session;
mod xattr;

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

pub use fuser::BackgroundSession as MountSession;
use fuser::{
    AccessFlags, Errno, FileHandle, Filesystem, FopenFlags, INodeNo, IoctlFlags, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
pub use mounted::{
    allow_other_by_default, default_cache_mem_bytes, default_client_config, MountError, Mounted,
};
use torchfs_proto::meta::{SetAttr, NAME_BYTES_MAX, ROOT_INO};
use torchfs_rdma::Transport;

use crate::core::control::CONTROL_DIR_NAME;
use crate::core::MetaService;
use attr::node_kind;
use request::{errno, name_str, new_mode, owner, rename_mode, reply_empty, set_time};
pub use session::{mount, FuseOptions};
use session::{Fs, TorchFs};

impl<M: MetaService, T: Transport> Filesystem for TorchFs<M, T> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let passthrough = init::negotiate(&self.fs.options, config);
        self.fs.passthrough.store(passthrough, Ordering::Relaxed);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        // Control files need opens (their reads bypass the page cache),
        // which a read-only mount does not get: it has none.
        if self.fs.options.read_only && parent.0 == ROOT_INO && name == CONTROL_DIR_NAME {
            return reply.error(Errno::ENOENT);
        }
        if let Some(found) = self.fs.client.lookup_now(parent.0, &name) {
            return self.fs.reply_lookup(found, reply);
        }
        self.spawn_meta(|fs| async move {
            let found = fs.client.lookup(parent.0, &name).await;
            fs.reply_lookup(found, reply);
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(attr) = self.fs.client.getattr_now(ino.0) {
            return self.fs.reply_attr(Ok(attr), reply);
        }
        self.spawn_meta(|fs| async move {
            let result = fs.client.getattr(ino.0).await;
            fs.reply_attr(result, reply);
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.spawn(|fs| async move {
            let result = fs.client.setattr(ino.0, set).await;
            fs.reply_attr(result, reply);
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn_meta(|fs| async move {
            match fs.client.readlink(ino.0).await {
                Ok(target) => reply.data(target.as_bytes()),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = node_kind(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let name = name_or_reply!(name, reply);
        let (mode, owner) = (new_mode(mode, umask), owner(req));
        self.spawn_meta(|fs| async move {
            let result = fs
                .client
                .mknod(parent.0, &name, kind, mode, owner, rdev)
                .await;
            fs.reply_entry(result, reply);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(name, reply);
        let (mode, owner) = (new_mode(mode, umask), owner(req));
        self.spawn_meta(|fs| async move {
            let result = fs.client.mkdir(parent.0, &name, mode, owner).await;
            fs.reply_entry(result, reply);
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn_meta(|fs| async move {
            reply_empty(fs.client.unlink(parent.0, &name).await, reply);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn_meta(|fs| async move {
            reply_empty(fs.client.rmdir(parent.0, &name).await, reply);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = name_or_reply!(link_name, reply);
        let Some(target) = target.to_str().map(str::to_owned) else {
            return reply.error(Errno::EINVAL);
        };
        let owner = owner(req);
        self.spawn_meta(|fs| async move {
            let result = fs.client.symlink(parent.0, &name, &target, owner).await;
            fs.reply_entry(result, reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let Some(mode) = rename_mode(flags) else {
            return reply.error(Errno::EINVAL);
        };
        let (name, newname) = match (name_str(name), name_str(newname)) {
            (Ok(a), Ok(b)) => (a.to_owned(), b.to_owned()),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        self.spawn_meta(|fs| async move {
            let result = fs
                .client
                .rename(parent.0, &name, newparent.0, &newname, mode)
                .await;
            reply_empty(result, reply);
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = name_or_reply!(newname, reply);
        self.spawn_meta(|fs| async move {
            let result = fs.client.link(ino.0, newparent.0, &newname).await;
            fs.reply_entry(result, reply);
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // A read-only mount answers no open: the kernel then opens files
        // by itself (see `no_open`).
        if self.fs.options.read_only {
            return reply.error(Errno::ENOSYS);
        }
        let mode = files::OpenMode {
            write: !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY),
            truncate: flags.0 & libc::O_TRUNC != 0,
            append: flags.0 & libc::O_APPEND != 0,
        };
        if let Some(reply) = self.fs.open_now(ino.0, mode, reply) {
            self.spawn(|fs| fs.open(ino.0, mode, reply));
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|fs| fs.read(ino.0, fh.0, offset, size, reply));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // fuser lends the request buffer only for this call.
        let data = data.to_vec();
        if flags.0 & libc::O_APPEND != 0 {
            return self.spawn(|fs| fs.append(ino.0, fh.0, offset, data, reply));
        }
        self.spawn(|fs| async move {
            match fs.client.write(fh.0, offset, &data).await {
                Ok(written) => reply.written(written),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    /// No ioctls: ENOTTY, what a regular file on a local filesystem answers
    /// (Python's `open` asks TCGETS of every file it opens, for isatty).
    /// fuser's default answers ENOSYS, which the kernel does not remember,
    /// and logs three lines per call.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// Each close(2): flushes, and releases the closing process's fcntl
    /// locks on the file (POSIX: any close releases them).
    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if let Some(reply) = self.fs.flush_now(ino.0, fh.0, lock_owner.0, reply) {
            self.spawn(|fs| fs.flush(ino.0, fh.0, lock_owner.0, reply));
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let owner = lock_owner.map(|o| o.0);
        if let Some(reply) = self.fs.release_now(ino.0, fh.0, owner, reply) {
            self.spawn(|fs| fs.release(ino.0, fh.0, owner, reply));
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let spec = match locks::spec(lock_owner.0, pid, typ, start, end) {
            Ok(spec) => spec,
            Err(e) => return reply.error(e),
        };
        self.spawn(|fs| async move { locks::getlk(&fs.client, ino.0, spec, reply).await });
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let spec = match locks::spec(lock_owner.0, pid, typ, start, end) {
            Ok(spec) => spec,
            Err(e) => return reply.error(e),
        };
        self.spawn(|fs| async move { fs.setlk(ino.0, spec, sleep, reply).await });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|fs| fs.fsync(fh.0, reply));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Each open directory stream reads one consistent listing, fetched
        // on the first readdir and kept until releasedir.
        self.spawn(|fs| async move {
            match fs.client.getattr(ino.0).await {
                Ok(attr) if attr.kind == torchfs_proto::meta::FileKind::Dir => {
                    let fh = fs.next_dir_handle.fetch_add(1, Ordering::Relaxed);
                    reply.opened(FileHandle(fh), FopenFlags::empty());
                }
                Ok(_) => reply.error(Errno::ENOTDIR),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        if offset != 0 {
            // The listing is already here (the kernel reads a stream in
            // order, one readdir at a time).
            return self.fs.dirs.fill(fh.0, ino.0, offset, reply);
        }
        self.spawn(|fs| async move {
            match fs.client.readdir(ino.0, "", 0).await {
                Ok(entries) => fs.dirs.insert(fh.0, entries),
                Err(e) => return reply.error(errno(&e)),
            }
            fs.dirs.fill(fh.0, ino.0, offset, reply);
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.dirs.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are committed to the Raft log before they are
        // acknowledged: nothing is left to sync.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BLOCK_BYTES: u64 = 4096;
        self.spawn_meta(|fs| async move {
            match fs.client.statfs().await {
                Ok(s) => {
                    let blocks = s.total_bytes / BLOCK_BYTES;
                    let free = s.total_bytes.saturating_sub(s.used_bytes) / BLOCK_BYTES;
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        s.files + s.files_free,
                        s.files_free,
                        BLOCK_BYTES as u32,
                        NAME_BYTES_MAX as u32,
                        BLOCK_BYTES as u32,
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    // The kernel asks getxattr("security.capability") before every write:
    // the core answers it from cached attributes, with no round trip.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name_or_reply!(name, reply);
        self.spawn(|fs| async move {
            match fs.client.getxattr(ino.0, &name).await {
                Ok(value) => xattr::reply_sized(&value, size, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(|fs| async move {
            match fs.client.listxattr(ino.0).await {
                Ok(names) => xattr::reply_sized(&names, size, reply),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let name = name_or_reply!(name, reply);
        let mode = match xattr::xattr_mode(flags) {
            Ok(mode) => mode,
            Err(e) => return reply.error(e),
        };
        let value = value.to_vec();
        self.spawn(|fs| async move {
            reply_empty(fs.client.setxattr(ino.0, &name, &value, mode).await, reply);
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        self.spawn(|fs| async move {
            reply_empty(fs.client.removexattr(ino.0, &name).await, reply);
        });
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions itself (default_permissions).
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Only the default mode (posix_fallocate: make the file at least
        // offset+length long). Space is not reserved: stripes are written
        // when data arrives, and holes read as zeros.
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let Some(end) = offset.checked_add(length) else {
            return reply.error(Errno::EFBIG);
        };
        self.spawn(|fs| async move { reply_empty(fs.client.extend(ino.0, end).await, reply) });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name_or_reply!(name, reply);
        let open = files::CreateOpen {
            exclusive: flags & libc::O_EXCL != 0,
            truncate: flags & libc::O_TRUNC != 0,
            append: flags & libc::O_APPEND != 0,
            mode: new_mode(mode, umask),
            owner: owner(req),
        };
        self.spawn_meta(|fs| fs.create(parent.0, name, open, reply));
    }
}
