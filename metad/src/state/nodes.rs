//! The storage-node registry, the placement groups built over it once
//! enough nodes (one per fragment of a stripe) have registered, and the
//! replacement of a lost node in them.

use std::collections::BTreeMap;

use torchfs_proto::meta::{errno, MetaError, MetaReply, NodeId, NodeInfo, PlacementGroup};

use super::{fs, Outcome, State};

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

    /// Gives each slot `node` holds in a placement group to one of
    /// `candidates` (up when the leader proposed this) that is not in that
    /// group: the one in the fewest groups, then the lowest id, so the
    /// slots spread. A group no candidate can join keeps the node (its
    /// stripes stay one fragment short until a node joins). Layouts do not
    /// change: a stripe's fragment `i` now lives on the group's new `i`th
    /// node, where the repair service rebuilds it. Answers the number of
    /// slots given away.
    pub(super) fn replace_node(&mut self, node: NodeId, candidates: &[NodeId]) -> Outcome {
        if !self.nodes.contains_key(&node) {
            return Err(fs(
                errno::ENOENT,
                format!("storage node {node} is not registered"),
            ));
        }
        let mut memberships: BTreeMap<NodeId, usize> = candidates
            .iter()
            .filter(|c| **c != node && self.nodes.contains_key(c))
            .map(|c| (*c, 0))
            .collect();
        for group in &self.groups {
            for n in &group.nodes {
                if let Some(count) = memberships.get_mut(n) {
                    *count += 1;
                }
            }
        }
        let mut moved = 0u64;
        for group in &mut self.groups {
            let Some(slot) = group.nodes.iter().position(|n| *n == node) else {
                continue;
            };
            let pick = memberships
                .iter()
                .filter(|(c, _)| !group.nodes.contains(c))
                .min_by_key(|(c, count)| (**count, **c))
                .map(|(c, _)| *c);
            if let Some(new) = pick {
                group.nodes[slot] = new;
                *memberships.entry(new).or_default() += 1;
                moved += 1;
            }
        }
        if moved > 0 {
            self.epoch += 1;
        }
        Ok(MetaReply::Count(moved))
    }

    /// Whether `node` holds a slot in any placement group.
    pub fn places(&self, node: NodeId) -> bool {
        self.groups.iter().any(|g| g.nodes.contains(&node))
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
