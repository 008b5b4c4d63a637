//! What a mount asks of the kernel at init: request sizes, async reads,
//! parallel directory operations, locks, POSIX ACLs and (with a disk tier) passthrough. What the kernel
//! refuses is logged and worked around.

use fuser::{InitFlags, KernelConfig};

use super::FuseOptions;

/// Negotiates the session; returns whether passthrough was granted.
pub(super) fn negotiate(options: &FuseOptions, config: &mut KernelConfig) -> bool {
    // Bigger requests mean fewer round trips through the kernel; the
    // kernel clamps them to what it allows (max_pages_limit).
    let _ = config.set_max_write(options.request_bytes_max);
    let _ = config.set_max_readahead(options.request_bytes_max);
    let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_READ);
    // Lookups and readdirs in one directory run in parallel (the kernel
    // otherwise holds a per-directory lock across each round trip, so 16
    // threads stat'ing files of one directory ran one at a time). The core
    // is safe for it: every request is its own task.
    if config
        .add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS)
        .is_err()
    {
        tracing::warn!(
            "the kernel does not offer parallel lookups: one directory's lookups run one at a time"
        );
    }
    if options.read_only {
        // No opens reach a read-only mount, so its closes would not
        // release locks: the kernel keeps them itself, on this host. A
        // file changed elsewhere has its pages dropped when its attributes
        // are fetched again (the kernel keeps pages across opens here).
        if config
            .add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA)
            .is_err()
        {
            tracing::warn!("the kernel does not drop pages of changed files by itself: a read-only mount may read old bytes of files changed elsewhere");
        }
    } else if config
        // Locks go to metad, so they hold across mounts.
        .add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        .is_err()
    {
        tracing::warn!("the kernel does not pass locks to FUSE: they hold within this mount only");
    }
    // POSIX ACLs: the kernel enforces them (default_permissions) from
    // the system.posix_acl_* xattrs metad stores; with DONT_MASK it
    // leaves the umask to metad, which must not apply it under a
    // default ACL.
    if config
        .add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK)
        .is_err()
    {
        tracing::warn!(
            "the kernel does not offer FUSE POSIX ACLs: ACLs are stored but not enforced"
        );
    }
    if options.passthrough && !options.read_only {
        let granted = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if !granted {
            tracing::warn!("the kernel does not offer FUSE passthrough: disk-tier hits go through this process");
        }
        return granted;
    }
    false
}
