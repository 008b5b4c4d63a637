//! What a voter does with one client request: redirect when not the leader,
//! propose writes through Raft (stamped with the leader's clock and carrying
//! the client's write id), answer a retried write that was already applied
//! from the session table, serve reads after a read-index check, and keep
//! storage-node liveness (volatile, leader-local: heartbeats never go
//! through the log).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use torchfs_proto::meta::{
    errno, ClusterMap, ClusterStatus, MetaError, MetaReply, MetaRequest, NodeId, NodeState,
    NodeStatus, StatFs, Voter, WriteId,
};

use crate::state::{Command, Outcome};
use crate::store::{SmData, TypeConfig};

struct Beat {
    at: Instant,
    used_bytes: u64,
    capacity_bytes: u64,
}

/// Heartbeats seen by this voter during its current term as leader.
struct Liveness {
    term: u64,
    /// When this voter took office (or first looked): every node gets a
    /// full grace period from here, so a new leader does not declare the
    /// whole cluster down before the first heartbeats arrive.
    since: Instant,
    beats: HashMap<NodeId, Beat>,
}

pub(crate) struct Node {
    pub id: u64,
    pub raft: Raft<TypeConfig>,
    pub sm: Arc<RwLock<SmData>>,
    pub voters: BTreeMap<u64, String>,
    pub node_down_after: Duration,
    liveness: Mutex<Liveness>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Node {
    pub fn new(
        id: u64,
        raft: Raft<TypeConfig>,
        sm: Arc<RwLock<SmData>>,
        voters: BTreeMap<u64, String>,
        node_down_after: Duration,
    ) -> Self {
        Self {
            id,
            raft,
            sm,
            voters,
            node_down_after,
            liveness: Mutex::new(Liveness {
                term: 0,
                since: Instant::now(),
                beats: HashMap::new(),
            }),
        }
    }

    fn not_leader(&self, leader: Option<u64>) -> MetaError {
        let leader = leader.filter(|l| *l != self.id);
        MetaError::NotLeader {
            leader_id: leader,
            leader_addr: leader.and_then(|l| self.voters.get(&l).cloned()),
        }
    }

    fn forward<E>(&self, e: RaftError<u64, E>) -> MetaError
    where
        E: std::error::Error + openraft::TryAsRef<openraft::error::ForwardToLeader<u64, BasicNode>>,
    {
        match e.forward_to_leader() {
            Some(f) => self.not_leader(f.leader_id),
            None => MetaError::Unavailable(e.to_string()),
        }
    }

    /// Answers one request (any voter; followers redirect). `write_id`
    /// matters only for writes (reads and heartbeats are idempotent).
    pub async fn execute(&self, req: MetaRequest, write_id: Option<WriteId>) -> Outcome {
        let (leader, term, is_leader) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.current_leader,
                m.current_term,
                m.state == ServerState::Leader,
            )
        };
        if !is_leader || leader != Some(self.id) {
            return Err(self.not_leader(leader));
        }
        if req.is_write() {
            if let Some(id) = &write_id {
                id.check()?;
                // A retry of a write already applied: its answer is
                // committed, so no new log entry is needed.
                if let Some(done) = self.read_sm().state.sessions().answered(id) {
                    return done.clone();
                }
            }
            let cmd = Command {
                now_ns: now_ns(),
                req,
                write_id,
            };
            return match self.raft.client_write(cmd).await {
                Ok(resp) => resp.data,
                Err(e) => Err(self.forward::<ClientWriteError<u64, BasicNode>>(e)),
            };
        }
        if let MetaRequest::Heartbeat {
            id,
            used_bytes,
            capacity_bytes,
        } = req
        {
            // Volatile and leader-local; an unknown node must register first.
            if !self.read_sm().state.nodes().contains_key(&id) {
                return Err(MetaError::fs(
                    errno::ENOENT,
                    format!("storage node {id} is not registered"),
                ));
            }
            let mut l = self.liveness(term);
            l.beats.insert(
                id,
                Beat {
                    at: Instant::now(),
                    used_bytes,
                    capacity_bytes,
                },
            );
            return Ok(MetaReply::Unit);
        }
        if let Err(e) = self.raft.ensure_linearizable().await {
            return Err(self.forward::<CheckIsLeaderError<u64, BasicNode>>(e));
        }
        match req {
            MetaRequest::StatFs => Ok(MetaReply::StatFs(self.statfs(term))),
            MetaRequest::ClusterMap => Ok(MetaReply::ClusterMap(self.cluster_map(term))),
            MetaRequest::ClusterStatus => {
                let (leader, term, last_applied) = {
                    let m = self.raft.metrics();
                    let m = m.borrow();
                    (
                        m.current_leader,
                        m.current_term,
                        m.last_applied.map(|l| l.index).unwrap_or(0),
                    )
                };
                Ok(MetaReply::ClusterStatus(ClusterStatus {
                    leader,
                    term,
                    last_applied,
                    voters: self
                        .voters
                        .iter()
                        .map(|(id, addr)| Voter {
                            id: *id,
                            addr: addr.clone(),
                        })
                        .collect(),
                    map: self.cluster_map(term),
                }))
            }
            other => self.read_sm().state.read(&other),
        }
    }

    fn read_sm(&self) -> std::sync::RwLockReadGuard<'_, SmData> {
        self.sm.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The liveness table for `term`, reset when the term changed (a new
    /// term means this voter (re)took office).
    fn liveness(&self, term: u64) -> std::sync::MutexGuard<'_, Liveness> {
        let mut l = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
        if l.term != term {
            l.term = term;
            l.since = Instant::now();
            l.beats.clear();
        }
        l
    }

    fn cluster_map(&self, term: u64) -> ClusterMap {
        let sm = self.read_sm();
        let l = self.liveness(term);
        let now = Instant::now();
        let nodes = sm
            .state
            .nodes()
            .values()
            .map(|info| {
                let beat = l.beats.get(&info.id);
                let last = beat.map(|b| b.at).unwrap_or(l.since);
                let mut info = info.clone();
                if let Some(b) = beat {
                    info.used_bytes = b.used_bytes;
                    info.capacity_bytes = b.capacity_bytes;
                }
                NodeStatus {
                    info,
                    state: if now.duration_since(last) > self.node_down_after {
                        NodeState::Down
                    } else {
                        NodeState::Up
                    },
                    last_heartbeat_ms_ago: beat.map(|b| {
                        u64::try_from(now.duration_since(b.at).as_millis()).unwrap_or(u64::MAX)
                    }),
                }
            })
            .collect();
        ClusterMap {
            epoch: sm.state.epoch(),
            config: sm.state.config(),
            nodes,
            groups: sm.state.groups().to_vec(),
        }
    }

    fn statfs(&self, term: u64) -> StatFs {
        let map = self.cluster_map(term);
        let files = self.read_sm().state.file_count();
        // Users see file bytes: k of every k+m bytes stored.
        let usable = |raw: u64| {
            let c = map.config;
            (u128::from(raw) * u128::from(c.k) / c.width().max(1) as u128) as u64
        };
        StatFs {
            total_bytes: usable(map.nodes.iter().map(|n| n.info.capacity_bytes).sum()),
            used_bytes: usable(map.nodes.iter().map(|n| n.info.used_bytes).sum()),
            files,
            files_free: torchfs_proto::meta::FILES_MAX.saturating_sub(files),
        }
    }
}
