//! Extended attributes through FUSE: the size protocol of getxattr and
//! listxattr (size 0 asks for the length; a buffer too small is ERANGE) and
//! setxattr's flags.

use fuser::{Errno, ReplyXattr};
use torchfs_proto::meta::XattrMode;

/// Answers a getxattr/listxattr request for `value` with room for `size`.
pub(super) fn reply_sized(value: &[u8], size: u32, reply: ReplyXattr) {
    let Ok(len) = u32::try_from(value.len()) else {
        return reply.error(Errno::E2BIG);
    };
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

/// setxattr(2)'s flags: XATTR_CREATE, XATTR_REPLACE, or neither.
pub(super) fn xattr_mode(flags: i32) -> Result<XattrMode, Errno> {
    match flags {
        0 => Ok(XattrMode::Any),
        libc::XATTR_CREATE => Ok(XattrMode::Create),
        libc::XATTR_REPLACE => Ok(XattrMode::Replace),
        _ => Err(Errno::EINVAL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setxattr_flags_map_to_modes() {
        assert_eq!(xattr_mode(0), Ok(XattrMode::Any));
        assert_eq!(xattr_mode(libc::XATTR_CREATE), Ok(XattrMode::Create));
        assert_eq!(xattr_mode(libc::XATTR_REPLACE), Ok(XattrMode::Replace));
        assert_eq!(
            xattr_mode(libc::XATTR_CREATE | libc::XATTR_REPLACE),
            Err(Errno::EINVAL)
        );
    }
}
