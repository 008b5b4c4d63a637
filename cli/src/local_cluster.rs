//! A local cluster of real processes on loopback: metad voters and storage
//! nodes, each a child process of the `torchfs` binary, with their data and
//! logs under one directory. `torchfs up` runs one; the integration tests
//! run them to kill and restart parts on purpose.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{ClusterStatus, MetaReply, MetaRequest, NodeState};

/// What to run and where.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The `torchfs` binary.
    pub exe: PathBuf,
    /// Data and logs go under here: `metad-<id>/`, `storage-<id>/`, `logs/`.
    pub dir: PathBuf,
    /// One client port per metad voter (ids 1..=n).
    pub metad_ports: Vec<u16>,
    pub storage_nodes: usize,
    /// First port of storage node 1's shards; node i uses
    /// `base + (i-1) * 16 + shard`. None: free ports picked by each node.
    pub storage_base_port: Option<u16>,
    pub shards_per_node: usize,
    pub node_down_after_ms: u64,
    /// Passed to every storage node as `--io-memory-bytes` when set.
    pub io_memory_bytes_per_shard: Option<usize>,
    /// Storage nodes serve RDMA verbs on this address (`--verbs on
    /// --verbs-ip`); None leaves them on `--verbs auto`.
    pub verbs_ip: Option<std::net::IpAddr>,
    /// With `verbs_ip`: how many nodes (the first ones) serve verbs; the
    /// others run TCP only (a mixed cluster). None: all.
    pub verbs_nodes: Option<usize>,
    /// Each voter's repair service replaces storage nodes down this long
    /// (`--repair-after`; zero: never).
    pub repair_after: Duration,
    /// Storage nodes' pause between scrub passes (`--scrub-interval`).
    pub scrub_interval: Duration,
    /// The repair services' orphan collection grace (`--orphan-grace`).
    pub orphan_grace: Duration,
    /// Extra environment of a process at each start, by its name
    /// (`metad-1`, `storage-3`): fault injection in a `testing` build.
    pub env: BTreeMap<String, Vec<(String, String)>>,
}

impl ClusterSpec {
    /// 3 voters and 6 storage nodes with ports picked free now.
    pub fn with_free_ports(exe: PathBuf, dir: PathBuf) -> Result<Self> {
        Ok(Self {
            exe,
            dir,
            metad_ports: free_ports(3)?,
            storage_nodes: 6,
            storage_base_port: None,
            shards_per_node: 2,
            node_down_after_ms: 3_000,
            io_memory_bytes_per_shard: shared_io_memory_bytes(6 * 2),
            verbs_ip: None,
            verbs_nodes: None,
            repair_after: Duration::from_secs(600),
            scrub_interval: Duration::from_secs(24 * 3600),
            orphan_grace: Duration::from_secs(600),
            env: BTreeMap::new(),
        })
    }

    pub fn metad_addrs(&self) -> Vec<String> {
        self.metad_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }
}

/// Registered-buffer memory per executor when `executors` storage-node
/// executors of one unprivileged user share its RLIMIT_MEMLOCK (io_uring
/// charges registered buffers to the user). None for root, which is exempt
/// (CAP_IPC_LOCK), or when there is no limit.
pub fn shared_io_memory_bytes(executors: usize) -> Option<usize> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return None;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    // Half the limit, split evenly; glommio falls back to unregistered
    // aligned buffers when its pool runs dry, so small pools cost little.
    Some((lim.rlim_cur as usize / 2 / executors.max(1)).max(64 << 10))
}

/// Ports free right now on 127.0.0.1 (released before return, so a
/// process binding that very port could take one: tests only).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    // Below the kernel's ephemeral range: a port there is never handed to
    // a bind of port 0 or to an outgoing connection, so a storage node
    // starting at the same time cannot take a voter's port before the
    // voter binds it.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_000 + 1000));
    let span = u32::from(high - low);
    // Start somewhere different each time: clusters of earlier tests may
    // still be letting go of theirs.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    let mut next = low + (seed % span) as u16;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..span {
        if listeners.len() == n {
            break;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", next)) {
            listeners.push(l);
        }
        next = if next + 1 >= high { low } else { next + 1 };
    }
    if listeners.len() < n {
        bail!(
            "find {n} free ports between {low} and {high}: only {} free",
            listeners.len()
        );
    }
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect::<std::io::Result<_>>()
        .context("find free ports")
}

pub struct LocalCluster {
    spec: ClusterSpec,
    metad: Vec<Option<Child>>,
    storage: Vec<Option<Child>>,
    /// When each storage node's process was last started.
    storage_started: Vec<Option<Instant>>,
}

impl LocalCluster {
    /// Starts every process (they find each other by themselves).
    pub fn start(spec: ClusterSpec) -> Result<Self> {
        std::fs::create_dir_all(spec.dir.join("logs"))
            .with_context(|| format!("create {}", spec.dir.join("logs").display()))?;
        let mut cluster = Self {
            metad: (0..spec.metad_ports.len()).map(|_| None).collect(),
            storage: (0..spec.storage_nodes).map(|_| None).collect(),
            storage_started: vec![None; spec.storage_nodes],
            spec,
        };
        for i in 0..cluster.metad.len() {
            cluster.start_metad(i)?;
        }
        for i in 0..cluster.storage.len() {
            cluster.start_storage(i)?;
        }
        Ok(cluster)
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Sets the extra environment of process `name` (`metad-1`,
    /// `storage-3`) from its next start on (see [`ClusterSpec::env`]).
    pub fn set_env(&mut self, name: &str, env: Vec<(String, String)>) {
        self.spec.env.insert(name.to_string(), env);
    }

    pub fn metad_addrs(&self) -> Vec<String> {
        self.spec.metad_addrs()
    }

    pub fn storage_dir(&self, index: usize) -> PathBuf {
        self.spec.dir.join(format!("storage-{}", index + 1))
    }

    fn log_file(&self, name: &str) -> Result<(File, File)> {
        let path = self.spec.dir.join("logs").join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("open log {}", path.display()))?;
        let err = file.try_clone().context("clone log handle")?;
        Ok((file, err))
    }

    fn spawn(&self, name: &str, args: Vec<String>, env: &[(&str, &str)]) -> Result<Child> {
        let (out, err) = self.log_file(name)?;
        let mut command = Command::new(&self.spec.exe);
        let spec_env = self.spec.env.get(name).into_iter().flatten();
        command
            .args(&args)
            .envs(spec_env.map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; it makes the child die with
        // the thread that started it, so a killed `torchfs up` leaves no
        // orphans holding ports.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
            .spawn()
            .with_context(|| format!("start {name} ({})", self.spec.exe.display()))
    }

    /// Starts voter `index` (id index+1) unless it is running.
    pub fn start_metad(&mut self, index: usize) -> Result<()> {
        if self.metad[index].is_some() {
            return Ok(());
        }
        let id = index + 1;
        let voters: Vec<String> = self
            .spec
            .metad_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let args = vec![
            "metad".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.spec.metad_ports[index]),
            "--data-dir".into(),
            self.spec
                .dir
                .join(format!("metad-{id}"))
                .display()
                .to_string(),
            "--voters".into(),
            voters.join(","),
            "--node-down-after-ms".into(),
            self.spec.node_down_after_ms.to_string(),
            "--repair-after".into(),
            format!("{}ms", self.spec.repair_after.as_millis()),
            "--orphan-grace".into(),
            format!("{}ms", self.spec.orphan_grace.as_millis()),
        ];
        self.metad[index] = Some(self.spawn(&format!("metad-{id}"), args, &[])?);
        Ok(())
    }

    /// Starts storage node `index` (id index+1) unless it is running.
    pub fn start_storage(&mut self, index: usize) -> Result<()> {
        self.start_storage_with_env(index, &[])
    }

    /// Starts storage node `index` with extra environment variables (e.g.
    /// `TORCHFS_FAULTS` in a build with the `testing` feature).
    pub fn start_storage_with_env(&mut self, index: usize, env: &[(&str, &str)]) -> Result<()> {
        if self.storage[index].is_some() {
            return Ok(());
        }
        let id = index + 1;
        let base_port = self
            .spec
            .storage_base_port
            .map_or(0, |base| base + (index as u16) * 16);
        let mut args = vec![
            "storage".into(),
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            self.storage_dir(index).display().to_string(),
            "--metad".into(),
            self.metad_addrs().join(","),
            "--base-port".into(),
            base_port.to_string(),
            "--shards".into(),
            self.spec.shards_per_node.to_string(),
            "--scrub-interval".into(),
            format!("{}ms", self.spec.scrub_interval.as_millis()),
        ];
        if let Some(bytes) = self.spec.io_memory_bytes_per_shard {
            args.extend(["--io-memory-bytes".into(), bytes.to_string()]);
        }
        if let Some(ip) = self.spec.verbs_ip {
            if index < self.spec.verbs_nodes.unwrap_or(usize::MAX) {
                args.extend([
                    "--verbs".into(),
                    "on".into(),
                    "--verbs-ip".into(),
                    ip.to_string(),
                ]);
            } else {
                args.extend(["--verbs".into(), "off".into()]);
            }
        }
        self.storage_started[index] = Some(Instant::now());
        self.storage[index] = Some(self.spawn(&format!("storage-{id}"), args, env)?);
        Ok(())
    }

    /// SIGKILLs storage node `index`.
    pub fn kill_storage(&mut self, index: usize) -> Result<()> {
        kill(self.storage[index].take(), libc::SIGKILL)
    }

    /// SIGKILLs metad voter `index` (id index+1).
    pub fn kill_metad(&mut self, index: usize) -> Result<()> {
        kill(self.metad[index].take(), libc::SIGKILL)
    }

    /// Asks the leader how the cluster is.
    pub fn status(&self, timeout: Duration) -> Result<ClusterStatus> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start runtime")?;
        let opts = MetaClientOptions {
            retry_for_ms: timeout.as_millis() as u64,
            ..MetaClientOptions::default()
        };
        let client = MetaClient::new(self.metad_addrs(), opts).context("metad addresses")?;
        match runtime.block_on(client.call(MetaRequest::ClusterStatus)) {
            Ok(MetaReply::ClusterStatus(s)) => Ok(s),
            Ok(other) => bail!("cluster status answered with {other:?}"),
            Err(e) => Err(e).context("ask metad for the cluster status"),
        }
    }

    /// Waits until there is a leader and `nodes_up` storage nodes are up
    /// with placement groups made; a process that exits meanwhile is an
    /// error pointing at its log.
    pub fn wait_ready(&mut self, nodes_up: usize, timeout: Duration) -> Result<ClusterStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_children()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "cluster not ready after {} s: see the logs in {}",
                    timeout.as_secs(),
                    self.spec.dir.join("logs").display()
                );
            }
            if let Ok(status) = self.status(left.min(Duration::from_secs(2))) {
                // A node counts once this leader has heard from it: a new
                // leader reports registered nodes as up for a grace period,
                // with the addresses they had before a restart.
                // A restarted node counts once it has registered again
                // (storage ports are picked afresh at each start, so until
                // then the map names ports nobody listens on).
                let up = status
                    .map
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.state == NodeState::Up
                            && n.last_heartbeat_ms_ago
                                .is_some_and(|ago| self.heard_since_start(n.info.id as usize, ago))
                    })
                    .count();
                if status.leader.is_some() && up >= nodes_up && !status.map.groups.is_empty() {
                    return Ok(status);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether a heartbeat `ago_ms` old came from storage node `id`'s
    /// current process (true for nodes this cluster did not start).
    fn heard_since_start(&self, id: usize, ago_ms: u64) -> bool {
        let started = id
            .checked_sub(1)
            .and_then(|i| self.storage_started.get(i).copied().flatten());
        started.is_none_or(|t| u128::from(ago_ms) < t.elapsed().as_millis())
    }

    /// Errors if a process we started has exited on its own.
    pub fn check_children(&mut self) -> Result<()> {
        let logs = self.spec.dir.join("logs");
        for (kind, children) in [("metad", &mut self.metad), ("storage", &mut self.storage)] {
            for (i, slot) in children.iter_mut().enumerate() {
                if let Some(child) = slot {
                    if let Some(status) = child.try_wait().context("poll child")? {
                        *slot = None;
                        let log = logs.join(format!("{kind}-{}.log", i + 1));
                        let tail = log_tail(&log);
                        bail!(
                            "{kind}-{} exited ({status}); its log {} ends with:\n{tail}",
                            i + 1,
                            log.display()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Stops every process: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let children = self.metad.iter_mut().chain(self.storage.iter_mut());
        let mut running: Vec<Child> = children.filter_map(|c| c.take()).collect();
        for child in &running {
            signal(child, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !running.is_empty() && Instant::now() < deadline {
            running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
            std::thread::sleep(Duration::from_millis(50));
        }
        for mut child in running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we own and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn kill(child: Option<Child>, sig: libc::c_int) -> Result<()> {
    let Some(mut child) = child else {
        bail!("that process is not running");
    };
    signal(&child, sig);
    child.wait().context("reap killed process")?;
    Ok(())
}

/// Last lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}
