//! torchfs storage node (docs/ARCHITECTURE.md: Design and Data path): one glommio executor per shard,
//! each owning a shard of the fragment key space, its own directory of
//! O_DIRECT fragment files and its own TCP port; registration and
//! heartbeats with metad on a separate control-plane thread.
//!
//! - [`config`]: the [`StorageConfig`]; `error`: [`DataplaneError`].
//! - [`io`]: the node's disk I/O trait, with glommio behind it.
//! - [`store`]: the chunk store trait, its disk and memory implementations
//!   and their conformance suite.
//! - `shard`: a shard's request handling, shared by its listeners.
//! - `server`: shard executors and their TCP listeners.
//! - `verbs`: the RDMA verbs listener, routing requests to the shards.
//! - `control`: metad registration and heartbeats.
//! - [`faults`]: fault injection (feature `testing`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use futures::channel::oneshot;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use torchfs_proto::meta::NodeInfo;

pub mod config;
mod control;
mod error;
pub mod faults;
pub mod io;
pub mod scrub;
mod server;
mod shard;
pub mod store;
mod verbs;

pub use config::{StorageConfig, VerbsMode};
pub use control::METAD_STARTUP_TIMEOUT_MS;
pub use error::DataplaneError;

use store::dma::{self, NodeUsage, Place, ScanResult};
use store::format;
use store::log;

/// A running storage node.
pub struct StorageNode {
    /// Dropped first: no verbs request reaches a stopping shard.
    verbs: Option<torchfs_rdma::verbs::VerbsListener>,
    addrs: Vec<SocketAddr>,
    executors: Vec<ExecutorJoinHandle<()>>,
    stop: StopHandle,
    control: Option<control::Control>,
    usage: Arc<NodeUsage>,
}

/// Stops a node from elsewhere (a signal handler, a test) while another
/// thread sits in [`StorageNode::wait`].
#[derive(Clone)]
pub struct StopHandle {
    senders: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

impl StopHandle {
    /// Tells every shard to stop accepting and drain; returns at once.
    pub fn stop(&self) {
        let senders = std::mem::take(&mut *self.senders.lock().unwrap_or_else(|p| p.into_inner()));
        for s in senders {
            let _ = s.send(());
        }
    }
}

impl StorageNode {
    /// The address of every shard, in shard order (advertised as `host`
    /// with these ports).
    pub fn shard_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Where the node serves RDMA verbs, when it does.
    pub fn verbs_addr(&self) -> Option<SocketAddr> {
        self.verbs.as_ref().map(|v| v.local_addr())
    }

    /// Bytes the stored fragments take on disk, all shards.
    pub fn used_bytes(&self) -> u64 {
        self.usage
            .used_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Blocks until the node stopped (through a [`StopHandle`]) or a shard
    /// died.
    pub fn wait(mut self) -> Result<(), DataplaneError> {
        let mut result = Ok(());
        // (The verbs listener stops with the node; see Drop.)
        for (shard, executor) in std::mem::take(&mut self.executors).into_iter().enumerate() {
            if let Err(e) = executor.join() {
                result = Err(DataplaneError::Executor {
                    shard,
                    message: e.to_string(),
                });
                // One shard down: take the node down rather than serve half
                // of its key space.
                self.stop.stop();
            }
        }
        if let Some(control) = self.control.take() {
            control.stop();
        }
        result
    }

    /// Graceful stop: shards stop accepting, finish requests in progress,
    /// and the node stops heartbeating (metad then marks it down).
    pub fn stop(mut self) {
        self.verbs = None;
        self.stop.stop();
        let _ = self.wait();
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        self.verbs = None;
        self.stop.stop();
        for executor in std::mem::take(&mut self.executors) {
            let _ = executor.join();
        }
        if let Some(control) = self.control.take() {
            control.stop();
        }
    }
}

/// Bad fragments found by scrubs and not yet reported, at most (past it a
/// report is dropped; a repair pass finds the fragment missing anyway).
const BAD_FRAGMENTS_QUEUED_MAX: usize = 1024;

fn check_writable(dir: &Path) -> Result<(), DataplaneError> {
    let err = |source| DataplaneError::DataDirNotWritable {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"probe").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

/// Persists the node id on first start; refuses a directory of another node.
fn claim_node_id(dir: &Path, node_id: u64) -> Result<(), DataplaneError> {
    let path = dir.join("node_id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found: u64 = text
                .trim()
                .parse()
                .map_err(|e| DataplaneError::NodeIdFile {
                    path: path.clone(),
                    message: format!("holds {:?}, not a node id ({e})", text.trim()),
                })?;
            if found != node_id {
                return Err(DataplaneError::NodeIdMismatch {
                    dir: dir.to_path_buf(),
                    found,
                    configured: node_id,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let temp = dir.join("node_id.tmp");
            let write = || -> std::io::Result<()> {
                std::fs::write(&temp, format!("{node_id}\n"))?;
                std::fs::File::open(&temp)?.sync_all()?;
                std::fs::rename(&temp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| DataplaneError::NodeIdFile {
                path: path.clone(),
                message: e.to_string(),
            })
        }
        Err(e) => Err(DataplaneError::NodeIdFile {
            path,
            message: e.to_string(),
        }),
    }
}

fn filesystem_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed out-struct.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_blocks as u64 * st.f_frsize as u64)
}

/// Scans every `shard-*` directory and moves fragments that belong to
/// another shard under the current shard count (the count changed since
/// the last start) to where they belong.
fn scan_shards(data_dir: &Path, shards: usize) -> Result<Vec<ScanResult>, DataplaneError> {
    let shard_dir = |i: usize| data_dir.join(format!("shard-{i}"));
    let scan_err = |dir: PathBuf| move |source| DataplaneError::Scan { dir, source };
    let mut results: Vec<ScanResult> = Vec::with_capacity(shards);
    for i in 0..shards {
        results.push(dma::scan(&shard_dir(i)).map_err(scan_err(shard_dir(i)))?);
    }
    // Directories of shards that no longer exist.
    let mut extra = Vec::new();
    for entry in std::fs::read_dir(data_dir).map_err(scan_err(data_dir.to_path_buf()))? {
        let entry = entry.map_err(scan_err(data_dir.to_path_buf()))?;
        let name = entry.file_name();
        let Some(i) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if i >= shards {
            extra.push((
                entry.path(),
                dma::scan(&entry.path()).map_err(scan_err(entry.path()))?,
            ));
        }
    }
    let mut moves = Vec::new();
    for (i, r) in results.iter().enumerate() {
        for (key, place) in &r.fragments {
            if key.shard(shards) != i {
                moves.push((Some(i), shard_dir(i), *key, *place));
            }
        }
    }
    for (dir, r) in &extra {
        moves.extend(r.fragments.iter().map(|(k, p)| (None, dir.clone(), *k, *p)));
    }
    for (from_shard, from_dir, key, place) in moves {
        let to = key.shard(shards);
        let to_path = shard_dir(to).join(format::file_name(&key));
        match place {
            Place::File { .. } => {
                let from = from_dir.join(format::file_name(&key));
                std::fs::rename(&from, &to_path).map_err(scan_err(from))?;
            }
            // A record moves out to a fragment file of the shard it
            // belongs to (a change of shard count is rare; files need no
            // log of their own to move).
            Place::Log { seq, offset, bytes } => {
                let segments = match from_shard {
                    Some(i) => &mut results[i].segments,
                    None => {
                        &mut extra
                            .iter_mut()
                            .find(|(d, _)| *d == from_dir)
                            .expect("moves come from scanned directories")
                            .1
                            .segments
                    }
                };
                log::move_record_to_file(segments, seq, offset, bytes, &to_path)
                    .map_err(scan_err(to_path.clone()))?;
            }
        }
        if let Some(i) = from_shard {
            results[i].fragments.remove(&key);
        }
        results[to].fragments.insert(
            key,
            Place::File {
                bytes: place.bytes(),
            },
        );
    }
    Ok(results)
}

/// Registered I/O memory per executor when run as root: room for about
/// 15 concurrent 1 MiB fragment reads.
const ROOT_IO_MEMORY_BYTES: usize = 16 << 20;

/// Registered O_DIRECT buffer memory per executor: within the locked-memory
/// limit of an unprivileged user (8 MiB here) even with many shards. Root
/// is not charged (CAP_IPC_LOCK) and gets [`ROOT_IO_MEMORY_BYTES`]: reads
/// that find the pool full fall back to fresh aligned allocations, which
/// cost page faults on every request.
fn io_memory_bytes(shards: usize) -> usize {
    const MIN: usize = 256 << 10;
    const MAX: usize = 2 << 20;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return ROOT_IO_MEMORY_BYTES;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return MAX;
    }
    (lim.rlim_cur as usize / shards.max(1) / 2).clamp(MIN, MAX)
}

/// The fault switches of the node on `config.data_dir`, with the seeded
/// disk faults of `TORCHFS_DISK_FAULTS` set (feature `testing`), logged
/// with their seed so that a failing run can be replayed. Without the
/// feature the variable is ignored, with a warning (a test must not think
/// faults are on when they are not).
fn node_faults(config: &StorageConfig) -> Result<faults::Faults, DataplaneError> {
    let faults = faults::Faults::for_dir(&config.data_dir);
    #[cfg(feature = "testing")]
    {
        if let Some(disk) = faults::DiskFaults::from_env()? {
            faults.set_disk(Some(disk));
        }
        if let Some(disk) = faults.disk() {
            tracing::warn!(
                "disk fault injection on, seed {} (replay: {}={disk})",
                disk.seed,
                faults::DISK_FAULTS_ENV
            );
        }
    }
    #[cfg(not(feature = "testing"))]
    if std::env::var_os(faults::DISK_FAULTS_ENV).is_some() {
        tracing::warn!(
            "{} ignored: this build has no fault injection (feature `testing`)",
            faults::DISK_FAULTS_ENV
        );
    }
    Ok(faults)
}

/// Starts the node; returns once every shard is listening and the node is
/// registered with metad (when `config.metad` names any).
pub fn start(config: StorageConfig) -> Result<StorageNode, DataplaneError> {
    config.log.validate().map_err(DataplaneError::LogConfig)?;
    let faults = node_faults(&config)?;
    let shards = config.shard_count();
    check_writable(&config.data_dir)?;
    claim_node_id(&config.data_dir, config.node_id)?;
    let capacity_bytes = match config.capacity_bytes {
        Some(c) => c,
        None => filesystem_bytes(&config.data_dir).map_err(|source| DataplaneError::Capacity {
            dir: config.data_dir.clone(),
            source,
        })?,
    };
    let scans = scan_shards(&config.data_dir, shards)?;
    let used: u64 = scans.iter().map(ScanResult::used_bytes).sum();
    let removed: usize = scans.iter().map(|s| s.temp_files_removed).sum();
    if removed > 0 {
        tracing::info!("removed {removed} temp files left by an interrupted put");
    }
    let usage = Arc::new(NodeUsage {
        used_bytes: AtomicU64::new(used),
        capacity_bytes,
    });

    // Bind every port before anything serves, so a port in use fails the
    // start cleanly. std sockets: glommio's bind sets SO_REUSEPORT, which
    // would let two nodes share a port silently.
    let mut listeners = Vec::with_capacity(shards);
    let mut addrs = Vec::with_capacity(shards);
    for shard in 0..shards {
        let port = if config.base_port == 0 {
            0
        } else {
            config.base_port.saturating_add(shard as u16)
        };
        let addr = SocketAddr::new(config.listen_ip, port);
        let listener = std::net::TcpListener::bind(addr).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                DataplaneError::PortInUse {
                    ip: config.listen_ip,
                    port,
                    shard,
                }
            } else {
                DataplaneError::Bind {
                    addr,
                    shard,
                    source,
                }
            }
        })?;
        let local = listener
            .local_addr()
            .map_err(|source| DataplaneError::Bind {
                addr,
                shard,
                source,
            })?;
        addrs.push(local);
        listeners.push(listener);
    }

    let io_memory = config
        .io_memory_bytes
        .unwrap_or_else(|| io_memory_bytes(shards));
    let verbs_ip = config.verbs_ip.unwrap_or(config.listen_ip);
    let verbs_addr = SocketAddr::new(verbs_ip, addrs[0].port());
    let want_verbs = match config.verbs {
        VerbsMode::Off => false,
        VerbsMode::On => true,
        VerbsMode::Auto if verbs_ip.is_loopback() => false,
        VerbsMode::Auto => {
            let found = !torchfs_rdma::verbs::devices().is_empty();
            if !found {
                tracing::info!("no RDMA device: serving TCP only");
            }
            found
        }
    };
    let (mut call_senders, mut call_receivers) = (Vec::new(), Vec::new());
    for _ in 0..shards {
        let (tx, rx) = futures::channel::mpsc::channel(verbs::CALLS_QUEUED_MAX);
        call_senders.push(tx);
        call_receivers.push(want_verbs.then_some(rx));
    }
    // Bad fragments the scrubs found, for the control thread to report.
    let (bad_tx, bad_rx) = futures::channel::mpsc::channel(BAD_FRAGMENTS_QUEUED_MAX);
    let mut senders = Vec::with_capacity(shards);
    let mut executors = Vec::with_capacity(shards);
    let mut ready = Vec::with_capacity(shards);
    for (index, ((listener, scanned), calls)) in listeners
        .into_iter()
        .zip(scans)
        .zip(call_receivers)
        .enumerate()
    {
        let (stop_tx, stop) = oneshot::channel();
        senders.push(stop_tx);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        ready.push(ready_rx);
        let setup = server::ShardSetup {
            node_id: config.node_id,
            index,
            shards,
            listener,
            dir: config.data_dir.join(format!("shard-{index}")),
            scanned,
            log: config.log,
            usage: usage.clone(),
            faults: faults.clone(),
            stop,
            verbs: calls,
            scrub: config.scrub,
            bad_fragments: bad_tx.clone(),
        };
        // Unbound: a local cluster runs several nodes on few cores.
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("torchfs-shard-{index}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                let _ = ready_tx.send(());
                server::run_shard(setup).await
            })
            .map_err(|e| DataplaneError::Executor {
                shard: index,
                message: e.to_string(),
            })?;
        executors.push(executor);
    }
    let stop = StopHandle {
        senders: Arc::new(Mutex::new(senders)),
    };
    let mut node = StorageNode {
        verbs: None,
        addrs,
        executors,
        stop,
        control: None,
        usage: usage.clone(),
    };
    for (shard, r) in ready.into_iter().enumerate() {
        if r.recv().is_err() {
            // The executor died before running (e.g. io_uring or memlock):
            // its join error says why.
            let executor = node.executors.remove(shard);
            let message = match executor.join() {
                Err(e) => e.to_string(),
                Ok(()) => "exited at start".into(),
            };
            return Err(DataplaneError::Executor { shard, message });
        }
    }

    if want_verbs {
        let bridge = Arc::new(verbs::Bridge {
            shards: call_senders,
        });
        let options = torchfs_rdma::verbs::ListenerOptions::default();
        match torchfs_rdma::verbs::VerbsListener::start(verbs_addr, options, bridge) {
            Ok(listener) => node.verbs = Some(listener),
            Err(e) if config.verbs == VerbsMode::Auto => {
                tracing::warn!("RDMA verbs on {verbs_addr}: {e}; serving TCP only");
            }
            Err(e) => {
                return Err(DataplaneError::Verbs {
                    addr: verbs_addr,
                    message: e.to_string(),
                })
            }
        }
    }
    let mut transports = vec!["tcp".to_string()];
    if let Some(addr) = node.verbs_addr() {
        transports.push(torchfs_rdma::endpoint::advertise_verbs(addr));
    }

    if !config.metad.is_empty() {
        let info = NodeInfo {
            id: config.node_id,
            host: config.host.clone(),
            shard_ports: node.addrs.iter().map(SocketAddr::port).collect(),
            capacity_bytes,
            used_bytes: used,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
            transports,
        };
        node.control = Some(control::start(
            config.metad.clone(),
            info,
            config.heartbeat_ms,
            usage,
            bad_rx,
        )?);
    }
    Ok(node)
}
