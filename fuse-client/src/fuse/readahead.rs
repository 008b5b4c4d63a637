//! Kernel readahead for the mount. The kernel caps a FUSE mount's
//! readahead at its default (128 KiB) whatever `max_readahead` the daemon
//! asks for at init, so buffered sequential reads arrive as 128 KiB requests:
//! one round trip per 128 KiB. Raising the mount's backing-device readahead
//! (`/sys/class/bdi/<major>:<minor>/read_ahead_kb`, root only) makes them
//! arrive as `request_bytes_max` requests, several in flight (async reads).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The sysfs file holding the readahead of the filesystem mounted at `mountpoint`.
fn bdi_readahead_file(mountpoint: &Path) -> std::io::Result<PathBuf> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    Ok(PathBuf::from(format!(
        "/sys/class/bdi/{major}:{minor}/read_ahead_kb"
    )))
}

/// Sets the mount's readahead to `bytes`; a failure (not root, no sysfs)
/// only costs speed, so it is logged, not returned.
pub(super) fn raise(mountpoint: &Path, bytes: u32) {
    let result = bdi_readahead_file(mountpoint)
        .and_then(|file| std::fs::write(&file, (bytes / 1024).to_string()).map(|()| file));
    match result {
        Ok(file) => tracing::debug!("readahead {} KiB ({})", bytes / 1024, file.display()),
        Err(e) => tracing::info!(
            "kept the kernel's default readahead for {} ({e}): sequential reads use 128 KiB requests",
            mountpoint.display()
        ),
    }
}
