//! Durable Raft storage under the data dir: the log in segment files
//! (`wal`), and in one redb database the vote, the committed index, the
//! purge point and the last snapshot; plus the in-memory
//! state machine, which is rebuilt at start from that snapshot (openraft then
//! replays the committed log behind it).
//!
//! Every write that openraft relies on for safety (log append, vote,
//! snapshot) is fsync'd before openraft is told it is done.
//!
//! - this file: the type config, tables and database helpers.
//! - `log`: [`LogStore`], the log and vote, written by a flusher thread
//!   that group-commits.
//! - `wal`: the log's segment files and their checks.
//! - `sm`: [`StateMachineStore`] and its snapshots.

// redb's error type is over 150 bytes; boxing it here would only add
// conversions on paths that fail rarely.
#![allow(clippy::result_large_err)]

use std::io::{self, Cursor};
use std::path::Path;

use openraft::type_config::alias;
use openraft::BasicNode;
use redb::{Database, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::state::{Applied, Command};

mod log;
mod migrate;
mod sm;
#[cfg(test)]
mod tests;
mod wal;

pub use log::LogStore;
pub use sm::{SmData, StateMachineStore};

openraft::declare_raft_types!(
    /// openraft's types for metad: the log carries [`Command`]s.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
);

/// A log position (term, leader and index).
pub type LogId = alias::LogIdOf<TypeConfig>;
/// A voter's vote.
pub type Vote = alias::VoteOf<TypeConfig>;
/// One Raft log entry.
pub type Entry = alias::EntryOf<TypeConfig>;
/// The membership and the log position it was set at.
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its bytes.
pub type Snapshot = alias::SnapshotOf<TypeConfig, Cursor<Vec<u8>>>;
/// metad's Raft.
pub type MetaRaft = openraft::Raft<TypeConfig, StateMachineStore>;
/// The committed leader id inside a [`LogId`].
pub type CommittedLeaderId = alias::CommittedLeaderIdOf<TypeConfig>;

type StoreResult<T> = Result<T, io::Error>;

/// Where metad kept the log before the segment files; read once to move
/// entries out (see `log::move_log_out_of_db`).
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SNAPSHOT: &str = "snapshot";

/// A redb failure while reading.
fn db_read<E: Into<redb::Error>>(e: E) -> io::Error {
    io::Error::other(format!("read the Raft store: {}", e.into()))
}

/// A redb failure while writing.
fn db_write<E: Into<redb::Error>>(e: E) -> io::Error {
    io::Error::other(format!("write the Raft store: {}", e.into()))
}

/// `e`, saying which meta key it is about and what was being done.
fn about_key(e: &bincode::Error, doing: &str, key: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{doing} `{key}` in table raft_meta: {e}"),
    )
}

/// A log entry that does not decode.
fn bad_entry(index: u64, e: &bincode::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("decode log entry {index}: {e}"),
    )
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
    bincode::deserialize(v.value())
        .map(Some)
        .map_err(|e| about_key(&e, &format!("decode {} bytes of", v.value().len()), key))
}

fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T, durable: bool) -> StoreResult<()> {
    let bytes = bincode::serialize(value).map_err(|e| about_key(&e, "encode", key))?;
    let mut tx = db.begin_write().map_err(db_write)?;
    if !durable {
        // Lost on a crash only until the next durable commit; losing it is
        // safe (see the users). `None`, as redb fdatasyncs `Eventual` too.
        tx.set_durability(redb::Durability::None);
    }
    {
        let mut table = tx.open_table(META).map_err(db_write)?;
        table.insert(key, bytes.as_slice()).map_err(db_write)?;
    }
    tx.commit().map_err(db_write)
}
