//! The Raft log and vote ([`LogStore`]).
//!
//! `append` returns at once: its entries are readable from memory straight
//! away, and a flusher thread writes them to redb and fsyncs. Everything
//! queued while one commit runs goes into the next (group commit), so
//! concurrent writes share an fsync. openraft counts this voter's copy only
//! once `io_completed` is called, after the commit; openraft 0.10 does not
//! wait for that before it replicates, so the leader's fsync and the
//! followers' run at the same time.
//!
//! Every other write (vote, truncate, purge, committed index) goes through
//! the same queue, in order, so a truncate can never be overtaken by an
//! earlier append still waiting to be written. Those that openraft relies on
//! return once committed. The committed index, which nobody waits for and
//! which need not be durable, is put off until the next commit (or at most
//! [`DEFER_MS_MAX`]), so it costs no commit of its own between two appends.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Database, ReadableTable};
use tokio::sync::oneshot;

use super::{
    about_key, bad_entry, db_read, get_meta, Entry, LogId, StoreResult, TypeConfig, Vote,
    KEY_COMMITTED, KEY_PURGED, KEY_VOTE, LOG, META,
};

/// Writes queued for the flusher before `append` waits for room.
const QUEUE_DEPTH: usize = 1024;
/// Writes one commit takes at most (the rest wait for the next).
const JOBS_PER_COMMIT_MAX: usize = 4096;
/// How long a write that may wait (see [`Job::can_wait`]) waits for a
/// commit to ride along with before it is committed on its own.
const DEFER_MS_MAX: u64 = 200;
/// Writes that may wait, queued at most before they are committed anyway.
const DEFERRED_JOBS_MAX: usize = 64;

/// What the flusher writes, in the order it was asked.
enum Job {
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        callback: IOFlushed<TypeConfig>,
    },
    /// Deletes entries with an index in the range.
    Delete {
        from: Bound<u64>,
        to: Bound<u64>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        /// false: losing it in a crash is harmless, so on its own it is not
        /// worth an fsync (it rides along with the next durable commit).
        durable: bool,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
}

impl Job {
    fn durable(&self) -> bool {
        match self {
            Job::Meta { durable, .. } => *durable,
            Job::Append { .. } | Job::Delete { .. } => true,
        }
    }

    /// Neither durable nor waited for: may wait for the next commit.
    fn can_wait(&self) -> bool {
        matches!(
            self,
            Job::Meta {
                durable: false,
                done: None,
                ..
            }
        )
    }
}

struct Shared {
    /// Appended entries not yet committed to redb, by index: readers look
    /// here first. An entry leaves only after the commit that holds it.
    unflushed: Mutex<BTreeMap<u64, Entry>>,
    /// None only while dropping.
    queue: Option<mpsc::SyncSender<Job>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Shared {
    /// Closes the queue and waits for the flusher to commit what is in it
    /// and let go of the database (which can then be opened again).
    fn drop(&mut self) {
        self.queue = None;
        if let Some(flusher) = self.flusher.take() {
            // The flusher itself may hold the last reference (briefly, in
            // `forget_flushed`): it must not wait for itself.
            if flusher.thread().id() != std::thread::current().id() {
                let _ = flusher.join();
            }
        }
    }
}

/// The Raft log and vote. Cheap to clone (it is also the log reader).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    shared: Arc<Shared>,
}

impl LogStore {
    /// Starts the flusher thread; it ends when the last clone is dropped.
    pub fn new(db: Arc<Database>) -> Self {
        let (queue, jobs) = mpsc::sync_channel(QUEUE_DEPTH);
        let shared = Arc::new_cyclic(|weak| {
            let flusher = Flusher {
                db: db.clone(),
                shared: weak.clone(),
            };
            // A thread of its own: redb's commit blocks on fsync.
            let spawned = std::thread::Builder::new()
                .name("metad-log-flush".into())
                .spawn(move || flusher.run(jobs));
            let flusher = match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    // Every write then fails: "the log flusher has stopped".
                    tracing::error!("cannot start the log flusher thread: {e}");
                    None
                }
            };
            Shared {
                unflushed: Mutex::new(BTreeMap::new()),
                queue: Some(queue),
                flusher,
            }
        });
        Self { db, shared }
    }

    fn unflushed(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
        // Inserts and removes are single map operations: a panicked holder
        // leaves the map whole.
        self.shared
            .unflushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, job: Job) -> StoreResult<()> {
        let queue = self.shared.queue.as_ref().ok_or_else(stopped)?;
        queue.send(job).map_err(|_| stopped())
    }

    /// Queues a write and waits until it is committed.
    async fn write_and_wait(
        &self,
        make: impl FnOnce(Option<oneshot::Sender<Result<(), String>>>) -> Job,
    ) -> StoreResult<()> {
        let (done, committed) = oneshot::channel();
        self.send(make(Some(done)))?;
        match committed.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(stopped()),
        }
    }

    fn encode<T: serde::Serialize>(key: &'static str, value: &T) -> StoreResult<Vec<u8>> {
        bincode::serialize(value).map_err(|e| about_key(&e, "encode", key))
    }
}

fn stopped() -> std::io::Error {
    std::io::Error::other("the log flusher has stopped")
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry>> {
        // Memory first: an entry that leaves it has been committed, so the
        // database read that follows sees it.
        let mut out: BTreeMap<u64, Entry> = self
            .unflushed()
            .range(range.clone())
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        let tx = self.db.begin_read().map_err(db_read)?;
        let table = tx.open_table(LOG).map_err(db_read)?;
        for item in table.range::<u64>(range).map_err(db_read)? {
            let (k, v) = item.map_err(db_read)?;
            if out.contains_key(&k.value()) {
                // A newer entry at this index is on its way to disk.
                continue;
            }
            let entry = bincode::deserialize(v.value()).map_err(|e| bad_entry(k.value(), &e))?;
            out.insert(k.value(), entry);
        }
        Ok(out.into_values().collect())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote>> {
        get_meta(&self.db, KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = get_meta(&self.db, KEY_PURGED)?;
        if let Some(e) = self.unflushed().values().next_back() {
            return Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: Some(e.log_id),
            });
        }
        let tx = self.db.begin_read().map_err(db_read)?;
        let table = tx.open_table(LOG).map_err(db_read)?;
        let last = match table.last().map_err(db_read)? {
            Some((k, v)) => {
                let e: Entry =
                    bincode::deserialize(v.value()).map_err(|e| bad_entry(k.value(), &e))?;
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

    async fn save_vote(&mut self, vote: &Vote) -> StoreResult<()> {
        let bytes = Self::encode(KEY_VOTE, vote)?;
        self.write_and_wait(|done| Job::Meta {
            key: KEY_VOTE,
            bytes,
            durable: true,
            done,
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StoreResult<()> {
        // Only speeds up recovery (replay at start instead of after the next
        // election): queued, not waited for.
        let bytes = Self::encode(KEY_COMMITTED, &committed)?;
        self.send(Job::Meta {
            key: KEY_COMMITTED,
            bytes,
            durable: false,
            done: None,
        })
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId>> {
        Ok(get_meta::<Option<LogId>>(&self.db, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut unflushed = self.unflushed();
            for entry in entries {
                let bytes = bincode::serialize(&entry).map_err(|e| {
                    std::io::Error::other(format!("encode log entry {}: {e}", entry.log_id))
                })?;
                encoded.push((entry.log_id, bytes));
                unflushed.insert(entry.log_id.index, entry);
            }
        }
        self.send(Job::Append {
            entries: encoded,
            callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> StoreResult<()> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        self.unflushed().split_off(&from);
        self.write_and_wait(|done| Job::Delete {
            from: Bound::Included(from),
            to: Bound::Unbounded,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> StoreResult<()> {
        // The purge point is recorded in the same commit as the delete.
        let bytes = Self::encode(KEY_PURGED, &log_id)?;
        self.send(Job::Meta {
            key: KEY_PURGED,
            bytes,
            durable: true,
            done: None,
        })?;
        {
            let mut unflushed = self.unflushed();
            let kept = unflushed.split_off(&(log_id.index + 1));
            *unflushed = kept;
        }
        self.write_and_wait(|done| Job::Delete {
            from: Bound::Unbounded,
            to: Bound::Included(log_id.index),
            done,
        })
        .await
    }
}

/// The thread that commits queued writes to redb.
struct Flusher {
    db: Arc<Database>,
    shared: std::sync::Weak<Shared>,
}

impl Flusher {
    fn run(self, jobs: mpsc::Receiver<Job>) {
        // Writes nobody waits for and nobody needs durable (the committed
        // index) ride along with the next durable commit instead of costing
        // a commit of their own between two appends.
        let mut deferred: Vec<Job> = Vec::new();
        loop {
            let first = if deferred.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            } else {
                match jobs.recv_timeout(Duration::from_millis(DEFER_MS_MAX)) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.write(std::mem::take(&mut deferred));
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = std::mem::take(&mut deferred);
            batch.push(first);
            while batch.len() < JOBS_PER_COMMIT_MAX {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if batch.len() < DEFERRED_JOBS_MAX && batch.iter().all(Job::can_wait) {
                deferred = batch;
                continue;
            }
            self.write(batch);
        }
        // Closing: what was put off is written before the database is let go.
        if !deferred.is_empty() {
            self.write(deferred);
        }
    }

    /// Commits `batch` and tells every waiter how it went.
    fn write(&self, batch: Vec<Job>) {
        let result = self.commit(&batch).map_err(|e| e.to_string());
        if result.is_ok() {
            self.forget_flushed(&batch);
        } else if let Err(e) = &result {
            tracing::error!("commit of {} log writes failed: {e}", batch.len());
        }
        for job in batch {
            match job {
                Job::Append { callback, .. } => {
                    callback.io_completed(result.clone().map_err(std::io::Error::other))
                }
                Job::Delete { done, .. } | Job::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(result.clone());
                    }
                }
            }
        }
    }

    /// One write transaction for the whole batch, fsync'd when it commits.
    fn commit(&self, batch: &[Job]) -> Result<(), redb::Error> {
        let mut tx = self.db.begin_write()?;
        if !batch.iter().any(Job::durable) {
            // Not `Eventual`: on Linux redb fdatasyncs those as well. A
            // `None` commit becomes durable with the next durable one.
            tx.set_durability(redb::Durability::None);
        }
        {
            let mut log = tx.open_table(LOG)?;
            let mut meta = tx.open_table(META)?;
            for job in batch {
                match job {
                    Job::Append { entries, .. } => {
                        for (log_id, bytes) in entries {
                            log.insert(log_id.index, bytes.as_slice())?;
                        }
                    }
                    Job::Delete { from, to, .. } => {
                        log.retain_in::<u64, _>((*from, *to), |_, _| false)?;
                    }
                    Job::Meta { key, bytes, .. } => {
                        meta.insert(*key, bytes.as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops from memory the entries this batch committed, unless a newer
    /// entry has taken the index since (a truncate and a new append).
    fn forget_flushed(&self, batch: &[Job]) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut unflushed = shared.unflushed.lock().unwrap_or_else(|p| p.into_inner());
        for job in batch {
            if let Job::Append { entries, .. } = job {
                for (log_id, _) in entries {
                    if unflushed.get(&log_id.index).map(|e| e.log_id) == Some(*log_id) {
                        unflushed.remove(&log_id.index);
                    }
                }
            }
        }
    }
}
