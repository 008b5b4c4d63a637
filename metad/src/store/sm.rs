//! The state machine store: the namespace in memory ([`SmData`]), applied
//! from the log, with snapshots kept in the database.

use std::io::{self, Cursor};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::Database;
use serde::{Deserialize, Serialize};
use torchfs_proto::meta::{MetaReply, StripeConfig};

use super::{
    get_meta, put_meta, Entry, LogId, Snapshot, SnapshotMeta, StoreResult, StoredMembership,
    TypeConfig, KEY_SNAPSHOT,
};
use crate::state::{Applied, Outcome, State};

/// Everything the state machine holds; also the snapshot format.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub state: State,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    /// As bytes, not a sequence of u8 (one call per byte): the same
    /// bincode encoding, written and read as one copy.
    #[serde(with = "serde_bytes")]
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
                let mut d: SmData =
                    bincode::deserialize(&snap.data).map_err(|e| bad_snapshot(&snap.meta, &e))?;
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

    /// Applies one committed entry and says what it answered.
    pub fn apply_entry(&self, entry: Entry) -> Outcome {
        self.apply_entry_with(entry, |state, cmd| state.apply(cmd).into())
            .outcome
    }

    /// [`Self::apply_entry`] with the directories the entry changed, for
    /// a client waiting on it (only the leader has one).
    fn apply_entry_reporting(&self, entry: Entry) -> Applied {
        self.apply_entry_with(entry, State::apply_reporting)
    }

    fn apply_entry_with(
        &self,
        entry: Entry,
        apply: impl FnOnce(&mut State, &crate::state::Command) -> Applied,
    ) -> Applied {
        let mut d = self.write_data();
        d.last_applied = Some(entry.log_id);
        match entry.payload {
            EntryPayload::Blank => Ok(MetaReply::Unit).into(),
            EntryPayload::Normal(cmd) => apply(&mut d.state, &cmd),
            EntryPayload::Membership(m) => {
                d.membership = StoredMembership::new(Some(entry.log_id), m);
                Ok(MetaReply::Unit).into()
            }
        }
    }

    /// Applies entries in order (tests: openraft's responders cannot be
    /// made outside it).
    #[cfg(test)]
    pub fn apply_all(&self, entries: impl IntoIterator<Item = Entry>) -> Vec<Outcome> {
        entries.into_iter().map(|e| self.apply_entry(e)).collect()
    }
}

/// A snapshot whose state does not decode.
fn bad_snapshot(meta: &SnapshotMeta, e: &bincode::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("decode the snapshot at {:?}: {e}", meta.last_log_id),
    )
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    type SnapshotData = Cursor<Vec<u8>>;

    /// Encodes the state on this (the voter's) thread, where applies
    /// cannot change it meanwhile, and writes it to the database on a
    /// blocking thread: the commit and its fsync do not hold up Raft.
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot> {
        let (bytes, last_applied, membership) = {
            let d = self.read_data();
            let bytes = bincode::serialize(&*d)
                .map_err(|e| io::Error::other(format!("encode the state machine: {e}")))?;
            (bytes, d.last_applied, d.membership.clone())
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: bytes,
        };
        let db = self.db.clone();
        let stored = tokio::task::spawn_blocking(move || {
            put_meta(&db, KEY_SNAPSHOT, &stored, true).map(|()| stored)
        })
        .await
        .map_err(|e| io::Error::other(format!("write the snapshot: {e}")))??;
        Ok(Snapshot {
            meta,
            snapshot: Cursor::new(stored.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> StoreResult<(Option<LogId>, StoredMembership)> {
        let d = self.read_data();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> StoreResult<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            match responder {
                Some(responder) => responder.send(self.apply_entry_reporting(entry)),
                // A follower's: its answer is the leader's to give.
                None => {
                    let _ = self.apply_entry(entry);
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Cursor<Vec<u8>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let mut new: SmData = bincode::deserialize(&data).map_err(|e| bad_snapshot(meta, &e))?;
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

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot>> {
        Ok(
            get_meta::<StoredSnapshot>(&self.db, KEY_SNAPSHOT)?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Cursor::new(s.data),
            }),
        )
    }
}
