//! The cluster as the metadata API describes it: storage nodes and their
//! state, placement groups and where a stripe's fragments go, the cluster
//! map and status, and what the repair service reports.

use serde::{Deserialize, Serialize};

use super::{Ino, NodeId, StripeConfig};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Host name or IP address clients connect to.
    pub host: String,
    /// One TCP port per executor (shard) of the node; a fragment key is
    /// served by shard `shard_of(key, shard_ports.len())`.
    pub shard_ports: Vec<u16>,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub cores: u32,
    /// Transports the node speaks, e.g. `["tcp"]`.
    pub transports: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub info: NodeInfo,
    pub state: NodeState,
    /// None when the answering leader has not heard from the node since it
    /// took office.
    pub last_heartbeat_ms_ago: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PlacementGroup {
    pub id: u32,
    /// k+m distinct nodes: fragment `i` of a stripe in this group lives on
    /// `nodes[i]`.
    pub nodes: Vec<NodeId>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ClusterMap {
    /// Bumped whenever nodes or groups change.
    pub epoch: u64,
    pub config: StripeConfig,
    pub nodes: Vec<NodeStatus>,
    /// Empty until k+m storage nodes have registered.
    pub groups: Vec<PlacementGroup>,
}

impl ClusterMap {
    /// The placement group of a stripe: a hash of (ino, stripe) over the
    /// group table (docs/ARCHITECTURE.md: Data path). None while there are no groups.
    pub fn group_of(&self, ino: Ino, stripe: u64) -> Option<&PlacementGroup> {
        group_of(&self.groups, ino, stripe)
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.info.id == id)
    }
}

/// The placement group of a stripe among `groups`: a hash of (ino,
/// stripe) over the group table (docs/ARCHITECTURE.md: Data path). None
/// while there are no groups.
pub fn group_of(groups: &[PlacementGroup], ino: Ino, stripe: u64) -> Option<&PlacementGroup> {
    if groups.is_empty() {
        return None;
    }
    let index = placement_hash(ino, stripe) % groups.len() as u64;
    groups.get(index as usize)
}

/// Stable 64-bit mix of (ino, stripe) used for placement (splitmix64).
pub fn placement_hash(ino: Ino, stripe: u64) -> u64 {
    let mut z = ino
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(stripe)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: u64,
    pub addr: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    pub voters: Vec<Voter>,
    pub map: ClusterMap,
    /// The repair service's last report (all zeros: none yet).
    pub repair: RepairProgress,
}

/// What the repair service reports of its current (or last) pass over the
/// stored stripes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RepairProgress {
    /// Passes started since the service started.
    pub pass: u64,
    /// The map whose placement the pass restores.
    pub map_epoch: u64,
    /// Why the pass runs ("start", "node 3 replaced", ...).
    pub reason: String,
    pub stripes_checked: u64,
    pub fragments_rebuilt: u64,
    pub bytes_rebuilt: u64,
    /// Fragments that could not be rebuilt (fewer than k readable).
    pub fragments_failed: u64,
    pub elapsed_ms: u64,
    pub done: bool,
    /// Nodes this service had replaced, oldest first.
    pub nodes_replaced: Vec<NodeId>,
    /// Fragments reported to put back (found corrupt by storage nodes'
    /// scrubs, left out by degraded writes), since the service started.
    pub bad_reported: u64,
    /// Of those, rebuilt.
    pub bad_rebuilt: u64,
    /// Fragments no one needed (orphans), deleted since the service
    /// started.
    pub orphans_deleted: u64,
}

/// One fragment of a stripe: fragment `index` of stripe `stripe` (written
/// as `generation`) of file `ino`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FragmentRef {
    pub ino: Ino,
    pub stripe: u64,
    pub generation: u64,
    pub index: u8,
}
