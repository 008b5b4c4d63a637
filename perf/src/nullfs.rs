//! The FUSE ceiling: a minimal in-memory filesystem served by the same FUSE
//! library and settings as torchfs's mount (fuser 0.18, 2 worker threads
//! with cloned fds, 1 MiB max write and readahead, async reads, page-cache
//! reads, 1 s entry/attribute TTLs). It keeps the namespace (so metadata
//! workloads run) but no data: writes are counted and dropped, reads return
//! a fixed pseudo-random pattern. What it achieves is what the kernel's FUSE
//! path alone allows here, before any storage or network work.
//!
//! It runs as a child process (`torchfs-perf __nullfs MOUNTPOINT`) like
//! torchfs's daemon does, so readers pay the same context switches.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// torchfs's FuseOptions defaults, mirrored.
const TTL: Duration = Duration::from_secs(1);
const REQUEST_BYTES_MAX: u32 = 1 << 20;
const THREADS: usize = 2;
const PATTERN_BYTES: usize = 1 << 20;

struct Node {
    kind: FileType,
    perm: u16,
    size: u64,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    children: BTreeMap<String, u64>,
}

struct NullFs {
    nodes: Mutex<HashMap<u64, Node>>,
    next_ino: AtomicU64,
    /// Twice the period, so any read of up to a period is one slice.
    pattern: Vec<u8>,
}

impl NullFs {
    fn new() -> NullFs {
        let mut nodes = HashMap::new();
        nodes.insert(
            1,
            Node {
                kind: FileType::Directory,
                perm: 0o777,
                size: 0,
                uid: 0,
                gid: 0,
                mtime: SystemTime::now(),
                children: BTreeMap::new(),
            },
        );
        let mut pattern = crate::data::pattern(PATTERN_BYTES, 0x5eed);
        pattern.extend_from_within(..);
        NullFs {
            nodes: Mutex::new(nodes),
            next_ino: AtomicU64::new(2),
            pattern,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attr(ino: u64, n: &Node) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: n.kind,
            perm: n.perm,
            nlink: if n.kind == FileType::Directory { 2 } else { 1 },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn make(
        &self,
        owner: (u32, u32),
        parent: INodeNo,
        name: &OsStr,
        kind: FileType,
        perm: u32,
    ) -> Result<FileAttr, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?.to_string();
        let mut nodes = self.lock();
        let dir = nodes.get_mut(&parent.0).ok_or(Errno::ENOENT)?;
        if dir.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        if dir.children.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        dir.children.insert(name, ino);
        let node = Node {
            kind,
            perm: (perm & 0o7777) as u16,
            size: 0,
            uid: owner.0,
            gid: owner.1,
            mtime: SystemTime::now(),
            children: BTreeMap::new(),
        };
        let attr = Self::attr(ino, &node);
        nodes.insert(ino, node);
        Ok(attr)
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let mut nodes = self.lock();
        let dir = nodes.get(&parent.0).ok_or(Errno::ENOENT)?;
        let ino = *dir.children.get(name).ok_or(Errno::ENOENT)?;
        removable(nodes.get(&ino).ok_or(Errno::ENOENT)?, want_dir)?;
        nodes.remove(&ino);
        if let Some(dir) = nodes.get_mut(&parent.0) {
            dir.children.remove(name);
        }
        Ok(())
    }

    /// rename(2) within the in-memory tree (mdtest renames files); a
    /// replaced file or empty directory is dropped. EXCHANGE is refused.
    fn move_entry(
        &self,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.bits() & libc::RENAME_EXCHANGE != 0 {
            return Err(Errno::EINVAL);
        }
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        let newname = newname.to_str().ok_or(Errno::EINVAL)?;
        let mut nodes = self.lock();
        let ino = *nodes
            .get(&parent.0)
            .ok_or(Errno::ENOENT)?
            .children
            .get(name)
            .ok_or(Errno::ENOENT)?;
        if nodes.get(&newparent.0).ok_or(Errno::ENOENT)?.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        let moved_is_dir = nodes
            .get(&ino)
            .is_some_and(|n| n.kind == FileType::Directory);
        let replaced = nodes
            .get(&newparent.0)
            .and_then(|d| d.children.get(newname).copied());
        if let Some(old) = replaced.filter(|&old| old != ino) {
            if flags.bits() & libc::RENAME_NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            removable(nodes.get(&old).ok_or(Errno::ENOENT)?, moved_is_dir)?;
            nodes.remove(&old);
        }
        if let Some(dir) = nodes.get_mut(&parent.0) {
            dir.children.remove(name);
        }
        if let Some(dir) = nodes.get_mut(&newparent.0) {
            dir.children.insert(newname.to_owned(), ino);
        }
        Ok(())
    }
}

/// Whether `node` may go where a directory (`as_dir`) or a file is being
/// removed or renamed over: the errno Linux gives when not.
fn removable(node: &Node, as_dir: bool) -> Result<(), Errno> {
    match (as_dir, node.kind == FileType::Directory) {
        (true, false) => Err(Errno::ENOTDIR),
        (false, true) => Err(Errno::EISDIR),
        (true, true) if !node.children.is_empty() => Err(Errno::ENOTEMPTY),
        _ => Ok(()),
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let _ = config.set_max_write(REQUEST_BYTES_MAX);
        let _ = config.set_max_readahead(REQUEST_BYTES_MAX);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_READ);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let nodes = self.lock();
        let found = name
            .to_str()
            .and_then(|n| nodes.get(&parent.0)?.children.get(n).copied())
            .and_then(|ino| Some(Self::attr(ino, nodes.get(&ino)?)));
        drop(nodes);
        match found {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let attr = self.lock().get(&ino.0).map(|n| Self::attr(ino.0, n));
        match attr {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut nodes = self.lock();
        let Some(n) = nodes.get_mut(&ino.0) else {
            drop(nodes);
            return reply.error(Errno::ENOENT);
        };
        if let Some(m) = mode {
            n.perm = (m & 0o7777) as u16;
        }
        if let Some(s) = size {
            n.size = s;
        }
        n.mtime = SystemTime::now();
        let attr = Self::attr(ino.0, n);
        drop(nodes);
        reply.attr(&TTL, &attr);
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
        match self.make(
            (req.uid(), req.gid()),
            parent,
            name,
            FileType::Directory,
            mode & !umask,
        ) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.make(
            (req.uid(), req.gid()),
            parent,
            name,
            FileType::RegularFile,
            mode & !umask,
        ) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make(
            (req.uid(), req.gid()),
            parent,
            name,
            FileType::RegularFile,
            mode & !umask,
        ) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(attr.ino.0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        match self.move_entry(parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_TRUNC != 0 {
            if let Some(n) = self.lock().get_mut(&ino.0) {
                n.size = 0;
            }
        }
        reply.opened(FileHandle(ino.0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file_size = self.lock().get(&ino.0).map_or(0, |n| n.size);
        let len = file_size.saturating_sub(offset).min(u64::from(size)) as usize;
        let len = len.min(PATTERN_BYTES);
        let start = (offset % PATTERN_BYTES as u64) as usize;
        reply.data(&self.pattern[start..start + len]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(n) = self.lock().get_mut(&ino.0) {
            n.size = n.size.max(offset + data.len() as u64);
        }
        reply.written(data.len() as u32);
    }

    /// As the torchfs mount: ENOTTY without a log line (Python asks TCGETS
    /// of every file it opens).
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

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(ino.0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let nodes = self.lock();
        let Some(dir) = nodes.get(&ino.0) else {
            drop(nodes);
            return reply.error(Errno::ENOENT);
        };
        // Same positions as torchfs: 0 ".", 1 "..", then the entries.
        let dots = [(ino.0, "."), (ino.0, "..")];
        let entries = dots
            .iter()
            .map(|&(i, n)| (i, FileType::Directory, n))
            .chain(dir.children.iter().map(|(name, &child)| {
                let kind = nodes.get(&child).map_or(FileType::RegularFile, |n| n.kind);
                (child, kind, name.as_str())
            }));
        for (i, (child, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        drop(nodes);
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.lock().len() as u64;
        reply.statfs(1 << 30, 1 << 30, 1 << 30, files, 1 << 30, 4096, 255, 4096);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        // As torchfs: ENOSYS makes the kernel stop asking.
        reply.error(Errno::ENOSYS);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }
}

/// Serves the null filesystem at `mountpoint` until SIGINT or SIGTERM, then
/// unmounts. The signals are blocked in every thread (fuser's inherit the
/// mask) and taken synchronously here, so none can kill a worker mid-reply.
pub fn serve(mountpoint: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    // SAFETY: plain signal-set manipulation on this thread before any other
    // thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("torchfs-null".into()),
        MountOption::Subtype("null".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(THREADS);
    config.clone_fd = true;
    let session = fuser::spawn_mount(NullFs::new(), mountpoint, &config)
        .with_context(|| format!("mount the null filesystem on {}", mountpoint.display()))?;
    let mut signal: libc::c_int = 0;
    // SAFETY: `set` is initialised above; sigwait only writes `signal`.
    unsafe { libc::sigwait(&set, &mut signal) };
    session
        .umount_and_join()
        .with_context(|| format!("unmount {}", mountpoint.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(fs: &NullFs, dir: u64, name: &str) -> Option<u64> {
        fs.lock().get(&dir)?.children.get(name).copied()
    }

    #[test]
    fn rename_moves_replaces_and_refuses() {
        let fs = NullFs::new();
        let root = INodeNo(1);
        let file =
            |name: &str| fs.make((0, 0), root, OsStr::new(name), FileType::RegularFile, 0o644);
        let a = file("a").unwrap().ino.0;
        let b = file("b").unwrap().ino.0;
        let sub = fs
            .make((0, 0), root, OsStr::new("d"), FileType::Directory, 0o755)
            .unwrap()
            .ino;
        let none = RenameFlags::empty();

        // Over an existing file: the target is replaced and dropped.
        fs.move_entry(root, OsStr::new("a"), root, OsStr::new("b"), none)
            .unwrap();
        assert_eq!(child(&fs, 1, "a"), None);
        assert_eq!(child(&fs, 1, "b"), Some(a));
        assert!(!fs.lock().contains_key(&b));

        // Into another directory.
        fs.move_entry(root, OsStr::new("b"), sub, OsStr::new("c"), none)
            .unwrap();
        assert_eq!(child(&fs, sub.0, "c"), Some(a));

        // NOREPLACE, a file over a directory, a missing source.
        file("e").unwrap();
        let noreplace = RenameFlags::from_bits_retain(libc::RENAME_NOREPLACE);
        let err = fs.move_entry(root, OsStr::new("e"), root, OsStr::new("d"), noreplace);
        assert_eq!(err, Err(Errno::EEXIST));
        let err = fs.move_entry(root, OsStr::new("e"), root, OsStr::new("d"), none);
        assert_eq!(err, Err(Errno::EISDIR));
        let err = fs.move_entry(root, OsStr::new("zz"), root, OsStr::new("y"), none);
        assert_eq!(err, Err(Errno::ENOENT));
    }
}
