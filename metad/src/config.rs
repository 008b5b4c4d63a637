//! Configuration of one metad voter, its validation, and the errors `run`
//! reports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use torchfs_proto::meta::StripeConfig;
use torchfs_proto::rpc::is_host_port;

#[derive(Clone, Debug)]
pub struct MetadConfig {
    /// This voter's Raft id (non-zero, unique, one of `voters`).
    pub id: u64,
    /// Where this voter listens (clients, storage nodes and peers alike).
    pub listen: SocketAddr,
    /// Holds `metad.redb` (log, vote, snapshot).
    pub data_dir: PathBuf,
    /// Every voter including this one: (id, "host:port"). The same list on
    /// every voter; the lowest id initializes the cluster.
    pub voters: Vec<(u64, String)>,
    /// Stripe settings of new files (must agree across voters).
    pub stripe: StripeConfig,
    /// A storage node without a heartbeat for this long is reported Down.
    pub node_down_after_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot (and purge the log behind it) every this many
    /// entries, or every eighth as many entries as there are inodes when
    /// that is more (see `compaction`).
    pub snapshot_every_logs: u64,
    /// Largest piece a snapshot is sent to a lagging voter in (each piece
    /// is one RPC; capnp refuses messages over 64 MiB).
    pub snapshot_chunk_bytes: usize,
}

/// Largest snapshot chunk: well under capnp's 64 MiB message limit.
const SNAPSHOT_CHUNK_BYTES_MAX: usize = 32 << 20;

impl MetadConfig {
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf, voters: Vec<(u64, String)>) -> Self {
        Self {
            id,
            listen,
            data_dir,
            voters,
            stripe: StripeConfig::DEFAULT,
            node_down_after_ms: 5000,
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every_logs: 1000,
            snapshot_chunk_bytes: 4 << 20,
        }
    }

    /// The voter map, after checking what Raft and placement rely on.
    pub(crate) fn validate(&self) -> Result<BTreeMap<u64, String>, MetadError> {
        let bad = |reason: String| Err(MetadError::Config { reason });
        if self.id == 0 {
            return bad(
                "voter id 0 is reserved (it means \"no leader\" on the wire); use ids >= 1".into(),
            );
        }
        let mut voters = BTreeMap::new();
        for (id, addr) in &self.voters {
            if *id == 0 {
                return bad(format!("voter {addr} has id 0; use ids >= 1"));
            }
            if !is_host_port(addr) {
                return bad(format!("voter {id} address {addr:?} is not host:port"));
            }
            if voters.insert(*id, addr.clone()).is_some() {
                return bad(format!("voter id {id} is listed twice"));
            }
        }
        if !voters.contains_key(&self.id) {
            return bad(format!(
                "this voter's id {} is not in the voter list {:?}",
                self.id,
                voters.keys().collect::<Vec<_>>()
            ));
        }
        if !(1..=SNAPSHOT_CHUNK_BYTES_MAX).contains(&self.snapshot_chunk_bytes) {
            return bad(format!(
                "snapshot chunk of {} bytes: needs 1 to {SNAPSHOT_CHUNK_BYTES_MAX}",
                self.snapshot_chunk_bytes
            ));
        }
        let s = self.stripe;
        if s.k == 0 || s.unit_bytes == 0 {
            return bad(format!(
                "stripe config k={} m={} unit={} needs k >= 1 and unit >= 1",
                s.k, s.m, s.unit_bytes
            ));
        }
        if self.heartbeat_interval_ms == 0
            || self.election_timeout_min_ms <= self.heartbeat_interval_ms
            || self.election_timeout_max_ms <= self.election_timeout_min_ms
        {
            return bad(format!(
                "need 0 < heartbeat ({} ms) < election min ({} ms) < election max ({} ms)",
                self.heartbeat_interval_ms,
                self.election_timeout_min_ms,
                self.election_timeout_max_ms
            ));
        }
        Ok(voters)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadError {
    #[error("cannot listen on {addr}: {source} (is another metad or process using the port? pick another --listen port or stop it)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data dir {path}: {source} (create it or make it writable by this user)")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata store {path}: {reason} (another metad may be using this data dir; if the file is corrupt, move it away and let this voter rejoin from its peers)")]
    Store { path: PathBuf, reason: String },
    #[error("bad metad configuration: {reason}")]
    Config { reason: String },
    #[error("raft failed: {reason}")]
    Raft { reason: String },
    #[error("cannot start the runtime: {source}")]
    Runtime { source: std::io::Error },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: u64, voters: &[(u64, &str)]) -> MetadConfig {
        MetadConfig::new(
            id,
            "127.0.0.1:0".parse().unwrap(),
            PathBuf::from("/tmp/x"),
            voters.iter().map(|(i, a)| (*i, a.to_string())).collect(),
        )
    }

    #[test]
    fn validation() {
        assert!(cfg(1, &[(1, "h:1"), (2, "h:2")]).validate().is_ok());
        assert!(cfg(3, &[(1, "h:1"), (2, "h:2")]).validate().is_err());
        assert!(cfg(1, &[(1, "h:1"), (1, "h:2")]).validate().is_err());
        assert!(cfg(1, &[(1, "h")]).validate().is_err());
        assert!(cfg(0, &[(0, "h:1")]).validate().is_err());
        let mut c = cfg(1, &[(1, "h:1")]);
        c.election_timeout_max_ms = c.election_timeout_min_ms;
        assert!(c.validate().is_err());
    }
}
