//! Extended attributes: set (with XATTR_CREATE / XATTR_REPLACE), remove,
//! and the whole list with values (one bounded reply, so a client can cache
//! an inode's attributes and answer getxattr and listxattr from memory).
//!
//! Limits, as Linux's: names of at most [`XATTR_NAME_BYTES_MAX`] bytes
//! (ERANGE), values of at most [`XATTR_VALUE_BYTES_MAX`] (E2BIG), and at most
//! [`XATTR_INODE_BYTES_MAX`] of names plus values per inode (ENOSPC).
//! Namespaces: `user.`, `trusted.`, `security.` and the POSIX ACLs
//! (`system.posix_acl_access`, `system.posix_acl_default`); any other name
//! is EOPNOTSUPP. Who may set which namespace is the kernel's check (the
//! VFS's `xattr_permission`), as for every other permission.

use torchfs_proto::meta::{
    errno, Ino, MetaError, MetaReply, Xattr, XattrMode, XATTR_INODE_BYTES_MAX,
    XATTR_NAME_BYTES_MAX, XATTR_VALUE_BYTES_MAX,
};

use super::{fs, stamp_ctime, Outcome, State};

/// Name prefixes torchfs stores.
const NAMESPACES: [&str; 3] = ["user.", "trusted.", "security."];
pub(super) use super::acl::{ACL_ACCESS, ACL_DEFAULT};

fn check_xattr_name(name: &str) -> Result<(), MetaError> {
    if name.len() > XATTR_NAME_BYTES_MAX {
        return Err(fs(
            errno::ERANGE,
            format!(
                "xattr name is {} bytes, at most {XATTR_NAME_BYTES_MAX}",
                name.len()
            ),
        ));
    }
    let known = name == ACL_ACCESS
        || name == ACL_DEFAULT
        || NAMESPACES
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p));
    if !known {
        return Err(fs(
            errno::EOPNOTSUPP,
            format!(
                "xattr {name:?}: only user., trusted., security. and POSIX ACL names are supported"
            ),
        ));
    }
    Ok(())
}

impl State {
    pub(super) fn get_xattrs(&self, ino: Ino) -> Outcome {
        let node = self.inode(ino)?;
        Ok(MetaReply::Xattrs(
            node.xattrs
                .iter()
                .map(|(name, value)| Xattr {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        ))
    }

    pub(super) fn set_xattr(
        &mut self,
        ino: Ino,
        name: &str,
        value: &[u8],
        mode: XattrMode,
        now: i64,
    ) -> Outcome {
        check_xattr_name(name)?;
        if value.len() > XATTR_VALUE_BYTES_MAX {
            return Err(fs(
                errno::E2BIG,
                format!(
                    "xattr {name:?} value is {} bytes, at most {XATTR_VALUE_BYTES_MAX}",
                    value.len()
                ),
            ));
        }
        self.check_thawed(ino, || format!("set xattr {name:?} of inode {ino}"))?;
        let node = self.inode(ino)?;
        let old = node.xattrs.get(name);
        match (mode, old) {
            (XattrMode::Create, Some(_)) => {
                return Err(fs(errno::EEXIST, format!("xattr {name:?} exists")))
            }
            (XattrMode::Replace, None) => {
                return Err(fs(errno::ENODATA, format!("no xattr {name:?}")))
            }
            _ => {}
        }
        let used: usize = node.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let after = used - old.map_or(0, |v| name.len() + v.len()) + name.len() + value.len();
        if after > XATTR_INODE_BYTES_MAX {
            return Err(fs(
                errno::ENOSPC,
                format!(
                    "xattrs of inode {ino} would take {after} bytes, at most {XATTR_INODE_BYTES_MAX}"
                ),
            ));
        }
        let mode_bits = if name == ACL_ACCESS {
            super::acl::mode_of_access_acl(value)?
        } else {
            None
        };
        let node = self.inode_mut(ino)?;
        node.xattrs.insert(name.to_string(), value.to_vec());
        if let Some(bits) = mode_bits {
            node.attr.mode = (node.attr.mode & !0o777) | bits;
        }
        node.attr.has_xattrs = true;
        stamp_ctime(&mut node.attr, now);
        Ok(MetaReply::Attr(node.attr.clone()))
    }

    pub(super) fn remove_xattr(&mut self, ino: Ino, name: &str, now: i64) -> Outcome {
        check_xattr_name(name)?;
        self.check_thawed(ino, || format!("remove xattr {name:?} of inode {ino}"))?;
        let node = self.inode_mut(ino)?;
        if node.xattrs.remove(name).is_none() {
            return Err(fs(errno::ENODATA, format!("no xattr {name:?}")));
        }
        node.attr.has_xattrs = !node.xattrs.is_empty();
        stamp_ctime(&mut node.attr, now);
        Ok(MetaReply::Attr(node.attr.clone()))
    }
}
