//! The torchfs client the workloads go through: a `torchfs mount` process
//! of the harness's cluster, with torchfs's default settings (epoch cache
//! included). It is restarted before every cold phase: `drop_caches` empties
//! the kernel's caches but not the client's own memory tier, so without a
//! restart torchfs alone would start "cold" phases with data cached.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{log_tail, mount_at, wait_for_mount};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ClientMount {
    bin: PathBuf,
    metad: Vec<String>,
    mountpoint: PathBuf,
    log: PathBuf,
    /// Extra `torchfs mount` flags (`--read-only`).
    args: Vec<String>,
    child: Option<Child>,
    /// How many times it was (re)started.
    pub starts: usize,
}

impl ClientMount {
    pub fn start(bin: &Path, metad: Vec<String>, mountpoint: &Path, log: &Path) -> Result<Self> {
        Self::start_with(bin, metad, mountpoint, log, &[])
    }

    /// [`Self::start`] with extra `torchfs mount` flags.
    pub fn start_with(
        bin: &Path,
        metad: Vec<String>,
        mountpoint: &Path,
        log: &Path,
        args: &[&str],
    ) -> Result<Self> {
        let mut m = ClientMount {
            bin: bin.to_path_buf(),
            metad,
            mountpoint: mountpoint.to_path_buf(),
            log: log.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            starts: 0,
        };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> Result<()> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut command = Command::new(&self.bin);
        command
            .arg("mount")
            .arg(&self.mountpoint)
            .arg("--metad")
            .arg(self.metad.join(","))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: async-signal-safe calls only. As for `torchfs up`: its own
        // process group, and SIGTERM (unmount) if the harness dies.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command.spawn().context("start torchfs mount")?;
        let log = self.log.clone();
        let mounted = wait_for_mount(&self.mountpoint, "fuse", MOUNT_TIMEOUT, || {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "torchfs mount exited ({status}); {} ends with:\n{}",
                    log.display(),
                    log_tail(&log, 8)
                );
            }
            Ok(())
        });
        if let Err(e) = mounted {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// A fresh client: unmount (SIGTERM), mount again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    pub fn alive(&mut self) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "torchfs mount exited ({status}); {} ends with:\n{}",
                    self.log.display(),
                    log_tail(&self.log, 8)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM (the mount unmounts itself), SIGKILL and a lazy unmount if
    /// it does not go in time.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let clean = child.try_wait()?.is_some();
        if !clean {
            let _ = child.kill();
            let _ = child.wait();
        }
        if mount_at(&self.mountpoint).is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        if !clean {
            bail!(
                "torchfs mount did not stop within {} s",
                STOP_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }
}

impl Drop for ClientMount {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
