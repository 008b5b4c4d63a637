//! The node registry and placement groups.

use super::*;

fn node(id: NodeId) -> NodeInfo {
    NodeInfo {
        id,
        host: format!("10.0.0.{id}"),
        shard_ports: vec![7000],
        capacity_bytes: 1000,
        used_bytes: 10,
        cores: 1,
        transports: vec!["tcp".into()],
    }
}

#[test]
fn placement_groups_form_once_enough_nodes_register() {
    let mut t = T::new(); // width 3
    for id in [30, 10] {
        t.w(MetaRequest::RegisterNode { info: node(id) }).unwrap();
    }
    assert!(t.st.groups().is_empty());
    assert_eq!(t.st.epoch(), 2);
    t.w(MetaRequest::RegisterNode { info: node(20) }).unwrap();
    let g: Vec<_> = t.st.groups().iter().map(|g| g.nodes.clone()).collect();
    assert_eq!(
        g,
        vec![vec![10, 20, 30], vec![20, 30, 10], vec![30, 10, 20]]
    );
    // Re-registering updates the address; a fourth node does not rebalance.
    let mut moved = node(20);
    moved.host = "new".into();
    t.w(MetaRequest::RegisterNode { info: moved }).unwrap();
    t.w(MetaRequest::RegisterNode { info: node(40) }).unwrap();
    assert_eq!(t.st.nodes()[&20].host, "new");
    assert_eq!(t.st.groups().len(), 3);
    assert_eq!(t.st.epoch(), 5);
}

#[test]
fn placement_groups_formula() {
    let g = placement_groups(&[1, 2, 3, 4, 5, 6, 7], 6);
    assert_eq!(g.len(), 7);
    assert_eq!(g[6].nodes, vec![7, 1, 2, 3, 4, 5]);
    for grp in &g {
        let mut n = grp.nodes.clone();
        n.dedup();
        assert_eq!(n.len(), 6);
    }
}
