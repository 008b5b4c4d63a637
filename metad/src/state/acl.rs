//! POSIX ACLs, as the kernel hands them over in the `system.posix_acl_*`
//! xattrs (`posix_acl_xattr` format: a little-endian u32 version 2, then
//! entries of u16 tag, u16 perm, u32 id). With FUSE_POSIX_ACL the kernel
//! enforces ACLs itself; the filesystem keeps the mode and the access ACL
//! in step (setfacl changes the mode, chmod changes the ACL) and gives new
//! inodes their parent's default ACL (`posix_acl_create`).

use torchfs_proto::meta::{errno, FileKind, MetaError};

use super::fs;

/// The POSIX ACL names (system namespace).
pub(super) const ACL_ACCESS: &str = "system.posix_acl_access";
pub(super) const ACL_DEFAULT: &str = "system.posix_acl_default";

/// Extended attributes (name, value) a new inode inherits.
pub(super) type InheritedXattrs = Vec<(String, Vec<u8>)>;

const VERSION: u32 = 2;
const HEADER_BYTES: usize = 4;
const ENTRY_BYTES: usize = 8;

const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One ACL entry's tag and permission bits (rwx), by byte offset in the xattr.
struct Entry {
    offset: usize,
    tag: u16,
    perm: u16,
}

/// The entries of an ACL xattr; a malformed one is EINVAL.
fn entries(value: &[u8]) -> Result<Vec<Entry>, MetaError> {
    let bad = |why: String| fs(errno::EINVAL, format!("malformed POSIX ACL: {why}"));
    if value.len() < HEADER_BYTES || !(value.len() - HEADER_BYTES).is_multiple_of(ENTRY_BYTES) {
        return Err(bad(format!("{} bytes", value.len())));
    }
    let version = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
    if version != VERSION {
        return Err(bad(format!("version {version}, expected {VERSION}")));
    }
    let mut out = Vec::with_capacity((value.len() - HEADER_BYTES) / ENTRY_BYTES);
    for (i, e) in value[HEADER_BYTES..].chunks_exact(ENTRY_BYTES).enumerate() {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        if ![USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&tag) || perm > 0o7 {
            return Err(bad(format!("entry {i}: tag {tag:#x}, perm {perm:#o}")));
        }
        out.push(Entry {
            offset: HEADER_BYTES + i * ENTRY_BYTES,
            tag,
            perm,
        });
    }
    for required in [USER_OBJ, GROUP_OBJ, OTHER] {
        if out.iter().filter(|e| e.tag == required).count() != 1 {
            return Err(bad(format!("needs exactly one entry of tag {required:#x}")));
        }
    }
    if out.iter().any(|e| e.tag == USER || e.tag == GROUP) && !out.iter().any(|e| e.tag == MASK) {
        return Err(bad("named entries need a mask entry".into()));
    }
    Ok(out)
}

/// The class whose bits a mode's group triplet shows: the mask if there is
/// one, else the owning group.
fn group_class(entries: &[Entry]) -> u16 {
    if entries.iter().any(|e| e.tag == MASK) {
        MASK
    } else {
        GROUP_OBJ
    }
}

/// The permission bits (0o777) an access ACL gives the mode.
pub(super) fn mode_of_access_acl(value: &[u8]) -> Result<Option<u32>, MetaError> {
    let entries = entries(value)?;
    let class = group_class(&entries);
    let mut mode = 0;
    for e in &entries {
        let perm = u32::from(e.perm);
        match e.tag {
            USER_OBJ => mode |= perm << 6,
            OTHER => mode |= perm,
            t if t == class => mode |= perm << 3,
            _ => {}
        }
    }
    Ok(Some(mode))
}

/// Rewrites an access ACL's owner, group-class and other entries to the
/// new mode's bits (chmod on an inode with an ACL, as `posix_acl_chmod`).
pub(super) fn chmod_acl(value: &mut [u8], mode: u32) {
    let Ok(entries) = entries(value) else {
        return;
    };
    let class = group_class(&entries);
    for e in entries {
        let perm = match e.tag {
            USER_OBJ => (mode >> 6) & 0o7,
            OTHER => mode & 0o7,
            t if t == class => (mode >> 3) & 0o7,
            _ => continue,
        };
        value[e.offset + 2..e.offset + 4].copy_from_slice(&(perm as u16).to_le_bytes());
    }
}

/// What a new inode gets from its parent's default ACL (`posix_acl_create`):
/// its mode (the requested mode masked by the ACL, umask not applied) and
/// its xattrs (the access ACL, and for a directory the default ACL too).
/// None when the parent has no (valid) default ACL: then the umask applies.
pub(super) fn inherit(
    parent_default: Option<&Vec<u8>>,
    kind: FileKind,
    mode: u32,
) -> Option<(u32, InheritedXattrs)> {
    let default = parent_default?;
    let entries = entries(default).ok()?;
    let mut access = default.clone();
    let class = group_class(&entries);
    let mut perm_bits = 0;
    for e in &entries {
        let (shift, keep) = match e.tag {
            USER_OBJ => (6, true),
            OTHER => (0, true),
            t if t == class => (3, true),
            _ => (0, false),
        };
        if !keep {
            continue;
        }
        let perm = e.perm & ((mode >> shift) & 0o7) as u16;
        access[e.offset + 2..e.offset + 4].copy_from_slice(&perm.to_le_bytes());
        perm_bits |= u32::from(perm) << shift;
    }
    let mut xattrs = vec![(ACL_ACCESS.to_string(), access)];
    if kind == FileKind::Dir {
        xattrs.push((ACL_DEFAULT.to_string(), default.clone()));
    }
    Some(((mode & !0o777) | perm_bits, xattrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn the_mode_shows_the_mask_not_the_owning_group() {
        let minimal = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 4, 0)]);
        assert_eq!(mode_of_access_acl(&minimal).unwrap(), Some(0o754));
        let named = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, 0),
            (MASK, 7, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(mode_of_access_acl(&named).unwrap(), Some(0o670));
    }

    #[test]
    fn malformed_acls_are_einval() {
        for bad in [
            vec![1, 2, 3],
            acl(&[(USER_OBJ, 7, 0), (OTHER, 4, 0)]),
            acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 8, 0), (OTHER, 4, 0)]),
            acl(&[
                (USER_OBJ, 7, 0),
                (USER, 7, 5),
                (GROUP_OBJ, 5, 0),
                (OTHER, 4, 0),
            ]),
        ] {
            let err = mode_of_access_acl(&bad).unwrap_err();
            assert_eq!(err.errno(), errno::EINVAL, "{err}");
        }
    }

    #[test]
    fn chmod_rewrites_owner_mask_and_other() {
        let mut v = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 7, 0),
            (MASK, 7, 0),
            (OTHER, 7, 0),
        ]);
        chmod_acl(&mut v, 0o640);
        assert_eq!(mode_of_access_acl(&v).unwrap(), Some(0o640));
        // The named user and the owning group keep their own bits.
        let e = entries(&v).unwrap();
        assert_eq!(e[1].perm, 7);
        assert_eq!(e[2].perm, 7);
    }

    #[test]
    fn new_inodes_take_the_default_acl_masked_by_the_mode() {
        let default = acl(&[
            (USER_OBJ, 7, 0),
            (GROUP, 7, 42),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (mode, xattrs) = inherit(Some(&default), FileKind::File, 0o666).unwrap();
        assert_eq!(mode, 0o664);
        assert_eq!(xattrs.len(), 1);
        assert_eq!(mode_of_access_acl(&xattrs[0].1).unwrap(), Some(0o664));
        let (mode, xattrs) = inherit(Some(&default), FileKind::Dir, 0o2777).unwrap();
        assert_eq!(mode, 0o2775);
        assert_eq!(xattrs[1], (ACL_DEFAULT.to_string(), default.clone()));
        assert!(inherit(None, FileKind::File, 0o666).is_none());
    }
}
