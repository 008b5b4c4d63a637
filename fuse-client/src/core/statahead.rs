//! Statahead: when lookups keep missing the cache in one directory (`ls
//! -l`, `rsync`, `cp -a`, a script stat'ing a dataset's files), the
//! directory's entries and their attributes are fetched a page at a time
//! (`ReadDirPlus`) instead of one Lookup round trip per name. A directory
//! small enough is read whole; a larger one is read a page from the missed
//! name on. A listing does not make the directory complete (see
//! `meta_cache`): a name another mount just made must still be found. A directory whose pages did not pay off
//! (the lookups that followed were mostly of names outside them: random
//! access to a large directory) is left alone for a while.
//!
//! [`Statahead`] is the bookkeeping (the caller passes the clock);
//! [`Client::statahead`] does the fetching.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Mutex;
use torchfs_proto::meta::{Ino, MetaError, MetaReply, MetaRequest, NamedAttr, READDIR_PLUS_MAX};

use super::error::{unexpected, ClientError};
use super::meta::{Meta, MetaService};
use super::meta_cache::MetaCache;
use super::sync::lock;

/// Misses in one directory, within the entry TTL, that start a scan when
/// none has paid off there yet.
pub(crate) const STATAHEAD_MISSES: u32 = 3;
/// Pages a directory is read whole in at most; beyond, it is large and
/// read a page from each missed name on.
pub(crate) const WHOLE_PAGES_MAX: usize = 4;
/// How long a directory whose scans did not pay off is left alone.
const QUIET_MS: u64 = 10_000;
/// Directories tracked at once (each a few words).
const DIRS_MAX: usize = 4096;

/// What to fetch for a miss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// The whole directory, from its first name.
    Whole,
    /// One page from the missed name on.
    From,
}

#[derive(Clone, Copy, Debug)]
struct DirScans {
    /// Misses since `since` (or since the last scan).
    misses: u32,
    since: Instant,
    /// Lookups served from the cache since the last scan.
    hits: u32,
    /// Entries the last scan fetched (0: none yet).
    fetched: u32,
    /// Read whole once and found longer than [`WHOLE_PAGES_MAX`] pages.
    large: bool,
    quiet_until: Option<Instant>,
}

impl DirScans {
    /// No misses, hits or scans counted from `now`.
    fn fresh(now: Instant, large: bool) -> Self {
        Self {
            misses: 0,
            since: now,
            hits: 0,
            fetched: 0,
            large,
            quiet_until: None,
        }
    }
}

pub(crate) struct Statahead {
    window: Duration,
    dirs: HashMap<Ino, DirScans>,
    /// metad does not know `ReadDirPlus` (an older build): never scan.
    unsupported: bool,
}

impl Statahead {
    /// `window`: how long misses count together (the entry TTL, for which
    /// what a scan fetched stays cached). Zero: never scan.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            dirs: HashMap::new(),
            unsupported: false,
        }
    }

    /// A lookup in `dir` was answered from the cache.
    pub fn hit(&mut self, dir: Ino) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.hits = d.hits.saturating_add(1);
        }
    }

    /// A lookup in `dir` missed the cache: the scan to make first, if any.
    pub fn miss(&mut self, dir: Ino, now: Instant) -> Option<Scan> {
        if self.unsupported || self.window.is_zero() {
            return None;
        }
        if self.dirs.len() >= DIRS_MAX && !self.dirs.contains_key(&dir) {
            let window = self.window;
            self.dirs
                .retain(|_, d| now.duration_since(d.since) < window || d.quiet_until.is_some());
            if self.dirs.len() >= DIRS_MAX {
                self.dirs.clear();
            }
        }
        let d = self.dirs.entry(dir).or_insert(DirScans::fresh(now, false));
        if d.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        d.quiet_until = None;
        if now.duration_since(d.since) >= self.window {
            // The last scan's names expired: this is a fresh start.
            *d = DirScans::fresh(now, d.large);
        }
        d.misses += 1;
        // A scan paid off when the lookups that followed hit it at least
        // half as often as they missed; then the next miss scans again
        // (the reader is walking the directory), else it takes several.
        let paid_off = d.fetched > 0 && d.hits >= d.misses.saturating_mul(2);
        let wanted = if paid_off { 1 } else { STATAHEAD_MISSES };
        if d.misses < wanted {
            return None;
        }
        if d.fetched > 0 && !paid_off {
            d.quiet_until = Some(now + Duration::from_millis(QUIET_MS));
            d.fetched = 0;
            return None;
        }
        Some(if d.large { Scan::From } else { Scan::Whole })
    }

    /// A scan of `dir` fetched `fetched` entries at `now`; `large`: a whole
    /// read stopped at [`WHOLE_PAGES_MAX`] pages before the end.
    pub fn scanned(&mut self, dir: Ino, fetched: usize, large: bool, now: Instant) {
        if let Some(d) = self.dirs.get_mut(&dir) {
            d.misses = 0;
            d.hits = 0;
            d.since = now;
            d.fetched = u32::try_from(fetched).unwrap_or(u32::MAX).max(1);
            d.large |= large;
        }
    }

    /// metad answered `ReadDirPlus` as unknown: stop scanning.
    pub fn unsupported(&mut self) {
        self.unsupported = true;
        self.dirs.clear();
    }
}

/// Fetches what `scan` says for a missed lookup of `name` in `dir` and
/// caches it: each entry and its attributes for the entry TTL. Frozen
/// trees are left
/// to their own lookups (one may be loaded as a table).
pub(crate) async fn statahead<M: MetaService>(
    meta: &Meta<M>,
    cache: &Mutex<MetaCache>,
    state: &Mutex<Statahead>,
    dir: Ino,
    name: &str,
    scan: Scan,
) -> Result<(), ClientError> {
    // What a page lists is true as of its read, which began here.
    let listed_at = Instant::now();
    let mut start = match scan {
        Scan::Whole => String::new(),
        Scan::From => name.to_string(),
    };
    let pages = match scan {
        Scan::Whole => WHOLE_PAGES_MAX,
        Scan::From => 1,
    };
    let mut fetched = 0;
    let mut reached_end = false;
    for page in 0..pages {
        let entries = match readdir_plus(meta, dir, &start).await {
            Err(ClientError::Meta(MetaError::Invalid(_))) => {
                lock(state).unsupported();
                return Ok(());
            }
            other => other?,
        };
        // Pages after the first start at the previous page's last
        // name, read again: a name cannot be asked for "just after".
        let skip = usize::from(page > 0);
        reached_end = entries.len() < READDIR_PLUS_MAX as usize;
        let last = entries.last().map(|e| e.name.clone());
        {
            let mut cache = lock(cache);
            for NamedAttr { name, attr } in entries.into_iter().skip(skip) {
                fetched += 1;
                if attr.frozen {
                    continue;
                }
                cache.put_entry(dir, &name, attr.ino, listed_at);
                cache.put_attr(attr, listed_at);
            }
        }
        match last {
            Some(last) if !reached_end => start = last,
            _ => break,
        }
    }
    // Not held complete even when read to its end: a name another
    // mount made since must be found at once by an open here
    // (close-to-open), as it was before statahead listed the directory.
    let large = scan == Scan::Whole && !reached_end;
    lock(state).scanned(dir, fetched, large, listed_at);
    if large && lock(cache).entry(dir, name, Instant::now()).is_none() {
        // The missed name lies beyond the pages read: a page from it.
        let _ = Box::pin(statahead(meta, cache, state, dir, name, Scan::From)).await;
    }
    Ok(())
}

/// One `ReadDirPlus` page of `dir` from `start` on.
async fn readdir_plus<M: MetaService>(
    meta: &Meta<M>,
    dir: Ino,
    start: &str,
) -> Result<Vec<NamedAttr>, ClientError> {
    let req = MetaRequest::ReadDirPlus {
        ino: dir,
        start: start.to_string(),
        limit: READDIR_PLUS_MAX,
    };
    match meta.call(req).await? {
        MetaReply::LookedUp(entries) => Ok(entries),
        other => Err(unexpected("ReadDirPlus", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_scan_starts_after_a_few_misses_and_again_at_once_when_it_paid_off() {
        let t0 = Instant::now();
        let mut s = Statahead::new(SECOND);
        assert_eq!(s.miss(1, t0), None);
        assert_eq!(s.miss(1, t0), None);
        assert_eq!(s.miss(2, t0), None, "another directory counts apart");
        assert_eq!(s.miss(1, t0), Some(Scan::Whole));
        s.scanned(1, 4 * 1024, true, t0);
        for _ in 0..1000 {
            s.hit(1);
        }
        // Walking on past the pages: the first miss scans from there.
        assert_eq!(s.miss(1, t0), Some(Scan::From));
    }

    #[test]
    fn scans_that_do_not_pay_off_go_quiet_for_a_while() {
        let t0 = Instant::now();
        let mut s = Statahead::new(SECOND);
        for _ in 0..2 {
            assert_eq!(s.miss(1, t0), None);
        }
        assert_eq!(s.miss(1, t0), Some(Scan::Whole));
        s.scanned(1, 1024, true, t0);
        s.hit(1);
        // Random lookups in a large directory: miss after miss.
        assert_eq!(s.miss(1, t0), None);
        assert_eq!(s.miss(1, t0), None);
        assert_eq!(s.miss(1, t0), None, "did not pay off: quiet");
        assert_eq!(s.miss(1, t0 + Duration::from_secs(5)), None);
        let later = t0 + Duration::from_millis(QUIET_MS + 1);
        assert_eq!(s.miss(1, later), None);
        assert_eq!(s.miss(1, later), None);
        assert_eq!(s.miss(1, later), Some(Scan::From), "large is remembered");
    }

    #[test]
    fn misses_further_apart_than_the_window_do_not_add_up() {
        let t0 = Instant::now();
        let mut s = Statahead::new(SECOND);
        assert_eq!(s.miss(1, t0), None);
        assert_eq!(s.miss(1, t0), None);
        assert_eq!(s.miss(1, t0 + 2 * SECOND), None);
        assert_eq!(s.miss(1, t0 + 2 * SECOND), None);
        assert_eq!(s.miss(1, t0 + 2 * SECOND), Some(Scan::Whole));
    }

    #[test]
    fn never_scans_without_a_window_or_against_an_older_metad() {
        let t0 = Instant::now();
        let mut s = Statahead::new(Duration::ZERO);
        assert!((0..10).all(|_| s.miss(1, t0).is_none()));
        let mut s = Statahead::new(SECOND);
        s.unsupported();
        assert!((0..10).all(|_| s.miss(1, t0).is_none()));
    }

    #[test]
    fn tracks_a_bounded_number_of_directories() {
        let t0 = Instant::now();
        let mut s = Statahead::new(SECOND);
        for dir in 0..(DIRS_MAX as u64 * 3) {
            s.miss(dir, t0);
        }
        assert!(s.dirs.len() <= DIRS_MAX);
    }

    mod client {
        //! The statahead path of a client over the in-memory metad.
        use std::time::Duration;

        use torchfs_proto::meta::{Ino, ROOT_INO};

        use crate::core::namespace::{NewMode, Owner};
        use crate::core::tests::{FakeMeta, FakeStore, TestClient};
        use crate::core::{CacheConfig, Client, ClientConfig};

        const MODE: NewMode = NewMode {
            mode: 0o644,
            umask: 0,
        };
        const ROOT: Owner = Owner { uid: 0, gid: 0 };

        async fn client(meta: &FakeMeta, entry_ttl_ms: u64) -> TestClient {
            let config = ClientConfig {
                entry_ttl_ms,
                attr_ttl_ms: entry_ttl_ms,
                map_refresh_ms: 60_000,
                cache: CacheConfig {
                    mem_bytes: 0,
                    ..CacheConfig::default()
                },
                ..ClientConfig::default()
            };
            Client::with_parts(config, meta.clone(), FakeStore::default())
                .await
                .unwrap()
        }

        /// A directory of `n` files made by another client, and a client
        /// that knows nothing of it yet.
        async fn filled_dir(n: usize) -> (FakeMeta, TestClient, Ino) {
            let meta = FakeMeta::new(8);
            let writer = client(&meta, 10_000).await;
            let d = writer.mkdir(ROOT_INO, "d", MODE, ROOT).await.unwrap().ino;
            for i in 0..n {
                writer
                    .create(d, &format!("f{i:05}"), MODE, ROOT, true)
                    .await
                    .unwrap();
            }
            let c = client(&meta, 10_000).await;
            (meta, c, d)
        }

        /// (Lookups, ReadDirPlus pages) metad has been asked so far.
        fn asked(meta: &FakeMeta) -> (usize, usize) {
            let st = meta.0.lock().unwrap();
            (st.lookups, st.readdir_plus.len())
        }

        fn enoent(r: Result<torchfs_proto::meta::Attr, crate::core::ClientError>) -> bool {
            matches!(r, Err(e) if e.errno() == libc::ENOENT)
        }

        #[tokio::test]
        async fn a_walk_of_a_directory_reads_it_by_pages_then_answers_from_the_listing() {
            let (meta, c, d) = filled_dir(3000).await;
            let before = asked(&meta);
            for i in 0..3000 {
                let a = c.lookup(d, &format!("f{i:05}")).await.unwrap();
                assert_eq!(a.kind, torchfs_proto::meta::FileKind::File);
            }
            let (lookups, pages) = asked(&meta);
            // Two lookups, then the directory whole in three pages.
            assert_eq!((lookups - before.0, pages - before.1), (2, 3));
            // Not complete: a name missing from the listing is asked of
            // metad (another mount may have just made it).
            assert!(enoent(c.lookup(d, "missing").await));
            assert_eq!(asked(&meta).0, lookups + 1);
        }

        #[tokio::test]
        async fn a_large_directory_is_read_a_page_from_each_miss_on() {
            let n = 6000;
            let (meta, c, d) = filled_dir(n).await;
            let before = asked(&meta);
            for i in 0..n {
                c.lookup(d, &format!("f{i:05}")).await.unwrap();
            }
            let (lookups, pages) = asked(&meta);
            let (lookups, pages) = (lookups - before.0, pages - before.1);
            // 2 lookups, 4 pages whole (4,093 names), then a page per miss
            // past them: 6,000 names in well under 6,000 requests.
            assert!(
                pages <= 7 && lookups <= 2,
                "{lookups} lookups, {pages} pages"
            );
            // Not complete: a missing name is asked of metad.
            assert!(enoent(c.lookup(d, "missing").await));
            assert_eq!(asked(&meta).0 - before.0, lookups + 1);
        }

        #[tokio::test]
        async fn random_lookups_in_a_large_directory_stop_scanning() {
            let n = 8000;
            let (meta, c, d) = filled_dir(n).await;
            let before = asked(&meta).1;
            let mut x: u64 = 7;
            for _ in 0..300 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                c.lookup(d, &format!("f{:05}", (x >> 33) % n as u64))
                    .await
                    .unwrap();
            }
            // The whole read and at most a page that did not pay off.
            let pages = asked(&meta).1 - before;
            assert!(pages <= 6, "{pages} pages for 300 random lookups");
        }

        #[tokio::test]
        async fn a_directory_made_here_takes_creates_without_lookups_until_its_ttl() {
            let meta = FakeMeta::new(8);
            let ttl_ms = 300;
            let c = client(&meta, ttl_ms).await;
            let other = client(&meta, ttl_ms).await;
            let d = c.mkdir(ROOT_INO, "d", MODE, ROOT).await.unwrap().ino;
            let before = asked(&meta);
            for i in 0..50 {
                let name = format!("f{i}");
                assert!(enoent(c.lookup(d, &name).await));
                c.create(d, &name, MODE, ROOT, true).await.unwrap();
                assert!(c.lookup(d, &name).await.is_ok());
            }
            assert_eq!(asked(&meta), before, "no lookup went to metad");
            // Another client's create is not seen within the entry TTL (as
            // a negative dentry would not see it), then is.
            other.create(d, "theirs", MODE, ROOT, true).await.unwrap();
            assert!(enoent(c.lookup(d, "theirs").await));
            tokio::time::sleep(Duration::from_millis(ttl_ms + 50)).await;
            assert!(c.lookup(d, "theirs").await.is_ok());
        }

        #[tokio::test]
        async fn a_directory_only_this_client_changes_stays_complete_past_the_ttl() {
            let meta = FakeMeta::new(8);
            let ttl_ms = 200;
            let c = client(&meta, ttl_ms).await;
            let other = client(&meta, ttl_ms).await;
            let d = c.mkdir(ROOT_INO, "d", MODE, ROOT).await.unwrap().ino;
            let before = asked(&meta);
            // Creates and unlinks over five TTLs, each change renewing it.
            for i in 0..10 {
                let name = format!("f{i}");
                assert!(enoent(c.lookup(d, &name).await));
                c.create(d, &name, MODE, ROOT, true).await.unwrap();
                if i % 3 == 0 {
                    c.unlink(d, &name).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(ttl_ms / 2)).await;
            }
            assert!(enoent(c.lookup(d, "f3").await), "unlinked here");
            assert_eq!(asked(&meta), before, "no lookup went to metad");
            // Another client's create: missed until this client's next
            // change in the directory shows a ctime it did not expect.
            other.create(d, "theirs", MODE, ROOT, true).await.unwrap();
            assert!(enoent(c.lookup(d, "theirs").await));
            c.create(d, "mine", MODE, ROOT, true).await.unwrap();
            assert!(c.lookup(d, "theirs").await.is_ok());
            assert!(enoent(c.lookup(d, "f99").await));
            assert_eq!(asked(&meta).0, before.0 + 2, "both asked of metad");
        }

        #[tokio::test]
        async fn a_failed_removal_ends_completeness() {
            let meta = FakeMeta::new(8);
            let c = client(&meta, 10_000).await;
            let d = c.mkdir(ROOT_INO, "d", MODE, ROOT).await.unwrap().ino;
            c.create(d, "x", MODE, ROOT, true).await.unwrap();
            // The fake metad refuses Rmdir: "x" is still there, though the
            // client dropped what it knew of it.
            assert!(c.rmdir(d, "x").await.is_err());
            assert!(c.lookup(d, "x").await.is_ok());
            c.create(d, "y", MODE, ROOT, true).await.unwrap();
            assert!(
                c.lookup(d, "x").await.is_ok(),
                "not renewed by a later change"
            );
        }

        #[tokio::test]
        async fn a_name_found_taken_or_moved_in_ends_completeness() {
            let meta = FakeMeta::new(8);
            let c = client(&meta, 10_000).await;
            let other = client(&meta, 10_000).await;
            let d = c.mkdir(ROOT_INO, "d", MODE, ROOT).await.unwrap().ino;
            other.create(d, "theirs", MODE, ROOT, true).await.unwrap();
            assert!(enoent(c.lookup(d, "theirs").await));
            let r = c.create(d, "theirs", MODE, ROOT, true).await;
            assert!(matches!(r, Err(e) if e.errno() == libc::EEXIST));
            // EEXIST said the listing is out of date: metad is asked.
            let lookups = asked(&meta).0;
            assert!(c.lookup(d, "theirs").await.is_ok());
            assert_eq!(asked(&meta).0, lookups + 1);
        }
    }
}
