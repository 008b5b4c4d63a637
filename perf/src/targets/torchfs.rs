//! The system under test. By default the harness runs `torchfs up --no-demo`
//! (3 metad voters, 6 storage nodes: real processes on loopback) in the
//! background for the cluster, and the workloads go through a second client,
//! a `torchfs mount` of that cluster which the harness restarts before every
//! cold phase (see [`super::torchfs_client`]). At the end `up` gets SIGINT,
//! which unmounts and stops every process. Or it uses an existing mount
//! (`--torchfs-mount`), creating its files in a subdirectory; its client
//! cache cannot be emptied then.
//!
//! Storage nodes are killed for the degraded read by pid, found in /proc by
//! their command line (`torchfs storage --node-id N --data-dir <dir>/storage-N`):
//! the data directory is unique to this run, so nodes of other clusters on
//! the machine are never touched. Spawning the binary (rather than linking
//! `torchfs_cli::local_cluster`) keeps the harness's build small and measures
//! exactly what a user runs.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::torchfs_client::ClientMount;
use super::{fresh_dir, log_tail, wait_for_mount, Target};
use crate::model::{TargetInfo, TargetKind};

/// Ports `torchfs up --base-port P` uses: metad P+1..P+3, storage nodes
/// from P+10 in blocks of 16 per node (6 nodes).
const PORTS_SPAN: u16 = 10 + 16 * 6;
/// `torchfs up` waits 60 s for the cluster; mounting follows.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Torchfs {
    root: PathBuf,
    details: BTreeMap<String, String>,
    cluster: Option<Cluster>,
    /// The client workloads use (None with `--torchfs-mount`).
    client: Option<ClientMount>,
    /// How to start another client of the cluster (None with
    /// `--torchfs-mount`), and that client once a workload asked for it.
    second_spec: Option<SecondClient>,
    second: Option<ClientMount>,
    /// A `--read-only` client of the cluster, once a workload asked for it.
    read_only: Option<ClientMount>,
    /// `drop_caches` was asked for without a client to restart (noted once).
    cache_kept_noted: bool,
}

/// Where the second client mounts, under the target's directory.
const SECOND_CLIENT_DIR: &str = "client2";

/// Another `torchfs mount` of the harness's cluster, at `<dir>/client2`.
struct SecondClient {
    bin: PathBuf,
    metad: Vec<String>,
    dir: PathBuf,
}

impl SecondClient {
    /// The root of `client` (a mount at `<dir>/<name>` with `args`),
    /// started (again) unless it runs. Every client of the cluster sees
    /// the same namespace: the root is `<mount>/bench`.
    fn root_of(
        &self,
        client: &mut Option<ClientMount>,
        name: &str,
        log: &str,
        args: &[&str],
    ) -> Result<Option<PathBuf>> {
        let mnt = self.dir.join(name);
        if client.as_mut().is_some_and(|m| m.alive().is_err()) {
            *client = None;
        }
        if client.is_none() {
            std::fs::create_dir_all(&mnt).with_context(|| format!("mkdir {}", mnt.display()))?;
            let log = self.dir.join(log);
            *client = Some(ClientMount::start_with(
                &self.bin,
                self.metad.clone(),
                &mnt,
                &log,
                args,
            )?);
        }
        Ok(Some(mnt.join("bench")))
    }
}

/// A cluster this harness started.
struct Cluster {
    child: Child,
    data_dir: PathBuf,
    mountpoint: PathBuf,
    log: PathBuf,
    killed_nodes: Vec<usize>,
    keep: bool,
}

/// Finds the `torchfs` binary: the flag, else next to this executable (both
/// land in target/<profile>/), else PATH.
pub fn find_binary(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    let sibling = std::env::current_exe().ok()?.parent()?.join("torchfs");
    if sibling.is_file() {
        return Some(sibling);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("torchfs"))
            .find(|p| p.is_file())
    })
}

impl Torchfs {
    /// Starts `torchfs up` with its data under `dir`.
    pub fn start(bin: &Path, dir: &Path, base_port: u16, keep: bool) -> Result<Torchfs> {
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse is missing (FUSE is needed for the mount)");
        }
        let port = free_port_block(base_port)?;
        fresh_dir(dir)?;
        let data_dir = dir.join("cluster");
        let mountpoint = dir.join("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        let log = dir.join("torchfs-up.log");
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .arg("up")
            .arg("--no-demo")
            .arg("--dir")
            .arg(&data_dir)
            .arg("--mount")
            .arg(&mountpoint)
            .arg("--base-port")
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // SAFETY: setpgid and prctl are async-signal-safe. Its own process
        // group keeps a Ctrl-C at the terminal for the harness (which then
        // tears down in order); SIGINT on the harness's death makes `up`
        // unmount rather than leave a dead mount behind.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut cluster = Cluster {
            child,
            data_dir: data_dir.clone(),
            mountpoint: mountpoint.clone(),
            log: log.clone(),
            killed_nodes: Vec::new(),
            keep,
        };
        // Mounted as root with mount(2), its type is plain "fuse" (source "torchfs").
        let mounted = wait_for_mount(&mountpoint, "fuse", MOUNT_TIMEOUT, || cluster.alive());
        if let Err(e) = mounted {
            let _ = cluster.stop();
            return Err(e);
        }
        // The workloads' client: a second mount of the same cluster.
        let metad: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:{}", port + i)).collect();
        let client_mnt = dir.join("client");
        std::fs::create_dir_all(&client_mnt)?;
        let second_spec = SecondClient {
            bin: bin.to_path_buf(),
            metad: metad.clone(),
            dir: dir.to_path_buf(),
        };
        let client = match ClientMount::start(bin, metad, &client_mnt, &dir.join("mount.log")) {
            Ok(c) => c,
            Err(e) => {
                let _ = cluster.stop();
                return Err(e);
            }
        };
        let root = client_mnt.join("bench");
        std::fs::create_dir(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let mut details = BTreeMap::new();
        details.insert(
            "mode".into(),
            "started by the harness: torchfs up (3 metad voters, 6 storage nodes x 2 shards, k=4 m=2); workloads use a `torchfs mount` of it with default settings, restarted before every cold phase".into(),
        );
        // The epoch-cache workload mounts the same cluster with these two.
        details.insert("binary".into(), bin.display().to_string());
        details.insert("base port".into(), port.to_string());
        details.insert("data dir".into(), data_dir.display().to_string());
        details.insert("log".into(), log.display().to_string());
        Ok(Torchfs {
            root,
            details,
            cluster: Some(cluster),
            client: Some(client),
            second_spec: Some(second_spec),
            second: None,
            read_only: None,
            cache_kept_noted: false,
        })
    }

    /// Uses a mount someone else runs; files go in a fresh subdirectory.
    pub fn existing(mount: &Path) -> Result<Torchfs> {
        let m = super::mount_at(mount)
            .with_context(|| format!("nothing is mounted at {}", mount.display()))?;
        let root = mount.join(format!("torchfs-perf-{}", std::process::id()));
        std::fs::create_dir(&root).with_context(|| format!("mkdir {}", root.display()))?;
        let mut details = BTreeMap::new();
        details.insert("mode".into(), "existing mount (--torchfs-mount)".into());
        details.insert("fs type".into(), m.fs_type);
        Ok(Torchfs {
            root,
            details,
            cluster: None,
            client: None,
            second_spec: None,
            second: None,
            read_only: None,
            cache_kept_noted: false,
        })
    }
}

impl Cluster {
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "torchfs up exited ({status}); {} ends with:\n{}",
                self.log.display(),
                log_tail(&self.log, 12)
            );
        }
        Ok(())
    }

    /// SIGINT (unmount, stop every process), SIGKILL if that hangs.
    fn stop(&mut self) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut clean = false;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                clean = status.success();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A killed `up` leaves a dead mount: clear it either way.
        if super::mount_at(&self.mountpoint).is_some() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
        if !clean {
            bail!(
                "torchfs up did not stop cleanly; {} ends with:\n{}",
                self.log.display(),
                log_tail(&self.log, 12)
            );
        }
        Ok(())
    }
}

/// The first block of ports from `base` (stepping by 200) that is all free.
fn free_port_block(base: u16) -> Result<u16> {
    for attempt in 0..20u32 {
        let p = u32::from(base) + attempt * 200;
        if p + u32::from(PORTS_SPAN) > u32::from(u16::MAX) {
            break;
        }
        let p = p as u16;
        let free = (1..=PORTS_SPAN).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok());
        if free {
            return Ok(p);
        }
    }
    bail!("no free block of {PORTS_SPAN} ports from {base} (try --torchfs-base-port)")
}

/// Pids of processes whose argv contains `storage`, `--node-id N` and
/// `--data-dir <data_dir>/storage-N`.
fn storage_pids(data_dir: &Path, node_id: usize) -> Vec<libc::pid_t> {
    let want_dir = data_dir.join(format!("storage-{node_id}"));
    let want_dir = want_dir.as_os_str().as_encoded_bytes();
    let id = node_id.to_string();
    super::find_pids(|argv| {
        argv.contains(&&b"storage"[..])
            && super::has_arg(argv, "--node-id", id.as_bytes())
            && super::has_arg(argv, "--data-dir", want_dir)
    })
}

impl Target for Torchfs {
    fn name(&self) -> &str {
        crate::model::SYSTEM_TARGET
    }

    fn kind(&self) -> TargetKind {
        TargetKind::System
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn info(&self) -> TargetInfo {
        let mut details = self.details.clone();
        if let Some(m) = &self.client {
            details.insert("client mounts".into(), m.starts.to_string());
        }
        if let (Some(spec), Some(_)) = (&self.second_spec, &self.second) {
            details.insert(
                "second client".into(),
                format!(
                    "a `torchfs mount` of the same cluster at {}",
                    spec.dir.join(SECOND_CLIENT_DIR).display()
                ),
            );
        }
        if let Some(c) = &self.cluster {
            if !c.killed_nodes.is_empty() {
                details.insert(
                    "killed storage nodes".into(),
                    format!("{:?}", c.killed_nodes),
                );
            }
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
        // k=4 m=2: two nodes can go.
        if self.cluster.is_some() {
            2
        } else {
            0
        }
    }

    fn kill_nodes(&mut self, n: usize) -> Result<String> {
        let Some(cluster) = self.cluster.as_mut() else {
            bail!("torchfs was not started by the harness: its storage nodes are unknown");
        };
        let mut said = Vec::new();
        // Nodes 1..=n: every placement group holds all six nodes here, so
        // which ones does not matter.
        for node in 1..=n {
            let pids = storage_pids(&cluster.data_dir, node);
            if pids.is_empty() {
                bail!("storage node {node}'s process was not found");
            }
            for pid in &pids {
                // SAFETY: a pid we just matched to our own cluster's node.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            cluster.killed_nodes.push(node);
            said.push(format!("storage node {node} (pid {pids:?})"));
        }
        Ok(format!("SIGKILLed {}", said.join(", ")))
    }

    fn drop_caches(&mut self) -> Result<Option<String>> {
        match self.client.as_mut() {
            Some(client) => client.restart().map(|()| None),
            None if !self.cache_kept_noted => {
                self.cache_kept_noted = true;
                Ok(Some(
                    "torchfs: an existing mount's client cache cannot be emptied: its cold figures may be warm".into(),
                ))
            }
            None => Ok(None),
        }
    }

    fn second_client_root(&mut self) -> Result<Option<PathBuf>> {
        let Some(spec) = &self.second_spec else {
            return Ok(None);
        };
        spec.root_of(&mut self.second, SECOND_CLIENT_DIR, "mount2.log", &[])
    }

    fn read_only_root(&mut self) -> Result<Option<PathBuf>> {
        let Some(spec) = &self.second_spec else {
            return Ok(None);
        };
        spec.root_of(
            &mut self.read_only,
            "client-ro",
            "mount-ro.log",
            &["--read-only"],
        )
    }

    fn check(&mut self) -> Result<()> {
        if let Some(m) = self.client.as_mut() {
            m.alive()?;
        }
        match self.cluster.as_mut() {
            Some(c) => c.alive(),
            None => Ok(()),
        }
    }

    fn teardown(&mut self) -> Result<()> {
        let second = self.second.take().map(|mut m| m.stop());
        let read_only = self.read_only.take().map(|mut m| m.stop());
        let client = self.client.take().map(|mut m| m.stop());
        match self.cluster.as_mut() {
            Some(c) => c.stop()?,
            None => std::fs::remove_dir_all(&self.root)
                .with_context(|| format!("remove {}", self.root.display()))?,
        }
        client.unwrap_or(Ok(()))?;
        read_only.unwrap_or(Ok(()))?;
        second.unwrap_or(Ok(()))
    }
}
