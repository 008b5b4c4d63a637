//! Conversions between the metadata domain types ([`crate::meta`]) and their
//! Cap'n Proto form (`schema/metadata.capnp`).
//!
//! Writers cannot fail (the domain types are always representable, except
//! list lengths beyond `u32`, which are clamped by the caller's limits long
//! before). Readers treat the message as untrusted input: an unknown enum
//! value, non-UTF-8 text, a missing required struct or an out-of-range number
//! gives a `capnp::Error`, never a panic.

use capnp::Error;

use crate::meta::{
    Attr, ClusterMap, ClusterStatus, DirEntry, FileKind, Layout, MetaError, MetaReply, MetaRequest,
    NodeInfo, NodeState, NodeStatus, PlacementGroup, SetAttr, SetTime, StatFs, StripeConfig,
    StripeEntry, Voter,
};
use crate::metadata_capnp as mc;

type Result<T> = std::result::Result<T, Error>;

/// A required struct field was absent (a null pointer reads as defaults in
/// Cap'n Proto, which would silently turn into zeros).
fn need(present: bool, what: &str) -> Result<()> {
    if present {
        Ok(())
    } else {
        Err(Error::failed(format!("missing field `{what}`")))
    }
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String> {
    Ok(r?.to_str()?.to_owned())
}

fn len_u32(n: usize) -> u32 {
    // Lists longer than u32::MAX cannot be encoded; such a request would be
    // far beyond any message size limit anyway.
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------- leaf types

fn write_kind(k: FileKind) -> mc::FileKind {
    match k {
        FileKind::File => mc::FileKind::File,
        FileKind::Dir => mc::FileKind::Dir,
        FileKind::Symlink => mc::FileKind::Symlink,
    }
}

fn read_kind(k: mc::FileKind) -> FileKind {
    match k {
        mc::FileKind::File => FileKind::File,
        mc::FileKind::Dir => FileKind::Dir,
        mc::FileKind::Symlink => FileKind::Symlink,
    }
}

pub fn write_attr(a: &Attr, mut b: mc::attr::Builder<'_>) {
    b.set_ino(a.ino);
    b.set_kind(write_kind(a.kind));
    b.set_mode(a.mode);
    b.set_uid(a.uid);
    b.set_gid(a.gid);
    b.set_size(a.size);
    b.set_nlink(a.nlink);
    b.set_atime_ns(a.atime_ns);
    b.set_mtime_ns(a.mtime_ns);
    b.set_ctime_ns(a.ctime_ns);
}

pub fn read_attr(r: mc::attr::Reader<'_>) -> Result<Attr> {
    Ok(Attr {
        ino: r.get_ino(),
        kind: read_kind(r.get_kind()?),
        mode: r.get_mode(),
        uid: r.get_uid(),
        gid: r.get_gid(),
        size: r.get_size(),
        nlink: r.get_nlink(),
        atime_ns: r.get_atime_ns(),
        mtime_ns: r.get_mtime_ns(),
        ctime_ns: r.get_ctime_ns(),
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

fn write_stripe(s: &StripeEntry, mut b: mc::stripe_entry::Builder<'_>) {
    b.set_stripe(s.stripe);
    b.set_generation(s.generation);
    b.set_encoded_bytes(s.encoded_bytes);
    b.set_valid_bytes(s.valid_bytes);
    let mut crcs = b.init_crcs(len_u32(s.crcs.len()));
    for (i, c) in s.crcs.iter().enumerate() {
        crcs.set(i as u32, *c);
    }
}

fn read_stripe(r: mc::stripe_entry::Reader<'_>) -> Result<StripeEntry> {
    Ok(StripeEntry {
        stripe: r.get_stripe(),
        generation: r.get_generation(),
        encoded_bytes: r.get_encoded_bytes(),
        valid_bytes: r.get_valid_bytes(),
        crcs: r.get_crcs()?.iter().collect(),
    })
}

fn write_stripes(
    s: &[StripeEntry],
    mut b: capnp::struct_list::Builder<'_, mc::stripe_entry::Owned>,
) {
    for (i, e) in s.iter().enumerate() {
        write_stripe(e, b.reborrow().get(i as u32));
    }
}

fn read_stripes(
    r: capnp::Result<capnp::struct_list::Reader<'_, mc::stripe_entry::Owned>>,
) -> Result<Vec<StripeEntry>> {
    r?.iter().map(read_stripe).collect()
}

fn write_layout(l: &Layout, mut b: mc::layout::Builder<'_>) {
    write_stripe_config(&l.config, b.reborrow().init_config());
    write_stripes(&l.stripes, b.init_stripes(len_u32(l.stripes.len())));
}

fn read_layout(r: mc::layout::Reader<'_>) -> Result<Layout> {
    need(r.has_config(), "layout.config")?;
    Ok(Layout {
        config: read_stripe_config(r.get_config()?),
        stripes: read_stripes(r.get_stripes())?,
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

fn write_set_attr(s: &SetAttr, mut b: mc::set_attr::Builder<'_>) {
    write_opt_u32(s.mode, b.reborrow().init_mode());
    write_opt_u32(s.uid, b.reborrow().init_uid());
    write_opt_u32(s.gid, b.reborrow().init_gid());
    write_opt_u64(s.size, b.reborrow().init_size());
    write_opt_time(s.atime, b.reborrow().init_atime());
    write_opt_time(s.mtime, b.init_mtime());
}

/// Absent optional fields mean "leave unchanged" (an old writer may not know
/// a newer field), so a null `OptX` reads as `None`.
fn read_set_attr(r: mc::set_attr::Reader<'_>) -> Result<SetAttr> {
    Ok(SetAttr {
        mode: if r.has_mode() {
            read_opt_u32(r.get_mode()?)?
        } else {
            None
        },
        uid: if r.has_uid() {
            read_opt_u32(r.get_uid()?)?
        } else {
            None
        },
        gid: if r.has_gid() {
            read_opt_u32(r.get_gid()?)?
        } else {
            None
        },
        size: if r.has_size() {
            read_opt_u64(r.get_size()?)?
        } else {
            None
        },
        atime: if r.has_atime() {
            read_opt_time(r.get_atime()?)?
        } else {
            None
        },
        mtime: if r.has_mtime() {
            read_opt_time(r.get_mtime()?)?
        } else {
            None
        },
    })
}

fn write_node_info(n: &NodeInfo, mut b: mc::node_info::Builder<'_>) {
    b.set_id(n.id);
    b.set_host(n.host.as_str());
    let mut ports = b.reborrow().init_shard_ports(len_u32(n.shard_ports.len()));
    for (i, p) in n.shard_ports.iter().enumerate() {
        ports.set(i as u32, *p);
    }
    b.set_capacity_bytes(n.capacity_bytes);
    b.set_used_bytes(n.used_bytes);
    b.set_cores(n.cores);
    let mut ts = b.init_transports(len_u32(n.transports.len()));
    for (i, t) in n.transports.iter().enumerate() {
        ts.set(i as u32, t.as_str());
    }
}

fn read_node_info(r: mc::node_info::Reader<'_>) -> Result<NodeInfo> {
    Ok(NodeInfo {
        id: r.get_id(),
        host: text(r.get_host())?,
        shard_ports: r.get_shard_ports()?.iter().collect(),
        capacity_bytes: r.get_capacity_bytes(),
        used_bytes: r.get_used_bytes(),
        cores: r.get_cores(),
        transports: r
            .get_transports()?
            .iter()
            .map(text)
            .collect::<Result<Vec<_>>>()?,
    })
}

fn write_cluster_map(m: &ClusterMap, mut b: mc::cluster_map::Builder<'_>) {
    b.set_epoch(m.epoch);
    write_stripe_config(&m.config, b.reborrow().init_config());
    let mut nodes = b.reborrow().init_nodes(len_u32(m.nodes.len()));
    for (i, n) in m.nodes.iter().enumerate() {
        let mut nb = nodes.reborrow().get(i as u32);
        write_node_info(&n.info, nb.reborrow().init_info());
        nb.set_state(match n.state {
            NodeState::Up => mc::NodeState::Up,
            NodeState::Down => mc::NodeState::Down,
        });
        write_opt_u64(n.last_heartbeat_ms_ago, nb.init_last_heartbeat_ms_ago());
    }
    let mut groups = b.init_groups(len_u32(m.groups.len()));
    for (i, g) in m.groups.iter().enumerate() {
        let mut gb = groups.reborrow().get(i as u32);
        gb.set_id(g.id);
        let mut ids = gb.init_nodes(len_u32(g.nodes.len()));
        for (j, id) in g.nodes.iter().enumerate() {
            ids.set(j as u32, *id);
        }
    }
}

fn read_cluster_map(r: mc::cluster_map::Reader<'_>) -> Result<ClusterMap> {
    need(r.has_config(), "clusterMap.config")?;
    let mut nodes = Vec::new();
    for n in r.get_nodes()?.iter() {
        need(n.has_info(), "nodeStatus.info")?;
        nodes.push(NodeStatus {
            info: read_node_info(n.get_info()?)?,
            state: match n.get_state()? {
                mc::NodeState::Up => NodeState::Up,
                mc::NodeState::Down => NodeState::Down,
            },
            last_heartbeat_ms_ago: if n.has_last_heartbeat_ms_ago() {
                read_opt_u64(n.get_last_heartbeat_ms_ago()?)?
            } else {
                None
            },
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

fn write_cluster_status(s: &ClusterStatus, mut b: mc::cluster_status::Builder<'_>) {
    write_opt_u64(s.leader, b.reborrow().init_leader());
    b.set_term(s.term);
    b.set_last_applied(s.last_applied);
    let mut voters = b.reborrow().init_voters(len_u32(s.voters.len()));
    for (i, v) in s.voters.iter().enumerate() {
        let mut vb = voters.reborrow().get(i as u32);
        vb.set_id(v.id);
        vb.set_addr(v.addr.as_str());
    }
    write_cluster_map(&s.map, b.init_map());
}

fn read_cluster_status(r: mc::cluster_status::Reader<'_>) -> Result<ClusterStatus> {
    need(r.has_map(), "clusterStatus.map")?;
    let voters = r
        .get_voters()?
        .iter()
        .map(|v| {
            Ok(Voter {
                id: v.get_id(),
                addr: text(v.get_addr())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ClusterStatus {
        leader: if r.has_leader() {
            read_opt_u64(r.get_leader()?)?
        } else {
            None
        },
        term: r.get_term(),
        last_applied: r.get_last_applied(),
        voters,
        map: read_cluster_map(r.get_map()?)?,
    })
}

// ------------------------------------------------------------------ requests

/// Writes `req` into an (empty) `Request` struct.
pub fn write_request(req: &MetaRequest, b: mc::request::Builder<'_>) {
    match req {
        MetaRequest::Lookup { parent, name } => {
            let mut g = b.init_lookup();
            g.set_parent(*parent);
            g.set_name(name.as_str());
        }
        MetaRequest::GetAttr { ino } => b.init_get_attr().set_ino(*ino),
        MetaRequest::SetAttr { ino, set } => {
            let mut g = b.init_set_attr();
            g.set_ino(*ino);
            write_set_attr(set, g.init_set());
        }
        MetaRequest::ReadDir { ino, after, limit } => {
            let mut g = b.init_read_dir();
            g.set_ino(*ino);
            g.set_after(after.as_str());
            g.set_limit(*limit);
        }
        MetaRequest::Create {
            parent,
            name,
            mode,
            uid,
            gid,
            exclusive,
        } => {
            let mut g = b.init_create();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_mode(*mode);
            g.set_uid(*uid);
            g.set_gid(*gid);
            g.set_exclusive(*exclusive);
        }
        MetaRequest::Mkdir {
            parent,
            name,
            mode,
            uid,
            gid,
        } => {
            let mut g = b.init_mkdir();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_mode(*mode);
            g.set_uid(*uid);
            g.set_gid(*gid);
        }
        MetaRequest::Unlink { parent, name } => {
            let mut g = b.init_unlink();
            g.set_parent(*parent);
            g.set_name(name.as_str());
        }
        MetaRequest::Rmdir { parent, name } => {
            let mut g = b.init_rmdir();
            g.set_parent(*parent);
            g.set_name(name.as_str());
        }
        MetaRequest::Rename {
            parent,
            name,
            new_parent,
            new_name,
        } => {
            let mut g = b.init_rename();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_new_parent(*new_parent);
            g.set_new_name(new_name.as_str());
        }
        MetaRequest::Link {
            ino,
            new_parent,
            new_name,
        } => {
            let mut g = b.init_link();
            g.set_ino(*ino);
            g.set_new_parent(*new_parent);
            g.set_new_name(new_name.as_str());
        }
        MetaRequest::Symlink {
            parent,
            name,
            target,
            uid,
            gid,
        } => {
            let mut g = b.init_symlink();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_target(target.as_str());
            g.set_uid(*uid);
            g.set_gid(*gid);
        }
        MetaRequest::ReadLink { ino } => b.init_read_link().set_ino(*ino),
        MetaRequest::StatFs => {
            let mut b = b;
            b.set_stat_fs(())
        }
        MetaRequest::GetLayout { ino } => b.init_get_layout().set_ino(*ino),
        MetaRequest::CommitLayout { ino, size, stripes } => {
            let mut g = b.init_commit_layout();
            g.set_ino(*ino);
            g.set_size(*size);
            write_stripes(stripes, g.init_stripes(len_u32(stripes.len())));
        }
        MetaRequest::RegisterNode { info } => {
            write_node_info(info, b.init_register_node().init_info())
        }
        MetaRequest::Heartbeat {
            id,
            used_bytes,
            capacity_bytes,
        } => {
            let mut g = b.init_heartbeat();
            g.set_id(*id);
            g.set_used_bytes(*used_bytes);
            g.set_capacity_bytes(*capacity_bytes);
        }
        MetaRequest::ClusterMap => {
            let mut b = b;
            b.set_cluster_map(())
        }
        MetaRequest::ClusterStatus => {
            let mut b = b;
            b.set_cluster_status(())
        }
    }
}

/// Reads a `Request`; malformed input is an error.
pub fn read_request(r: mc::request::Reader<'_>) -> Result<MetaRequest> {
    use mc::request::Which as W;
    Ok(match r.which()? {
        W::Lookup(g) => MetaRequest::Lookup {
            parent: g.get_parent(),
            name: text(g.get_name())?,
        },
        W::GetAttr(g) => MetaRequest::GetAttr { ino: g.get_ino() },
        W::SetAttr(g) => {
            need(g.has_set(), "setAttr.set")?;
            MetaRequest::SetAttr {
                ino: g.get_ino(),
                set: read_set_attr(g.get_set()?)?,
            }
        }
        W::ReadDir(g) => MetaRequest::ReadDir {
            ino: g.get_ino(),
            after: text(g.get_after())?,
            limit: g.get_limit(),
        },
        W::Create(g) => MetaRequest::Create {
            parent: g.get_parent(),
            name: text(g.get_name())?,
            mode: g.get_mode(),
            uid: g.get_uid(),
            gid: g.get_gid(),
            exclusive: g.get_exclusive(),
        },
        W::Mkdir(g) => MetaRequest::Mkdir {
            parent: g.get_parent(),
            name: text(g.get_name())?,
            mode: g.get_mode(),
            uid: g.get_uid(),
            gid: g.get_gid(),
        },
        W::Unlink(g) => MetaRequest::Unlink {
            parent: g.get_parent(),
            name: text(g.get_name())?,
        },
        W::Rmdir(g) => MetaRequest::Rmdir {
            parent: g.get_parent(),
            name: text(g.get_name())?,
        },
        W::Rename(g) => MetaRequest::Rename {
            parent: g.get_parent(),
            name: text(g.get_name())?,
            new_parent: g.get_new_parent(),
            new_name: text(g.get_new_name())?,
        },
        W::Link(g) => MetaRequest::Link {
            ino: g.get_ino(),
            new_parent: g.get_new_parent(),
            new_name: text(g.get_new_name())?,
        },
        W::Symlink(g) => MetaRequest::Symlink {
            parent: g.get_parent(),
            name: text(g.get_name())?,
            target: text(g.get_target())?,
            uid: g.get_uid(),
            gid: g.get_gid(),
        },
        W::ReadLink(g) => MetaRequest::ReadLink { ino: g.get_ino() },
        W::StatFs(()) => MetaRequest::StatFs,
        W::GetLayout(g) => MetaRequest::GetLayout { ino: g.get_ino() },
        W::CommitLayout(g) => MetaRequest::CommitLayout {
            ino: g.get_ino(),
            size: g.get_size(),
            stripes: read_stripes(g.get_stripes())?,
        },
        W::RegisterNode(g) => {
            need(g.has_info(), "registerNode.info")?;
            MetaRequest::RegisterNode {
                info: read_node_info(g.get_info()?)?,
            }
        }
        W::Heartbeat(g) => MetaRequest::Heartbeat {
            id: g.get_id(),
            used_bytes: g.get_used_bytes(),
            capacity_bytes: g.get_capacity_bytes(),
        },
        W::ClusterMap(()) => MetaRequest::ClusterMap,
        W::ClusterStatus(()) => MetaRequest::ClusterStatus,
    })
}

// ----------------------------------------------------------------- responses

fn write_error(e: &MetaError, mut b: mc::error::Builder<'_>) {
    match e {
        MetaError::Fs { errno, message } => {
            b.set_kind(mc::ErrorKind::Fs);
            b.set_errno(*errno);
            b.set_message(message.as_str());
        }
        MetaError::NotLeader {
            leader_id,
            leader_addr,
        } => {
            b.set_kind(mc::ErrorKind::NotLeader);
            // The schema has no optional here: 0 is not a valid voter id
            // (openraft ids are user-chosen, torchfs reserves 0 for "none").
            b.set_leader_id(leader_id.unwrap_or(0));
            b.set_leader_addr(leader_addr.as_deref().unwrap_or(""));
        }
        MetaError::Unavailable(m) => {
            b.set_kind(mc::ErrorKind::Unavailable);
            b.set_message(m.as_str());
        }
        MetaError::Invalid(m) => {
            b.set_kind(mc::ErrorKind::Invalid);
            b.set_message(m.as_str());
        }
    }
}

fn read_error(r: mc::error::Reader<'_>) -> Result<MetaError> {
    let message = text(r.get_message())?;
    Ok(match r.get_kind()? {
        mc::ErrorKind::Fs => MetaError::Fs {
            errno: r.get_errno(),
            message,
        },
        mc::ErrorKind::NotLeader => {
            let id = r.get_leader_id();
            let addr = text(r.get_leader_addr())?;
            MetaError::NotLeader {
                leader_id: (id != 0).then_some(id),
                leader_addr: (!addr.is_empty()).then_some(addr),
            }
        }
        mc::ErrorKind::Unavailable => MetaError::Unavailable(message),
        mc::ErrorKind::Invalid => MetaError::Invalid(message),
    })
}

/// Writes a reply or an error into an (empty) `Response` struct.
pub fn write_response(
    resp: &std::result::Result<MetaReply, MetaError>,
    b: mc::response::Builder<'_>,
) {
    let mut b = b;
    let reply = match resp {
        Err(e) => return write_error(e, b.init_error()),
        Ok(r) => r,
    };
    match reply {
        MetaReply::Attr(a) => write_attr(a, b.init_attr()),
        MetaReply::Entries(es) => {
            let mut l = b.init_entries(len_u32(es.len()));
            for (i, e) in es.iter().enumerate() {
                let mut eb = l.reborrow().get(i as u32);
                eb.set_name(e.name.as_str());
                eb.set_ino(e.ino);
                eb.set_kind(write_kind(e.kind));
            }
        }
        MetaReply::Unit => b.set_unit(()),
        MetaReply::Freed(s) => write_stripes(s, b.init_freed(len_u32(s.len()))),
        MetaReply::Link(t) => b.set_link(t.as_str()),
        MetaReply::StatFs(s) => {
            let mut sb = b.init_stat_fs();
            sb.set_total_bytes(s.total_bytes);
            sb.set_used_bytes(s.used_bytes);
            sb.set_files(s.files);
        }
        MetaReply::Layout { attr, layout } => {
            let mut g = b.init_layout();
            write_attr(attr, g.reborrow().init_attr());
            write_layout(layout, g.init_layout());
        }
        MetaReply::Committed { attr, replaced } => {
            let mut g = b.init_committed();
            write_attr(attr, g.reborrow().init_attr());
            write_stripes(replaced, g.init_replaced(len_u32(replaced.len())));
        }
        MetaReply::AttrFreed { attr, freed } => {
            let mut g = b.init_attr_freed();
            write_attr(attr, g.reborrow().init_attr());
            write_stripes(freed, g.init_freed(len_u32(freed.len())));
        }
        MetaReply::ClusterMap(m) => write_cluster_map(m, b.init_cluster_map()),
        MetaReply::ClusterStatus(s) => write_cluster_status(s, b.init_cluster_status()),
    }
}

/// Reads a `Response`: the outer error is a malformed message, the inner
/// result is what metad answered.
pub fn read_response(
    r: mc::response::Reader<'_>,
) -> Result<std::result::Result<MetaReply, MetaError>> {
    use mc::response::Which as W;
    Ok(Ok(match r.which()? {
        W::Error(e) => {
            need(r.has_error(), "response.error")?;
            let e = e?;
            return Ok(Err(read_error(e)?));
        }
        W::Attr(a) => {
            need(r.has_attr(), "response.attr")?;
            MetaReply::Attr(read_attr(a?)?)
        }
        W::Entries(es) => MetaReply::Entries(
            es?.iter()
                .map(|e| {
                    Ok(DirEntry {
                        name: text(e.get_name())?,
                        ino: e.get_ino(),
                        kind: read_kind(e.get_kind()?),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        W::Unit(()) => MetaReply::Unit,
        W::Freed(s) => MetaReply::Freed(read_stripes(s)?),
        W::Link(t) => MetaReply::Link(text(t)?),
        W::StatFs(s) => {
            need(r.has_stat_fs(), "response.statFs")?;
            let s = s?;
            MetaReply::StatFs(StatFs {
                total_bytes: s.get_total_bytes(),
                used_bytes: s.get_used_bytes(),
                files: s.get_files(),
            })
        }
        W::Layout(g) => {
            need(g.has_attr(), "layout.attr")?;
            need(g.has_layout(), "layout.layout")?;
            MetaReply::Layout {
                attr: read_attr(g.get_attr()?)?,
                layout: read_layout(g.get_layout()?)?,
            }
        }
        W::Committed(g) => {
            need(g.has_attr(), "committed.attr")?;
            MetaReply::Committed {
                attr: read_attr(g.get_attr()?)?,
                replaced: read_stripes(g.get_replaced())?,
            }
        }
        W::AttrFreed(g) => {
            need(g.has_attr(), "attrFreed.attr")?;
            MetaReply::AttrFreed {
                attr: read_attr(g.get_attr()?)?,
                freed: read_stripes(g.get_freed())?,
            }
        }
        W::ClusterMap(m) => {
            need(r.has_cluster_map(), "response.clusterMap")?;
            MetaReply::ClusterMap(read_cluster_map(m?)?)
        }
        W::ClusterStatus(s) => {
            need(r.has_cluster_status(), "response.clusterStatus")?;
            MetaReply::ClusterStatus(read_cluster_status(s?)?)
        }
    }))
}

#[cfg(test)]
#[path = "convert_tests.rs"]
mod tests;
