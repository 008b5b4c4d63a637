//! The node registry and placement groups.

use super::*;
use torchfs_proto::meta::FragmentRef;

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

fn registered(ids: &[NodeId]) -> T {
    let mut t = T::new(); // width 3
    for id in ids {
        t.w(MetaRequest::RegisterNode { info: node(*id) }).unwrap();
    }
    t
}

fn replace(t: &mut T, node: NodeId, candidates: &[NodeId]) -> Result<MetaReply, MetaError> {
    t.w(MetaRequest::ReplaceNode {
        node,
        candidates: candidates.to_vec(),
    })
}

#[test]
fn a_lost_node_leaves_every_group_for_a_spread_of_others() {
    let mut t = registered(&[10, 20, 30, 40, 50]);
    assert_eq!(t.st.groups().len(), 3);
    let before: Vec<_> = t.st.groups().to_vec();
    let epoch = t.st.epoch();
    assert_eq!(
        replace(&mut t, 10, &[20, 30, 40, 50]),
        Ok(MetaReply::Count(3))
    );
    assert!(t.st.epoch() > epoch);
    assert!(!t.st.places(10));
    let mut counts = std::collections::BTreeMap::new();
    for (g, old) in t.st.groups().iter().zip(&before) {
        let mut distinct = g.nodes.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "group {g:?} holds a node twice");
        // Only the lost node's slot changed.
        for (a, b) in g.nodes.iter().zip(&old.nodes) {
            assert!(a == b || *b == 10, "{old:?} -> {g:?}");
        }
        for n in &g.nodes {
            *counts.entry(*n).or_insert(0) += 1;
        }
    }
    // The groups formed over the first three nodes: the lost one's three
    // slots go to the two nodes in no group, spread.
    let spread: Vec<_> = [20, 30, 40, 50]
        .iter()
        .map(|n| counts.get(n).copied())
        .collect();
    assert_eq!(spread, [Some(3), Some(3), Some(2), Some(1)]);
}

#[test]
fn a_group_no_candidate_can_join_keeps_the_node() {
    // 3 nodes, width 3: every group holds every node.
    let mut t = registered(&[10, 20, 30]);
    let epoch = t.st.epoch();
    assert_eq!(replace(&mut t, 10, &[20, 30]), Ok(MetaReply::Count(0)));
    assert_eq!(t.st.epoch(), epoch);
    assert!(t.st.places(10));
    // A down candidate is not offered; a node is never its own candidate.
    let mut t = registered(&[10, 20, 30, 40]);
    assert_eq!(replace(&mut t, 10, &[10]), Ok(MetaReply::Count(0)));
    assert!(t.st.places(10));
}

#[test]
fn replacing_twice_changes_nothing_and_an_unknown_node_is_refused() {
    let mut t = registered(&[10, 20, 30, 40]);
    assert_eq!(replace(&mut t, 10, &[20, 30, 40]), Ok(MetaReply::Count(3)));
    let (epoch, groups) = (t.st.epoch(), t.st.groups().to_vec());
    assert_eq!(replace(&mut t, 10, &[20, 30, 40]), Ok(MetaReply::Count(0)));
    assert_eq!((t.st.epoch(), t.st.groups()), (epoch, &groups[..]));
    let err = replace(&mut t, 99, &[20]).unwrap_err();
    assert_eq!(err.errno(), errno::ENOENT);
}

#[test]
fn a_fragment_lives_where_its_stripe_s_group_places_it_at_its_generation() {
    let mut t = registered(&[10, 20, 30]);
    let f = t.create(ROOT_INO, "f");
    t.commit(f.ino, 400, &[0, 1]).unwrap();
    let frag = |stripe, generation, index| FragmentRef {
        ino: f.ino,
        stripe,
        generation,
        index,
    };
    for stripe in [0u64, 1] {
        let group = torchfs_proto::meta::group_of(t.st.groups(), f.ino, stripe).unwrap();
        for index in 0..3u8 {
            assert_eq!(
                t.st.fragment_home(&frag(stripe, 1, index)),
                Some(group.nodes[index as usize])
            );
        }
    }
    // Another generation (an upload not committed, a replaced one), a
    // stripe the file does not have, a file that does not exist: no one's.
    assert_eq!(t.st.fragment_home(&frag(0, 2, 0)), None);
    assert_eq!(t.st.fragment_home(&frag(7, 1, 0)), None);
    let gone = FragmentRef {
        ino: 999,
        ..frag(0, 1, 0)
    };
    assert_eq!(t.st.fragment_home(&gone), None);
}
