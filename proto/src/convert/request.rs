//! Requests: [`write_request`] and [`read_request`], one arm per
//! `MetaRequest` variant, and the [`WriteId`] beside the union
//! ([`write_write_id`], [`read_write_id`]).

use crate::meta::{MetaRequest, WriteId};
use crate::metadata_capnp as mc;

use super::types::{
    read_file_lock, read_kind, read_node_info, read_rename_mode, read_set_attr, read_stripes,
    read_xattr_mode, write_file_lock, write_kind, write_node_info, write_rename_mode,
    write_set_attr, write_stripes, write_u64s, write_xattr_mode,
};
use super::{need, text, Result};

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
            umask,
            uid,
            gid,
            exclusive,
        } => {
            let mut g = b.init_create();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_mode(*mode);
            g.set_umask(*umask);
            g.set_uid(*uid);
            g.set_gid(*gid);
            g.set_exclusive(*exclusive);
        }
        MetaRequest::Mkdir {
            parent,
            name,
            mode,
            umask,
            uid,
            gid,
        } => {
            let mut g = b.init_mkdir();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_mode(*mode);
            g.set_umask(*umask);
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
            mode,
        } => {
            let mut g = b.init_rename();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_new_parent(*new_parent);
            g.set_new_name(new_name.as_str());
            g.set_mode(write_rename_mode(*mode));
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
        MetaRequest::Mknod {
            parent,
            name,
            kind,
            mode,
            umask,
            uid,
            gid,
            rdev,
        } => {
            let mut g = b.init_mknod();
            g.set_parent(*parent);
            g.set_name(name.as_str());
            g.set_kind(write_kind(*kind));
            g.set_mode(*mode);
            g.set_umask(*umask);
            g.set_uid(*uid);
            g.set_gid(*gid);
            g.set_rdev(*rdev);
        }
        MetaRequest::StatFs => {
            let mut b = b;
            b.set_stat_fs(())
        }
        MetaRequest::GetLayout { ino } => b.init_get_layout().set_ino(*ino),
        MetaRequest::CommitLayout { ino, size, stripes } => {
            let mut g = b.init_commit_layout();
            g.set_ino(*ino);
            g.set_size(*size);
            write_stripes(stripes, |n| g.init_stripes(n));
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
        MetaRequest::Freeze { ino } => b.init_freeze().set_ino(*ino),
        MetaRequest::Unfreeze { ino } => b.init_unfreeze().set_ino(*ino),
        MetaRequest::ReadFrozen { ino, offset, limit } => {
            let mut g = b.init_read_frozen();
            g.set_ino(*ino);
            g.set_offset(*offset);
            g.set_limit(*limit);
        }
        MetaRequest::ClusterStatus => {
            let mut b = b;
            b.set_cluster_status(())
        }
        MetaRequest::SetXattr {
            ino,
            name,
            value,
            mode,
        } => {
            let mut g = b.init_set_xattr();
            g.set_ino(*ino);
            g.set_name(name.as_str());
            g.set_value(value);
            g.set_mode(write_xattr_mode(*mode));
        }
        MetaRequest::RemoveXattr { ino, name } => {
            let mut g = b.init_remove_xattr();
            g.set_ino(*ino);
            g.set_name(name.as_str());
        }
        MetaRequest::GetXattrs { ino } => b.init_get_xattrs().set_ino(*ino),
        MetaRequest::Open { ino, client_id } => {
            let mut g = b.init_open();
            g.set_ino(*ino);
            g.set_client_id(*client_id);
        }
        MetaRequest::KeepAlive {
            client_id,
            open,
            deleted,
        } => {
            let mut g = b.init_keep_alive();
            g.set_client_id(*client_id);
            write_u64s(open, |n| g.reborrow().init_open(n));
            write_u64s(deleted, |n| g.reborrow().init_deleted(n));
        }
        MetaRequest::SetLock { ino, lock } => {
            let mut g = b.init_set_lock();
            g.set_ino(*ino);
            write_file_lock(lock, g.init_lock());
        }
        MetaRequest::GetLock { ino, lock } => {
            let mut g = b.init_get_lock();
            g.set_ino(*ino);
            write_file_lock(lock, g.init_lock());
        }
    }
}

/// Reads a `Request`; malformed input is an error.
pub fn read_request(r: mc::request::Reader<'_>) -> Result<MetaRequest> {
    use mc::request::Which as W;
    Ok(match r.which()? {
        W::Lookup(g) => MetaRequest::Lookup {
            parent: g.get_parent(),
            name: text(g.get_name(), "lookup.name")?,
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
            after: text(g.get_after(), "readDir.after")?,
            limit: g.get_limit(),
        },
        W::Create(g) => MetaRequest::Create {
            parent: g.get_parent(),
            name: text(g.get_name(), "create.name")?,
            umask: g.get_umask(),
            mode: g.get_mode(),
            uid: g.get_uid(),
            gid: g.get_gid(),
            exclusive: g.get_exclusive(),
        },
        W::Mkdir(g) => MetaRequest::Mkdir {
            parent: g.get_parent(),
            name: text(g.get_name(), "mkdir.name")?,
            umask: g.get_umask(),
            mode: g.get_mode(),
            uid: g.get_uid(),
            gid: g.get_gid(),
        },
        W::Unlink(g) => MetaRequest::Unlink {
            parent: g.get_parent(),
            name: text(g.get_name(), "unlink.name")?,
        },
        W::Rmdir(g) => MetaRequest::Rmdir {
            parent: g.get_parent(),
            name: text(g.get_name(), "rmdir.name")?,
        },
        W::Rename(g) => MetaRequest::Rename {
            parent: g.get_parent(),
            name: text(g.get_name(), "rename.name")?,
            new_parent: g.get_new_parent(),
            new_name: text(g.get_new_name(), "rename.newName")?,
            mode: read_rename_mode(g.get_mode())?,
        },
        W::Link(g) => MetaRequest::Link {
            ino: g.get_ino(),
            new_parent: g.get_new_parent(),
            new_name: text(g.get_new_name(), "link.newName")?,
        },
        W::Symlink(g) => MetaRequest::Symlink {
            parent: g.get_parent(),
            name: text(g.get_name(), "symlink.name")?,
            target: text(g.get_target(), "symlink.target")?,
            uid: g.get_uid(),
            gid: g.get_gid(),
        },
        W::ReadLink(g) => MetaRequest::ReadLink { ino: g.get_ino() },
        W::Mknod(g) => MetaRequest::Mknod {
            parent: g.get_parent(),
            name: text(g.get_name(), "mknod.name")?,
            umask: g.get_umask(),
            kind: read_kind(g.get_kind(), "mknod.kind")?,
            mode: g.get_mode(),
            uid: g.get_uid(),
            gid: g.get_gid(),
            rdev: g.get_rdev(),
        },
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
        W::Freeze(g) => MetaRequest::Freeze { ino: g.get_ino() },
        W::Unfreeze(g) => MetaRequest::Unfreeze { ino: g.get_ino() },
        W::ReadFrozen(g) => MetaRequest::ReadFrozen {
            ino: g.get_ino(),
            offset: g.get_offset(),
            limit: g.get_limit(),
        },
        W::SetXattr(g) => MetaRequest::SetXattr {
            ino: g.get_ino(),
            name: text(g.get_name(), "setXattr.name")?,
            value: g.get_value()?.to_vec(),
            mode: read_xattr_mode(g.get_mode())?,
        },
        W::RemoveXattr(g) => MetaRequest::RemoveXattr {
            ino: g.get_ino(),
            name: text(g.get_name(), "removeXattr.name")?,
        },
        W::GetXattrs(g) => MetaRequest::GetXattrs { ino: g.get_ino() },
        W::Open(g) => MetaRequest::Open {
            ino: g.get_ino(),
            client_id: g.get_client_id(),
        },
        W::KeepAlive(g) => MetaRequest::KeepAlive {
            client_id: g.get_client_id(),
            open: g.get_open()?.iter().collect(),
            deleted: g.get_deleted()?.iter().collect(),
        },
        W::SetLock(g) => {
            need(g.has_lock(), "setLock.lock")?;
            MetaRequest::SetLock {
                ino: g.get_ino(),
                lock: read_file_lock(g.get_lock()?)?,
            }
        }
        W::GetLock(g) => {
            need(g.has_lock(), "getLock.lock")?;
            MetaRequest::GetLock {
                ino: g.get_ino(),
                lock: read_file_lock(g.get_lock()?)?,
            }
        }
    })
}

/// Sets the `writeId` of a `Request` (beside its union, which
/// [`write_request`] fills).
pub fn write_write_id(id: &WriteId, b: mc::request::Builder<'_>) {
    let mut w = b.init_write_id();
    w.set_client_id(id.client_id);
    w.set_seq(id.seq);
    w.set_lowest_outstanding_seq(id.lowest_outstanding_seq);
}

/// The `writeId` of a `Request`; None when absent (a read, or a client
/// older than sessions). Its values are checked by [`WriteId::check`] where
/// it is used, not here.
pub fn read_write_id(r: mc::request::Reader<'_>) -> Result<Option<WriteId>> {
    if !r.has_write_id() {
        return Ok(None);
    }
    let w = r.get_write_id()?;
    Ok(Some(WriteId {
        client_id: w.get_client_id(),
        seq: w.get_seq(),
        lowest_outstanding_seq: w.get_lowest_outstanding_seq(),
    }))
}
