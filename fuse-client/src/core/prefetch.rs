//! The client's tasks around the epoch cache: resolving plan paths to
//! inodes, fetching along the plans through the ordinary read path
//! (layout from metad, fragments from the storage nodes, degraded reads
//! included), sequential readahead for files no plan names, and the disk
//! tier's writes. The cache hands out what to fetch as jobs (byte ranges
//! of an inode's version) and takes the bytes back (`complete`); it never
//! calls the client. All bounds live in the cache: a fetch is only issued
//! once its bytes are reserved there.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use torchfs_proto::meta::{
    Attr, FileKind, FileLayout, Ino, MetaReply, MetaRequest, NamedAttr, LAYOUTS_MAX, ROOT_INO,
};
use torchfs_rdma::Transport;

use super::cache::{
    tiers, DiskWork, Installed, Job, Plan, Slot, READAHEAD_CHUNK_BYTES, WHOLE_FILE_END,
};
use super::client::{Client, Inner};
use super::control::is_control_ino;
use super::error::ClientError;
use super::file::FileState;
use super::handles::OpenFile;
use super::meta::MetaService;
use super::sync::lock;

/// Planned files whose layouts are fetched with a job's: well inside what
/// the prefetcher reads while the layouts stay noted (`recent_layout`,
/// 250 ms: ~500 samples at 2,000 samples/s).
const LAYOUTS_AHEAD: u64 = 128;
/// Plan items resolved at a time: the names of one directory among them
/// that the entry cache does not hold take one `LookupMany`.
const RESOLVE_BATCH: u64 = 256;
/// The prefetcher re-checks its queue at least this often, so a lost wake
/// costs a little latency, not progress.
const PREFETCH_TICK: Duration = Duration::from_millis(200);

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Takes an accepted plan and starts resolving its paths.
    pub(crate) fn accept_plan(&self, plan: Plan) {
        let (rank, len) = (plan.rank, plan.items.len() as u64);
        if let Installed::New { base, .. } = self.inner.data_cache.install_plan(plan) {
            let client = self.clone();
            tokio::spawn(async move { client.resolve_plan(rank, base, len).await });
        }
    }

    /// Resolves the items at `[base, base + len)` of `rank`, in plan order,
    /// a batch at a time; stops when the plan is replaced.
    async fn resolve_plan(&self, rank: u32, base: u64, len: u64) {
        let mut memo: HashMap<Arc<str>, Option<(Ino, u64)>> = HashMap::new();
        let mut pos = base;
        while pos < base + len {
            let batch_end = (pos + RESOLVE_BATCH).min(base + len);
            let mut items = Vec::new();
            for p in pos..batch_end {
                match self.inner.data_cache.path_at(rank, p) {
                    Some(item) => items.push((p, item)),
                    None => return,
                }
            }
            for (_, (path, _)) in &items {
                if !memo.contains_key(path) {
                    if let Some(known) = self.inner.data_cache.known_path(path) {
                        memo.insert(path.clone(), Some(known));
                    }
                }
            }
            let mut todo: Vec<Arc<str>> = items
                .iter()
                .map(|(_, (path, _))| path.clone())
                .filter(|p| !memo.contains_key(p))
                .collect();
            todo.sort();
            todo.dedup();
            let found = self.resolve_paths(&todo).await;
            memo.extend(todo.into_iter().zip(found));
            for (p, (path, range)) in items {
                let slot = match (memo.get(&path).copied().flatten(), range) {
                    (Some((ino, size)), None) if size > 0 => Slot::Resolved {
                        ino,
                        start: 0,
                        end: WHOLE_FILE_END,
                        size_bytes: size,
                    },
                    (Some((ino, size)), Some((start, end))) if start < size => Slot::Resolved {
                        ino,
                        start,
                        end,
                        size_bytes: size,
                    },
                    _ => Slot::Void,
                };
                if !self.inner.data_cache.resolve(rank, p, slot) {
                    return;
                }
            }
            pos = batch_end;
        }
    }

    /// Each plan path's inode and size, if it names a regular file. The
    /// directories are walked through the entry cache, one after another;
    /// the names the cache does not answer take one `LookupMany` per
    /// directory (a plan over an as-written dataset would otherwise cost
    /// a `Lookup` per item). A frozen tree's table answers its own names.
    async fn resolve_paths(&self, paths: &[Arc<str>]) -> Vec<Option<(Ino, u64)>> {
        let file = |attr: &Attr| {
            (attr.kind == FileKind::File && !is_control_ino(attr.ino))
                .then_some((attr.ino, attr.size))
        };
        let mut found: Vec<Option<(Ino, u64)>> = vec![None; paths.len()];
        let mut parents: HashMap<&str, Option<Ino>> = HashMap::new();
        // Names to ask metad for, per directory: (name, index in `paths`).
        let mut ask: HashMap<Ino, Vec<(&str, usize)>> = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let (dir, name) = split_path(path);
            if !parents.contains_key(dir) {
                let ino = self.resolve_dir(dir).await;
                parents.insert(dir, ino);
            }
            let Some(parent) = parents[dir] else { continue };
            if self.inner.frozen.holds(parent) {
                found[i] = self.lookup(parent, name).await.ok().and_then(|a| file(&a));
                continue;
            }
            match self.lookup_now(parent, name) {
                Some(Ok(attr)) => found[i] = file(&attr),
                Some(Err(e)) => tracing::debug!("plan path {path:?}: {e}"),
                None => ask.entry(parent).or_default().push((name, i)),
            }
        }
        let asked = ask.into_iter().map(|(parent, names)| async move {
            let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            (names, self.lookup_many_fresh(parent, &list).await)
        });
        for (names, answer) in futures::future::join_all(asked).await {
            match answer {
                Ok(attrs) => {
                    let by_name: HashMap<&str, &Attr> =
                        attrs.iter().map(|a| (a.name.as_str(), &a.attr)).collect();
                    for (name, i) in names {
                        found[i] = by_name.get(name).and_then(|a| file(a));
                    }
                }
                Err(e) => tracing::debug!("plan paths: {} names: {e}", names.len()),
            }
        }
        found
    }

    /// Fetches one planned range: the layout fresh from metad or a frozen
    /// table (its version keys the entry), or the one an earlier job of
    /// the same file fetched moments ago, then the bytes through the read
    /// path.
    async fn fetch_planned(&self, job: &Job) -> Result<(u64, Vec<u8>), ClientError> {
        let (attr, layout, fetched) = match self.inner.data_cache.recent_layout(job.ino) {
            Some((attr, layout)) => (attr, layout, None),
            None => {
                let (attr, layout) = self.inner.frozen.layout(&self.inner.meta, job.ino).await?;
                let kept = layout.clone();
                (attr, layout, Some(kept))
            }
        };
        if attr.kind != FileKind::File {
            return Err(ClientError::NotFile { ino: job.ino });
        }
        let st = FileState::from_layout(job.ino, attr.size, layout).map_err(|source| {
            ClientError::Layout {
                ino: job.ino,
                source,
            }
        })?;
        if let Some(layout) = fetched {
            self.inner
                .data_cache
                .note_layout(&attr, &layout, st.version());
        }
        let end = if job.whole {
            st.size
        } else {
            job.end.min(st.size)
        };
        let data = if job.start >= end {
            Vec::new()
        } else {
            self.fetch_range(&st, job.start, end - job.start).await?
        };
        Ok((st.version(), data))
    }

    /// When a job needs a layout, fetches it together with those of the
    /// next [`LAYOUTS_AHEAD`] planned files in one `GetLayouts` (not a
    /// `GetLayout` each: over a dataset as written, that was a metad
    /// request per prefetched sample on top of the open's), then runs the
    /// jobs, which find them noted (as do the next jobs, for a while).
    async fn run_jobs(&self, jobs: Vec<Job>) {
        let needs = |ino: &Ino| {
            !self.inner.frozen.holds(*ino) && self.inner.data_cache.recent_layout(*ino).is_none()
        };
        if jobs.iter().any(|j| needs(&j.ino)) {
            let mut inos: Vec<Ino> = jobs.iter().map(|j| j.ino).collect();
            inos.extend(self.inner.data_cache.inos_ahead(LAYOUTS_AHEAD));
            let mut seen = std::collections::HashSet::new();
            inos.retain(|ino| needs(ino) && seen.insert(*ino));
            for chunk in inos.chunks(LAYOUTS_MAX) {
                self.note_layouts(chunk).await;
            }
        }
        for job in jobs {
            let c = self.clone();
            tokio::spawn(async move { c.run_job(job).await });
        }
    }

    /// Fetches and notes the layouts of `inos` (files that are gone or an
    /// older metad: the jobs fetch their own).
    async fn note_layouts(&self, inos: &[Ino]) {
        let req = MetaRequest::GetLayouts {
            inos: inos.to_vec(),
        };
        match self.meta_call(req).await {
            Ok(MetaReply::Layouts(found)) => {
                for FileLayout { attr, layout } in found {
                    let ino = attr.ino;
                    match FileState::from_layout(ino, attr.size, layout.clone()) {
                        Ok(st) => self
                            .inner
                            .data_cache
                            .note_layout(&attr, &layout, st.version()),
                        Err(e) => tracing::debug!("layout of inode {ino}: {e}"),
                    }
                }
            }
            Ok(other) => tracing::debug!("GetLayouts answered {other:?}"),
            Err(e) => tracing::debug!("GetLayouts of {} files: {e}", inos.len()),
        }
    }

    async fn run_job(&self, job: Job) {
        let result = self.fetch_planned(&job).await;
        if let Err(e) = &result {
            tracing::debug!("prefetch of inode {} failed: {e}", job.ino);
        }
        self.inner.data_cache.complete(&job, result.map_err(|_| ()));
    }

    /// After a read of `[offset, end)` through an open file with no plan:
    /// when reads are sequential, fetches ahead (window doubling up to the
    /// configured maximum).
    pub(crate) fn readahead(
        &self,
        file: &Arc<OpenFile>,
        version: u64,
        offset: u64,
        end: u64,
        size: u64,
    ) {
        let cache = &self.inner.data_cache;
        let max = cache.config.readahead_bytes_max;
        if max == 0 || cache.is_planned(file.ino) {
            return;
        }
        let mut ra = lock(&file.readahead);
        let Some((mut from, to)) = ra.after_read(offset, end, size, max) else {
            return;
        };
        while from < to {
            let chunk_end = ((from / READAHEAD_CHUNK_BYTES + 1) * READAHEAD_CHUNK_BYTES).min(to);
            let Some(job) = cache.reserve_readahead(file.ino, version, from, chunk_end) else {
                break;
            };
            let (client, file) = (self.clone(), file.clone());
            tokio::spawn(async move {
                let result = client.read_versioned(&file, job.start, job.end).await;
                let result = match result {
                    Ok((data, v)) if v == version => Ok((v, data)),
                    _ => Err(()),
                };
                client.inner.data_cache.complete(&job, result);
            });
            from = chunk_end;
        }
        ra.issued(from);
    }
}

/// Issues prefetches whenever woken (plan accepted, reads moved the
/// cursor, room was freed). Holds the client only weakly while idle.
pub(crate) async fn prefetch_loop<M: MetaService, T: Transport>(inner: Weak<Inner<M, T>>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = Client { inner: strong };
        let mut jobs = Vec::new();
        while let Some(job) = client.inner.data_cache.next_job() {
            jobs.push(job);
        }
        if !jobs.is_empty() {
            let c = client.clone();
            tokio::spawn(async move { c.run_jobs(jobs).await });
        }
        let wake = client.inner.data_cache.wake.clone();
        drop(client);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(PREFETCH_TICK) => {}
        }
    }
}

/// Items just ahead of the reads whose names are looked up again, so the
/// open that follows finds its name in the entry cache (one metadata round
/// trip per sample instead of two: open still revalidates the layout).
const NAMES_AHEAD_ITEMS: u64 = 256;
/// How often the names ahead are refreshed (well inside the entry TTL).
const NAMES_TICK: Duration = Duration::from_millis(50);

/// Looks up again, shortly before they are opened, the names the plans
/// read next (entries cached for the entry TTL, as any lookup's).
pub(crate) async fn names_loop<M: MetaService, T: Transport>(inner: Weak<Inner<M, T>>) {
    loop {
        tokio::time::sleep(NAMES_TICK).await;
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = Client { inner: strong };
        let paths = client.inner.data_cache.names_ahead(NAMES_AHEAD_ITEMS);
        if !paths.is_empty() {
            client.refresh_names(&paths).await;
        }
    }
}

/// A plan path's directory part ("" for a name in the root) and name.
fn split_path(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl<M: MetaService, T: Transport> Client<M, T> {
    /// Re-fetches the last component of each plan path, one `LookupMany`
    /// per directory. Each distinct directory is walked once, one after
    /// another (through the entry cache as usual), so an expired entry of
    /// a directory above many names costs one metad lookup, not one per
    /// name.
    async fn refresh_names(&self, paths: &[Arc<str>]) {
        let paths: Vec<&Arc<str>> = paths
            .iter()
            .filter(|p| {
                // A frozen file's name cannot change: nothing to refresh.
                !self
                    .inner
                    .data_cache
                    .known_path(p)
                    .is_some_and(|(ino, _)| self.inner.frozen.holds(ino))
            })
            .collect();
        let mut dirs: Vec<&str> = paths.iter().map(|p| split_path(p).0).collect();
        dirs.sort_unstable();
        dirs.dedup();
        let mut parents = HashMap::with_capacity(dirs.len());
        for dir in dirs {
            if let Some(ino) = self.resolve_dir(dir).await {
                // A frozen directory's names cannot change either.
                if !self.inner.frozen.holds(ino) {
                    parents.insert(dir, ino);
                }
            }
        }
        // One LookupMany per directory, not a Lookup per name.
        let mut by_parent: HashMap<Ino, HashMap<&str, &Arc<str>>> = HashMap::new();
        for full in paths {
            let (dir, name) = split_path(full);
            if let Some(parent) = parents.get(dir) {
                by_parent.entry(*parent).or_default().insert(name, full);
            }
        }
        let lookups = by_parent.into_iter().map(|(parent, fulls)| async move {
            let names: Vec<&str> = fulls.keys().copied().collect();
            let Ok(found) = self.lookup_many_fresh(parent, &names).await else {
                return;
            };
            for NamedAttr { name, attr } in found {
                if let (FileKind::File, Some(full)) = (attr.kind, fulls.get(name.as_str())) {
                    self.inner
                        .data_cache
                        .note_path((*full).clone(), attr.ino, attr.size);
                }
            }
        });
        futures::future::join_all(lookups).await;
    }

    /// The inode of a directory path ("" is the root), if it resolves.
    async fn resolve_dir(&self, dir: &str) -> Option<Ino> {
        let mut parent = ROOT_INO;
        for d in dir.split('/').filter(|d| !d.is_empty()) {
            parent = self.lookup(parent, d).await.ok()?.ino;
        }
        Some(parent)
    }
}

/// Writes demoted entries to the disk tier and removes evicted ones, one
/// at a time on a blocking thread (its queue holds only entries already
/// counted against the budgets).
pub(crate) async fn disk_loop<M: MetaService, T: Transport>(
    inner: Weak<Inner<M, T>>,
    mut work: mpsc::UnboundedReceiver<DiskWork>,
) {
    while let Some(w) = work.recv().await {
        match w {
            DiskWork::Demote { id, path, data } => {
                let ok = tokio::task::spawn_blocking(move || tiers::write_file(&path, &data))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if let Err(e) = &ok {
                    tracing::warn!("disk tier: write of entry {id} failed: {e}");
                }
                match inner.upgrade() {
                    Some(i) => i.data_cache.demoted(id, ok.is_ok()),
                    None => return,
                }
            }
            DiskWork::Remove(path) => {
                let _ = tokio::task::spawn_blocking(move || tiers::remove_file(&path)).await;
            }
        }
    }
}
