//! The cluster map as this client knows it (storage nodes, their state and
//! the placement groups), and where a fragment lives according to it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::{ClusterMap, NodeId, NodeState};

use crate::error::StorageError;

/// The current map, swapped whole on refresh; readers take an `Arc` and
/// never block a refresh for long.
pub struct MapCache {
    current: RwLock<Arc<ClusterMap>>,
}

impl MapCache {
    pub fn new(map: ClusterMap) -> Self {
        Self {
            current: RwLock::new(Arc::new(map)),
        }
    }

    pub fn get(&self) -> Arc<ClusterMap> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Installs `map` unless it is older than the one held (answers from a
    /// stale voter can arrive after newer ones).
    pub fn set(&self, map: ClusterMap) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if map.epoch >= current.epoch {
            *current = Arc::new(map);
        }
    }
}

/// Where one fragment is stored, per the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: NodeId,
    pub up: bool,
    pub host: String,
    pub port: u16,
}

/// The node and shard port holding `key`: fragment `i` of a stripe lives on
/// `group.nodes[i]`, on shard `key.shard(ports)` of that node.
pub fn locate(map: &ClusterMap, key: FragmentKey) -> Result<Target, StorageError> {
    let needed = map.config.width();
    let no_placement = || StorageError::NoPlacement {
        ino: key.ino,
        stripe: key.stripe,
        nodes: map.nodes.len(),
        needed,
    };
    let group = map.group_of(key.ino, key.stripe).ok_or_else(no_placement)?;
    let node = *group
        .nodes
        .get(key.index as usize)
        .ok_or_else(no_placement)?;
    let unknown = || StorageError::UnknownNode {
        node,
        key,
        epoch: map.epoch,
    };
    let status = map.node(node).ok_or_else(unknown)?;
    let ports = &status.info.shard_ports;
    let port = *ports.get(key.shard(ports.len())).ok_or_else(unknown)?;
    Ok(Target {
        node,
        up: status.state == NodeState::Up,
        host: status.info.host.clone(),
        port,
    })
}

/// Resolves a node's host (an IP address, or a name) and port.
pub async fn resolve(target: &Target) -> Result<SocketAddr, StorageError> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, target.port));
    }
    let err = |source| StorageError::Resolve {
        node: target.node,
        host: target.host.clone(),
        port: target.port,
        source,
    };
    let mut addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(err)?;
    addrs.next().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        ))
    })
}

/// Maps for tests of this crate and of the layers above it.
pub mod testing {
    use super::*;
    use torchfs_proto::meta::{NodeInfo, NodeStatus, PlacementGroup, StripeConfig};

    /// A map of `nodes` nodes (ids 1..=n, two shards each, all up) with one
    /// group per rotation of the node list.
    pub fn test_map(config: StripeConfig, nodes: u64) -> ClusterMap {
        let width = config.width() as u64;
        let statuses = (1..=nodes)
            .map(|id| NodeStatus {
                info: NodeInfo {
                    id,
                    host: "127.0.0.1".into(),
                    shard_ports: vec![10_000 + 2 * id as u16, 10_001 + 2 * id as u16],
                    capacity_bytes: 1 << 40,
                    used_bytes: 0,
                    cores: 2,
                    transports: vec!["tcp".into()],
                },
                state: NodeState::Up,
                last_heartbeat_ms_ago: Some(0),
            })
            .collect();
        let groups = if nodes >= width {
            (0..nodes)
                .map(|g| PlacementGroup {
                    id: g as u32,
                    nodes: (0..width).map(|i| 1 + (g + i) % nodes).collect(),
                })
                .collect()
        } else {
            Vec::new()
        };
        ClusterMap {
            epoch: 1,
            config,
            nodes: statuses,
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::test_map;
    use super::*;
    use torchfs_proto::meta::StripeConfig;

    #[test]
    fn locates_fragments_on_group_nodes() {
        let map = test_map(StripeConfig::DEFAULT, 8);
        let key = FragmentKey {
            ino: 9,
            stripe: 3,
            generation: 7,
            index: 4,
        };
        let t = locate(&map, key).unwrap();
        let group = map.group_of(9, 3).unwrap();
        assert_eq!(t.node, group.nodes[4]);
        assert!(t.up);
        let ports = &map.node(t.node).unwrap().info.shard_ports;
        assert_eq!(t.port, ports[key.shard(2)]);
    }

    #[test]
    fn no_groups_is_no_placement() {
        let map = test_map(StripeConfig::DEFAULT, 3);
        let key = FragmentKey {
            ino: 9,
            stripe: 0,
            generation: 7,
            index: 0,
        };
        let err = locate(&map, key).unwrap_err();
        assert!(matches!(err, StorageError::NoPlacement { .. }), "{err}");
    }

    #[test]
    fn older_maps_are_ignored() {
        let mut map = test_map(StripeConfig::DEFAULT, 6);
        map.epoch = 5;
        let cache = MapCache::new(map.clone());
        map.epoch = 4;
        map.nodes.clear();
        cache.set(map);
        assert_eq!(cache.get().epoch, 5);
        assert_eq!(cache.get().nodes.len(), 6);
    }
}
