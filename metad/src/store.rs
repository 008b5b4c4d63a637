//! Durable Raft storage in one redb database under the data dir: the log,
//! the vote, the committed index and the last snapshot; plus the in-memory
//! state machine, which is rebuilt at start from that snapshot (openraft then
//! replays the committed log behind it).
//!
//! Every commit that openraft relies on for safety (log append, vote,
//! snapshot) uses redb's default `Durability::Immediate`, i.e. it is fsync'd
//! before openraft is told it is done.

// openraft fixes the error type of every storage method (`StorageError`,
// over 200 bytes); boxing it here would only add conversions.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use torchfs_proto::meta::{MetaReply, StripeConfig};

use crate::state::{Command, Outcome, State};

openraft::declare_raft_types!(
    /// openraft's types for metad: the log carries [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

type StoreResult<T> = Result<T, StorageError<u64>>;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

/// A redb failure while reading.
fn db_read<E: Into<redb::Error>>(e: E) -> StorageError<u64> {
    StorageIOError::read(&e.into()).into()
}

/// A redb failure while writing.
fn db_write<E: Into<redb::Error>>(e: E) -> StorageError<u64> {
    StorageIOError::write(&e.into()).into()
}

/// `e`, saying which meta key it is about and what was being done.
fn about_key(e: &bincode::Error, doing: &str, key: &str) -> AnyError {
    AnyError::new(e).add_context(|| format!("{doing} `{key}` in table raft_meta"))
}

/// Opens (creating if needed) the database and its tables, so that a
/// corrupt or unwritable store is reported before Raft starts.
pub fn open_db(path: &Path) -> Result<Database, redb::Error> {
    let db = Database::create(path)?;
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(db)
}

fn get_meta<T: for<'de> Deserialize<'de>>(db: &Database, key: &str) -> StoreResult<Option<T>> {
    let tx = db.begin_read().map_err(db_read)?;
    let table = tx.open_table(META).map_err(db_read)?;
    let Some(v) = table.get(key).map_err(db_read)? else {
        return Ok(None);
    };
    bincode::deserialize(v.value()).map(Some).map_err(|e| {
        StorageIOError::read(about_key(
            &e,
            &format!("decode {} bytes of", v.value().len()),
            key,
        ))
        .into()
    })
}

fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T, durable: bool) -> StoreResult<()> {
    let bytes = bincode::serialize(value)
        .map_err(|e| StorageIOError::write(about_key(&e, "encode", key)))?;
    let mut tx = db.begin_write().map_err(db_write)?;
    if !durable {
        // Lost on a crash only until the next durable commit; losing it is
        // safe (see the users).
        tx.set_durability(redb::Durability::Eventual);
    }
    {
        let mut table = tx.open_table(META).map_err(db_write)?;
        table.insert(key, bytes.as_slice()).map_err(db_write)?;
    }
    tx.commit().map_err(db_write)
}

/// The Raft log and vote. Cheap to clone (it is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn delete_range(&self, range: impl RangeBounds<u64>, durable: bool) -> StoreResult<()> {
        let mut tx = self.db.begin_write().map_err(db_write)?;
        if !durable {
            tx.set_durability(redb::Durability::Eventual);
        }
        {
            let mut table = tx.open_table(LOG).map_err(db_write)?;
            table
                .retain_in::<u64, _>(range, |_, _| false)
                .map_err(db_write)?;
        }
        tx.commit().map_err(db_write)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let tx = self.db.begin_read().map_err(db_read)?;
        let table = tx.open_table(LOG).map_err(db_read)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(range).map_err(db_read)? {
            let (k, v) = item.map_err(db_read)?;
            out.push(
                bincode::deserialize(v.value())
                    .map_err(|e| StorageIOError::read_log_at_index(k.value(), &e))?,
            );
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = get_meta(&self.db, KEY_PURGED)?;
        let tx = self.db.begin_read().map_err(db_read)?;
        let table = tx.open_table(LOG).map_err(db_read)?;
        let last = match table.last().map_err(db_read)? {
            Some((k, v)) => {
                let e: Entry<TypeConfig> = bincode::deserialize(v.value())
                    .map_err(|e| StorageIOError::read_log_at_index(k.value(), &e))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StoreResult<()> {
        put_meta(&self.db, KEY_VOTE, vote, true)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<u64>>> {
        get_meta(&self.db, KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StoreResult<()> {
        // Only speeds up recovery (replay at start instead of after the next
        // election), so it need not be fsync'd on its own.
        put_meta(&self.db, KEY_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<u64>>> {
        Ok(get_meta::<Option<LogId<u64>>>(&self.db, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tx = self.db.begin_write().map_err(db_write)?;
        {
            let mut table = tx.open_table(LOG).map_err(db_write)?;
            for entry in entries {
                let bytes = bincode::serialize(&entry)
                    .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(db_write)?;
            }
        }
        let result = tx
            .commit()
            .map_err(|e| std::io::Error::other(redb::Error::from(e)));
        let failed = result.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(StorageIOError::write_logs(&std::io::Error::other(e)).into()),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        self.delete_range(log_id.index.., true)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StoreResult<()> {
        // Record the purge point first: if the delete is lost in a crash the
        // entries are merely kept longer.
        put_meta(&self.db, KEY_PURGED, &log_id, true)?;
        self.delete_range(..=log_id.index, false)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::BTreeSet;
    use torchfs_proto::meta::{MetaRequest, ROOT_INO};

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    fn mkdir(name: &str) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Command::client(
            5,
            MetaRequest::Mkdir {
                umask: 0,
                parent: ROOT_INO,
                name: name.into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            None,
        ))
    }

    #[tokio::test]
    async fn log_vote_and_snapshot_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let db = Arc::new(open_db(&path).unwrap());
            let mut log = LogStore::new(db.clone());
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            // Write entries directly (LogFlushed cannot be built outside openraft).
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LOG).unwrap();
                for i in 1..=5 {
                    let e = entry(i, mkdir(&format!("d{i}")));
                    t.insert(i, bincode::serialize(&e).unwrap().as_slice())
                        .unwrap();
                }
            }
            tx.commit().unwrap();
            log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5))
                .await
                .unwrap();
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
                .await
                .unwrap();
            let st = log.get_log_state().await.unwrap();
            assert_eq!(st.last_log_id.unwrap().index, 4);
            assert_eq!(st.last_purged_log_id.unwrap().index, 2);
            let es = log.try_get_log_entries(0..10).await.unwrap();
            assert_eq!(
                es.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                [3, 4]
            );

            let mut sm = StateMachineStore::open(db.clone(), StripeConfig::DEFAULT).unwrap();
            let members = Membership::new(vec![BTreeSet::from([1u64])], None);
            let out = sm
                .apply([
                    entry(1, EntryPayload::Membership(members)),
                    entry(2, mkdir("a")),
                ])
                .await
                .unwrap();
            assert!(out.iter().all(|o| o.is_ok()));
            sm.build_snapshot().await.unwrap();
            sm.apply([entry(3, mkdir("b"))]).await.unwrap();
        }
        let db = Arc::new(open_db(&path).unwrap());
        let mut log = LogStore::new(db.clone());
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let mut sm = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
        let (applied, membership) = sm.applied_state().await.unwrap();
        // Only what the snapshot held: entry 3 comes back by log replay.
        assert_eq!(applied.unwrap().index, 2);
        assert!(membership.log_id().is_some());
        let d = sm.data.read().unwrap();
        assert!(d
            .state
            .read(&MetaRequest::Lookup {
                parent: ROOT_INO,
                name: "a".into()
            })
            .is_ok());
        assert!(d
            .state
            .read(&MetaRequest::Lookup {
                parent: ROOT_INO,
                name: "b".into()
            })
            .is_err());
    }

    #[tokio::test]
    async fn session_table_survives_snapshot_reopen_and_install() {
        use torchfs_proto::meta::WriteId;
        let id = WriteId {
            client_id: 77,
            seq: 1,
            lowest_outstanding_seq: 1,
        };
        let with_id = |p: EntryPayload<TypeConfig>| match p {
            EntryPayload::Normal(Command {
                now_ns,
                op: crate::state::Op::Client { req, closed, .. },
            }) => EntryPayload::Normal(Command {
                now_ns,
                op: crate::state::Op::Client {
                    req,
                    write_id: Some(id),
                    closed,
                },
            }),
            other => other,
        };
        let dir = tempfile::tempdir().unwrap();
        let snapshot = {
            let db = Arc::new(open_db(&dir.path().join("a.redb")).unwrap());
            let mut sm = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
            let out = sm.apply([entry(1, with_id(mkdir("a")))]).await.unwrap();
            assert!(out[0].is_ok());
            sm.build_snapshot().await.unwrap()
        };
        // A restart: the table comes back from the stored snapshot, and the
        // retry (a second log entry with the same id) is not applied.
        let db = Arc::new(open_db(&dir.path().join("a.redb")).unwrap());
        let mut sm = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
        let first = sm
            .data
            .read()
            .unwrap()
            .state
            .sessions()
            .answered(&id)
            .cloned();
        assert!(matches!(first, Some(Ok(MetaReply::Attr(_)))), "{first:?}");
        let out = sm.apply([entry(2, with_id(mkdir("a")))]).await.unwrap();
        assert_eq!(Some(&out[0]), first.as_ref());
        // A new voter installing the snapshot gets the table too.
        let db = Arc::new(open_db(&dir.path().join("b.redb")).unwrap());
        let mut fresh = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
        fresh
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let out = fresh.apply([entry(2, with_id(mkdir("a")))]).await.unwrap();
        assert_eq!(Some(&out[0]), first.as_ref());
        assert_eq!(fresh.data.read().unwrap().state.file_count(), 2);
    }

    #[tokio::test]
    async fn corrupt_entries_are_errors_naming_what_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(open_db(&dir.path().join("m.redb")).unwrap());
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            log.insert(7, [0xffu8; 3].as_slice()).unwrap();
            let mut meta = tx.open_table(META).unwrap();
            meta.insert(KEY_VOTE, [0xffu8; 2].as_slice()).unwrap();
        }
        tx.commit().unwrap();
        let mut log = LogStore::new(db);
        let e = log.try_get_log_entries(0..10).await.unwrap_err();
        assert!(e.to_string().contains("LogIndex(7)"), "{e}");
        let e = log.get_log_state().await.unwrap_err();
        assert!(e.to_string().contains("LogIndex(7)"), "{e}");
        let e = log.read_vote().await.unwrap_err();
        assert!(e.to_string().contains("`vote`"), "{e}");
    }
}
