//! Storage node configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::store::log::LogConfig;

#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Host name or address clients are told to connect to.
    pub host: String,
    pub listen_ip: IpAddr,
    /// Shard `i` listens on `base_port + i`; 0 picks free ports.
    pub base_port: u16,
    /// Executors (each one shard); 0 means one per core.
    pub shards: usize,
    /// metad client addresses; empty runs without registration (tests).
    pub metad: Vec<String>,
    pub heartbeat_ms: u64,
    /// Default: the size of the filesystem holding `data_dir`.
    pub capacity_bytes: Option<u64>,
    /// Registered (locked) O_DIRECT buffer memory per executor. Default:
    /// a share of RLIMIT_MEMLOCK, which io_uring charges to the user, not
    /// the process (root with CAP_IPC_LOCK is exempt). Set it lower when
    /// one unprivileged user runs several nodes on a host.
    pub io_memory_bytes: Option<usize>,
    /// Which fragments go to each shard's fragment log, and its segment size.
    pub log: LogConfig,
    /// Whether to serve RDMA verbs beside TCP.
    pub verbs: VerbsMode,
    /// The address verbs are served on: an address of the RDMA device's
    /// interface (default `listen_ip`; soft-RoCE cannot use loopback).
    pub verbs_ip: Option<IpAddr>,
    /// The background check of fragments at rest.
    pub scrub: crate::scrub::ScrubConfig,
}

/// Whether a node serves RDMA verbs (rdma_cm on `listen_ip`, on the port of
/// its first shard: rdma_cm's port space is its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VerbsMode {
    /// TCP only.
    Off,
    /// Verbs too when the host has an RDMA device (and it listens); else
    /// TCP only, with one log line.
    #[default]
    Auto,
    /// Verbs too, or the node does not start.
    On,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            data_dir: PathBuf::from("torchfs-data"),
            host: "127.0.0.1".into(),
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 0,
            shards: 0,
            metad: Vec::new(),
            heartbeat_ms: 1_000,
            capacity_bytes: None,
            io_memory_bytes: None,
            log: LogConfig::default(),
            verbs: VerbsMode::Auto,
            verbs_ip: None,
            scrub: crate::scrub::ScrubConfig::default(),
        }
    }
}

impl std::str::FromStr for VerbsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(VerbsMode::Off),
            "auto" => Ok(VerbsMode::Auto),
            "on" => Ok(VerbsMode::On),
            other => Err(format!("{other:?}: use off, auto or on")),
        }
    }
}

impl StorageConfig {
    /// Shards to run: the configured count, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}
