//! Many writers, one file: what N-to-1 writes and lock coherence cost.
//!
//! Writes: W writer processes (this binary as `__worker`) at once, each
//! opening an existing file O_RDWR (no truncate), pwriting its own part in
//! `--request-bytes` writes, then fsync and close: (1) W parts of ONE shared
//! file, part w at offset w x part; (2) the same bytes as W separate files,
//! one per writer; (3) one writer writing all of it into one file alone;
//! and, where the target has a second client, (4) the shared file again
//! with writer w going through client w mod 2, as writers on two machines
//! would. Reported: MB/s of each (first open to last close) and shared /
//! separate of the same round; for torchfs also the mounts' metad requests
//! per writer. (2) and (3) are files only one client writes: they show
//! that making shared files safe did not slow those down. The files are
//! created empty beforehand (untimed) and read back after, through the
//! other client where there is one. On torchfs a stripe's commit names the
//! version it was based on and is merged when another client committed
//! first; writers through one mount share that mount's view of the file,
//! so only (4) can conflict.
//!
//! Locks (`locks.rs`): an fcntl F_SETLKW write lock over the whole file,
//! then F_UNLCK, each timed, `--shared-writes-lock-cycles` times (after one
//! untimed cycle), (a) on a file nobody else touches and (b) on a file a
//! second client of the same filesystem ([`Target::second_client_root`]:
//! another `torchfs mount` of the same cluster, another `juicefs mount`)
//! changed (4 KiB pwrite + fsync, untimed) before every lock. torchfs keeps
//! locks in metad; taking one refetches the file's layout (one more metad
//! read) and drops the kernel's pages when another client changed the
//! file; releasing one commits this client's writes first. Reported: p50
//! and p99 in microseconds, the CDFs, and for torchfs the metad requests
//! per cycle (the mount's `.torchfs/stats`). Without a second client (the
//! local disk: one kernel) (b) and (4) are n/a.

mod locks;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{live_targets, mb_per_s, workload_dir, Workload};
use crate::ctx::{Ctx, Metric};
use crate::data::{mix, Content, FileSpec};
use crate::targets::{nullfs, Target};
use crate::workers::{write_manifest, Manifest, Op, Outcome, Pool, Task};

pub struct SharedWrites;

const NAME: &str = "shared_writes";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// W writers, W files.
    Separate,
    /// W writers, one file, one client.
    Shared,
    /// W writers, one file, writers alternating between two clients.
    SharedTwoClients,
    /// One writer, one file of the same total size.
    Single,
}

impl Layout {
    fn short(self) -> &'static str {
        match self {
            Layout::Separate => "separate",
            Layout::Shared => "shared",
            Layout::SharedTwoClients => "shared on 2 clients",
            Layout::Single => "single",
        }
    }

    fn writers(self, writers: usize) -> usize {
        if self == Layout::Single {
            1
        } else {
            writers
        }
    }

    fn metric(self, writers: usize) -> Metric {
        let name = match self {
            Layout::Separate => format!("write, {writers} writers, separate files"),
            Layout::Shared => format!("write, {writers} writers, one shared file"),
            Layout::SharedTwoClients => {
                format!("write, {writers} writers on 2 clients, one shared file")
            }
            Layout::Single => "write, 1 writer, one file".into(),
        };
        Metric::new(NAME, name, "MB/s").bounded(&[nullfs::NAME], &[("disk", "seq write")])
    }

    /// The mounts' metad requests over the phase (torchfs), per writer.
    fn metad_metric(self, writers: usize) -> Metric {
        let n = self.writers(writers);
        let name = format!("metad requests per writer, {} ({n})", self.short());
        Metric::new(NAME, name, "requests").lower_is_better()
    }
}

/// The files of a layout and each writer's task (writer i takes task i):
/// W parts of `part_bytes`, disjoint, covering every file whole.
fn plan(layout: Layout, writers: usize, part_bytes: u64, seed: u64) -> (Vec<FileSpec>, Vec<Task>) {
    let id = |i: usize| mix(seed ^ 0x5ead ^ i as u64);
    let total_bytes = writers as u64 * part_bytes;
    let one_file = |path: &str| {
        vec![FileSpec {
            path: path.into(),
            bytes: total_bytes,
            id: id(0),
        }]
    };
    match layout {
        Layout::Separate => (
            (0..writers)
                .map(|w| FileSpec {
                    path: format!("separate/w{w:03}.bin"),
                    bytes: part_bytes,
                    id: id(w),
                })
                .collect(),
            (0..writers)
                .map(|w| Task {
                    file: w,
                    offset: 0,
                    len: part_bytes,
                })
                .collect(),
        ),
        Layout::Shared | Layout::SharedTwoClients => (
            one_file(if layout == Layout::Shared {
                "shared.bin"
            } else {
                "shared-2-clients.bin"
            }),
            (0..writers)
                .map(|w| Task {
                    file: 0,
                    offset: w as u64 * part_bytes,
                    len: part_bytes,
                })
                .collect(),
        ),
        Layout::Single => (
            one_file("single.bin"),
            vec![Task {
                file: 0,
                offset: 0,
                len: total_bytes,
            }],
        ),
    }
}

/// The tasks of client `c` of `clients`: writer w goes through client w mod
/// clients.
fn tasks_of(tasks: &[Task], c: usize, clients: usize) -> Vec<Task> {
    tasks
        .iter()
        .enumerate()
        .filter(|(w, _)| w % clients == c)
        .map(|(_, t)| *t)
        .collect()
}

/// What every phase of a round needs.
struct Params {
    writers: usize,
    part_bytes: u64,
    request_bytes: u64,
    lock_cycles: usize,
    seed: u64,
    content: Content,
}

impl Workload for SharedWrites {
    fn name(&self) -> &'static str {
        NAME
    }

    fn describe(&self) -> &'static str {
        "N writers into one shared file vs separate files; fcntl lock/unlock latency, file untouched or changed by another client"
    }

    fn run(&self, ctx: &mut Ctx, targets: &mut [Box<dyn Target>]) -> Result<()> {
        let c = &ctx.config;
        let p = Params {
            writers: c.shared_writes_writers,
            part_bytes: c.shared_writes_part_bytes,
            request_bytes: c.request_bytes,
            lock_cycles: c.shared_writes_lock_cycles,
            seed: c.seed,
            content: Content::new(c.seed),
        };
        let repeats = c.repeats;
        let mut no_second = BTreeSet::new();
        let mut used = BTreeSet::new();
        for round in 0..repeats {
            for i in live_targets(ctx, targets) {
                ctx.check_interrupted()?;
                let target = &mut *targets[i];
                let name = target.name().to_string();
                // Created once: a second client may still hold an earlier
                // round's directory in its caches, so each round gets a new
                // name instead.
                if used.insert(name.clone()) {
                    workload_dir(target, NAME)?;
                }
                let rel = PathBuf::from(NAME).join(format!("round-{}", round + 1));
                let dir = target.root().join(&rel);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("mkdir {}", dir.display()))?;
                let second = match target.second_client_root() {
                    Ok(Some(root)) => Some(root.join(&rel)),
                    Ok(None) => {
                        if no_second.insert(name.clone()) {
                            ctx.note(format!(
                                "{NAME}: {name} has no second client: writes from 2 clients \
                                 and lock latency on a file changed by another client are n/a"
                            ));
                        }
                        None
                    }
                    Err(e) => {
                        ctx.note(format!(
                            "{NAME}: {name}: could not start a second client ({e:#}): writes \
                             from 2 clients and lock latency on a changed file are n/a"
                        ));
                        None
                    }
                };
                let synthetic = target.synthetic_data();
                let mut said = Vec::new();
                let clients = Clients {
                    first: &dir,
                    second: second.as_deref(),
                    synthetic,
                };
                write_phases(ctx, &p, &name, &clients, round, &mut said);
                locks::lock_phases(ctx, &p, &name, &dir, second.as_deref(), &mut said);
                ctx.log(format!(
                    "[{NAME}] {name} round {}/{repeats}: {}",
                    round + 1,
                    said.join("; ")
                ));
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        for t in targets.iter() {
            if used.contains(t.name()) {
                let _ = std::fs::remove_dir_all(t.root().join(NAME));
            }
        }
        Ok(())
    }
}

/// The round's directory on each client of a target.
struct Clients<'a> {
    first: &'a Path,
    second: Option<&'a Path>,
    /// Writes are dropped (the FUSE ceiling): nothing to read back.
    synthetic: bool,
}

impl Clients<'_> {
    /// Where a layout's writers go: writer w through the (w mod n)th.
    fn writing(&self, layout: Layout) -> Vec<&Path> {
        match (layout, self.second) {
            (Layout::SharedTwoClients, Some(s)) => vec![self.first, s],
            _ => vec![self.first],
        }
    }

    /// Where what was written is read back: through the other client where
    /// there is one (what a second machine would see); both when both
    /// wrote.
    fn checking(&self, layout: Layout) -> Vec<&Path> {
        match (self.synthetic, self.second) {
            (true, _) => Vec::new(),
            (false, None) => vec![self.first],
            (false, Some(s)) if layout == Layout::SharedTwoClients => vec![self.first, s],
            (false, Some(s)) => vec![s],
        }
    }
}

/// Separate and shared (alternating which goes first, round by round),
/// the shared file from two clients, the single writer; then shared /
/// separate.
fn write_phases(
    ctx: &mut Ctx,
    p: &Params,
    name: &str,
    clients: &Clients,
    round: usize,
    said: &mut Vec<String>,
) {
    let mut pair = [Layout::Separate, Layout::Shared];
    if round % 2 == 1 {
        pair.reverse();
    }
    let two = clients.second.map(|_| Layout::SharedTwoClients);
    let (mut shared, mut separate) = (None, None);
    for layout in pair.into_iter().chain(two).chain([Layout::Single]) {
        let metric = layout.metric(p.writers);
        match write_phase(ctx, p, name, clients, layout) {
            Ok((rate, metad)) => {
                ctx.sample(&metric, name, rate);
                let mut line = format!("{} {rate:.0} MB/s", layout.short());
                if let Some(n) = metad {
                    ctx.sample(&layout.metad_metric(p.writers), name, n);
                    line.push_str(&format!(" ({n:.1} metad requests/writer)"));
                }
                said.push(line);
                match layout {
                    Layout::Shared => shared = Some(rate),
                    Layout::Separate => separate = Some(rate),
                    _ => {}
                }
            }
            Err(e) => ctx.failed(&metric, name, &e),
        }
    }
    if let (Some(shared), Some(separate)) = (shared, separate) {
        let ratio = shared / separate;
        ctx.sample(&Metric::new(NAME, "shared / separate", "x"), name, ratio);
        said.push(format!("shared/separate {ratio:.2}"));
    }
}

/// Creates the layout's files empty (untimed), times its writers at once
/// (a pool of worker processes per client), then reads every file back.
/// MB/s, and the mounts' metad requests per writer where they count them.
fn write_phase(
    ctx: &Ctx,
    p: &Params,
    name: &str,
    clients: &Clients,
    layout: Layout,
) -> Result<(f64, Option<f64>)> {
    let (files, tasks) = plan(layout, p.writers, p.part_bytes, p.seed);
    for f in &files {
        let path = clients.first.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("mkdir {}", parent.display()))?;
        }
        File::create(&path).with_context(|| format!("create {}", path.display()))?;
    }
    let roots = clients.writing(layout);
    let mut pools = Vec::new();
    let mut stats = Vec::new();
    for (c, root) in roots.iter().enumerate() {
        let manifest = Manifest {
            root: root.to_path_buf(),
            files: files.clone(),
            tasks: tasks_of(&tasks, c, roots.len()),
            content_seed: p.seed,
            request_bytes: p.request_bytes,
        };
        let label = format!("{NAME}-{name}-{}-{c}", layout.short()).replace(' ', "-");
        let path = write_manifest(&ctx.scratch, &label, &manifest)?;
        let mut pool = Pool::spawn(&ctx.exe, manifest.tasks.len())?;
        pool.load(&path)?;
        pools.push(pool);
        stats.push(stats_file(root));
    }
    let metad_total = || -> Result<Option<f64>> {
        let mut total = 0.0;
        for s in &stats {
            match s {
                Some(s) => total += metad_requests(s)?,
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    };
    let before = metad_total()?;
    let bar = ctx.bar(tasks.len() as u64, &format!("{name} {}", layout.short()));
    let started = Instant::now();
    let outcomes: Vec<Result<Outcome>> = std::thread::scope(|s| {
        let running: Vec<_> = pools
            .iter_mut()
            .map(|pool| {
                let bar = &bar;
                s.spawn(move || pool.run(Op::WriteRange, None, false, false, bar))
            })
            .collect();
        running
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer pool panicked")))
            })
            .collect()
    });
    let wall_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    drop(pools);
    let (mut bytes, mut errors, mut first_error) = (0, 0, None);
    for out in outcomes {
        let out = out?;
        bytes += out.bytes;
        errors += out.errors;
        first_error = first_error.or(out.first_error);
    }
    if errors > 0 {
        bail!(
            "{errors} of {} writers failed; first: {}",
            tasks.len(),
            first_error.unwrap_or_default()
        );
    }
    let metad = match (before, metad_total()?) {
        (Some(b), Some(a)) => Some((a - b) / tasks.len() as f64),
        _ => None,
    };
    for root in clients.checking(layout) {
        verify(root, &files, p).with_context(|| {
            format!("reading back what was written, through {}", root.display())
        })?;
    }
    Ok((mb_per_s(bytes, wall_s), metad))
}

/// Every file, whole, against what its writers wrote (size included).
fn verify(root: &Path, files: &[FileSpec], p: &Params) -> Result<()> {
    let mut buf = vec![0u8; p.request_bytes as usize];
    for spec in files {
        let path = root.join(&spec.path);
        let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let size = file.metadata()?.len();
        if size != spec.bytes {
            bail!(
                "{} is {size} bytes, expected {}",
                path.display(),
                spec.bytes
            );
        }
        let mut offset = 0;
        while offset < spec.bytes {
            let len = (spec.bytes - offset).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..len], offset)
                .with_context(|| format!("read {} at {offset}", path.display()))?;
            if !p.content.matches(spec.id, offset, &buf[..len]) {
                bail!(
                    "{}: bytes {offset}..{} differ from what was written",
                    path.display(),
                    offset + len as u64
                );
            }
            offset += len as u64;
        }
    }
    Ok(())
}

/// The torchfs mount's statistics file above `dir`, if there is one.
fn stats_file(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join(".torchfs/stats"))
        .find(|p| p.is_file())
}

/// The requests the mount has sent metad so far.
fn metad_requests(stats: &Path) -> Result<f64> {
    let text = std::fs::read(stats).with_context(|| format!("read {}", stats.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)?;
    v["meta_requests"]
        .as_f64()
        .with_context(|| format!("no meta_requests in {}", stats.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte of every file is written by exactly one writer.
    fn covered_once(files: &[FileSpec], tasks: &[Task]) -> bool {
        files.iter().enumerate().all(|(f, spec)| {
            let mut ranges: Vec<(u64, u64)> = tasks
                .iter()
                .filter(|t| t.file == f)
                .map(|t| (t.offset, t.offset + t.len))
                .collect();
            ranges.sort();
            let mut end = 0;
            for (start, stop) in ranges {
                if start != end {
                    return false;
                }
                end = stop;
            }
            end == spec.bytes
        })
    }

    const ALL: [Layout; 4] = [
        Layout::Separate,
        Layout::Shared,
        Layout::SharedTwoClients,
        Layout::Single,
    ];

    #[test]
    fn layouts_split_the_same_bytes() {
        let part = 4 << 20;
        for layout in ALL {
            let (files, tasks) = plan(layout, 8, part, 1);
            assert!(covered_once(&files, &tasks), "{layout:?}");
            let total: u64 = tasks.iter().map(|t| t.len).sum();
            assert_eq!(total, 8 * part, "{layout:?}");
            assert_eq!(tasks.len(), layout.writers(8), "{layout:?}");
        }
        let (files, tasks) = plan(Layout::Shared, 8, part, 1);
        assert_eq!((files.len(), tasks.len()), (1, 8));
        assert_eq!(tasks[3].offset, 3 * part);
        let (files, tasks) = plan(Layout::Separate, 8, part, 1);
        assert_eq!((files.len(), tasks.len()), (8, 8));
        assert!(tasks
            .iter()
            .enumerate()
            .all(|(w, t)| t.file == w && t.offset == 0));
        let ids: BTreeSet<u64> = files.iter().map(|f| f.id).collect();
        assert_eq!(ids.len(), 8, "each separate file has its own content");
        let names: BTreeSet<String> = ALL
            .iter()
            .flat_map(|l| plan(*l, 8, part, 1).0)
            .map(|f| f.path)
            .collect();
        assert_eq!(names.len(), 8 + 3, "no two layouts share a file");
    }

    #[test]
    fn writers_alternate_between_clients() {
        let (_, tasks) = plan(Layout::SharedTwoClients, 8, 1 << 20, 1);
        let first = tasks_of(&tasks, 0, 2);
        let second = tasks_of(&tasks, 1, 2);
        assert_eq!(first.len() + second.len(), 8);
        assert_eq!(first[1].offset, 2 << 20);
        assert_eq!(second[0].offset, 1 << 20);
        assert_eq!(tasks_of(&tasks, 0, 1).len(), 8);
        // Three writers on two clients: 2 and 1.
        assert_eq!(tasks_of(&tasks[..3], 1, 2).len(), 1);
    }

    #[test]
    fn clients_write_and_check_where_they_should() {
        let (a, b) = (Path::new("/a"), Path::new("/b"));
        let one = Clients {
            first: a,
            second: None,
            synthetic: false,
        };
        assert_eq!(one.writing(Layout::SharedTwoClients), [a]);
        assert_eq!(one.checking(Layout::Shared), [a]);
        let two = Clients {
            second: Some(b),
            ..one
        };
        assert_eq!(two.writing(Layout::Shared), [a]);
        assert_eq!(two.writing(Layout::SharedTwoClients), [a, b]);
        assert_eq!(two.checking(Layout::Shared), [b]);
        assert_eq!(two.checking(Layout::SharedTwoClients), [a, b]);
        let null = Clients {
            synthetic: true,
            ..two
        };
        assert!(null.checking(Layout::Separate).is_empty());
    }

    #[test]
    fn write_figures_are_rates_and_metad_counts_costs() {
        assert!(Layout::Shared.metric(8).higher_is_better);
        assert_eq!(
            Layout::Separate.metric(8).name,
            "write, 8 writers, separate files"
        );
        let m = Layout::Single.metad_metric(8);
        assert_eq!(m.name, "metad requests per writer, single (1)");
        assert!(!m.higher_is_better);
    }
}
