//! The FUSE-ceiling target: torchfs's own mount with nothing behind it.
//! This binary re-executed as `__nullfs` mounts torchfs's FUSE front-end
//! and client core (`torchfs_client::fuse::Mounted`, with the defaults of
//! `torchfs mount`) over the null backend (`torchfs_client::null`: an
//! in-memory metadata service, fragment puts dropped, gets answered with
//! a pattern). It is everything of torchfs's mount but metad and the
//! storage nodes, built from the same code, so the ceiling cannot drift
//! from the real mount. It runs as a child process, as torchfs's mount
//! does, so readers pay the same context switches.
//!
//! Like torchfs's client, its client is restarted before every cold phase
//! (`drop_caches`): SIGUSR1 makes the child unmount and mount again with a
//! fresh client over the same namespace, so a cold phase finds nothing in
//! the client's cache.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torchfs_client::core::Client;
use torchfs_client::fuse::{self, FuseOptions, Mounted};
use torchfs_client::null::{NullMeta, NullTransport};

use super::{fresh_dir, log_tail, wait_for_mount, Target};
use crate::model::{TargetInfo, TargetKind};

pub const NAME: &str = "fuse-null";

const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NullFsTarget {
    child: Child,
    mountpoint: PathBuf,
    /// Where the child writes how many times it has mounted.
    mounts_file: PathBuf,
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
        let mounts_file = dir.join("nullfs.mounts");
        let log = dir.join("nullfs.log");
        let out = File::create(&log)?;
        let mut command = Command::new(exe);
        command
            .arg("__nullfs")
            .arg(&mountpoint)
            .arg(&mounts_file)
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
        let child = command.spawn().context("start the null FUSE server")?;
        let mut target = NullFsTarget {
            child,
            mountpoint,
            mounts_file,
            log,
        };
        let mounted = target.wait_for_mounts(1);
        if let Err(e) = mounted {
            let _ = target.child.kill();
            let _ = target.child.wait();
            return Err(e);
        }
        Ok(target)
    }

    /// How many times the child has mounted so far.
    fn mounts(&self) -> u64 {
        std::fs::read_to_string(&self.mounts_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits until the child has mounted `count` times and the mount is
    /// there.
    fn wait_for_mounts(&mut self, count: u64) -> Result<()> {
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        while self.mounts() < count {
            self.check()?;
            if Instant::now() > deadline {
                bail!(
                    "the null FUSE server did not mount within {} s: {}",
                    MOUNT_TIMEOUT.as_secs(),
                    log_tail(&self.log, 5)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let child = &mut self.child;
        let log = &self.log;
        wait_for_mount(&self.mountpoint, "fuse", MOUNT_TIMEOUT, || {
            match child.try_wait()? {
                Some(status) => bail!("null FUSE server exited ({status}): {}", log_tail(log, 5)),
                None => Ok(()),
            }
        })?;
        Ok(())
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
            "torchfs's own FUSE front-end and client core with the mount's default settings, over the null backend (torchfs_client::null: in-memory metadata, fragments dropped, reads return a pattern); its client restarted before every cold phase, as torchfs's".into(),
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

    /// A fresh client over the same namespace (the child remounts).
    fn drop_caches(&mut self) -> Result<Option<String>> {
        let before = self.mounts();
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGUSR1) };
        self.wait_for_mounts(before + 1)?;
        Ok(None)
    }

    fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "null FUSE server exited ({status}): {}",
                log_tail(&self.log, 5)
            );
        }
        Ok(())
    }

    fn teardown(&mut self) -> Result<()> {
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
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

/// The child (`__nullfs MOUNTPOINT MOUNTS_FILE`): serves the null mount at
/// `mountpoint` until SIGINT or SIGTERM, then unmounts; SIGUSR1 remounts
/// it with a fresh client over the same namespace. After each mount it
/// writes how many it made to `mounts_file`. The signals are blocked in
/// every thread (the runtime's and fuser's inherit the mask) and taken
/// synchronously here, so none can kill a worker mid-reply.
pub fn serve(mountpoint: &Path, mounts_file: &Path) -> Result<()> {
    // The same log filter as `torchfs mount`, so the ceiling logs (and
    // pays for) what the mount does.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    // SAFETY: plain signal-set manipulation on this thread before any other
    // thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let meta = NullMeta::default();
    let transport = NullTransport::new();
    // What `torchfs mount MOUNTPOINT` gets with no flag but --metad.
    let options = FuseOptions {
        allow_other: fuse::allow_other_by_default(),
        ..FuseOptions::default()
    };
    for mounts in 1u64.. {
        let mounted = Mounted::start(
            fuse::default_client_config(Vec::new()),
            mountpoint,
            &options,
            |config| Client::with_parts(config, meta.clone(), transport.clone()),
        )
        .with_context(|| format!("mount the null backend on {}", mountpoint.display()))?;
        let tmp = mounts_file.with_extension("tmp");
        std::fs::write(&tmp, mounts.to_string())
            .and_then(|()| std::fs::rename(&tmp, mounts_file))
            .with_context(|| format!("write {}", mounts_file.display()))?;
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` is initialised above; sigwait only writes `signal`.
        unsafe { libc::sigwait(&set, &mut signal) };
        mounted
            .unmount()
            .with_context(|| format!("unmount {}", mountpoint.display()))?;
        if signal != libc::SIGUSR1 {
            break;
        }
    }
    eprintln!(
        "torchfs-perf __nullfs: stopped; the null transport moved {:?}",
        transport.moved()
    );
    Ok(())
}
