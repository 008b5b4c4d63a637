//! The repair service (docs/ARCHITECTURE.md: Repair): brings redundancy
//! back after storage nodes are lost, over the same storage client the
//! mounts use. It never changes a layout: metad's placement groups say
//! where each fragment of a stripe lives, so repair is "replace the node in
//! the groups, then rebuild what the new nodes lack".
//!
//! - [`service`]: the loop. Asks metad to replace a node down longer than
//!   `repair_after` ([`torchfs_proto::meta::MetaRequest::ReplaceNode`]),
//!   and runs a pass whenever the placement changed (and one at start),
//!   reporting progress to metad (shown by `torchfs status`).
//! - [`pass`]: one walk of every stored stripe (metad's `ScanLayouts`
//!   pages), checking and rebuilding the fragments in its scope.
//! - [`orphans`]: orphan collection (fragments no one needs, found twice
//!   a grace period apart, deleted).
//! - [`bandwidth`]: the bound on the traffic rebuilds move.

pub mod bandwidth;
pub mod orphans;
pub mod pass;
pub mod service;

pub use bandwidth::RepairBandwidth;
pub use pass::{run_pass, PassOptions, Scope};
pub use service::{run, RepairOptions};

use torchfs_proto::meta::MetaError;
use torchfs_storage_client::StorageError;

/// Why a pass or the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("metadata service: {0}")]
    Meta(#[from] MetaError),
    #[error("metad answered {request} with an unexpected reply: {reply}")]
    UnexpectedReply {
        request: &'static str,
        reply: String,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A reply of the wrong kind for `request`, as an error.
fn unexpected(request: &'static str, reply: torchfs_proto::meta::MetaReply) -> RepairError {
    let mut reply = format!("{reply:?}");
    reply.truncate(200);
    RepairError::UnexpectedReply { request, reply }
}
