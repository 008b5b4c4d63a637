//! What a voter does with one client request: redirect when not the leader,
//! propose writes through Raft (stamped with the leader's clock and carrying
//! the client's write id), answer a retried write that was already applied
//! from the session table, serve reads after a read-index check or under
//! the leader's read lease, and keep
//! storage-node liveness and client leases (volatile, leader-local:
//! heartbeats and keep-alives never go through the log).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState};
use torchfs_proto::meta::{
    errno, ClusterMap, ClusterStatus, FragmentRef, Garbage, Ino, MetaError, MetaReply, MetaRequest,
    NodeId, NodeState, NodeStatus, RenameMode, RepairProgress, StatFs, Voter, WriteId,
};

mod repair;

use crate::clock::now_ns;
use crate::leases::{Leases, LEASE_MS};
use crate::state::{Applied, Command, Op, Outcome};

/// Orphans freed by one `Reclaim` command at most.
const RECLAIM_PER_COMMAND_MAX: usize = 1024;
use crate::store::{MetaRaft, SmData, TypeConfig};

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

/// Reads the leader may answer from its own state without a quorum round.
///
/// A quorum that acknowledged heartbeats sent at `t` refuses to vote for
/// anyone else until `t` + openraft's leader lease (`election_timeout_max`)
/// by its own clock (openraft rejects vote requests while that lease
/// holds), so no other leader can commit anything before then. A
/// read-index check that started at `t` proves such a quorum, and reads
/// until `t` + `lease` (a fraction of that window, the margin covering
/// clock-rate differences and the time a read takes) need no other.
/// Acknowledged writes are applied before they are acknowledged, so a
/// lease read sees every write that completed before it began.
struct ReadLease {
    term: u64,
    valid_until: Option<Instant>,
}

pub(crate) struct Node {
    pub id: u64,
    pub raft: MetaRaft,
    pub sm: Arc<RwLock<SmData>>,
    pub voters: BTreeMap<u64, String>,
    pub node_down_after: Duration,
    liveness: Mutex<Liveness>,
    leases: Mutex<Leases>,
    read_lease: Mutex<ReadLease>,
    read_lease_for: Duration,
    /// `CreateOpen` writes proposed whose file is not yet in `leases`:
    /// while any is, no unlink vouches its victim closed (it could be
    /// the file just created), so a victim becomes an orphan instead.
    creates_in_flight: std::sync::atomic::AtomicUsize,
    /// The repair service's last report (see `ReportRepair`).
    repair: Mutex<RepairProgress>,
    /// Fragments storage nodes reported bad, until the repair service
    /// takes them (see `ReportBadFragments`).
    bad_fragments: Mutex<BTreeSet<FragmentRef>>,
}

impl Node {
    pub fn new(
        id: u64,
        raft: MetaRaft,
        sm: Arc<RwLock<SmData>>,
        voters: BTreeMap<u64, String>,
        node_down_after: Duration,
        read_lease_for: Duration,
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
            leases: Mutex::new(Leases::new(Instant::now())),
            read_lease: Mutex::new(ReadLease {
                term: 0,
                valid_until: None,
            }),
            read_lease_for,
            creates_in_flight: std::sync::atomic::AtomicUsize::new(0),
            repair: Mutex::new(RepairProgress::default()),
            bad_fragments: Mutex::new(BTreeSet::new()),
        }
    }

    /// Confirms this voter is still the leader of `term` before a read:
    /// at once while its read lease holds, else with a read-index check
    /// (a heartbeat round to a quorum), which renews the lease.
    async fn confirm_leadership(&self, term: u64) -> Result<(), MetaError> {
        let now = Instant::now();
        {
            let lease = self.read_lease.lock().unwrap_or_else(|p| p.into_inner());
            if lease.term == term && lease.valid_until.is_some_and(|until| now < until) {
                return Ok(());
            }
        }
        if let Err(e) = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            return Err(self.forward::<LinearizableReadError<TypeConfig>>(e));
        }
        let mut lease = self.read_lease.lock().unwrap_or_else(|p| p.into_inner());
        // The check began at `now`: the acknowledgements are no older.
        let until = now + self.read_lease_for;
        if lease.term != term || lease.valid_until.is_none_or(|u| u < until) {
            *lease = ReadLease {
                term,
                valid_until: Some(until),
            };
        }
        Ok(())
    }

    /// The client-lease table for `term` (reset when the term changed).
    fn leases(&self, term: u64) -> std::sync::MutexGuard<'_, Leases> {
        let mut l = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        l.for_term(term, Instant::now());
        l
    }

    /// The inodes this write may drop the last link of that the leader
    /// knows no client holds open: they are freed at once instead of
    /// becoming orphans.
    fn vouched_closed(&self, req: &MetaRequest, term: u64) -> Vec<Ino> {
        if self
            .creates_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
        {
            return Vec::new();
        }
        let victim = {
            let sm = self.read_sm();
            match req {
                MetaRequest::Unlink { parent, name } => sm.state.entry_ino(*parent, name),
                MetaRequest::Rename {
                    new_parent,
                    new_name,
                    mode: RenameMode::Replace,
                    ..
                } => sm.state.entry_ino(*new_parent, new_name),
                _ => None,
            }
        };
        let now = Instant::now();
        let leases = self.leases(term);
        victim
            .filter(|ino| !leases.may_be_open(*ino, now))
            .into_iter()
            .collect()
    }

    async fn propose(&self, cmd: Command) -> Applied {
        match self.raft.client_write(cmd).await {
            Ok(resp) => resp.data,
            Err(e) => Err(self.forward::<ClientWriteError<TypeConfig>>(e)).into(),
        }
    }

    /// The leader's periodic work for client leases: forget lapsed
    /// clients, reclaim orphans that no live client holds open, and
    /// release the locks of clients whose lease ended.
    pub async fn tick(&self) {
        let (term, is_leader) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_term,
                m.state == ServerState::Leader && m.current_leader == Some(self.id),
            )
        };
        if !is_leader {
            return;
        }
        let orphans: Vec<Ino> = self.read_sm().state.orphans().keys().copied().collect();
        let reclaim: Vec<Ino> = {
            let now = Instant::now();
            let mut leases = self.leases(term);
            leases.expire(now);
            orphans
                .into_iter()
                .filter(|ino| !leases.may_be_open(*ino, now))
                .take(RECLAIM_PER_COMMAND_MAX)
                .collect()
        };
        if !reclaim.is_empty() {
            let count = reclaim.len();
            let cmd = Command {
                now_ns: now_ns(),
                op: Op::Reclaim { inos: reclaim },
            };
            if let Err(e) = self.propose(cmd).await.outcome {
                tracing::debug!("reclaim {count} orphans: {e}");
            }
        }
        let holders = self.read_sm().state.lock_holders();
        let lapsed: Vec<u64> = {
            let now = Instant::now();
            let leases = self.leases(term);
            holders
                .into_iter()
                .filter(|id| !leases.may_be_live(*id, now))
                .collect()
        };
        if !lapsed.is_empty() {
            tracing::info!("releasing the locks of {} lapsed clients", lapsed.len());
            let cmd = Command {
                now_ns: now_ns(),
                op: Op::ReleaseLocks { client_ids: lapsed },
            };
            if let Err(e) = self.propose(cmd).await.outcome {
                tracing::debug!("release locks: {e}");
            }
        }
    }

    /// A client's keep-alive: renew its lease, drop the garbage it deleted,
    /// and hand it more.
    async fn keep_alive(
        &self,
        term: u64,
        client_id: u64,
        open: &[Ino],
        deleted: Vec<Ino>,
    ) -> Outcome {
        if client_id == 0 {
            return Err(MetaError::Invalid(
                "keep-alive: client id 0 is reserved".into(),
            ));
        }
        self.leases(term)
            .keep_alive(client_id, open, Instant::now());
        if !deleted.is_empty() {
            let cmd = Command {
                now_ns: now_ns(),
                op: Op::DropGarbage { inos: deleted },
            };
            self.propose(cmd).await.outcome?;
        }
        let garbage = {
            let sm = self.read_sm();
            let all = sm.state.garbage();
            let picked = self
                .leases(term)
                .hand_out(all.keys().copied(), Instant::now());
            picked
                .into_iter()
                .filter_map(|ino| {
                    all.get(&ino).map(|layout| Garbage {
                        ino,
                        layout: layout.clone(),
                    })
                })
                .collect()
        };
        Ok(MetaReply::KeepAlive {
            lease_ms: LEASE_MS,
            garbage,
        })
    }

    fn not_leader(&self, leader: Option<u64>) -> MetaError {
        let leader = leader.filter(|l| *l != self.id);
        MetaError::NotLeader {
            leader_id: leader,
            leader_addr: leader.and_then(|l| self.voters.get(&l).cloned()),
        }
    }

    fn forward<E>(&self, e: RaftError<TypeConfig, E>) -> MetaError
    where
        E: std::error::Error + openraft::TryAsRef<ForwardToLeader<TypeConfig>>,
    {
        match e.forward_to_leader() {
            Some(f) => self.not_leader(f.leader_id),
            None => MetaError::Unavailable(e.to_string()),
        }
    }

    /// Answers one request (any voter; followers redirect). `write_id`
    /// matters only for writes (reads and heartbeats are idempotent).
    pub async fn execute(&self, req: MetaRequest, write_id: Option<WriteId>) -> Applied {
        let (leader, term, is_leader) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_leader,
                m.current_term,
                m.state == ServerState::Leader,
            )
        };
        if !is_leader || leader != Some(self.id) {
            return Err(self.not_leader(leader)).into();
        }
        if let MetaRequest::CreateOpen { client_id, .. } = &req {
            return self.create_open(*client_id, req, write_id, term).await;
        }
        if let MetaRequest::ReplaceNode { node, .. } = req {
            return self.replace_node(node, write_id, term).await;
        }
        if req.is_write() {
            return self.execute_write(req, write_id, term).await;
        }
        self.execute_read(req, term).await.into()
    }

    /// Everything but writes, on the leader of `term`: keep-alives,
    /// opens and heartbeats (leader-local bookkeeping), and reads.
    async fn execute_read(&self, req: MetaRequest, term: u64) -> Outcome {
        if let MetaRequest::KeepAlive {
            client_id,
            open,
            deleted,
        } = req
        {
            return self.keep_alive(term, client_id, &open, deleted).await;
        }
        if let MetaRequest::Open { ino, client_id } = &req {
            // Held open from before the read: an unlink proposed after
            // this point keeps the file as an orphan.
            if *client_id == 0 {
                return Err(MetaError::Invalid("open: client id 0 is reserved".into()));
            }
            self.leases(term).opened(*client_id, *ino, Instant::now());
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
        if let Some(answer) = self.repair_desk(&req, term) {
            return answer;
        }
        self.confirm_leadership(term).await?;
        match req {
            MetaRequest::StatFs => Ok(MetaReply::StatFs(self.statfs(term))),
            MetaRequest::ClusterMap => Ok(MetaReply::ClusterMap(self.cluster_map(term))),
            MetaRequest::ClusterStatus => {
                let (leader, term, last_applied) = {
                    let m = self.raft.metrics();
                    let m = m.borrow_watched();
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
                    repair: self
                        .repair
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone(),
                }))
            }
            MetaRequest::Open { ino, .. } => {
                self.read_sm().state.read(&MetaRequest::GetLayout { ino })
            }
            other => self.read_sm().state.read(&other),
        }
    }

    /// A write on the leader: answered from the session table when it is a
    /// retry of one already applied, else proposed.
    async fn execute_write(
        &self,
        req: MetaRequest,
        write_id: Option<WriteId>,
        term: u64,
    ) -> Applied {
        if let Some(id) = &write_id {
            if let Err(e) = id.check() {
                return Err(e).into();
            }
            // A retry of a write already applied: its answer is
            // committed, so no new log entry is needed.
            if let Some(done) = self.read_sm().state.sessions().answered(id) {
                return done.clone().into();
            }
        }
        if let MetaRequest::SetLock { lock, .. } = &req {
            // Its lease runs from here: a lock taken just before the
            // client's first keep-alive is not released as lapsed.
            self.leases(term).seen(lock.client_id, Instant::now());
        }
        let closed = self.vouched_closed(&req, term);
        let cmd = Command {
            now_ns: now_ns(),
            op: Op::Client {
                req,
                write_id,
                closed,
            },
        };
        self.propose(cmd).await
    }

    /// `CreateOpen`: the write, with the file registered as open by
    /// `client_id` before anyone can unlink it. An existing file is
    /// registered before proposing (like `Open`); a new one cannot be
    /// unlinked before it exists, and from then until it is registered
    /// `creates_in_flight` keeps unlinks from vouching it closed.
    async fn create_open(
        &self,
        client_id: u64,
        req: MetaRequest,
        write_id: Option<WriteId>,
        term: u64,
    ) -> Applied {
        use std::sync::atomic::Ordering;
        if client_id == 0 {
            return Err(MetaError::Invalid("create: client id 0 is reserved".into())).into();
        }
        if let MetaRequest::CreateOpen { parent, name, .. } = &req {
            if let Some(ino) = self.read_sm().state.entry_ino(*parent, name) {
                self.leases(term).opened(client_id, ino, Instant::now());
            }
        }
        /// Counts one create in flight until dropped (also when the call
        /// is cancelled mid-way).
        struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for InFlight<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.creates_in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(&self.creates_in_flight);
        let applied = self.execute_write(req, write_id, term).await;
        if let Ok(MetaReply::Layout { attr, .. }) = &applied.outcome {
            self.leases(term)
                .opened(client_id, attr.ino, Instant::now());
        }
        applied
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
