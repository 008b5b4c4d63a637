//! The storage-node registry and the placement groups built over it once
//! enough nodes (one per fragment of a stripe) have registered.

use torchfs_proto::meta::{MetaError, MetaReply, NodeId, NodeInfo, PlacementGroup};

use super::{Outcome, State};

impl State {
    /// Adds or updates a node (a re-registration may change its address).
    /// The first time `k + m` nodes are known the placement groups are
    /// formed; later nodes do not rebalance them.
    pub(super) fn register_node(&mut self, info: &NodeInfo) -> Outcome {
        if info.host.is_empty() {
            return Err(MetaError::Invalid(format!("node {} has no host", info.id)));
        }
        self.nodes.insert(info.id, info.clone());
        self.epoch += 1;
        let width = self.config.width();
        if self.groups.is_empty() && width > 0 && self.nodes.len() >= width {
            self.groups = placement_groups(&self.nodes.keys().copied().collect::<Vec<_>>(), width);
        }
        Ok(MetaReply::Unit)
    }
}

/// N groups over N nodes sorted by id: group g = nodes[(g + j) % N] for j in
/// 0..width, so every node leads one group and appears in `width` groups.
pub fn placement_groups(sorted_ids: &[NodeId], width: usize) -> Vec<PlacementGroup> {
    let n = sorted_ids.len();
    (0..n)
        .map(|g| PlacementGroup {
            id: g as u32,
            nodes: (0..width).map(|j| sorted_ids[(g + j) % n]).collect(),
        })
        .collect()
}
