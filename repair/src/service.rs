//! The repair service's loop: watch the cluster, replace nodes lost for
//! good, rebuild what the placement moved.
//!
//! Every `poll` it reads the cluster status from metad. A storage node that
//! holds placement-group slots and has been down for `repair_after` is
//! replaced (`ReplaceNode`: metad gives its slots to up nodes). Whenever the
//! placement differs from the one the last pass restored, a pass checks
//! the slots that moved and rebuilds their fragments on the new nodes; the
//! same slots are checked once more `settle` after the change, for stripes
//! clients committed with the old map meanwhile (their fragment for the
//! lost node was left out: a degraded write). The first pass after start
//! (or after this voter became leader) checks every fragment: a service
//! that restarted mid-repair does not know what it had left.
//!
//! Fragments to put back are reported to metad: those storage nodes'
//! scrubs found corrupt (and dropped), and those clients' degraded writes
//! left out. Each poll the service takes them and rebuilds each where the
//! map places it (read whole to check), retrying at the next poll those
//! whose node is down, and those whose stripe is not committed yet (a
//! degraded write is reported when stored, committed at close) for up to
//! `REPORT_GRACE`.
//!
//! With `voter` set (the service runs inside a metad voter), it works only
//! while that voter leads, so one service repairs at a time; two at once
//! would only waste bandwidth (a rebuilt fragment is the same bytes
//! whoever puts it).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{
    errno, ClusterMap, ClusterStatus, FragmentRef, MetaError, MetaReply, MetaRequest, NodeId,
    NodeState, PlacementGroup, RepairProgress,
};
use torchfs_rdma::endpoint::TransportMode;
use torchfs_rdma::verbs::VerbsOptions;
use torchfs_rdma::{MultiTransport, TcpOptions};
use torchfs_storage_client::StorageClient;

use crate::bandwidth::RepairBandwidth;
use crate::orphans::Orphans;
use crate::pass::{run_pass, PassOptions, Scope};
use crate::{unexpected, RepairError};

/// How the service behaves.
#[derive(Clone, Debug)]
pub struct RepairOptions {
    /// A node down this long is replaced and its fragments rebuilt
    /// elsewhere. The default, 10 minutes, outlasts a reboot or a rolling
    /// restart (which would otherwise rebuild a whole node's data for
    /// nothing) and keeps the window in which stripes are one loss closer
    /// to data loss short (as Ceph's `mon_osd_down_out_interval`).
    pub repair_after: Duration,
    /// Bound on rebuild traffic (bytes/s: k columns read and one fragment
    /// written per rebuild); 0: none.
    pub bandwidth_bytes_per_s: u64,
    /// How often the cluster status is read.
    pub poll: Duration,
    /// How long after a placement change the moved slots are checked again.
    pub settle: Duration,
    /// The metad voter this service runs beside: it works only while that
    /// voter leads. None: always.
    pub voter: Option<u64>,
    pub transport_mode: TransportMode,
    /// Orphan collection: a fragment no one needs is deleted when two
    /// sweeps this far apart find it so (a sweep runs this often); zero:
    /// no collection. 10 minutes by default: far longer than any upload
    /// takes to commit once its file is closed.
    pub orphan_grace: Duration,
}

impl Default for RepairOptions {
    fn default() -> Self {
        Self {
            repair_after: Duration::from_secs(600),
            bandwidth_bytes_per_s: 200_000_000,
            poll: Duration::from_secs(1),
            settle: Duration::from_secs(10),
            voter: None,
            transport_mode: TransportMode::Auto,
            orphan_grace: Duration::from_secs(600),
        }
    }
}

/// Runs the service against the metad voters at `metad` until `stop`
/// completes.
pub async fn run(
    metad: Vec<String>,
    options: RepairOptions,
    stop: impl Future<Output = ()>,
) -> Result<(), RepairError> {
    let meta = MetaClient::new(metad, MetaClientOptions::default())?;
    let mut service = Service::new(meta, options);
    tokio::select! {
        result = service.run() => result,
        _ = stop => Ok(()),
    }
}

struct Service {
    meta: MetaClient,
    options: RepairOptions,
    storage: Option<Arc<StorageClient<MultiTransport>>>,
    bandwidth: Option<Arc<RepairBandwidth>>,
    /// The placement the last pass restored (None: no pass yet since
    /// start or since this voter led).
    restored: Option<Vec<PlacementGroup>>,
    /// A second look at moved slots, due at the instant given.
    recheck: Option<(Instant, Scope, String)>,
    downtime: Downtime,
    /// Passes in a row that could not rebuild everything.
    failed_passes: u32,
    progress: Arc<Mutex<RepairProgress>>,
    /// Fragments reported and not yet rebuilt, with when each was first
    /// taken.
    bad: BTreeMap<FragmentRef, Instant>,
    orphans: Orphans,
    /// When the last orphan sweep ran.
    swept_at: Option<Instant>,
}

/// Reported fragments the service keeps for retries at most.
const BAD_KEPT_MAX: usize = 1 << 16;
/// How long a reported fragment of a stripe the layout does not hold is
/// kept: the write that reported it may commit later (at close).
const REPORT_GRACE: Duration = Duration::from_secs(600);

impl Service {
    fn new(meta: MetaClient, options: RepairOptions) -> Self {
        let bandwidth = (options.bandwidth_bytes_per_s > 0)
            .then(|| Arc::new(RepairBandwidth::new(options.bandwidth_bytes_per_s)));
        Self {
            meta,
            orphans: Orphans::new(options.orphan_grace),
            options,
            storage: None,
            bandwidth,
            restored: None,
            recheck: None,
            downtime: Downtime::default(),
            failed_passes: 0,
            progress: Arc::default(),
            bad: BTreeMap::new(),
            swept_at: None,
        }
    }

    async fn run(&mut self) -> Result<(), RepairError> {
        loop {
            tokio::time::sleep(self.options.poll).await;
            let status = match self.meta.call(MetaRequest::ClusterStatus).await {
                Ok(MetaReply::ClusterStatus(status)) => status,
                Ok(other) => return Err(unexpected("ClusterStatus", other)),
                Err(e) => {
                    tracing::debug!("repair: cluster status: {e}");
                    continue;
                }
            };
            if self.options.voter.is_some() && status.leader != self.options.voter {
                // Another voter's service works now; if this one leads
                // again it starts over (what it knew may be stale).
                self.restored = None;
                self.recheck = None;
                self.downtime = Downtime::default();
                continue;
            }
            self.replace_lost(&status).await;
            self.rebuild_reported(&status.map).await;
            self.repair(&status.map).await;
            self.collect_orphans(&status.map).await;
        }
    }

    /// Asks metad to replace every node with placement slots that has been
    /// down for `repair_after`.
    async fn replace_lost(&mut self, status: &ClusterStatus) {
        let now = Instant::now();
        for (id, down_for) in self.downtime.observe(&status.map, now) {
            if down_for < self.options.repair_after {
                continue;
            }
            let req = MetaRequest::ReplaceNode {
                node: id,
                candidates: Vec::new(),
            };
            match self.meta.call(req).await {
                Ok(MetaReply::Count(0)) => tracing::warn!(
                    "repair: storage node {id} is down for {:.0} s but no up node can take its \
                     placement slots (every group already holds every up node); its stripes \
                     stay one fragment short",
                    down_for.as_secs_f64()
                ),
                Ok(MetaReply::Count(slots)) => {
                    tracing::warn!(
                        "repair: storage node {id} down for {:.0} s: its {slots} placement slots \
                         go to other nodes; rebuilding its fragments there",
                        down_for.as_secs_f64()
                    );
                    let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.nodes_replaced.push(id);
                }
                Ok(other) => tracing::warn!(
                    "repair: replace node {id}: {:?}",
                    unexpected("ReplaceNode", other)
                ),
                // Came back meanwhile (EBUSY), or metad unreachable: the
                // next poll looks again.
                Err(e) => tracing::info!("repair: replace node {id}: {e}"),
            }
        }
    }

    /// Runs the pass the placement calls for, if any: every fragment at
    /// start, the moved slots after a change, their recheck when due.
    async fn repair(&mut self, map: &ClusterMap) {
        let (scope, reason) = match &self.restored {
            None => (Scope::All, "start".to_string()),
            Some(before) => match Scope::moved(before, &map.groups) {
                Some(scope) => (
                    scope,
                    format!("placement changed (map epoch {})", map.epoch),
                ),
                None => match self.recheck.take() {
                    Some((due, scope, reason)) if Instant::now() >= due => {
                        (scope, format!("{reason}, checked again"))
                    }
                    not_due => {
                        self.recheck = not_due;
                        return;
                    }
                },
            },
        };
        let storage = self.storage_for(map);
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            *p = RepairProgress {
                pass: p.pass + 1,
                map_epoch: map.epoch,
                reason: reason.clone(),
                nodes_replaced: std::mem::take(&mut p.nodes_replaced),
                bad_reported: p.bad_reported,
                bad_rebuilt: p.bad_rebuilt,
                orphans_deleted: p.orphans_deleted,
                ..RepairProgress::default()
            };
        }
        tracing::info!("repair: pass for {reason}");
        let options = PassOptions {
            verify_whole: false,
            bandwidth: self.bandwidth.clone(),
        };
        let groups = map.groups.clone();
        let reporter = self.report_while_running();
        let result = run_pass(&self.meta, &storage, &scope, &options, &self.progress).await;
        reporter.notify_one();
        match result {
            Ok(()) => {
                let done = {
                    let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.done = true;
                    p.clone()
                };
                tracing::info!(
                    "repair: pass done ({reason}): {} stripes checked, {} fragments rebuilt \
                     ({} bytes), {} could not be, in {} ms",
                    done.stripes_checked,
                    done.fragments_rebuilt,
                    done.bytes_rebuilt,
                    done.fragments_failed,
                    done.elapsed_ms
                );
                let failed = done.fragments_failed > 0;
                self.report(done).await;
                // The moved slots once more after settling; and a pass that
                // could not rebuild everything (a node down or full, fewer
                // than k readable) again, after a pause that doubles each
                // time (up to 64 x `settle`), until it can.
                self.failed_passes = if failed { self.failed_passes + 1 } else { 0 };
                let again = failed
                    || matches!(&scope, Scope::Slots(_)) && !reason.ends_with("checked again");
                if again {
                    let pause = self.options.settle * (1u32 << self.failed_passes.min(6));
                    let reason = reason.trim_end_matches(", checked again").to_string();
                    self.recheck = Some((Instant::now() + pause, scope, reason));
                }
                self.restored = Some(groups);
            }
            // metad failed mid-pass: the next poll starts it again.
            Err(e) => tracing::warn!("repair: pass ({reason}) stopped: {e}"),
        }
    }

    /// Takes the fragments reported to put back and rebuilds each where
    /// the map places it; those that cannot be now (node down, metad
    /// unreachable, stripe not committed yet) wait for the next poll.
    async fn rebuild_reported(&mut self, map: &ClusterMap) {
        match self.meta.call(MetaRequest::TakeBadFragments).await {
            Ok(MetaReply::Fragments(taken)) => {
                if !taken.is_empty() {
                    let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.bad_reported += taken.len() as u64;
                }
                let now = Instant::now();
                for f in taken {
                    if self.bad.len() < BAD_KEPT_MAX {
                        self.bad.entry(f).or_insert(now);
                    }
                }
            }
            Ok(other) => tracing::warn!("repair: {}", unexpected("TakeBadFragments", other)),
            Err(e) => tracing::debug!("repair: take bad fragments: {e}"),
        }
        if self.bad.is_empty() {
            return;
        }
        let storage = self.storage_for(map);
        let mut retry = BTreeMap::new();
        for (f, since) in std::mem::take(&mut self.bad) {
            let layout = match self.meta.call(MetaRequest::GetLayout { ino: f.ino }).await {
                Ok(MetaReply::Layout { layout, .. }) => layout,
                // The file is gone: nothing to rebuild.
                Err(MetaError::Fs { errno: e, .. }) if e == errno::ENOENT => continue,
                other => {
                    tracing::debug!("repair: layout of inode {}: {other:?}", f.ino);
                    retry.insert(f, since);
                    continue;
                }
            };
            let Some(entry) = layout
                .stripes
                .iter()
                .find(|e| e.stripe == f.stripe && e.generation == f.generation)
            else {
                // Not committed yet (kept a while), or rewritten since (the
                // fragment is no one's any more).
                if since.elapsed() < REPORT_GRACE {
                    retry.insert(f, since);
                }
                continue;
            };
            let index = usize::from(f.index);
            match storage
                .repair_fragments(f.ino, &layout.config, entry, [index], true)
                .await
            {
                Ok(r) if r.rebuilt > 0 => {
                    let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.bad_rebuilt += 1;
                }
                Ok(r) if r.failed > 0 => {
                    retry.insert(f, since);
                }
                // Present and right already (rebuilt by a pass).
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("repair: reported fragment {f:?}: {e}");
                    retry.insert(f, since);
                }
            }
        }
        self.bad = retry;
        let now = self
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.report(now).await;
    }

    /// Sweeps for orphans every `orphan_grace` (not while a placement
    /// change is waiting for its pass: the moved slots' old fragments are
    /// orphans then, their new copies not made yet).
    async fn collect_orphans(&mut self, map: &ClusterMap) {
        let grace = self.options.orphan_grace;
        if grace.is_zero() || self.swept_at.is_some_and(|at| at.elapsed() < grace) {
            return;
        }
        if self.restored.as_ref() != Some(&map.groups) {
            return;
        }
        self.swept_at = Some(Instant::now());
        let storage = self.storage_for(map);
        match self.orphans.sweep(&self.meta, &storage, map).await {
            Ok(swept) => {
                if swept.deleted > 0 || swept.suspected > 0 {
                    tracing::info!(
                        "orphans: {} fragments listed, {} no one needs, {} deleted",
                        swept.listed,
                        swept.suspected,
                        swept.deleted
                    );
                }
                let now = {
                    let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.orphans_deleted += swept.deleted;
                    p.clone()
                };
                self.report(now).await;
            }
            Err(e) => tracing::warn!("orphans: sweep stopped: {e}"),
        }
    }

    /// The storage client, made on first use, with `map` installed. A
    /// background task keeps its map fresh while a long pass runs.
    fn storage_for(&mut self, map: &ClusterMap) -> Arc<StorageClient<MultiTransport>> {
        if let Some(storage) = &self.storage {
            storage.set_map(map.clone());
            return storage.clone();
        }
        let transport = MultiTransport::new(
            self.options.transport_mode,
            TcpOptions::default(),
            VerbsOptions::default(),
        );
        let stale = Arc::new(Notify::new());
        let storage = Arc::new(StorageClient::new(
            transport,
            map.clone(),
            tokio::runtime::Handle::current(),
            stale.clone(),
        ));
        tokio::spawn(refresh_map(
            Arc::downgrade(&storage),
            self.meta.clone(),
            stale,
            self.options.poll,
        ));
        self.storage = Some(storage.clone());
        storage
    }

    /// Reports the progress to metad every `poll` until the returned
    /// notify is woken.
    fn report_while_running(&self) -> Arc<Notify> {
        let stop = Arc::new(Notify::new());
        let (meta, progress, period, done) = (
            self.meta.clone(),
            self.progress.clone(),
            self.options.poll,
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = done.notified() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let now = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let _ = meta.call(MetaRequest::ReportRepair { progress: now }).await;
            }
        });
        stop
    }

    async fn report(&self, progress: RepairProgress) {
        if let Err(e) = self.meta.call(MetaRequest::ReportRepair { progress }).await {
            tracing::debug!("repair: report progress: {e}");
        }
    }
}

/// How long each storage node that holds placement slots has been down:
/// the leader's time since its last heartbeat, or the time since this
/// service first saw it down (a leader that just took office knows no
/// heartbeat age), whichever is longer. A node seen up starts over, so a
/// node that flaps is replaced only after `repair_after` of continuous
/// downtime.
#[derive(Default)]
struct Downtime {
    since: HashMap<NodeId, Instant>,
}

impl Downtime {
    /// The down nodes with placement slots in `map`, and for how long.
    fn observe(&mut self, map: &ClusterMap, now: Instant) -> Vec<(NodeId, Duration)> {
        self.since
            .retain(|id, _| map.node(*id).is_some_and(|n| n.state == NodeState::Down));
        map.nodes
            .iter()
            .filter(|n| n.state == NodeState::Down)
            .filter(|n| map.groups.iter().any(|g| g.nodes.contains(&n.info.id)))
            .map(|n| {
                let seen = *self.since.entry(n.info.id).or_insert(now);
                let heard = n
                    .last_heartbeat_ms_ago
                    .map(Duration::from_millis)
                    .unwrap_or_default();
                (n.info.id, heard.max(now.duration_since(seen)))
            })
            .collect()
    }
}

/// Refetches the cluster map every `period`, or at once when the storage
/// client finds it stale, until the storage client is dropped.
async fn refresh_map(
    storage: std::sync::Weak<StorageClient<MultiTransport>>,
    meta: MetaClient,
    stale: Arc<Notify>,
    period: Duration,
) {
    loop {
        tokio::select! {
            _ = stale.notified() => {}
            _ = tokio::time::sleep(period) => {}
        }
        let Some(storage) = storage.upgrade() else {
            return;
        };
        if let Ok(MetaReply::ClusterMap(map)) = meta.call(MetaRequest::ClusterMap).await {
            storage.set_map(map);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use torchfs_proto::meta::{NodeInfo, NodeStatus};

    fn map(states: &[(NodeId, NodeState, Option<u64>)]) -> ClusterMap {
        ClusterMap {
            nodes: states
                .iter()
                .map(|(id, state, ago)| NodeStatus {
                    info: NodeInfo {
                        id: *id,
                        host: "127.0.0.1".into(),
                        shard_ports: vec![1],
                        capacity_bytes: 0,
                        used_bytes: 0,
                        cores: 1,
                        transports: vec![],
                    },
                    state: *state,
                    last_heartbeat_ms_ago: *ago,
                })
                .collect(),
            groups: vec![PlacementGroup {
                id: 0,
                nodes: vec![1, 2, 3],
            }],
            ..ClusterMap::default()
        }
    }

    #[test]
    fn only_continuous_downtime_of_a_placed_node_counts() {
        use NodeState::{Down, Up};
        let mut d = Downtime::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        // A new leader knows no heartbeat age: the service's own clock. A
        // node in no placement group does not count.
        let first = d.observe(&map(&[(1, Down, None), (4, Down, None)]), t0);
        assert_eq!(first, vec![(1, Duration::ZERO)]);
        assert_eq!(
            d.observe(&map(&[(1, Down, None)]), t0 + 3 * s),
            vec![(1, 3 * s)]
        );
        // Up for a moment: it starts over (a flapping node is not replaced).
        assert!(d.observe(&map(&[(1, Up, Some(0))]), t0 + 4 * s).is_empty());
        let again = d.observe(&map(&[(1, Down, None)]), t0 + 5 * s);
        assert_eq!(again, vec![(1, Duration::ZERO)]);
        // The leader's heartbeat age counts when it is the longer.
        let heard = d.observe(&map(&[(1, Down, Some(9_000))]), t0 + 6 * s);
        assert_eq!(heard, vec![(1, 9 * s)]);
    }
}
