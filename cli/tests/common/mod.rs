//! Shared harness of the integration tests: a real local cluster (metad
//! voters and storage nodes as processes of the `torchfs` binary) and a
//! real FUSE mount served by a `torchfs mount` process.

#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torchfs_cli::local_cluster::{log_tail, ClusterSpec, LocalCluster};

/// Clusters are heavy on 2 cores: tests of one binary take turns.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_torchfs"))
}

/// FUSE tests need /dev/fuse and root (mount(2)); say why they are skipped.
/// Under CI (`CI=true`) a test that cannot mount fails instead: a skipped
/// mount test is never green there.
pub fn fuse_available(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    if !Path::new("/dev/fuse").exists() || !root {
        let why = format!("{test}: needs /dev/fuse and root to mount (root: {root})");
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("cannot mount under CI=true: {why}");
        }
        eprintln!("SKIPPED {why}");
        return false;
    }
    true
}

pub struct TestCluster {
    pub cluster: LocalCluster,
    pub mnt: PathBuf,
    mount: Option<Child>,
    // Last: removed after every process is gone.
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// 3 voters, 6 storage nodes, all up, and a mount.
    pub fn start() -> Result<Self> {
        Self::start_with(|_| {}, &[])
    }

    /// Like [`TestCluster::start`], with the cluster's spec changed by
    /// `edit` and extra `torchfs mount` flags.
    pub fn start_with(edit: impl FnOnce(&mut ClusterSpec), mount_flags: &[&str]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("torchfs-it-").tempdir()?;
        let mut spec = ClusterSpec::with_free_ports(exe(), dir.path().to_path_buf())?;
        edit(&mut spec);
        let mut cluster = LocalCluster::start(spec)?;
        cluster.wait_ready(6, Duration::from_secs(60))?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let mut tc = Self {
            cluster,
            mnt,
            mount: None,
            dir,
        };
        tc.mount_with(mount_flags)?;
        Ok(tc)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn mount_log(&self) -> PathBuf {
        self.dir.path().join("logs").join("mount.log")
    }

    /// Starts `torchfs mount` and waits until the mount is live.
    pub fn mount(&mut self) -> Result<()> {
        self.mount_with(&[])
    }

    /// Like [`TestCluster::mount`], with extra `torchfs mount` flags.
    pub fn mount_with(&mut self, extra: &[&str]) -> Result<()> {
        let child = spawn_mount(&self.cluster, &self.mnt, &self.mount_log(), extra)?;
        self.mount = Some(child);
        Ok(())
    }

    /// A second mount of the same cluster at `<dir>/<name>`, as a second
    /// machine would have (its own process, caches and lease).
    pub fn mount_another(&self, name: &str) -> Result<OtherMount> {
        self.mount_another_with(name, &[])
    }

    /// Like [`TestCluster::mount_another`], with extra `torchfs mount` flags.
    pub fn mount_another_with(&self, name: &str, extra: &[&str]) -> Result<OtherMount> {
        self.mount_another_wrapped(name, &[], extra)
    }

    /// Like [`TestCluster::mount_another_with`], the mount process started
    /// through `wrapper` (e.g. `prlimit --memlock=...`).
    pub fn mount_another_wrapped(
        &self,
        name: &str,
        wrapper: &[&str],
        extra: &[&str],
    ) -> Result<OtherMount> {
        let mnt = self.dir.path().join(name);
        std::fs::create_dir_all(&mnt)?;
        let log = self.dir.path().join("logs").join(format!("{name}.log"));
        let child = spawn_mount_wrapped(&self.cluster, &mnt, &log, wrapper, extra)?;
        Ok(OtherMount { mnt, child, log })
    }

    /// Stops the mount process (SIGTERM: it unmounts) and waits for it.
    pub fn unmount(&mut self) -> Result<()> {
        if let Some(mut child) = self.mount.take() {
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if child.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        Ok(())
    }

    /// Stops the whole cluster (mount, storage, metad) and starts it again
    /// on the same directories and ports.
    pub fn restart_all(&mut self) -> Result<()> {
        self.unmount()?;
        self.cluster.stop();
        for i in 0..self.cluster.spec().metad_ports.len() {
            self.cluster.start_metad(i)?;
        }
        for i in 0..self.cluster.spec().storage_nodes {
            self.cluster.start_storage(i)?;
        }
        self.cluster.wait_ready(6, Duration::from_secs(60))?;
        self.mount()
    }

    /// Drops the kernel's page cache so reads go to the cluster.
    pub fn drop_caches(&self) {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.unmount();
        self.cluster.stop();
    }
}

/// Starts `torchfs mount` on `mnt` and waits until the mount is live.
fn spawn_mount(
    cluster: &LocalCluster,
    mnt: &Path,
    log_path: &Path,
    extra: &[&str],
) -> Result<Child> {
    spawn_mount_wrapped(cluster, mnt, log_path, &[], extra)
}

/// [`spawn_mount`] through a wrapper command (`wrapper[0] wrapper[1..]
/// torchfs mount ...`).
fn spawn_mount_wrapped(
    cluster: &LocalCluster,
    mnt: &Path,
    log_path: &Path,
    wrapper: &[&str],
    extra: &[&str],
) -> Result<Child> {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log_path)?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(exe());
            c
        }
        None => Command::new(exe()),
    };
    let mut child = command
        .arg("mount")
        .arg(mnt)
        .arg("--metad")
        .arg(cluster.metad_addrs().join(","))
        .args(extra)
        // TFS_TEST_MOUNT_LOG sets the mounts' RUST_LOG (e.g.
        // `torchfs_client=debug,info` to see why a request failed).
        .env(
            "RUST_LOG",
            std::env::var("TFS_TEST_MOUNT_LOG").unwrap_or("info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start torchfs mount")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(mnt) {
        if let Some(status) = child.try_wait()? {
            bail!("torchfs mount exited ({status}):\n{}", log_tail(log_path));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("mount not live after 30 s:\n{}", log_tail(log_path));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// A further mount of a [`TestCluster`]; unmounted when dropped.
pub struct OtherMount {
    pub mnt: PathBuf,
    child: Child,
    pub log: PathBuf,
}

impl OtherMount {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// SIGKILL: the mount dies as a crashed machine's would (no unmount,
    /// no goodbye to metad); the kernel mount is detached.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

impl Drop for OtherMount {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Every stored fragment file under `root` (a storage node's data dir).
pub fn fragment_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "frag") {
                out.push(path);
            }
        }
    }
    out
}

pub fn is_mounted(path: &Path) -> bool {
    let (Ok(meta), Some(parent)) = (std::fs::metadata(path), path.parent()) else {
        return false;
    };
    match std::fs::metadata(parent) {
        Ok(parent_meta) => parent_meta.dev() != meta.dev(),
        Err(_) => false,
    }
}

/// Deterministic bytes (xorshift64*) for file contents.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The sizes the issue names: empty, tiny, around 4 KiB, around one unit
/// (1 MiB), one stripe + 1 and many stripes with a ragged tail.
pub const SIZES: [usize; 8] = [
    0,
    1,
    4095,
    4096,
    (1 << 20) - 1,
    1 << 20,
    (4 << 20) + 1,
    (37 << 20) + 7,
];

/// Writes one file per size under `dir` (relative to the mount).
pub fn write_sized_files(tc: &TestCluster, dir: &str) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    std::fs::create_dir_all(tc.path(dir)).with_context(|| format!("mkdir {dir}"))?;
    let mut files = Vec::new();
    for (i, size) in SIZES.iter().enumerate() {
        let path = tc.path(&format!("{dir}/file-{size}"));
        let data = pattern(*size, i as u64 + 1);
        std::fs::write(&path, &data).with_context(|| format!("write {}", path.display()))?;
        files.push((path, data));
    }
    Ok(files)
}

/// Reads every file back and compares, naming the first difference.
pub fn check_files(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    for (path, want) in files {
        let got = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        if got.len() != want.len() {
            bail!(
                "{}: read {} bytes, wrote {}",
                path.display(),
                got.len(),
                want.len()
            );
        }
        if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
            bail!("{}: first difference at byte {at}", path.display());
        }
    }
    Ok(())
}

fn flock_of(typ: libc::c_int, start: i64, len: i64) -> libc::flock {
    // SAFETY: flock is plain old data; all-zero is a valid value.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = typ as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = start;
    l.l_len = len;
    l
}

/// fcntl F_SETLK/F_SETLKW: 0 or the errno.
pub fn setlk(f: &std::fs::File, typ: libc::c_int, start: i64, len: i64, wait: bool) -> i32 {
    use std::os::fd::AsRawFd;
    let l = flock_of(typ, start, len);
    let cmd = if wait { libc::F_SETLKW } else { libc::F_SETLK };
    // SAFETY: a valid fd and a flock struct that outlives the call.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &l) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// fcntl F_GETLK: the type, start and length of the lock that would
/// conflict (type F_UNLCK: none).
pub fn getlk(f: &std::fs::File, typ: libc::c_int, start: i64, len: i64) -> (i32, i64, i64) {
    use std::os::fd::AsRawFd;
    let mut l = flock_of(typ, start, len);
    // SAFETY: a valid fd and a flock struct the call fills in.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut l) };
    assert_eq!(rc, 0, "F_GETLK: {}", std::io::Error::last_os_error());
    (l.l_type as i32, l.l_start, l.l_len)
}

/// flock(2): 0 or the errno.
pub fn flock(f: &std::fs::File, op: libc::c_int) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Opens `path` for reading and writing.
pub fn rw(path: &Path) -> Result<std::fs::File> {
    std::fs::File::options()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}
