//! Round trips of every request and reply, and malformed input.

use super::*;
use crate::meta::*;
use crate::metadata_capnp as mc;

fn rt_req(req: MetaRequest) {
    let mut msg = capnp::message::Builder::new_default();
    write_request(&req, msg.init_root());
    let words = capnp::serialize::write_message_to_words(&msg);
    let reader = capnp::serialize::read_message(&mut &words[..], Default::default()).unwrap();
    let back = read_request(reader.get_root().unwrap()).unwrap();
    assert_eq!(back, req);
}

fn rt_resp(resp: std::result::Result<MetaReply, MetaError>) {
    let mut msg = capnp::message::Builder::new_default();
    write_response(&resp, msg.init_root());
    let words = capnp::serialize::write_message_to_words(&msg);
    let reader = capnp::serialize::read_message(&mut &words[..], Default::default()).unwrap();
    let back = read_response(reader.get_root().unwrap()).unwrap();
    assert_eq!(back, resp);
}

fn attr() -> Attr {
    Attr {
        ino: 42,
        kind: FileKind::Symlink,
        mode: 0o644,
        uid: 1000,
        gid: 100,
        size: 1 << 40,
        nlink: 3,
        atime_ns: -5,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 7,
        rdev: 0,
        has_xattrs: false,
        frozen: false,
    }
}

fn stripe(n: u64) -> StripeEntry {
    StripeEntry {
        stripe: n,
        generation: n + 9,
        encoded_bytes: 4096,
        valid_bytes: 100,
        crcs: vec![1, 2, 3, 0, 5, 6],
    }
}

fn node(id: u64) -> NodeInfo {
    NodeInfo {
        id,
        host: "10.0.0.1".into(),
        shard_ports: vec![7000, 7001],
        capacity_bytes: 1 << 30,
        used_bytes: 12,
        cores: 2,
        transports: vec!["tcp".into(), "rdma".into()],
    }
}

fn map() -> ClusterMap {
    ClusterMap {
        epoch: 3,
        config: StripeConfig::DEFAULT,
        nodes: vec![
            NodeStatus {
                info: node(1),
                state: NodeState::Up,
                last_heartbeat_ms_ago: Some(12),
            },
            NodeStatus {
                info: node(2),
                state: NodeState::Down,
                last_heartbeat_ms_ago: None,
            },
        ],
        groups: vec![PlacementGroup {
            id: 0,
            nodes: vec![1, 2, 3, 4, 5, 6],
        }],
    }
}

fn lock(kind: LockKind) -> FileLock {
    FileLock {
        client_id: 0xfeed_0000_0000_0001,
        owner: u64::MAX - 1,
        pid: 4242,
        kind,
        start: 100,
        end: u64::MAX,
    }
}

#[test]
fn every_request_round_trips() {
    let name = || "naïve-名前".to_string();
    for req in [
        MetaRequest::Lookup {
            parent: 1,
            name: name(),
        },
        MetaRequest::GetAttr { ino: 9 },
        MetaRequest::SetAttr {
            ino: 9,
            set: SetAttr::default(),
        },
        MetaRequest::SetAttr {
            ino: 9,
            set: SetAttr {
                mode: Some(0o600),
                uid: Some(1),
                gid: Some(2),
                size: Some(77),
                atime: Some(SetTime::Now),
                mtime: Some(SetTime::Ns(-3)),
            },
        },
        MetaRequest::ReadDir {
            ino: 1,
            after: name(),
            limit: 10,
        },
        MetaRequest::Create {
            umask: 0,
            parent: 1,
            name: name(),
            mode: 0o644,
            uid: 1,
            gid: 2,
            exclusive: true,
        },
        MetaRequest::Mkdir {
            umask: 0,
            parent: 1,
            name: name(),
            mode: 0o755,
            uid: 1,
            gid: 2,
        },
        MetaRequest::Unlink {
            parent: 1,
            name: name(),
        },
        MetaRequest::Rmdir {
            parent: 1,
            name: name(),
        },
        MetaRequest::Rename {
            mode: Default::default(),
            parent: 1,
            name: name(),
            new_parent: 5,
            new_name: "b".into(),
        },
        MetaRequest::Link {
            ino: 4,
            new_parent: 5,
            new_name: "c".into(),
        },
        MetaRequest::Symlink {
            parent: 1,
            name: name(),
            target: "/x/y".into(),
            uid: 3,
            gid: 4,
        },
        MetaRequest::ReadLink { ino: 4 },
        MetaRequest::StatFs,
        MetaRequest::GetLayout { ino: 4 },
        MetaRequest::ReplaceNode {
            node: 3,
            candidates: vec![1, 2, 4],
        },
        MetaRequest::ScanLayouts {
            after: 17,
            limit: 64,
        },
        MetaRequest::ReportBadFragments {
            node: 4,
            fragments: vec![FragmentRef {
                ino: 9,
                stripe: 2,
                generation: 7,
                index: 5,
            }],
        },
        MetaRequest::TakeBadFragments,
        MetaRequest::CheckOrphans {
            node: 2,
            fragments: vec![FragmentRef {
                ino: 3,
                stripe: 4,
                generation: 5,
                index: 1,
            }],
        },
        MetaRequest::ReportRepair {
            progress: RepairProgress {
                pass: 1,
                reason: "start".into(),
                ..RepairProgress::default()
            },
        },
        MetaRequest::CommitLayout {
            ino: 4,
            size: 9000,
            stripes: vec![stripe(0), stripe(1)],
        },
        MetaRequest::CommitStripes {
            ino: 4,
            size_at_least: 1 << 40,
            stripes: vec![stripe(0), stripe(3)],
            bases: vec![
                StripeBase::default(),
                StripeBase {
                    generation: u64::MAX,
                    valid_bytes: 7,
                },
            ],
        },
        MetaRequest::RegisterNode { info: node(8) },
        MetaRequest::Heartbeat {
            id: 8,
            used_bytes: 1,
            capacity_bytes: 2,
        },
        MetaRequest::ClusterMap,
        MetaRequest::ClusterStatus,
        MetaRequest::Freeze { ino: 9 },
        MetaRequest::Unfreeze { ino: 10 },
        MetaRequest::ReadFrozen {
            ino: 11,
            offset: 1 << 33,
            limit: 500,
        },
        MetaRequest::Mknod {
            parent: 1,
            name: name(),
            kind: FileKind::CharDevice,
            mode: 0o620,
            umask: 0o022,
            uid: 5,
            gid: 6,
            rdev: 0x0501,
        },
        MetaRequest::SetXattr {
            ino: 4,
            name: "user.naïve".into(),
            value: vec![0, 1, 255],
            mode: XattrMode::Replace,
        },
        MetaRequest::RemoveXattr {
            ino: 4,
            name: "trusted.x".into(),
        },
        MetaRequest::GetXattrs { ino: 4 },
        MetaRequest::Open {
            ino: 4,
            client_id: u64::MAX,
        },
        MetaRequest::CreateOpen {
            parent: 1,
            name: "new".into(),
            mode: 0o100644,
            umask: 0o022,
            uid: 1000,
            gid: 1000,
            exclusive: true,
            client_id: 77,
        },
        MetaRequest::KeepAlive {
            client_id: 3,
            open: vec![4, 5, 1 << 40],
            deleted: vec![],
        },
        MetaRequest::SetLock {
            ino: 4,
            lock: lock(LockKind::Write),
        },
        MetaRequest::GetLock {
            ino: 4,
            lock: lock(LockKind::Read),
        },
        MetaRequest::SetLock {
            ino: 4,
            lock: lock(LockKind::Unlock),
        },
        MetaRequest::LookupMany {
            parent: 1,
            names: vec!["a".into(), "é b".into(), String::new()],
        },
        MetaRequest::LookupMany {
            parent: 1,
            names: vec![],
        },
        MetaRequest::ReadDirPlus {
            ino: 9,
            start: "f0001".into(),
            limit: 512,
        },
        MetaRequest::GetLayouts {
            inos: vec![4, 1 << 40],
        },
        MetaRequest::GetLayouts { inos: vec![] },
    ] {
        rt_req(req);
    }
}

#[test]
fn every_reply_round_trips() {
    for resp in [
        Ok(MetaReply::Attr(attr())),
        Ok(MetaReply::Entries(vec![
            DirEntry {
                name: "a".into(),
                ino: 2,
                kind: FileKind::File,
            },
            DirEntry {
                name: "d".into(),
                ino: 3,
                kind: FileKind::Dir,
            },
        ])),
        Ok(MetaReply::Entries(vec![])),
        Ok(MetaReply::Unit),
        Ok(MetaReply::Freed(vec![stripe(0), stripe(5)])),
        Ok(MetaReply::Unlinked {
            ino: 42,
            freed: vec![stripe(1)],
        }),
        Ok(MetaReply::LookedUp(vec![
            NamedAttr {
                name: "a".into(),
                attr: attr(),
            },
            NamedAttr {
                name: "b".into(),
                attr: attr(),
            },
        ])),
        Ok(MetaReply::LookedUp(vec![])),
        Ok(MetaReply::Link("../t".into())),
        Ok(MetaReply::StatFs(StatFs {
            total_bytes: 10,
            used_bytes: 4,
            files: 99,
            files_free: 7,
        })),
        Ok(MetaReply::Layout {
            attr: attr(),
            layout: Layout {
                config: StripeConfig {
                    k: 8,
                    m: 3,
                    unit_bytes: 4096,
                },
                stripes: vec![stripe(2)],
            },
        }),
        Ok(MetaReply::Layouts(
            [vec![stripe(0), stripe(3)], vec![]]
                .into_iter()
                .map(|stripes| FileLayout {
                    attr: attr(),
                    layout: Layout {
                        config: StripeConfig {
                            k: 4,
                            m: 2,
                            unit_bytes: 1 << 20,
                        },
                        stripes,
                    },
                })
                .collect(),
        )),
        Ok(MetaReply::Layouts(vec![])),
        Ok(MetaReply::Committed {
            attr: attr(),
            replaced: vec![stripe(1)],
        }),
        Ok(MetaReply::Conflict {
            attr: attr(),
            stripes: vec![stripe(2), stripe(5)],
        }),
        Ok(MetaReply::Conflict {
            attr: attr(),
            stripes: vec![],
        }),
        Ok(MetaReply::AttrFreed {
            attr: attr(),
            freed: vec![],
        }),
        Ok(MetaReply::ClusterMap(map())),
        Ok(MetaReply::Frozen {
            root: Attr {
                kind: FileKind::Dir,
                frozen: true,
                ..attr()
            },
            entries: vec![
                FrozenEntry {
                    parent: 42,
                    name: "f".into(),
                    attr: Attr {
                        kind: FileKind::File,
                        frozen: true,
                        ..attr()
                    },
                    body: FrozenBody::File(Layout {
                        config: StripeConfig::DEFAULT,
                        stripes: vec![stripe(0), stripe(1)],
                    }),
                },
                FrozenEntry {
                    parent: 42,
                    name: "d".into(),
                    attr: Attr {
                        kind: FileKind::Dir,
                        ..attr()
                    },
                    body: FrozenBody::Dir,
                },
                FrozenEntry {
                    parent: 43,
                    name: "s".into(),
                    attr: attr(),
                    body: FrozenBody::Symlink("../f".into()),
                },
            ],
            more: true,
        }),
        Ok(MetaReply::Frozen {
            root: attr(),
            entries: vec![],
            more: false,
        }),
        Ok(MetaReply::ClusterStatus(ClusterStatus {
            leader: Some(2),
            term: 5,
            last_applied: 1234,
            voters: vec![
                Voter {
                    id: 1,
                    addr: "127.0.0.1:1".into(),
                },
                Voter {
                    id: 2,
                    addr: "h:2".into(),
                },
            ],
            map: map(),
            repair: RepairProgress {
                pass: 3,
                map_epoch: 9,
                reason: "node 4 replaced".into(),
                stripes_checked: 100,
                fragments_rebuilt: 7,
                bytes_rebuilt: 7 << 20,
                fragments_failed: 1,
                elapsed_ms: 1500,
                done: true,
                nodes_replaced: vec![4, 2],
                bad_reported: 5,
                bad_rebuilt: 4,
                orphans_deleted: 12,
            },
        })),
        Ok(MetaReply::ClusterStatus(ClusterStatus {
            leader: None,
            term: 0,
            last_applied: 0,
            voters: vec![],
            map: ClusterMap::default(),
            repair: RepairProgress::default(),
        })),
        Ok(MetaReply::Count(6)),
        Ok(MetaReply::Fragments(vec![FragmentRef {
            ino: 1,
            stripe: 0,
            generation: 1,
            index: 0,
        }])),
        Ok(MetaReply::Xattrs(vec![
            Xattr {
                name: "user.a".into(),
                value: vec![],
            },
            Xattr {
                name: "system.posix_acl_access".into(),
                value: vec![2, 0, 0, 0],
            },
        ])),
        Ok(MetaReply::KeepAlive {
            lease_ms: 5000,
            garbage: vec![Garbage {
                ino: 77,
                layout: Layout {
                    config: StripeConfig::DEFAULT,
                    stripes: vec![stripe(3)],
                },
            }],
        }),
        Ok(MetaReply::Lock {
            conflict: Some(lock(LockKind::Write)),
        }),
        Ok(MetaReply::Lock { conflict: None }),
        Err(MetaError::fs(errno::ENOENT, "no such entry")),
        Err(MetaError::NotLeader {
            leader_id: Some(3),
            leader_addr: Some("h:3".into()),
        }),
        Err(MetaError::NotLeader {
            leader_id: None,
            leader_addr: None,
        }),
        Err(MetaError::Unavailable("no quorum".into())),
        Err(MetaError::Invalid("bad".into())),
        Err(MetaError::SessionExpired {
            client_id: u64::MAX,
            seq: 12,
        }),
    ] {
        rt_resp(resp);
    }
}

#[test]
fn write_id_rides_beside_the_request() {
    let id = WriteId {
        client_id: 0xdead_beef_0000_0001,
        seq: 7,
        lowest_outstanding_seq: 5,
    };
    let req = MetaRequest::Unlink {
        parent: 1,
        name: "a".into(),
    };
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut b = msg.init_root::<mc::request::Builder>();
        write_request(&req, b.reborrow());
        write_write_id(&id, b);
    }
    let words = capnp::serialize::write_message_to_words(&msg);
    let reader = capnp::serialize::read_message(&mut &words[..], Default::default()).unwrap();
    let root = reader.get_root::<mc::request::Reader>().unwrap();
    assert_eq!(read_request(root).unwrap(), req);
    assert_eq!(read_write_id(root).unwrap(), Some(id));

    // A request without one (a read, or an older client) reads as None.
    let mut msg = capnp::message::Builder::new_default();
    write_request(&req, msg.init_root());
    let root = msg.get_root_as_reader::<mc::request::Reader>().unwrap();
    assert_eq!(read_write_id(root).unwrap(), None);
}

/// Writes `dirs` beside a Unit reply and reads them back.
fn rt_dirs(dirs: &[ChangedDir]) -> Vec<ChangedDir> {
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut b = msg.init_root::<mc::response::Builder>();
        write_response(&Ok(MetaReply::Unit), b.reborrow());
        write_dirs(dirs, b);
    }
    let words = capnp::serialize::write_message_to_words(&msg);
    let reader = capnp::serialize::read_message(&mut &words[..], Default::default()).unwrap();
    read_dirs(reader.get_root().unwrap()).unwrap()
}

#[test]
fn changed_dirs_ride_beside_the_reply_with_their_ctime_before() {
    let changed = |ino, before| ChangedDir {
        attr: Attr { ino, ..attr() },
        ctime_before_ns: before,
    };
    let both = [changed(1, Some(-3)), changed(9, Some(1 << 62))];
    assert_eq!(rt_dirs(&both), both);
    assert_eq!(rt_dirs(&[]), []);
    // One without a ctime (as an older metad sends them): none has one,
    // rather than ctimes paired with the wrong directories.
    let back = rt_dirs(&[changed(1, Some(5)), changed(2, None)]);
    assert_eq!(back, [changed(1, None), changed(2, None)]);
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    // Non-UTF-8 name.
    let mut msg = capnp::message::Builder::new_default();
    {
        let mut g = msg.init_root::<mc::request::Builder>().init_lookup();
        g.set_parent(1);
        g.set_name(capnp::text::Reader::from(&[0xffu8, 0xfe][..]));
    }
    let r = msg.get_root_as_reader::<mc::request::Reader>().unwrap();
    assert!(read_request(r).is_err());
    // The error names the field.
    let e = read_request(r).unwrap_err();
    assert!(e.to_string().contains("lookup.name"), "{e}");

    // Missing required struct.
    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<mc::request::Builder>()
        .init_set_attr()
        .set_ino(3);
    let r = msg.get_root_as_reader::<mc::request::Reader>().unwrap();
    assert!(read_request(r).is_err());

    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<mc::request::Builder>().init_register_node();
    let r = msg.get_root_as_reader::<mc::request::Reader>().unwrap();
    assert!(read_request(r).is_err());

    // Bad enum value and bad union discriminant, patched into raw words.
    let mut msg = capnp::message::Builder::new_default();
    write_response(&Ok(MetaReply::Attr(attr())), msg.init_root());
    let mut bytes = capnp::serialize::write_message_to_words(&msg);
    let good = bytes.clone();
    // Corrupt every 16-bit slot in turn; whatever reads back must not panic.
    for i in (8..bytes.len()).step_by(2) {
        bytes.copy_from_slice(&good);
        bytes[i] = 0xff;
        bytes[i + 1] = 0x7f;
        if let Ok(reader) = capnp::serialize::read_message(&mut &bytes[..], Default::default()) {
            if let Ok(root) = reader.get_root::<mc::response::Reader>() {
                let _ = read_response(root);
            }
        }
    }

    // An empty message: the default union member (error) with defaults.
    let mut msg = capnp::message::Builder::new_default();
    msg.init_root::<mc::response::Builder>();
    let words = capnp::serialize::write_message_to_words(&msg);
    let reader = capnp::serialize::read_message(&mut &words[..], Default::default()).unwrap();
    if let Ok(root) = reader.get_root::<mc::response::Reader>() {
        assert!(read_response(root).is_err());
    }
}

#[test]
fn unknown_union_member_is_an_error() {
    // A Response with discriminant 200 (a member from a newer schema).
    let mut msg = capnp::message::Builder::new_default();
    write_response(&Ok(MetaReply::Unit), msg.init_root());
    let mut words = capnp::serialize::write_message_to_words(&msg);
    // Segment table (8 bytes), root pointer (8 bytes), then the data
    // section: Response's discriminant is its first 16-bit field.
    words[16] = 200;
    let reader = capnp::serialize::read_message(&mut &words[..], Default::default()).unwrap();
    let root = reader.get_root::<mc::response::Reader>().unwrap();
    assert!(read_response(root).is_err());
}
