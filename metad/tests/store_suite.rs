//! openraft's own storage test suite (`openraft::testing::Suite`) against
//! metad's store: the log segments and the vote, and the state machine with its
//! snapshots, each test on a fresh database in a temporary directory.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;
use torchfs_metad::store::{open_db, LogStore, StateMachineStore, TypeConfig};
use torchfs_proto::meta::StripeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("make a temporary directory");
        let db = Arc::new(open_db(&dir.path().join("raft.redb")).expect("open the database"));
        // Small segments, so the suite's logs roll over many times.
        let log = LogStore::open_with(db.clone(), &dir.path().join("log"), 4096)
            .map_err(|e| StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let sm = StateMachineStore::open(db, StripeConfig::DEFAULT).map_err(|e| {
            StorageError::from_io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e)
        })?;
        Ok((dir, log, sm))
    }
}

#[tokio::test]
async fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(Builder).await {
        panic!("openraft's storage suite failed: {e}");
    }
}
