//! The Raft log and vote ([`LogStore`]).
//!
//! `append` returns at once: its entries are readable from memory straight
//! away, and a flusher thread writes them to the log segments ([`Wal`]) and
//! fdatasyncs; the vote, purge point and committed index go to redb. Everything
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
//! which need not be durable, is put off until the next vote or purge
//! point is committed, or for at most [`DEFER_MS_MAX`], and only the latest
//! is written: appends never wait on a database commit.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::Database;
use tokio::sync::oneshot;

use super::wal::{self, Wal, WalError, WalReader};
use super::{
    about_key, bad_entry, db_write, get_meta, Entry, LogId, StoreResult, TypeConfig, Vote,
    KEY_COMMITTED, KEY_PURGED, KEY_VOTE, META,
};

/// Writes queued for the flusher before `append` waits for room.
const QUEUE_DEPTH: usize = 1024;
/// Writes one commit takes at most (the rest wait for the next).
const JOBS_PER_COMMIT_MAX: usize = 4096;
/// How long a write that may wait (see [`Job::can_wait`]) waits for a
/// commit to ride along with before it is committed on its own.
const DEFER_MS_MAX: u64 = 200;

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
    /// The committed index changed; its latest encoding waits in
    /// [`Flusher::committed`]. One job stands for every change made until
    /// the flusher takes it, so a commit does not wake the flusher each time.
    Committed,
}

impl Job {
    /// A database write that must be durable (a vote, a purge point).
    fn is_durable_meta(&self) -> bool {
        matches!(self, Job::Meta { durable: true, .. })
    }

    /// Neither durable nor waited for: may wait for the next commit.
    fn can_wait(&self) -> bool {
        matches!(self, Job::Committed)
    }
}

struct Shared {
    /// Appended entries not yet durable, by index: readers look here first.
    /// An entry leaves only after the fdatasync that made it durable.
    unflushed: Mutex<BTreeMap<u64, Entry>>,
    /// Where the durable entries are.
    wal: WalReader,
    /// None only while dropping.
    queue: Option<mpsc::SyncSender<Job>>,
    /// The latest committed index not yet taken by the flusher, encoded.
    committed: Arc<Mutex<Option<Vec<u8>>>>,
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
    /// Opens the log segments in `wal_dir` (moving in what an older version
    /// kept in redb) and starts the flusher thread; it ends when the last
    /// clone is dropped.
    pub fn open(db: Arc<Database>, wal_dir: &std::path::Path) -> StoreResult<Self> {
        Self::open_with(db, wal_dir, wal::SEGMENT_BYTES_DEFAULT)
    }

    /// [`Self::open`] with segments of `segment_bytes`.
    pub fn open_with(
        db: Arc<Database>,
        wal_dir: &std::path::Path,
        segment_bytes: u64,
    ) -> StoreResult<Self> {
        let purged: Option<LogId> = get_meta(&db, KEY_PURGED)?;
        let mut wal = Wal::open(wal_dir, segment_bytes, purged.map(|p| p.index))?;
        super::migrate::move_log_out_of_db(&db, &mut wal)?;
        let reader = wal.reader();
        let (queue, jobs) = mpsc::sync_channel(QUEUE_DEPTH);
        let committed = Arc::new(Mutex::new(None));
        let shared = Arc::new_cyclic(|weak| {
            let flusher = Flusher {
                db: db.clone(),
                wal,
                shared: weak.clone(),
                committed: committed.clone(),
            };
            // A thread of its own: fdatasync blocks.
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
                wal: reader,
                queue: Some(queue),
                committed,
                flusher,
            }
        });
        Ok(Self { db, shared })
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
        // Memory first: an entry that leaves it is durable, so the segment
        // read that follows sees it.
        let mut out: BTreeMap<u64, Entry> = self
            .unflushed()
            .range(range.clone())
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        for (index, bytes) in self.shared.wal.read(from, to)? {
            if out.contains_key(&index) {
                // A newer entry at this index is on its way to disk.
                continue;
            }
            let entry = bincode::deserialize(&bytes).map_err(|e| bad_entry(index, &e))?;
            out.insert(index, entry);
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
        let last = match self.shared.wal.last_index() {
            Some(index) if last_purged.is_none_or(|p| p.index < index) => {
                let records = self.shared.wal.read(index, index + 1)?;
                let (_, bytes) = records.first().ok_or_else(|| {
                    std::io::Error::other(format!("log entry {index} vanished while read"))
                })?;
                let e: Entry = bincode::deserialize(bytes).map_err(|e| bad_entry(index, &e))?;
                Some(e.log_id)
            }
            _ => last_purged,
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
        let waiting = self
            .shared
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(bytes)
            .is_some();
        if waiting {
            // The flusher has a job for it already and will take this one.
            return Ok(());
        }
        self.send(Job::Committed)
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

/// The thread that makes queued writes durable.
struct Flusher {
    db: Arc<Database>,
    wal: Wal,
    shared: std::sync::Weak<Shared>,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Flusher {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        // Since when a committed index has waited to be written: nobody
        // waits for it or needs it durable, so it rides along with the next
        // durable write, or goes on its own after DEFER_MS_MAX.
        let mut committed_since: Option<Instant> = None;
        let wait_max = Duration::from_millis(DEFER_MS_MAX);
        loop {
            let first = match committed_since {
                None => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
                Some(since) => match jobs.recv_timeout(wait_max.saturating_sub(since.elapsed())) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        committed_since = None;
                        if let Some(job) = self.take_committed() {
                            self.write(vec![job]);
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            let mut batch = Vec::new();
            let mut push = |job: Job| {
                if job.can_wait() {
                    committed_since.get_or_insert_with(Instant::now);
                } else {
                    batch.push(job);
                }
            };
            push(first);
            for _ in 1..JOBS_PER_COMMIT_MAX {
                match jobs.try_recv() {
                    Ok(job) => push(job),
                    Err(_) => break,
                }
            }
            let rides = batch.iter().any(Job::is_durable_meta)
                || committed_since.is_some_and(|s| s.elapsed() >= wait_max);
            if rides && committed_since.take().is_some() {
                batch.extend(self.take_committed());
            }
            if !batch.is_empty() {
                self.write(batch);
            }
        }
        // Closing: what was put off is written before the database is let go.
        if let Some(job) = self.take_committed() {
            self.write(vec![job]);
        }
    }

    /// The latest committed index as a write, if one is waiting.
    fn take_committed(&self) -> Option<Job> {
        let bytes = self
            .committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()?;
        Some(Job::Meta {
            key: KEY_COMMITTED,
            bytes,
            durable: false,
            done: None,
        })
    }

    /// Commits `batch` and tells every waiter how it went.
    fn write(&mut self, batch: Vec<Job>) {
        let result = self.commit(&batch);
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
                Job::Committed => {}
            }
        }
    }

    /// Writes the batch in order: runs of appends as one segment write and
    /// one fdatasync, truncates and purges on the segments, the rest in one
    /// redb transaction at the end (fsync'd if any of it must be durable).
    /// A purge first commits the purge point it was queued behind.
    fn commit(&mut self, batch: &[Job]) -> Result<(), String> {
        let mut records = Vec::new();
        let mut lens = Vec::new();
        let mut first = 0;
        let mut metas: Vec<(&'static str, &[u8])> = Vec::new();
        let mut durable = false;
        for job in batch {
            match job {
                Job::Append { entries, .. } => {
                    for (log_id, bytes) in entries {
                        if !lens.is_empty() && first + lens.len() as u64 != log_id.index {
                            self.append(first, &mut records, &mut lens)?;
                        }
                        if lens.is_empty() {
                            first = log_id.index;
                        }
                        let before = records.len();
                        wal::encode_record(&mut records, log_id.index, bytes);
                        lens.push((records.len() - before) as u64);
                    }
                }
                Job::Delete { from, to, .. } => {
                    self.append(first, &mut records, &mut lens)?;
                    match (from, to) {
                        (Bound::Included(from), Bound::Unbounded) => {
                            self.wal.truncate_from(*from).map_err(|e| e.to_string())?
                        }
                        (Bound::Unbounded, Bound::Included(upto)) => {
                            self.commit_meta(std::mem::take(&mut metas), true)?;
                            self.wal.purge_upto(*upto).map_err(|e| e.to_string())?
                        }
                        other => return Err(format!("unsupported log delete range {other:?}")),
                    }
                }
                Job::Meta {
                    key,
                    bytes,
                    durable: d,
                    ..
                } => {
                    metas.push((key, bytes.as_slice()));
                    durable |= *d;
                }
                // Taken as a `Meta` before it gets here.
                Job::Committed => {}
            }
        }
        self.append(first, &mut records, &mut lens)?;
        self.commit_meta(metas, durable)
    }

    fn append(
        &mut self,
        first: u64,
        records: &mut Vec<u8>,
        lens: &mut Vec<u64>,
    ) -> Result<(), String> {
        if lens.is_empty() {
            return Ok(());
        }
        let out = self
            .wal
            .append(first, records, lens)
            .map_err(|e: WalError| e.to_string());
        records.clear();
        lens.clear();
        out
    }

    fn commit_meta(&self, metas: Vec<(&'static str, &[u8])>, durable: bool) -> Result<(), String> {
        if metas.is_empty() {
            return Ok(());
        }
        let commit = || -> Result<(), redb::Error> {
            let mut tx = self.db.begin_write()?;
            if !durable {
                // Not `Eventual`: on Linux redb fdatasyncs those as well. A
                // `None` commit becomes durable with the next durable one.
                tx.set_durability(redb::Durability::None);
            }
            {
                let mut meta = tx.open_table(META)?;
                for (key, bytes) in metas {
                    meta.insert(key, bytes)?;
                }
            }
            tx.commit()?;
            Ok(())
        };
        commit().map_err(|e| db_write(e).to_string())
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
