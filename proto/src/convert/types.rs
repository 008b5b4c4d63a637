//! The structs and enums that requests and replies are made of: file kinds
//! and attributes, stripe configs, stripes and layouts, setattr's optional
//! values, node info, and the cluster map and status.

use crate::meta::{
    Attr, ClusterMap, ClusterStatus, DirEntry, FileKind, FileLayout, FileLock, FragmentRef,
    FrozenBody, FrozenEntry, Garbage, Layout, LockKind, NamedAttr, NodeInfo, NodeState, NodeStatus,
    PlacementGroup, RenameMode, RepairProgress, SetAttr, SetTime, StatFs, StripeBase, StripeConfig,
    StripeEntry, Voter, Xattr, XattrMode,
};
use crate::metadata_capnp as mc;

use super::{enum_field, indexed, len_u32, need, optional, text, Result};

/// A domain enum and its schema twin, mapped both ways: `$write` turns the
/// domain value into the schema's, `$read` reads a schema field (an unknown
/// value is an error naming the field).
macro_rules! enum_map {
    ($domain:ident <=> $schema:ident, $write:ident, $read:ident { $($variant:ident),+ $(,)? }) => {
        pub(super) fn $write(v: $domain) -> mc::$schema {
            match v {
                $($domain::$variant => mc::$schema::$variant,)+
            }
        }

        pub(super) fn $read(
            v: std::result::Result<mc::$schema, capnp::NotInSchema>,
            what: &str,
        ) -> Result<$domain> {
            Ok(match enum_field(v, what)? {
                $(mc::$schema::$variant => $domain::$variant,)+
            })
        }
    };
}

enum_map!(FileKind <=> FileKind, write_file_kind, read_file_kind {
    File, Dir, Symlink, Fifo, CharDevice, BlockDevice, Socket,
});
enum_map!(RenameMode <=> RenameMode, write_rename_mode, read_rename_mode {
    Replace, NoReplace, Exchange,
});
enum_map!(XattrMode <=> XattrMode, write_xattr_mode, read_xattr_mode {
    Any, Create, Replace,
});
enum_map!(LockKind <=> LockKind, write_lock_kind, read_lock_kind {
    Read, Write, Unlock,
});

pub(super) fn write_file_lock(l: &FileLock, mut b: mc::file_lock::Builder<'_>) {
    b.set_client_id(l.client_id);
    b.set_owner(l.owner);
    b.set_pid(l.pid);
    b.set_kind(write_lock_kind(l.kind));
    b.set_start(l.start);
    b.set_end(l.end);
}

pub(super) fn read_file_lock(r: mc::file_lock::Reader<'_>) -> Result<FileLock> {
    Ok(FileLock {
        client_id: r.get_client_id(),
        owner: r.get_owner(),
        pid: r.get_pid(),
        kind: read_lock_kind(r.get_kind(), "fileLock.kind")?,
        start: r.get_start(),
        end: r.get_end(),
    })
}

pub(super) fn write_garbage(g: &Garbage, mut b: mc::garbage::Builder<'_>) {
    b.set_ino(g.ino);
    write_layout(&g.layout, b.init_layout());
}

pub(super) fn read_garbage(r: mc::garbage::Reader<'_>) -> Result<Garbage> {
    need(r.has_layout(), "garbage.layout")?;
    Ok(Garbage {
        ino: r.get_ino(),
        layout: read_layout(r.get_layout()?)?,
    })
}

pub(super) fn write_xattr(x: &Xattr, mut b: mc::xattr::Builder<'_>) {
    b.set_name(x.name.as_str());
    b.set_value(&x.value);
}

pub(super) fn read_xattr(r: mc::xattr::Reader<'_>) -> Result<Xattr> {
    Ok(Xattr {
        name: text(r.get_name(), "xattr.name")?,
        value: r.get_value()?.to_vec(),
    })
}

pub(super) fn write_dir_entry(e: &DirEntry, mut b: mc::dir_entry::Builder<'_>) {
    b.set_name(e.name.as_str());
    b.set_ino(e.ino);
    b.set_kind(write_file_kind(e.kind));
}

pub(super) fn read_dir_entry(r: mc::dir_entry::Reader<'_>) -> Result<DirEntry> {
    Ok(DirEntry {
        name: text(r.get_name(), "dirEntry.name")?,
        ino: r.get_ino(),
        kind: read_file_kind(r.get_kind(), "dirEntry.kind")?,
    })
}

pub(super) fn write_named_attr(e: &NamedAttr, mut b: mc::named_attr::Builder<'_>) {
    b.set_name(e.name.as_str());
    write_attr(&e.attr, b.reborrow().init_attr());
}

pub(super) fn read_named_attr(r: mc::named_attr::Reader<'_>) -> Result<NamedAttr> {
    need(r.has_attr(), "namedAttr.attr")?;
    Ok(NamedAttr {
        name: text(r.get_name(), "namedAttr.name")?,
        attr: read_attr(r.get_attr()?)?,
    })
}

pub(super) fn write_file_layout(e: &FileLayout, mut b: mc::file_layout::Builder<'_>) {
    write_attr(&e.attr, b.reborrow().init_attr());
    write_layout(&e.layout, b.reborrow().init_layout());
}

pub(super) fn read_file_layout(r: mc::file_layout::Reader<'_>) -> Result<FileLayout> {
    need(r.has_attr(), "fileLayout.attr")?;
    need(r.has_layout(), "fileLayout.layout")?;
    Ok(FileLayout {
        attr: read_attr(r.get_attr()?)?,
        layout: read_layout(r.get_layout()?)?,
    })
}

pub(super) fn write_stat_fs(s: &StatFs, mut b: mc::stat_fs::Builder<'_>) {
    b.set_total_bytes(s.total_bytes);
    b.set_used_bytes(s.used_bytes);
    b.set_files(s.files);
    b.set_files_free(s.files_free);
}

pub(super) fn read_stat_fs(r: mc::stat_fs::Reader<'_>) -> Result<StatFs> {
    Ok(StatFs {
        total_bytes: r.get_total_bytes(),
        used_bytes: r.get_used_bytes(),
        files: r.get_files(),
        files_free: r.get_files_free(),
    })
}

pub fn write_attr(a: &Attr, mut b: mc::attr::Builder<'_>) {
    b.set_ino(a.ino);
    b.set_kind(write_file_kind(a.kind));
    b.set_mode(a.mode);
    b.set_uid(a.uid);
    b.set_gid(a.gid);
    b.set_size(a.size);
    b.set_nlink(a.nlink);
    b.set_atime_ns(a.atime_ns);
    b.set_mtime_ns(a.mtime_ns);
    b.set_ctime_ns(a.ctime_ns);
    b.set_frozen(a.frozen);
    b.set_rdev(a.rdev);
    b.set_has_xattrs(a.has_xattrs);
}

pub fn read_attr(r: mc::attr::Reader<'_>) -> Result<Attr> {
    Ok(Attr {
        ino: r.get_ino(),
        kind: read_file_kind(r.get_kind(), "attr.kind")?,
        mode: r.get_mode(),
        uid: r.get_uid(),
        gid: r.get_gid(),
        size: r.get_size(),
        nlink: r.get_nlink(),
        atime_ns: r.get_atime_ns(),
        mtime_ns: r.get_mtime_ns(),
        ctime_ns: r.get_ctime_ns(),
        rdev: r.get_rdev(),
        has_xattrs: r.get_has_xattrs(),
        frozen: r.get_frozen(),
    })
}

pub(super) fn write_frozen_entry(e: &FrozenEntry, mut b: mc::frozen_entry::Builder<'_>) {
    b.set_parent(e.parent);
    b.set_name(e.name.as_str());
    write_attr(&e.attr, b.reborrow().init_attr());
    match &e.body {
        FrozenBody::File(layout) => write_layout(layout, b.init_layout()),
        FrozenBody::Dir => {}
        FrozenBody::Symlink(target) => b.set_target(target.as_str()),
        FrozenBody::Node => {}
    }
}

pub(super) fn read_frozen_entry(r: mc::frozen_entry::Reader<'_>) -> Result<FrozenEntry> {
    need(r.has_attr(), "frozenEntry.attr")?;
    let attr = read_attr(r.get_attr()?)?;
    let body = match attr.kind {
        FileKind::File => {
            need(r.has_layout(), "frozenEntry.layout")?;
            FrozenBody::File(read_layout(r.get_layout()?)?)
        }
        FileKind::Dir => FrozenBody::Dir,
        FileKind::Symlink => FrozenBody::Symlink(text(r.get_target(), "frozenEntry.target")?),
        FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice | FileKind::Socket => {
            FrozenBody::Node
        }
    };
    Ok(FrozenEntry {
        parent: r.get_parent(),
        name: text(r.get_name(), "frozenEntry.name")?,
        attr,
        body,
    })
}

fn write_stripe_config(c: &StripeConfig, mut b: mc::stripe_config::Builder<'_>) {
    b.set_k(c.k);
    b.set_m(c.m);
    b.set_unit_bytes(c.unit_bytes);
}

fn read_stripe_config(r: mc::stripe_config::Reader<'_>) -> StripeConfig {
    StripeConfig {
        k: r.get_k(),
        m: r.get_m(),
        unit_bytes: r.get_unit_bytes(),
    }
}

pub(super) fn write_stripe_base(s: &StripeBase, mut b: mc::stripe_base::Builder<'_>) {
    b.set_generation(s.generation);
    b.set_valid_bytes(s.valid_bytes);
}

pub(super) fn read_stripe_base(r: mc::stripe_base::Reader<'_>) -> Result<StripeBase> {
    Ok(StripeBase {
        generation: r.get_generation(),
        valid_bytes: r.get_valid_bytes(),
    })
}

pub(super) fn write_stripe_entry(s: &StripeEntry, mut b: mc::stripe_entry::Builder<'_>) {
    b.set_stripe(s.stripe);
    b.set_generation(s.generation);
    b.set_encoded_bytes(s.encoded_bytes);
    b.set_valid_bytes(s.valid_bytes);
    let mut crcs = b.init_crcs(len_u32(s.crcs.len()));
    for (i, c) in indexed(&s.crcs) {
        crcs.set(i, *c);
    }
}

pub(super) fn read_stripe_entry(r: mc::stripe_entry::Reader<'_>) -> Result<StripeEntry> {
    Ok(StripeEntry {
        stripe: r.get_stripe(),
        generation: r.get_generation(),
        encoded_bytes: r.get_encoded_bytes(),
        valid_bytes: r.get_valid_bytes(),
        crcs: r.get_crcs()?.iter().collect(),
    })
}

pub(super) fn write_layout(l: &Layout, mut b: mc::layout::Builder<'_>) {
    write_stripe_config(&l.config, b.reborrow().init_config());
    let mut stripes = b.init_stripes(len_u32(l.stripes.len()));
    for (i, e) in indexed(&l.stripes) {
        write_stripe_entry(e, stripes.reborrow().get(i));
    }
}

pub(super) fn read_layout(r: mc::layout::Reader<'_>) -> Result<Layout> {
    need(r.has_config(), "layout.config")?;
    Ok(Layout {
        config: read_stripe_config(r.get_config()?),
        stripes: r
            .get_stripes()?
            .iter()
            .map(read_stripe_entry)
            .collect::<Result<Vec<_>>>()?,
    })
}

fn write_opt_u32(v: Option<u32>, mut b: mc::opt_u32::Builder<'_>) {
    match v {
        None => b.set_none(()),
        Some(v) => b.set_some(v),
    }
}

fn read_opt_u32(r: mc::opt_u32::Reader<'_>) -> Result<Option<u32>> {
    Ok(match r.which()? {
        mc::opt_u32::None(()) => None,
        mc::opt_u32::Some(v) => Some(v),
    })
}

fn write_opt_u64(v: Option<u64>, mut b: mc::opt_u64::Builder<'_>) {
    match v {
        None => b.set_none(()),
        Some(v) => b.set_some(v),
    }
}

fn read_opt_u64(r: mc::opt_u64::Reader<'_>) -> Result<Option<u64>> {
    Ok(match r.which()? {
        mc::opt_u64::None(()) => None,
        mc::opt_u64::Some(v) => Some(v),
    })
}

fn write_opt_time(v: Option<SetTime>, mut b: mc::opt_time::Builder<'_>) {
    match v {
        None => b.set_none(()),
        Some(SetTime::Now) => b.set_now(()),
        Some(SetTime::Ns(ns)) => b.set_ns(ns),
    }
}

fn read_opt_time(r: mc::opt_time::Reader<'_>) -> Result<Option<SetTime>> {
    Ok(match r.which()? {
        mc::opt_time::None(()) => None,
        mc::opt_time::Now(()) => Some(SetTime::Now),
        mc::opt_time::Ns(ns) => Some(SetTime::Ns(ns)),
    })
}

pub(super) fn write_set_attr(s: &SetAttr, mut b: mc::set_attr::Builder<'_>) {
    write_opt_u32(s.mode, b.reborrow().init_mode());
    write_opt_u32(s.uid, b.reborrow().init_uid());
    write_opt_u32(s.gid, b.reborrow().init_gid());
    write_opt_u64(s.size, b.reborrow().init_size());
    write_opt_time(s.atime, b.reborrow().init_atime());
    write_opt_time(s.mtime, b.init_mtime());
}

/// Absent optional fields mean "leave unchanged" (an old writer may not know
/// a newer field), so a null `OptX` reads as `None`.
pub(super) fn read_set_attr(r: mc::set_attr::Reader<'_>) -> Result<SetAttr> {
    Ok(SetAttr {
        mode: optional(r.has_mode(), || r.get_mode(), read_opt_u32)?,
        uid: optional(r.has_uid(), || r.get_uid(), read_opt_u32)?,
        gid: optional(r.has_gid(), || r.get_gid(), read_opt_u32)?,
        size: optional(r.has_size(), || r.get_size(), read_opt_u64)?,
        atime: optional(r.has_atime(), || r.get_atime(), read_opt_time)?,
        mtime: optional(r.has_mtime(), || r.get_mtime(), read_opt_time)?,
    })
}

pub(super) fn write_node_info(n: &NodeInfo, mut b: mc::node_info::Builder<'_>) {
    b.set_id(n.id);
    b.set_host(n.host.as_str());
    let mut ports = b.reborrow().init_shard_ports(len_u32(n.shard_ports.len()));
    for (i, p) in indexed(&n.shard_ports) {
        ports.set(i, *p);
    }
    b.set_capacity_bytes(n.capacity_bytes);
    b.set_used_bytes(n.used_bytes);
    b.set_cores(n.cores);
    let mut ts = b.init_transports(len_u32(n.transports.len()));
    for (i, t) in indexed(&n.transports) {
        ts.set(i, t.as_str());
    }
}

pub(super) fn read_node_info(r: mc::node_info::Reader<'_>) -> Result<NodeInfo> {
    Ok(NodeInfo {
        id: r.get_id(),
        host: text(r.get_host(), "nodeInfo.host")?,
        shard_ports: r.get_shard_ports()?.iter().collect(),
        capacity_bytes: r.get_capacity_bytes(),
        used_bytes: r.get_used_bytes(),
        cores: r.get_cores(),
        transports: r
            .get_transports()?
            .iter()
            .map(|t| text(t, "nodeInfo.transports"))
            .collect::<Result<Vec<_>>>()?,
    })
}

pub(super) fn write_cluster_map(m: &ClusterMap, mut b: mc::cluster_map::Builder<'_>) {
    b.set_epoch(m.epoch);
    write_stripe_config(&m.config, b.reborrow().init_config());
    let mut nodes = b.reborrow().init_nodes(len_u32(m.nodes.len()));
    for (i, n) in indexed(&m.nodes) {
        let mut nb = nodes.reborrow().get(i);
        write_node_info(&n.info, nb.reborrow().init_info());
        nb.set_state(match n.state {
            NodeState::Up => mc::NodeState::Up,
            NodeState::Down => mc::NodeState::Down,
        });
        write_opt_u64(n.last_heartbeat_ms_ago, nb.init_last_heartbeat_ms_ago());
    }
    let mut groups = b.init_groups(len_u32(m.groups.len()));
    for (i, g) in indexed(&m.groups) {
        let mut gb = groups.reborrow().get(i);
        gb.set_id(g.id);
        let mut ids = gb.init_nodes(len_u32(g.nodes.len()));
        for (j, id) in indexed(&g.nodes) {
            ids.set(j, *id);
        }
    }
}

pub(super) fn read_cluster_map(r: mc::cluster_map::Reader<'_>) -> Result<ClusterMap> {
    need(r.has_config(), "clusterMap.config")?;
    let mut nodes = Vec::new();
    for n in r.get_nodes()?.iter() {
        need(n.has_info(), "nodeStatus.info")?;
        nodes.push(NodeStatus {
            info: read_node_info(n.get_info()?)?,
            state: match enum_field(n.get_state(), "nodeStatus.state")? {
                mc::NodeState::Up => NodeState::Up,
                mc::NodeState::Down => NodeState::Down,
            },
            last_heartbeat_ms_ago: optional(
                n.has_last_heartbeat_ms_ago(),
                || n.get_last_heartbeat_ms_ago(),
                read_opt_u64,
            )?,
        });
    }
    let mut groups = Vec::new();
    for g in r.get_groups()?.iter() {
        groups.push(PlacementGroup {
            id: g.get_id(),
            nodes: g.get_nodes()?.iter().collect(),
        });
    }
    Ok(ClusterMap {
        epoch: r.get_epoch(),
        config: read_stripe_config(r.get_config()?),
        nodes,
        groups,
    })
}

pub(super) fn write_cluster_status(s: &ClusterStatus, mut b: mc::cluster_status::Builder<'_>) {
    write_opt_u64(s.leader, b.reborrow().init_leader());
    b.set_term(s.term);
    b.set_last_applied(s.last_applied);
    let mut voters = b.reborrow().init_voters(len_u32(s.voters.len()));
    for (i, v) in indexed(&s.voters) {
        let mut vb = voters.reborrow().get(i);
        vb.set_id(v.id);
        vb.set_addr(v.addr.as_str());
    }
    write_cluster_map(&s.map, b.reborrow().init_map());
    write_repair_progress(&s.repair, b.init_repair());
}

pub(super) fn write_repair_progress(p: &RepairProgress, mut b: mc::repair_progress::Builder<'_>) {
    b.set_pass(p.pass);
    b.set_map_epoch(p.map_epoch);
    b.set_reason(p.reason.as_str());
    b.set_stripes_checked(p.stripes_checked);
    b.set_fragments_rebuilt(p.fragments_rebuilt);
    b.set_bytes_rebuilt(p.bytes_rebuilt);
    b.set_fragments_failed(p.fragments_failed);
    b.set_elapsed_ms(p.elapsed_ms);
    b.set_done(p.done);
    b.set_bad_reported(p.bad_reported);
    b.set_bad_rebuilt(p.bad_rebuilt);
    b.set_orphans_deleted(p.orphans_deleted);
    let mut ids = b.init_nodes_replaced(len_u32(p.nodes_replaced.len()));
    for (i, id) in indexed(&p.nodes_replaced) {
        ids.set(i, *id);
    }
}

pub(super) fn read_repair_progress(r: mc::repair_progress::Reader<'_>) -> Result<RepairProgress> {
    Ok(RepairProgress {
        pass: r.get_pass(),
        map_epoch: r.get_map_epoch(),
        reason: text(r.get_reason(), "repairProgress.reason")?,
        stripes_checked: r.get_stripes_checked(),
        fragments_rebuilt: r.get_fragments_rebuilt(),
        bytes_rebuilt: r.get_bytes_rebuilt(),
        fragments_failed: r.get_fragments_failed(),
        elapsed_ms: r.get_elapsed_ms(),
        done: r.get_done(),
        nodes_replaced: r.get_nodes_replaced()?.iter().collect(),
        bad_reported: r.get_bad_reported(),
        bad_rebuilt: r.get_bad_rebuilt(),
        orphans_deleted: r.get_orphans_deleted(),
    })
}

pub(super) fn write_fragment_ref(f: &FragmentRef, mut b: mc::fragment_ref::Builder<'_>) {
    b.set_ino(f.ino);
    b.set_stripe(f.stripe);
    b.set_generation(f.generation);
    b.set_index(f.index);
}

pub(super) fn read_fragment_ref(r: mc::fragment_ref::Reader<'_>) -> Result<FragmentRef> {
    Ok(FragmentRef {
        ino: r.get_ino(),
        stripe: r.get_stripe(),
        generation: r.get_generation(),
        index: r.get_index(),
    })
}

pub(super) fn read_cluster_status(r: mc::cluster_status::Reader<'_>) -> Result<ClusterStatus> {
    need(r.has_map(), "clusterStatus.map")?;
    let voters = r
        .get_voters()?
        .iter()
        .map(|v| {
            Ok(Voter {
                id: v.get_id(),
                addr: text(v.get_addr(), "voter.addr")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ClusterStatus {
        leader: optional(r.has_leader(), || r.get_leader(), read_opt_u64)?,
        term: r.get_term(),
        last_applied: r.get_last_applied(),
        voters,
        map: read_cluster_map(r.get_map()?)?,
        // Absent from an older metad: no report.
        repair: if r.has_repair() {
            read_repair_progress(r.get_repair()?)?
        } else {
            RepairProgress::default()
        },
    })
}
