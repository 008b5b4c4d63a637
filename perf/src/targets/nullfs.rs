//! The FUSE-ceiling target: this binary re-executed as `__nullfs` serving
//! the in-memory filesystem of [`crate::nullfs`] at a mount point.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{fresh_dir, log_tail, wait_for_mount, Target};
use crate::model::{TargetInfo, TargetKind};

pub const NAME: &str = "fuse-null";

pub struct NullFsTarget {
    child: Child,
    mountpoint: PathBuf,
    log: PathBuf,
}

impl NullFsTarget {
    pub fn start(exe: &Path, dir: &Path) -> Result<NullFsTarget> {
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse is missing");
        }
        fresh_dir(dir)?;
        let mountpoint = dir.join("mnt");
        std::fs::create_dir(&mountpoint)?;
        let log = dir.join("nullfs.log");
        let out = File::create(&log)?;
        let mut command = Command::new(exe);
        command
            .arg("__nullfs")
            .arg(&mountpoint)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: async-signal-safe calls only. Own process group: a Ctrl-C
        // goes to the harness, which unmounts in order; SIGTERM when the
        // harness dies, so the mount does not outlive it.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().context("start the null FUSE server")?;
        let mounted = wait_for_mount(&mountpoint, "fuse", Duration::from_secs(20), || {
            if let Some(status) = child.try_wait()? {
                bail!("null FUSE server exited ({status}): {}", log_tail(&log, 5));
            }
            Ok(())
        });
        if let Err(e) = mounted {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(NullFsTarget {
            child,
            mountpoint,
            log,
        })
    }
}

impl Target for NullFsTarget {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> TargetKind {
        TargetKind::Limit
    }

    fn root(&self) -> &Path {
        &self.mountpoint
    }

    fn synthetic_data(&self) -> bool {
        true
    }

    fn info(&self) -> TargetInfo {
        let mut details = std::collections::BTreeMap::new();
        details.insert(
            "what".into(),
            "in-memory FUSE filesystem (no data kept; reads return a pattern), fuser 0.18 with torchfs's mount settings".into(),
        );
        details.insert("log".into(), self.log.display().to_string());
        TargetInfo {
            name: NAME.into(),
            kind: TargetKind::Limit,
            path: self.mountpoint.display().to_string(),
            status: "ok".into(),
            details,
        }
    }

    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("null FUSE server exited ({status})");
        }
        Ok(())
    }

    fn teardown(&mut self) -> Result<()> {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if super::mount_at(&self.mountpoint).is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        Ok(())
    }
}
