//! Leader-following metadata client (SKELETON: being written by the metad helper).

use crate::meta::{MetaError, MetaReply, MetaRequest};

#[derive(Clone, Debug)]
pub struct MetaClientOptions {
    /// How long `call` keeps retrying (redirects, elections, dead voters)
    /// before it gives up with `MetaError::Unavailable`.
    pub retry_for_ms: u64,
    /// Per-attempt limit for one RPC.
    pub request_timeout_ms: u64,
}

impl Default for MetaClientOptions {
    fn default() -> Self {
        Self {
            retry_for_ms: 20_000,
            request_timeout_ms: 3_000,
        }
    }
}

/// Cheap to clone; Send + Sync; usable from any tokio runtime (the
/// Cap'n Proto RPC system, which is not Send, lives on a thread of its own).
#[derive(Clone)]
pub struct MetaClient {}

impl MetaClient {
    /// `addrs`: the client address ("host:port") of every metad voter.
    /// Connects lazily; fails only on an empty or unparsable list.
    pub fn new(addrs: Vec<String>, opts: MetaClientOptions) -> Result<Self, MetaError> {
        let _ = (addrs, opts);
        todo!()
    }

    /// Sends `req` to the leader, following redirects and retrying
    /// `Unavailable` and connection failures until `retry_for_ms` passes.
    /// `Fs` and `Invalid` errors come back at once.
    pub async fn call(&self, req: MetaRequest) -> Result<MetaReply, MetaError> {
        let _ = req;
        todo!()
    }
}
