//! The peer: GlusterFS with a disperse 4+2 volume on 6 local bricks (the
//! same code shape as torchfs's k=4 m=2), set up and torn down by
//! perf/scripts/gluster-{up,down}.sh. The scripts are compiled into the
//! binary and written out at run time, so the harness works from any
//! directory. For the degraded read, brick processes (glusterfsd) are
//! killed by the pids `gluster volume status` lists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Target;
use crate::model::{TargetInfo, TargetKind};

const UP_SCRIPT: &str = include_str!("../../scripts/gluster-up.sh");
const DOWN_SCRIPT: &str = include_str!("../../scripts/gluster-down.sh");
const VOLUME: &str = "torchfsperf";
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct Gluster {
    dir: PathBuf,
    root: PathBuf,
    details: BTreeMap<String, String>,
    killed_bricks: Vec<usize>,
}

impl Gluster {
    pub fn start(dir: &Path) -> Result<Gluster> {
        let scripts = super::write_scripts(
            dir,
            &[
                ("gluster-up.sh", UP_SCRIPT),
                ("gluster-down.sh", DOWN_SCRIPT),
            ],
        )?;
        let out = run_script(&scripts.join("gluster-up.sh"), dir)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!("gluster-up.sh failed: {}", stderr.trim());
        }
        let mountpoint = dir.join("mnt");
        let root = mountpoint.join("bench");
        std::fs::create_dir(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let mut details = BTreeMap::new();
        details.insert(
            "volume".into(),
            format!(
                "{VOLUME}: disperse 6 redundancy 2 (4+2), 6 bricks on this host, default options"
            ),
        );
        details.insert("bricks".into(), dir.join("bricks").display().to_string());
        details.insert(
            "mount".into(),
            format!(
                "mount -t glusterfs 127.0.0.1:/{VOLUME} {}",
                mountpoint.display()
            ),
        );
        Ok(Gluster {
            dir: dir.to_path_buf(),
            root,
            details,
            killed_bricks: Vec::new(),
        })
    }

    /// The glusterfsd serving brick `index` (1-based), found by its
    /// `--brick-name` argument (`gluster volume status` wraps long paths).
    fn brick_pids(&self, index: usize) -> Vec<libc::pid_t> {
        let brick = self.dir.join("bricks").join(format!("b{index}"));
        let brick = brick.as_os_str().as_encoded_bytes();
        super::find_pids(|argv| super::has_arg(argv, "--brick-name", brick))
    }
}

/// Runs a setup script with the volume name and directory.
fn run_script(script: &Path, dir: &Path) -> Result<Output> {
    super::run_script(script, &[VOLUME.as_ref(), dir.as_os_str()], SCRIPT_TIMEOUT)
}

impl Target for Gluster {
    fn name(&self) -> &str {
        "gluster"
    }

    fn kind(&self) -> TargetKind {
        TargetKind::Peer
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn info(&self) -> TargetInfo {
        let mut details = self.details.clone();
        if !self.killed_bricks.is_empty() {
            details.insert("killed bricks".into(), format!("{:?}", self.killed_bricks));
        }
        TargetInfo {
            name: self.name().into(),
            kind: self.kind(),
            path: self.root.display().to_string(),
            status: "ok".into(),
            details,
        }
    }

    fn nodes_killable(&self) -> usize {
        2
    }

    fn kill_nodes(&mut self, n: usize) -> Result<String> {
        let mut said = Vec::new();
        for brick in 1..=n {
            let pids = self.brick_pids(brick);
            if pids.is_empty() {
                bail!("no glusterfsd process serves brick b{brick}");
            }
            for pid in &pids {
                // SAFETY: a glusterfsd of our own volume's brick.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            self.killed_bricks.push(brick);
            said.push(format!("brick b{brick} (pid {pids:?})"));
        }
        Ok(format!("SIGKILLed {}", said.join(", ")))
    }

    fn drop_caches(&mut self) -> Result<Option<String>> {
        // The FUSE client (glusterfs) keeps metadata and, with its
        // performance translators, data: remount it, as torchfs's client is
        // restarted.
        let mnt = self.dir.join("mnt");
        let status = Command::new("umount").arg(&mnt).status()?;
        if !status.success() {
            bail!("umount {} failed ({status})", mnt.display());
        }
        let status = Command::new("mount")
            .args(["-t", "glusterfs"])
            .arg(format!("127.0.0.1:/{VOLUME}"))
            .arg(&mnt)
            .status()?;
        if !status.success() || super::mount_at(&mnt).is_none() {
            bail!(
                "mount -t glusterfs 127.0.0.1:/{VOLUME} {} failed",
                mnt.display()
            );
        }
        Ok(None)
    }

    fn teardown(&mut self) -> Result<()> {
        let out = run_script(&self.dir.join("scripts/gluster-down.sh"), &self.dir)?;
        if !out.status.success() {
            bail!(
                "gluster-down.sh failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}
