//! Namespace operations through a real mount, with the errors POSIX names.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;

use anyhow::Result;
use common::*;

fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

#[test]
fn directories_rename_link_and_errors() -> Result<()> {
    if !fuse_available("directories_rename_link_and_errors") {
        return Ok(());
    }
    let _serial = serial();
    let tc = TestCluster::start()?;

    std::fs::create_dir_all(tc.path("a/b/c"))?;
    std::fs::write(tc.path("a/b/c/f.txt"), b"one")?;
    let mut names: Vec<String> = std::fs::read_dir(tc.path("a/b"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    assert_eq!(names, ["c"]);
    assert!(std::fs::metadata(tc.path("a/b"))?.is_dir());

    // Many entries list completely (more than one readdir reply).
    std::fs::create_dir(tc.path("many"))?;
    for i in 0..300 {
        std::fs::write(
            tc.path(&format!("many/entry-with-a-longish-name-{i:04}")),
            b"",
        )?;
    }
    assert_eq!(std::fs::read_dir(tc.path("many"))?.count(), 300);

    // EEXIST
    let e = std::fs::create_dir(tc.path("a")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    let e = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tc.path("a/b/c/f.txt"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EEXIST);

    // ENOENT
    let e = std::fs::read(tc.path("a/missing")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    let e = std::fs::write(tc.path("nodir/f"), b"x").unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);
    let e = std::fs::remove_file(tc.path("a/missing")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOENT);

    // EISDIR: writing to a directory, unlinking one.
    let e = std::fs::OpenOptions::new()
        .write(true)
        .open(tc.path("a"))
        .unwrap_err();
    assert_eq!(errno(&e), libc::EISDIR);
    let e = std::fs::remove_file(tc.path("a/b")).unwrap_err();
    assert_eq!(errno(&e), libc::EISDIR);

    // ENOTEMPTY, ENOTDIR
    let e = std::fs::remove_dir(tc.path("a/b")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTEMPTY);
    let e = std::fs::remove_dir(tc.path("a/b/c/f.txt")).unwrap_err();
    assert_eq!(errno(&e), libc::ENOTDIR);

    // rename: a file, over an existing file, a directory across parents.
    std::fs::write(tc.path("x.txt"), b"x")?;
    std::fs::write(tc.path("y.txt"), b"yy")?;
    std::fs::rename(tc.path("x.txt"), tc.path("y.txt"))?;
    assert_eq!(std::fs::read(tc.path("y.txt"))?, b"x");
    assert_eq!(
        errno(&std::fs::metadata(tc.path("x.txt")).unwrap_err()),
        libc::ENOENT
    );
    std::fs::rename(tc.path("a/b/c"), tc.path("c2"))?;
    assert_eq!(std::fs::read(tc.path("c2/f.txt"))?, b"one");
    let e = std::fs::rename(tc.path("a"), tc.path("a/b/inside")).unwrap_err();
    assert_eq!(errno(&e), libc::EINVAL);

    // unlink and rmdir
    std::fs::remove_file(tc.path("c2/f.txt"))?;
    std::fs::remove_dir(tc.path("c2"))?;
    assert!(!tc.path("c2").exists());

    // hard link, symlink, chmod, truncate to zero
    std::fs::hard_link(tc.path("y.txt"), tc.path("y-link.txt"))?;
    assert_eq!(std::fs::read(tc.path("y-link.txt"))?, b"x");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(tc.path("y.txt"))?.nlink(), 2);
    std::fs::remove_file(tc.path("y.txt"))?;
    assert_eq!(std::fs::read(tc.path("y-link.txt"))?, b"x");
    std::os::unix::fs::symlink("y-link.txt", tc.path("sym"))?;
    assert_eq!(
        std::fs::read_link(tc.path("sym"))?.to_str(),
        Some("y-link.txt")
    );
    assert_eq!(std::fs::read(tc.path("sym"))?, b"x");
    std::fs::set_permissions(
        tc.path("y-link.txt"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    assert_eq!(
        std::fs::metadata(tc.path("y-link.txt"))?
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // statfs reports the cluster's capacity.
    let stat = nix_statvfs(&tc.mnt)?;
    assert!(stat > 0, "statfs reports no capacity");
    Ok(())
}

fn nix_statvfs(path: &std::path::Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(s.f_blocks * s.f_frsize)
}
