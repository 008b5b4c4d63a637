//! The state machine store: the namespace in memory ([`SmData`]), applied
//! from the log, with snapshots kept in the database.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};
use torchfs_proto::meta::{MetaReply, StripeConfig};

use super::{get_meta, put_meta, StoreResult, TypeConfig, KEY_SNAPSHOT};
use crate::state::{Outcome, State};

/// Everything the state machine holds; also the snapshot format.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SmData {
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, BasicNode>,
    pub state: State,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// The in-memory state machine, shared with the service for reads.
#[derive(Clone)]
pub struct StateMachineStore {
    pub data: Arc<RwLock<SmData>>,
    db: Arc<Database>,
}

impl StateMachineStore {
    /// Loads the last persisted snapshot, or starts from an empty namespace.
    pub fn open(db: Arc<Database>, stripe: StripeConfig) -> StoreResult<Self> {
        let data = match get_meta::<StoredSnapshot>(&db, KEY_SNAPSHOT)? {
            Some(snap) => {
                let mut d: SmData = bincode::deserialize(&snap.data)
                    .map_err(|e| StorageIOError::read_snapshot(Some(snap.meta.signature()), &e))?;
                d.last_applied = snap.meta.last_log_id;
                d.membership = snap.meta.last_membership;
                d
            }
            None => SmData {
                last_applied: None,
                membership: StoredMembership::default(),
                state: State::new(stripe),
            },
        };
        Ok(Self {
            data: Arc::new(RwLock::new(data)),
            db,
        })
    }

    fn read_data(&self) -> std::sync::RwLockReadGuard<'_, SmData> {
        // A panic while holding the lock cannot leave SmData half-changed in
        // a way later readers care about more than about availability.
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_data(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let (bytes, last_applied, membership) = {
            let d = self.read_data();
            let bytes =
                bincode::serialize(&*d).map_err(|e| StorageIOError::read_state_machine(&e))?;
            (bytes, d.last_applied, d.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, bytes.len()),
            None => format!("empty-{}", bytes.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        put_meta(&self.db, KEY_SNAPSHOT, &stored, true)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let d = self.read_data();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut d = self.write_data();
        let mut out = Vec::new();
        for entry in entries {
            d.last_applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Ok(MetaReply::Unit),
                EntryPayload::Normal(cmd) => d.state.apply(&cmd),
                EntryPayload::Membership(m) => {
                    d.membership = StoredMembership::new(Some(entry.log_id), m);
                    Ok(MetaReply::Unit)
                }
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let mut new: SmData = bincode::deserialize(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        new.last_applied = meta.last_log_id;
        new.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        put_meta(&self.db, KEY_SNAPSHOT, &stored, true)?;
        *self.write_data() = new;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(
            get_meta::<StoredSnapshot>(&self.db, KEY_SNAPSHOT)?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }),
        )
    }
}
