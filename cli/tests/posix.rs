//! POSIX beyond files and directories, through a real mount: special files,
//! extended attributes and their limits, POSIX ACLs enforced for another
//! user, renameat2's modes, usable statfs, and who may use a root mount.

mod common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use common::*;

/// The uid/gid of `nobody`, the other user of these tests.
const NOBODY: u32 = 65534;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths")
}

/// The errno of a libc call's -1 result, or 0 when it succeeded.
fn errno_of(rc: libc::c_int) -> i32 {
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let name = CString::new(name).expect("name");
    // SAFETY: valid C strings and a buffer of the given length.
    errno_of(unsafe {
        libc::setxattr(
            c(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// getxattr with a buffer of `size` bytes: the value, or the errno.
fn getxattr(path: &Path, name: &str, size: usize) -> std::result::Result<Vec<u8>, i32> {
    let name = CString::new(name).expect("name");
    let mut buf = vec![0u8; size];
    // SAFETY: valid C strings and a buffer of `size` bytes.
    let n = unsafe {
        libc::getxattr(
            c(path).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn listxattr(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 64 << 10];
    // SAFETY: a valid C string and a buffer of its length.
    let n = unsafe { libc::listxattr(c(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "listxattr {}", path.display());
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> i32 {
    // SAFETY: valid C strings; AT_FDCWD with absolute paths.
    errno_of(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(from).as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            flags,
        )
    })
}

/// Runs `args` as `nobody` (setpriv); true when it exited 0.
fn as_nobody(args: &[&str]) -> Result<bool> {
    let status = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .args(args)
        .stderr(std::process::Stdio::null())
        .status()
        .context("run setpriv (util-linux)")?;
    Ok(status.success())
}

fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("run {cmd}"))?;
    ensure!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn special_files_xattrs_acls_renames_and_other_users() -> Result<()> {
    if !fuse_available("special_files_xattrs_acls_renames_and_other_users") {
        return Ok(());
    }
    let _serial = serial();
    let mut tc = TestCluster::start()?;

    // Special files keep their kind and device number.
    let fifo = tc.path("fifo");
    // SAFETY: valid C strings.
    assert_eq!(
        errno_of(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o640) }),
        0
    );
    let dev = tc.path("null-like");
    let rdev = libc::makedev(1, 3);
    assert_eq!(
        errno_of(unsafe { libc::mknod(c(&dev).as_ptr(), libc::S_IFCHR | 0o600, rdev) }),
        0
    );
    let blk = tc.path("blk");
    let brdev = libc::makedev(7, 9);
    assert_eq!(
        errno_of(unsafe { libc::mknod(c(&blk).as_ptr(), libc::S_IFBLK | 0o600, brdev) }),
        0
    );
    let sock_path = tc.path("sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path)?;
    assert!(std::fs::symlink_metadata(&fifo)?.file_type().is_fifo());
    let m = std::fs::symlink_metadata(&dev)?;
    assert!(m.file_type().is_char_device());
    assert_eq!(m.rdev(), rdev);
    let m = std::fs::symlink_metadata(&blk)?;
    assert!(m.file_type().is_block_device());
    assert_eq!(m.rdev(), brdev);
    assert!(std::fs::symlink_metadata(&sock_path)?
        .file_type()
        .is_socket());
    // The kernel serves the socket and the FIFO once their names exist.
    let client = std::os::unix::net::UnixStream::connect(&sock_path)?;
    drop((client, listener));
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::write(fifo, b"through the pipe")
    });
    assert_eq!(std::fs::read(&fifo)?, b"through the pipe");
    writer.join().expect("writer thread")?;
    // mknod of a type it cannot make: EINVAL, nothing created.
    let bad = tc.path("bad-node");
    assert_eq!(
        errno_of(unsafe { libc::mknod(c(&bad).as_ptr(), 0o170000 | 0o600, 0) }),
        libc::EINVAL
    );
    assert!(std::fs::symlink_metadata(&bad).is_err());

    // Extended attributes and their limits.
    let f = tc.path("x");
    std::fs::write(&f, b"data")?;

    // An ioctl is refused as by a local filesystem's regular file: isatty()
    // (Python's open asks it of every file) says no, with ENOTTY.
    let file = std::fs::File::open(&f)?;
    let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TCGETS, termios.as_mut_ptr()) };
    assert_eq!((rc, errno_of(rc)), (-1, libc::ENOTTY), "TCGETS on a file");
    drop(file);
    // Answered by the mount itself: no "not implemented" line per call
    // (a log that grew with every open(2) of a Python program).
    let log = std::fs::read_to_string(tc.mount_log())?;
    assert!(!log.contains("ioctl"), "the mount logged an ioctl:\n{log}");
    assert_eq!(setxattr(&f, "user.one", b"1", 0), 0);
    assert_eq!(setxattr(&f, "user.two", b"22", 0), 0);
    assert_eq!(
        setxattr(&f, "user.one", b"x", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(
        setxattr(&f, "user.none", b"x", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(setxattr(&f, "user.two", b"two", libc::XATTR_REPLACE), 0);
    assert_eq!(getxattr(&f, "user.two", 64), Ok(b"two".to_vec()));
    assert_eq!(getxattr(&f, "user.two", 0), Ok(Vec::new()), "size probe");
    assert_eq!(getxattr(&f, "user.two", 2), Err(libc::ERANGE));
    assert_eq!(getxattr(&f, "user.none", 64), Err(libc::ENODATA));
    assert_eq!(
        setxattr(&f, "user.big", &vec![7u8; (64 << 10) + 1], 0),
        libc::E2BIG
    );
    let long = format!("user.{}", "n".repeat(300));
    assert_eq!(setxattr(&f, &long, b"v", 0), libc::ERANGE);
    assert_eq!(setxattr(&f, "os2.odd", b"v", 0), libc::EOPNOTSUPP);
    let mut names = listxattr(&f);
    names.sort();
    assert_eq!(names, ["user.one", "user.two"]);
    // SAFETY: valid C strings.
    let rm = |name: &str| {
        errno_of(unsafe { libc::removexattr(c(&f).as_ptr(), CString::new(name).unwrap().as_ptr()) })
    };
    assert_eq!(rm("user.one"), 0);
    assert_eq!(rm("user.one"), libc::ENODATA);
    assert_eq!(std::fs::read(&f)?, b"data", "xattrs left the data alone");

    // POSIX ACLs are stored, kept in step with the mode, and enforced.
    let secret = tc.path("secret");
    std::fs::write(&secret, b"for nobody")?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let secret_s = secret.to_str().context("utf-8 path")?;
    assert!(!as_nobody(&["cat", secret_s])?, "0600 keeps nobody out");
    run("setfacl", &["-m", &format!("u:{NOBODY}:r"), secret_s])?;
    assert!(
        as_nobody(&["cat", secret_s])?,
        "a named-user entry lets nobody read"
    );
    assert_eq!(
        std::fs::metadata(&secret)?.mode() & 0o777,
        0o640,
        "mask shows as group bits"
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    assert!(
        run("getfacl", &["-cn", secret_s])?.contains("mask::---"),
        "chmod rewrote the mask"
    );
    assert!(
        !as_nobody(&["cat", secret_s])?,
        "the mask now masks the entry"
    );
    // A default ACL is inherited, replacing the umask.
    let shared = tc.path("shared");
    std::fs::create_dir(&shared)?;
    let shared_s = shared.to_str().context("utf-8 path")?;
    run(
        "setfacl",
        &["-d", "-m", &format!("u:{NOBODY}:rwx"), shared_s],
    )?;
    std::fs::create_dir(shared.join("sub"))?;
    std::fs::write(shared.join("file"), b"")?;
    let acl = run("getfacl", &["-cn", &format!("{shared_s}/file")])?;
    assert!(acl.contains(&format!("user:{NOBODY}:rwx")), "{acl}");
    let acl = run("getfacl", &["-cn", &format!("{shared_s}/sub")])?;
    assert!(acl.contains(&format!("default:user:{NOBODY}:rwx")), "{acl}");

    // Sticky directories: another user may not remove what is not theirs.
    let tmp = tc.path("tmp");
    std::fs::create_dir(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
    std::fs::write(tmp.join("roots"), b"")?;
    let roots = tmp.join("roots");
    assert!(!as_nobody(&["rm", "-f", roots.to_str().context("path")?])?);
    assert!(roots.exists());

    // Set-group-ID directories hand down their group.
    let sgid = tc.path("sgid");
    std::fs::create_dir(&sgid)?;
    std::os::unix::fs::chown(&sgid, None, Some(NOBODY))?;
    std::fs::set_permissions(&sgid, std::fs::Permissions::from_mode(0o2775))?;
    std::fs::create_dir(sgid.join("d"))?;
    std::fs::write(sgid.join("f"), b"")?;
    let d = std::fs::metadata(sgid.join("d"))?;
    assert_eq!((d.gid(), d.mode() & 0o2000), (NOBODY, 0o2000));
    assert_eq!(std::fs::metadata(sgid.join("f"))?.gid(), NOBODY);

    // renameat2: NOREPLACE refuses, EXCHANGE swaps (a file and a directory too).
    let (a, b) = (tc.path("ra"), tc.path("rb"));
    std::fs::write(&a, b"A")?;
    std::fs::create_dir(&b)?;
    std::fs::write(b.join("inside"), b"B")?;
    assert_eq!(renameat2(&a, &b, libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(renameat2(&a, &b, libc::RENAME_EXCHANGE), 0);
    assert_eq!(std::fs::read(&b)?, b"A");
    assert_eq!(std::fs::read(a.join("inside"))?, b"B");
    assert_eq!(
        renameat2(&a, &tc.path("nothing"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    assert_eq!(renameat2(&a, &tc.path("moved"), libc::RENAME_NOREPLACE), 0);
    assert_eq!(std::fs::read(tc.path("moved/inside"))?, b"B");
    // The moved directory's `..` is its new parent, and link counts follow.
    let before = std::fs::metadata(&tc.mnt)?.nlink();
    std::fs::create_dir(tc.path("moved/child"))?;
    std::fs::rename(tc.path("moved/child"), tc.path("child"))?;
    assert_eq!(std::fs::metadata(&tc.mnt)?.nlink(), before + 1);
    assert_eq!(
        std::fs::metadata(tc.path("child/.."))?.ino(),
        std::fs::metadata(&tc.mnt)?.ino()
    );

    // statfs: usable bytes are k/(k+m) of the raw capacity (every node
    // stores on the same disk here), and inodes add up.
    let fs = nix_statvfs(&tc.mnt)?;
    let disk = nix_statvfs(tc.dir.path())?;
    let raw = 6 * disk.0;
    let usable = fs.0 as f64 / (raw as f64 * 4.0 / 6.0);
    assert!((0.98..1.02).contains(&usable), "usable/expected {usable}");
    assert!(fs.1 > 10 && fs.2 < fs.1, "files {} free {}", fs.1, fs.2);

    // A root mount serves other users; --owner-only restricts it to root.
    let mnt_s = tc.mnt.to_str().context("path")?.to_string();
    std::fs::set_permissions(&tc.mnt, std::fs::Permissions::from_mode(0o755))?;
    assert!(
        as_nobody(&["ls", &mnt_s])?,
        "allow_other by default as root"
    );
    tc.unmount()?;
    tc.mount_with(&["--owner-only"])?;
    assert!(
        !as_nobody(&["ls", &mnt_s])?,
        "--owner-only refuses other users"
    );
    assert!(tc.path("x").exists(), "root still uses it");
    tc.unmount()?;
    tc.mount()?;
    // Everything above survived a new mount (nothing only in its caches).
    assert_eq!(getxattr(&tc.path("x"), "user.two", 64), Ok(b"two".to_vec()));
    assert!(as_nobody(&[
        "cat",
        tc.path("shared/file").to_str().context("path")?
    ])?);
    Ok(())
}

/// (total bytes, total inodes, free inodes) of a filesystem.
fn nix_statvfs(path: &Path) -> Result<(u64, u64, u64)> {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    let rc = unsafe { libc::statvfs(c(path).as_ptr(), &mut s) };
    ensure!(rc == 0, "statvfs {}", path.display());
    Ok((s.f_blocks * s.f_frsize, s.f_files, s.f_ffree))
}
