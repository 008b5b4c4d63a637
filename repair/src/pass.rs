//! One pass of repair: every file layout metad holds, page by page
//! (`ScanLayouts`), and for each stored stripe the fragments in scope,
//! checked where the current map places them and rebuilt from k others
//! when missing or corrupt (`StorageClient::repair_fragments`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::stream::{self, StreamExt};
use torchfs_proto::client::MetaClient;
use torchfs_proto::meta::{
    ClusterMap, FileLayout, Ino, MetaReply, MetaRequest, PlacementGroup, RepairProgress,
    StripeConfig, StripeEntry, LAYOUTS_MAX,
};
use torchfs_rdma::Transport;
use torchfs_storage_client::io::StripeRepair;
use torchfs_storage_client::StorageClient;

use crate::bandwidth::RepairBandwidth;
use crate::{unexpected, RepairError};

/// Which fragments a pass checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every stored fragment (a service's first pass, `torchfs repair`).
    All,
    /// Per placement-group id, the slots (fragment indices) whose node
    /// changed: a stripe of another group is not looked at.
    Slots(BTreeMap<u32, Vec<usize>>),
}

impl Scope {
    /// The slots that moved between two placements (groups matched by id;
    /// a group new in `now` moves all its slots). None: nothing moved.
    pub fn moved(before: &[PlacementGroup], now: &[PlacementGroup]) -> Option<Scope> {
        let mut slots = BTreeMap::new();
        for group in now {
            let old = before.iter().find(|g| g.id == group.id);
            let changed: Vec<usize> = group
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, node)| old.and_then(|g| g.nodes.get(*i)) != Some(*node))
                .map(|(i, _)| i)
                .collect();
            if !changed.is_empty() {
                slots.insert(group.id, changed);
            }
        }
        (!slots.is_empty()).then_some(Scope::Slots(slots))
    }

    /// The fragment indices of a stripe of `ino` to check under `map`.
    fn indices(&self, map: &ClusterMap, ino: Ino, stripe: u64) -> Vec<usize> {
        match self {
            Scope::All => (0..map.config.width()).collect(),
            Scope::Slots(slots) => map
                .group_of(ino, stripe)
                .and_then(|g| slots.get(&g.id))
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// How a pass runs.
#[derive(Clone, Default)]
pub struct PassOptions {
    /// Read each fragment whole (every chunk's CRC checked: a scrub)
    /// instead of one byte (the node checks its whole CRC and existence).
    pub verify_whole: bool,
    /// Bound on rebuild traffic; None: none.
    pub bandwidth: Option<Arc<RepairBandwidth>>,
}

/// Stripes checked and rebuilt at once.
const STRIPES_IN_FLIGHT: usize = 8;

/// Walks every layout metad holds and repairs the fragments in `scope`,
/// adding what it did to `progress` as it goes (the caller reports it).
/// A stripe that cannot be checked or rebuilt now (its node is down, fewer
/// than k fragments readable) is counted as failed and the pass goes on;
/// only metad failing stops it.
pub async fn run_pass<T: Transport>(
    meta: &MetaClient,
    storage: &StorageClient<T>,
    scope: &Scope,
    options: &PassOptions,
    progress: &Mutex<RepairProgress>,
) -> Result<(), RepairError> {
    let started = Instant::now();
    let mut after: Ino = 0;
    loop {
        let req = MetaRequest::ScanLayouts {
            after,
            limit: LAYOUTS_MAX as u32,
        };
        let page = match meta.call(req).await? {
            MetaReply::Layouts(page) => page,
            other => return Err(unexpected("ScanLayouts", other)),
        };
        let Some(last) = page.last() else { break };
        after = last.attr.ino;
        let full = page.len() >= LAYOUTS_MAX;
        let map = storage.map();
        let map = &*map;
        let work: Vec<(Ino, StripeConfig, &StripeEntry, Vec<usize>)> = page
            .iter()
            .flat_map(|FileLayout { attr, layout }| {
                layout.stripes.iter().map(move |entry| {
                    let indices = scope.indices(map, attr.ino, entry.stripe);
                    (attr.ino, layout.config, entry, indices)
                })
            })
            .filter(|(_, _, _, indices)| !indices.is_empty())
            .collect();
        let repairs = work
            .into_iter()
            .map(|(ino, config, entry, indices)| async move {
                let result = storage
                    .repair_fragments(ino, &config, entry, indices, options.verify_whole)
                    .await;
                if let (Ok(done), Some(bandwidth)) = (&result, &options.bandwidth) {
                    bandwidth
                        .spend(done.rebuilt_bytes * (u64::from(config.k) + 1))
                        .await;
                }
                (ino, entry.stripe, result)
            });
        let mut results = stream::iter(repairs).buffer_unordered(STRIPES_IN_FLIGHT);
        while let Some((ino, stripe, result)) = results.next().await {
            let done = result.unwrap_or_else(|e| {
                tracing::warn!("repair: inode {ino} stripe {stripe}: {e}");
                StripeRepair {
                    failed: 1,
                    ..StripeRepair::default()
                }
            });
            let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
            p.stripes_checked += 1;
            p.fragments_rebuilt += u64::from(done.rebuilt);
            p.bytes_rebuilt += done.rebuilt_bytes;
            p.fragments_failed += u64::from(done.failed);
            p.elapsed_ms = elapsed_ms(started);
        }
        if !full {
            break;
        }
    }
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
    p.elapsed_ms = elapsed_ms(started);
    Ok(())
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: u32, nodes: &[u64]) -> PlacementGroup {
        PlacementGroup {
            id,
            nodes: nodes.to_vec(),
        }
    }

    #[test]
    fn the_moved_slots_are_those_whose_node_changed() {
        let before = [group(0, &[1, 2, 3]), group(1, &[2, 3, 1])];
        assert_eq!(Scope::moved(&before, &before), None);
        let now = [group(0, &[4, 2, 3]), group(1, &[2, 3, 5])];
        let moved = Scope::moved(&before, &now);
        let want = BTreeMap::from([(0, vec![0]), (1, vec![2])]);
        assert_eq!(moved, Some(Scope::Slots(want)));
        // A group that was not there moves every slot.
        let grown = [
            group(0, &[1, 2, 3]),
            group(1, &[2, 3, 1]),
            group(2, &[3, 1, 2]),
        ];
        let want = BTreeMap::from([(2, vec![0, 1, 2])]);
        assert_eq!(Scope::moved(&before, &grown), Some(Scope::Slots(want)));
    }

    #[test]
    fn a_stripe_outside_the_moved_groups_is_not_checked() {
        let mut map = ClusterMap {
            config: StripeConfig {
                k: 2,
                m: 1,
                unit_bytes: 4096,
            },
            groups: vec![group(0, &[1, 2, 3]), group(1, &[2, 3, 4])],
            ..ClusterMap::default()
        };
        map.epoch = 3;
        let scope = Scope::Slots(BTreeMap::from([(1, vec![2])]));
        let (mut hit, mut miss) = (0, 0);
        for stripe in 0..64 {
            match map.group_of(9, stripe).map(|g| g.id) {
                Some(1) => {
                    assert_eq!(scope.indices(&map, 9, stripe), vec![2]);
                    hit += 1;
                }
                _ => {
                    assert!(scope.indices(&map, 9, stripe).is_empty());
                    miss += 1;
                }
            }
            assert_eq!(Scope::All.indices(&map, 9, stripe), vec![0, 1, 2]);
        }
        assert!(hit > 0 && miss > 0);
    }
}
