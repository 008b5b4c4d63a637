//! The FUSE front-end: POSIX requests from the kernel (through fuser's
//! worker threads) translated into client-core calls. Nothing here knows how
//! data is stored; it maps inodes, attributes, handles and errors.

mod attr;
mod dirs;
mod locks;
mod passthrough;
mod readahead;
mod xattr;

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

pub use fuser::BackgroundSession as MountSession;
use fuser::{
    AccessFlags, Config, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use torchfs_proto::meta::{RenameMode, SetAttr, SetTime, NAME_BYTES_MAX};

use crate::core::{Client, ClientError, NewMode, Owner};
use attr::{file_attr, node_kind};
use dirs::DirStreams;
use passthrough::{IoModes, OpenAs};

/// How the mount behaves; set at mount time.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// fuser worker threads (each with its own /dev/fuse fd).
    pub threads: usize,
    /// How long the kernel may cache a name lookup.
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// Largest read/write request the kernel sends (bytes).
    pub request_bytes_max: u32,
    /// Ask the kernel for FUSE passthrough, so that files the epoch cache's
    /// disk tier holds whole are read by the kernel directly. Only useful
    /// with a disk tier; off if the kernel refuses it.
    pub passthrough: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        Self {
            threads: 2,
            entry_ttl: Duration::from_secs(1),
            attr_ttl: Duration::from_secs(1),
            allow_other: false,
            request_bytes_max: 1 << 20,
            passthrough: false,
        }
    }
}

/// Mounts `client` at `mountpoint` and serves it on background threads
/// until the returned session is dropped or unmounted. Client calls run on
/// `runtime`.
pub fn mount(
    client: Client,
    runtime: Handle,
    mountpoint: &Path,
    options: &FuseOptions,
) -> io::Result<MountSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("torchfs".into()),
        MountOption::Subtype("torchfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let fs = TorchFs {
        client,
        runtime,
        options: options.clone(),
        dirs: DirStreams::default(),
        next_dir_handle: AtomicU64::new(1),
        passthrough: AtomicBool::new(false),
        io_modes: IoModes::default(),
    };
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    readahead::raise(mountpoint, options.request_bytes_max);
    Ok(session)
}

struct TorchFs {
    client: Client,
    runtime: Handle,
    options: FuseOptions,
    dirs: DirStreams,
    next_dir_handle: AtomicU64,
    /// Whether the kernel granted passthrough at init.
    passthrough: AtomicBool,
    io_modes: IoModes,
}

fn errno(err: &ClientError) -> Errno {
    Errno::from_i32(err.errno())
}

/// A request's name as text, or the request answered with the errno that
/// says why it cannot be one.
macro_rules! name_or_reply {
    ($name:expr, $reply:ident) => {
        match name_str($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

/// Names arrive as bytes; torchfs names are UTF-8 (metad stores text).
fn name_str(name: &OsStr) -> Result<&str, Errno> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    name.to_str().ok_or(Errno::EINVAL)
}

/// The mode a create-like request asks for (permission bits) and its umask.
fn new_mode(mode: u32, umask: u32) -> NewMode {
    NewMode {
        mode: mode & 0o7777,
        umask: umask & 0o777,
    }
}

fn owner(req: &Request) -> Owner {
    Owner {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::Ns(attr::system_time_ns(at)),
    })
}

impl TorchFs {
    fn reply_entry(
        &self,
        result: Result<torchfs_proto::meta::Attr, ClientError>,
        reply: ReplyEntry,
    ) {
        match result {
            Ok(attr) => reply.entry(&self.options.entry_ttl, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn reply_empty(result: Result<(), ClientError>, reply: ReplyEmpty) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

impl Filesystem for TorchFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Bigger requests mean fewer round trips through the kernel; the
        // kernel clamps them to what it allows (max_pages_limit).
        let _ = config.set_max_write(self.options.request_bytes_max);
        let _ = config.set_max_readahead(self.options.request_bytes_max);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_READ);
        // POSIX ACLs: the kernel enforces them (default_permissions) from
        // the system.posix_acl_* xattrs metad stores; with DONT_MASK it
        // leaves the umask to metad, which must not apply it under a
        // default ACL.
        // Locks go to metad, so they hold across mounts.
        if config
            .add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
            .is_err()
        {
            tracing::warn!(
                "the kernel does not pass locks to FUSE: they hold within this mount only"
            );
        }
        if config
            .add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK)
            .is_err()
        {
            tracing::warn!(
                "the kernel does not offer FUSE POSIX ACLs: ACLs are stored but not enforced"
            );
        }
        if self.options.passthrough {
            let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            if !granted {
                tracing::warn!("the kernel does not offer FUSE passthrough: disk-tier hits go through this process");
            }
            self.passthrough.store(granted, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_or_reply!(name, reply);
        let result = self.runtime.block_on(self.client.lookup(parent.0, name));
        self.reply_entry(result, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.runtime.block_on(self.client.getattr(ino.0)) {
            Ok(attr) => reply.attr(&self.options.attr_ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
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
        match self.runtime.block_on(self.client.setattr(ino.0, set)) {
            Ok(attr) => reply.attr(&self.options.attr_ttl, &file_attr(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.runtime.block_on(self.client.readlink(ino.0)) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(&e)),
        }
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
        let result = self.runtime.block_on(self.client.mknod(
            parent.0,
            name,
            kind,
            new_mode(mode, umask),
            owner(req),
            rdev,
        ));
        self.reply_entry(result, reply);
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
        let result = self.runtime.block_on(self.client.mkdir(
            parent.0,
            name,
            new_mode(mode, umask),
            owner(req),
        ));
        self.reply_entry(result, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        Self::reply_empty(
            self.runtime.block_on(self.client.unlink(parent.0, name)),
            reply,
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        Self::reply_empty(
            self.runtime.block_on(self.client.rmdir(parent.0, name)),
            reply,
        );
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
        let Some(target) = target.to_str() else {
            return reply.error(Errno::EINVAL);
        };
        let result = self
            .runtime
            .block_on(self.client.symlink(parent.0, name, target, owner(req)));
        self.reply_entry(result, reply);
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
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            // RENAME_WHITEOUT (overlayfs) or a combination.
            return reply.error(Errno::EINVAL);
        };
        let (name, newname) = match (name_str(name), name_str(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let result =
            self.runtime.block_on(
                self.client
                    .rename(parent.0, name, newparent.0, newname, mode),
            );
        Self::reply_empty(result, reply);
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
        let result = self
            .runtime
            .block_on(self.client.link(ino.0, newparent.0, newname));
        self.reply_entry(result, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let fh = match self
            .runtime
            .block_on(self.client.open(ino.0, write, truncate))
        {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno(&e)),
        };
        // Control files: no page cache (their size is 0, stats change at
        // every open, and plan writes must reach the core as written).
        if self.client.is_control(ino.0) {
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
        }
        // A read-only handle has nothing to flush at close (and torchfs has
        // no POSIX locks to drop): spare the kernel that round trip.
        let no_flush = if write {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_NOFLUSH
        };
        // Files a plan reads by ranges: no kernel readahead across ranges.
        let direct = self.client.prefers_direct_io(ino.0);
        if !self.passthrough.load(Ordering::Relaxed) {
            let flags = if direct {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::empty()
            };
            return reply.opened(FileHandle(fh), flags | no_flush);
        }
        if direct {
            self.io_modes.open_direct(ino.0, fh);
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | no_flush);
        }
        let answer = self.io_modes.open(ino.0, fh, !write, || {
            let file = self.runtime.block_on(self.client.backing_file(fh))?;
            reply
                .open_backing(&file)
                .inspect_err(|e| tracing::warn!("passthrough of inode {}: {e}", ino.0))
                .ok()
        });
        match answer {
            OpenAs::Cached => reply.opened(FileHandle(fh), no_flush),
            OpenAs::Direct => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO | no_flush),
            OpenAs::Passthrough(id) => reply.opened_passthrough(FileHandle(fh), no_flush, &id),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.runtime.block_on(self.client.read(fh.0, offset, size)) {
            Ok(data) => reply.data(&data[..]),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.runtime.block_on(self.client.write(fh.0, offset, data)) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(errno(&e)),
        }
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
        let result = self.runtime.block_on(async {
            let unlocked = self.client.unlock_owner(ino.0, lock_owner.0).await;
            self.client.flush(fh.0).await.and(unlocked)
        });
        Self::reply_empty(result, reply);
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
        self.io_modes.release(fh.0);
        let result = self.runtime.block_on(async {
            // Set when the file held a flock: its owner is the open file.
            let unlocked = match lock_owner {
                Some(owner) => self.client.unlock_owner(ino.0, owner.0).await,
                None => Ok(()),
            };
            self.client.release(fh.0).await.and(unlocked)
        });
        Self::reply_empty(result, reply);
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
        self.runtime
            .block_on(locks::getlk(&self.client, ino.0, spec, reply));
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
        let task = locks::setlk(self.client.clone(), ino.0, spec, sleep, reply);
        if sleep {
            // A wait may be long: never on one of the few FUSE threads.
            self.runtime.spawn(task);
        } else {
            self.runtime.block_on(task);
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        Self::reply_empty(self.runtime.block_on(self.client.fsync(fh.0)), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Each open directory stream reads one consistent listing, fetched
        // on the first readdir and kept until releasedir.
        match self.runtime.block_on(self.client.getattr(ino.0)) {
            Ok(attr) if attr.kind == torchfs_proto::meta::FileKind::Dir => {
                let fh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        if offset == 0 {
            match self.runtime.block_on(self.client.readdir(ino.0, "", 0)) {
                Ok(entries) => self.dirs.insert(fh.0, entries),
                Err(e) => return reply.error(errno(&e)),
            }
        }
        self.dirs.fill(fh.0, ino.0, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(fh.0);
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
        match self.runtime.block_on(self.client.statfs()) {
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
    }

    // The kernel asks getxattr("security.capability") before every write:
    // the core answers it from cached attributes, with no round trip.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name_or_reply!(name, reply);
        match self.runtime.block_on(self.client.getxattr(ino.0, name)) {
            Ok(value) => xattr::reply_sized(&value, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.runtime.block_on(self.client.listxattr(ino.0)) {
            Ok(names) => xattr::reply_sized(&names, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
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
        let result = self
            .runtime
            .block_on(self.client.setxattr(ino.0, name, value, mode));
        Self::reply_empty(result, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_or_reply!(name, reply);
        let result = self.runtime.block_on(self.client.removexattr(ino.0, name));
        Self::reply_empty(result, reply);
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
        Self::reply_empty(self.runtime.block_on(self.client.extend(ino.0, end)), reply);
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
        let exclusive = flags & libc::O_EXCL != 0;
        let truncate = flags & libc::O_TRUNC != 0;
        let result = self.runtime.block_on(async {
            let attr = self
                .client
                .create(parent.0, name, new_mode(mode, umask), owner(req), exclusive)
                .await?;
            let fh = self.client.open(attr.ino, true, truncate).await?;
            Ok::<_, ClientError>((attr, fh))
        });
        match result {
            Ok((attr, fh)) => {
                let mut flags = FopenFlags::empty();
                if self.passthrough.load(Ordering::Relaxed) {
                    if let OpenAs::Direct = self.io_modes.open(attr.ino, fh, false, || None) {
                        flags = FopenFlags::FOPEN_DIRECT_IO;
                    }
                }
                reply.created(
                    &self.options.entry_ttl,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    flags,
                )
            }
            Err(e) => reply.error(errno(&e)),
        }
    }
}
