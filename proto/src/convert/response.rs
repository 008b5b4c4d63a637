//! Responses: [`write_response`] and [`read_response`], one arm per
//! `MetaReply` variant, plus the `MetaError` a response may carry instead.

use crate::meta::{DirEntry, MetaError, MetaReply, StatFs};
use crate::metadata_capnp as mc;

use super::types::{
    read_attr, read_cluster_map, read_cluster_status, read_file_lock, read_frozen_entry,
    read_garbage, read_kind, read_layout, read_stripes, read_xattrs, write_attr, write_cluster_map,
    write_cluster_status, write_file_lock, write_frozen_entry, write_garbage, write_kind,
    write_layout, write_stripes, write_xattrs,
};
use super::{enum_field, indexed, len_u32, need, text, Result};

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
        MetaError::SessionExpired { client_id, seq } => {
            b.set_kind(mc::ErrorKind::SessionExpired);
            b.set_client_id(*client_id);
            b.set_seq(*seq);
        }
    }
}

fn read_error(r: mc::error::Reader<'_>) -> Result<MetaError> {
    let message = text(r.get_message(), "error.message")?;
    let kind = enum_field(r.get_kind(), "error.kind")?;
    Ok(match kind {
        mc::ErrorKind::Fs => MetaError::Fs {
            errno: r.get_errno(),
            message,
        },
        mc::ErrorKind::NotLeader => {
            let id = r.get_leader_id();
            let addr = text(r.get_leader_addr(), "error.leaderAddr")?;
            MetaError::NotLeader {
                leader_id: (id != 0).then_some(id),
                leader_addr: (!addr.is_empty()).then_some(addr),
            }
        }
        mc::ErrorKind::Unavailable => MetaError::Unavailable(message),
        mc::ErrorKind::Invalid => MetaError::Invalid(message),
        mc::ErrorKind::SessionExpired => MetaError::SessionExpired {
            client_id: r.get_client_id(),
            seq: r.get_seq(),
        },
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
            for (i, e) in indexed(es) {
                let mut eb = l.reborrow().get(i);
                eb.set_name(e.name.as_str());
                eb.set_ino(e.ino);
                eb.set_kind(write_kind(e.kind));
            }
        }
        MetaReply::Unit => b.set_unit(()),
        MetaReply::Freed(s) => write_stripes(s, |n| b.init_freed(n)),
        MetaReply::Link(t) => b.set_link(t.as_str()),
        MetaReply::StatFs(s) => {
            let mut sb = b.init_stat_fs();
            sb.set_total_bytes(s.total_bytes);
            sb.set_used_bytes(s.used_bytes);
            sb.set_files(s.files);
            sb.set_files_free(s.files_free);
        }
        MetaReply::Layout { attr, layout } => {
            let mut g = b.init_layout();
            write_attr(attr, g.reborrow().init_attr());
            write_layout(layout, g.init_layout());
        }
        MetaReply::Committed { attr, replaced } => {
            let mut g = b.init_committed();
            write_attr(attr, g.reborrow().init_attr());
            write_stripes(replaced, |n| g.init_replaced(n));
        }
        MetaReply::AttrFreed { attr, freed } => {
            let mut g = b.init_attr_freed();
            write_attr(attr, g.reborrow().init_attr());
            write_stripes(freed, |n| g.init_freed(n));
        }
        MetaReply::ClusterMap(m) => write_cluster_map(m, b.init_cluster_map()),
        MetaReply::ClusterStatus(s) => write_cluster_status(s, b.init_cluster_status()),
        MetaReply::Frozen {
            root,
            entries,
            more,
        } => {
            let mut g = b.init_frozen();
            write_attr(root, g.reborrow().init_root());
            g.set_more(*more);
            let mut l = g.init_entries(len_u32(entries.len()));
            for (i, e) in indexed(entries) {
                write_frozen_entry(e, l.reborrow().get(i));
            }
        }
        MetaReply::Xattrs(x) => write_xattrs(x, |n| b.init_xattrs(n)),
        MetaReply::KeepAlive { lease_ms, garbage } => {
            let mut g = b.init_keep_alive();
            g.set_lease_ms(*lease_ms);
            write_garbage(garbage, |n| g.init_garbage(n));
        }
        MetaReply::Lock(conflict) => {
            let g = b.init_lock();
            if let Some(l) = conflict {
                write_file_lock(l, g.init_conflict());
            }
        }
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
                        name: text(e.get_name(), "entries.name")?,
                        ino: e.get_ino(),
                        kind: read_kind(e.get_kind(), "entries.kind")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        ),
        W::Unit(()) => MetaReply::Unit,
        W::Freed(s) => MetaReply::Freed(read_stripes(s)?),
        W::Link(t) => MetaReply::Link(text(t, "response.link")?),
        W::StatFs(s) => {
            need(r.has_stat_fs(), "response.statFs")?;
            let s = s?;
            MetaReply::StatFs(StatFs {
                total_bytes: s.get_total_bytes(),
                used_bytes: s.get_used_bytes(),
                files: s.get_files(),
                files_free: s.get_files_free(),
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
        W::Frozen(g) => {
            need(g.has_root(), "frozen.root")?;
            MetaReply::Frozen {
                root: read_attr(g.get_root()?)?,
                entries: g
                    .get_entries()?
                    .iter()
                    .map(read_frozen_entry)
                    .collect::<Result<Vec<_>>>()?,
                more: g.get_more(),
            }
        }
        W::Xattrs(x) => MetaReply::Xattrs(read_xattrs(x)?),
        W::KeepAlive(g) => MetaReply::KeepAlive {
            lease_ms: g.get_lease_ms(),
            garbage: read_garbage(g.get_garbage())?,
        },
        W::Lock(g) => MetaReply::Lock(if g.has_conflict() {
            Some(read_file_lock(g.get_conflict()?)?)
        } else {
            None
        }),
    }))
}
