//! Stores written by an older metad, brought to the current layout at
//! open: the Raft log moves from redb's `raft_log` table into segments.

use redb::{Database, ReadableTable};

use super::wal::{self, Wal};
use super::{db_read, db_write, StoreResult, LOG};

/// Moves log entries an older metad kept in redb's `raft_log` table into
/// the segments, then empties the table (the segments are durable first).
pub(super) fn move_log_out_of_db(db: &Database, wal: &mut Wal) -> StoreResult<()> {
    let mut entries = Vec::new();
    {
        let tx = db.begin_read().map_err(db_read)?;
        let table = tx.open_table(LOG).map_err(db_read)?;
        for item in table.iter().map_err(db_read)? {
            let (k, v) = item.map_err(db_read)?;
            entries.push((k.value(), v.value().to_vec()));
        }
    }
    if entries.is_empty() {
        return Ok(());
    }
    if wal.reader().last_index().is_some() {
        return Err(std::io::Error::other(format!(
            "both redb's raft_log table ({} entries) and the log segments hold entries",
            entries.len()
        )));
    }
    let mut records = Vec::new();
    let mut lens = Vec::new();
    let mut first = entries[0].0;
    for (index, bytes) in &entries {
        if first + lens.len() as u64 != *index {
            wal.append(first, &records, &lens)?;
            records.clear();
            lens.clear();
            first = *index;
        }
        let before = records.len();
        wal::encode_record(&mut records, *index, bytes);
        lens.push((records.len() - before) as u64);
    }
    wal.append(first, &records, &lens)?;
    let tx = db.begin_write().map_err(db_write)?;
    tx.open_table(LOG)
        .map_err(db_write)?
        .retain(|_, _| false)
        .map_err(db_write)?;
    tx.commit().map_err(db_write)?;
    tracing::info!(
        "moved {} Raft log entries from redb into the log segments",
        entries.len()
    );
    Ok(())
}
