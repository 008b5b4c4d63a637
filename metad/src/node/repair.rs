//! What the leader keeps and does for the repair service: replacing a
//! lost storage node in the placement (checked against this leader's own
//! view of liveness), the service's progress, and the fragments storage
//! nodes' scrubs reported bad. None of it is logged: a new leader starts
//! with no report and no bad fragments (its repair service's first pass
//! checks every fragment).

use std::collections::BTreeSet;
use std::time::Instant;

use torchfs_proto::meta::{
    errno, FragmentRef, MetaError, MetaReply, MetaRequest, NodeId, NodeState, WriteId,
};

use super::Node;
use crate::state::Applied;

/// Bad fragments the leader holds for the repair service at most; past it
/// reports are dropped (a later repair pass finds them missing anyway).
const BAD_FRAGMENTS_MAX: usize = 1 << 16;

impl Node {
    /// Answers the repair service's and the scrubs' leader-local requests;
    /// None for any other request.
    pub(super) fn repair_desk(
        &self,
        req: &MetaRequest,
        term: u64,
    ) -> Option<Result<MetaReply, MetaError>> {
        match req {
            MetaRequest::CheckOrphans { node, fragments } => {
                let now = Instant::now();
                let orphans: Vec<FragmentRef> = {
                    let sm = self.read_sm();
                    let leases = self.leases(term);
                    fragments
                        .iter()
                        .filter(|f| match sm.state.fragment_home(f) {
                            Some(home) => home != *node,
                            // Unreferenced: an upload in flight, while a
                            // live client holds the file open.
                            None => !leases.may_be_open(f.ino, now),
                        })
                        .copied()
                        .collect()
                };
                Some(Ok(MetaReply::Fragments(orphans)))
            }
            MetaRequest::ReportRepair { progress } => {
                *self.repair.lock().unwrap_or_else(|p| p.into_inner()) = progress.clone();
                Some(Ok(MetaReply::Unit))
            }
            MetaRequest::ReportBadFragments { node, fragments } => {
                let mut bad = self.bad_fragments.lock().unwrap_or_else(|p| p.into_inner());
                let before = bad.len();
                for f in fragments {
                    if bad.len() >= BAD_FRAGMENTS_MAX {
                        tracing::warn!(
                            "bad fragments of node {node} dropped: {BAD_FRAGMENTS_MAX} wait for repair"
                        );
                        break;
                    }
                    bad.insert(*f);
                }
                let by = match node {
                    0 => "a client's degraded write".to_string(),
                    n => format!("storage node {n}'s scrub"),
                };
                tracing::warn!(
                    "{by} reported {} fragments to put back ({} new)",
                    fragments.len(),
                    bad.len() - before
                );
                Some(Ok(MetaReply::Unit))
            }
            MetaRequest::TakeBadFragments => {
                let mut bad = self.bad_fragments.lock().unwrap_or_else(|p| p.into_inner());
                let taken: BTreeSet<_> = std::mem::take(&mut *bad);
                Some(Ok(MetaReply::Fragments(taken.into_iter().collect())))
            }
            _ => None,
        }
    }

    /// `ReplaceNode`, proposed with the nodes this leader sees up as the
    /// candidates, once it sees `node` down (EBUSY while it is up: a node
    /// that answers keeps its slots).
    pub(super) async fn replace_node(
        &self,
        node: NodeId,
        write_id: Option<WriteId>,
        term: u64,
    ) -> Applied {
        let map = self.cluster_map(term);
        let Some(status) = map.node(node) else {
            let unknown = format!("storage node {node} is not registered");
            return Err(MetaError::fs(errno::ENOENT, unknown)).into();
        };
        if status.state == NodeState::Up {
            let up = format!("storage node {node} is up: it keeps its placement");
            return Err(MetaError::fs(errno::EBUSY, up)).into();
        }
        let candidates = map
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.info.id)
            .collect();
        let req = MetaRequest::ReplaceNode { node, candidates };
        self.execute_write(req, write_id, term).await
    }
}
