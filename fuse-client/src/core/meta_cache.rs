//! Attribute and dentry cache with TTLs (docs/ARCHITECTURE.md: Metadata: clients cache
//! attributes and entries, revalidate on open). Pure data structure: the
//! caller passes the clock, so expiry is tested without sleeping. Bounded:
//! when full, expired entries go first, then everything (a cold cache is
//! only slower).
//!
//! A directory can also be held *complete*: every name it holds is among
//! the dentries (fresh or expired), so a name missing there is answered "no
//! such entry" with no round trip. Only a directory this client made is
//! (empty, from its mkdir on), and it stays complete while this client's
//! own changes to it are the only ones: each write's reply carries the
//! directory's ctime before and after the change (metad keeps it strictly
//! increasing), and a "before" that is not the ctime held means someone
//! else changed it, which ends completeness. It also ends an entry TTL
//! after the last change that renewed it: a name another client made since
//! is missed for at most that long, the staleness a negative dentry has.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use torchfs_proto::meta::{Attr, Ino, Xattr};

#[derive(Clone, Copy)]
struct Complete {
    until: Instant,
    ctime_ns: i64,
}

pub(crate) struct MetaCache {
    attr_ttl: Duration,
    entry_ttl: Duration,
    entries_max: usize,
    attrs: HashMap<Ino, (Attr, Instant)>,
    dentries: HashMap<(Ino, String), (Ino, Instant)>,
    /// Every extended attribute of an inode, as one GetXattrs answered
    /// (kept for the attribute TTL).
    xattrs: HashMap<Ino, (Arc<Vec<Xattr>>, Instant)>,
    /// Directories held complete: until when, and their ctime as of the
    /// listing held.
    complete: HashMap<Ino, Complete>,
}

impl MetaCache {
    pub fn new(attr_ttl: Duration, entry_ttl: Duration, entries_max: usize) -> Self {
        Self {
            attr_ttl,
            entry_ttl,
            entries_max: entries_max.max(1),
            attrs: HashMap::new(),
            dentries: HashMap::new(),
            xattrs: HashMap::new(),
            complete: HashMap::new(),
        }
    }

    /// An inode's extended attributes: from fresh attributes that say it
    /// has none, or from a fresh GetXattrs answer.
    pub fn xattrs(&self, ino: Ino, now: Instant) -> Option<Arc<Vec<Xattr>>> {
        if let Some((attr, expires)) = self.attrs.get(&ino) {
            if now < *expires && !attr.has_xattrs {
                return Some(Arc::new(Vec::new()));
            }
        }
        match self.xattrs.get(&ino) {
            Some((x, expires)) if now < *expires => Some(x.clone()),
            _ => None,
        }
    }

    pub fn put_xattrs(&mut self, ino: Ino, xattrs: Arc<Vec<Xattr>>, now: Instant) {
        if self.attr_ttl.is_zero() {
            return;
        }
        if self.xattrs.len() >= self.entries_max && !self.xattrs.contains_key(&ino) {
            self.xattrs.retain(|_, (_, expires)| now < *expires);
            if self.xattrs.len() >= self.entries_max {
                self.xattrs.clear();
            }
        }
        self.xattrs.insert(ino, (xattrs, now + self.attr_ttl));
    }

    pub fn attr(&self, ino: Ino, now: Instant) -> Option<Attr> {
        match self.attrs.get(&ino) {
            Some((attr, expires)) if now < *expires => Some(attr.clone()),
            _ => None,
        }
    }

    pub fn put_attr(&mut self, attr: Attr, now: Instant) {
        if self.attr_ttl.is_zero() {
            return;
        }
        if self.attrs.len() >= self.entries_max && !self.attrs.contains_key(&attr.ino) {
            self.attrs.retain(|_, (_, expires)| now < *expires);
            if self.attrs.len() >= self.entries_max {
                self.attrs.clear();
            }
        }
        self.attrs.insert(attr.ino, (attr, now + self.attr_ttl));
    }

    /// Forgets an inode's attributes and extended attributes.
    pub fn invalidate_attr(&mut self, ino: Ino) {
        self.attrs.remove(&ino);
        self.xattrs.remove(&ino);
    }

    /// Forgets an inode another client removed: its attributes and every
    /// name naming it here. Their directories stop being complete (a name
    /// may name another inode now).
    pub fn forget_inode(&mut self, ino: Ino) {
        self.invalidate_attr(ino);
        let complete = &mut self.complete;
        self.dentries.retain(|(parent, _), (named, _)| {
            let keep = *named != ino;
            if !keep {
                complete.remove(parent);
            }
            keep
        });
    }

    /// The inode a name resolves to, if cached and fresh.
    pub fn entry(&self, parent: Ino, name: &str, now: Instant) -> Option<Ino> {
        // The key owns its String; a lookup allocates only on the probe.
        match self.dentries.get(&(parent, name.to_string())) {
            Some((ino, expires)) if now < *expires => Some(*ino),
            _ => None,
        }
    }

    /// A cached lookup: needs both the dentry and the attributes fresh.
    pub fn lookup(&self, parent: Ino, name: &str, now: Instant) -> Option<Attr> {
        self.entry(parent, name, now)
            .and_then(|ino| self.attr(ino, now))
    }

    pub fn put_entry(&mut self, parent: Ino, name: &str, ino: Ino, now: Instant) {
        if self.entry_ttl.is_zero() {
            return;
        }
        if self.dentries.len() >= self.entries_max {
            // A complete directory's names stay until then, expired or not:
            // dropping any may drop one of them.
            self.dentries.retain(|_, (_, expires)| now < *expires);
            self.complete.clear();
            if self.dentries.len() >= self.entries_max {
                self.dentries.clear();
            }
        }
        self.dentries
            .insert((parent, name.to_string()), (ino, now + self.entry_ttl));
    }

    /// Forgets a name; returns the inode it pointed to (even if expired:
    /// still the best guess of what an unlink or rename frees).
    pub fn remove_entry(&mut self, parent: Ino, name: &str) -> Option<Ino> {
        self.dentries
            .remove(&(parent, name.to_string()))
            .map(|(ino, _)| ino)
    }

    /// Holds `dir` complete from `now` for the entry TTL, as of its ctime
    /// `ctime_ns`: the caller has just made it (empty).
    pub fn put_complete(&mut self, dir: Ino, ctime_ns: i64, now: Instant) {
        if self.entry_ttl.is_zero() {
            return;
        }
        if self.complete.len() >= self.entries_max {
            self.complete.retain(|_, c| now < c.until);
        }
        let until = now + self.entry_ttl;
        self.complete.insert(dir, Complete { until, ctime_ns });
    }

    /// After this client changed `dir` (its dentries already updated for
    /// the change): while complete, it stays so for another entry TTL
    /// when its ctime before the change is the one held (no one else
    /// changed it in between), and stops being complete otherwise.
    pub fn changed_complete(
        &mut self,
        dir: Ino,
        ctime_before_ns: Option<i64>,
        ctime_ns: i64,
        now: Instant,
    ) {
        let Some(held) = self.complete.get_mut(&dir) else {
            return;
        };
        if now < held.until && ctime_before_ns == Some(held.ctime_ns) {
            *held = Complete {
                until: now + self.entry_ttl,
                ctime_ns,
            };
        } else {
            self.complete.remove(&dir);
        }
    }

    /// Whether `name` is known absent from `dir`: the directory is held
    /// complete and no dentry (fresh or expired) names it.
    pub fn known_absent(&self, dir: Ino, name: &str, now: Instant) -> bool {
        self.complete.get(&dir).is_some_and(|c| now < c.until)
            && !self.dentries.contains_key(&(dir, name.to_string()))
    }

    /// Stops holding `dir` complete (it changed in a way this client did
    /// not see, e.g. a create found the name taken).
    pub fn forget_complete(&mut self, dir: Ino) {
        self.complete.remove(&dir);
    }

    /// The inode a name last resolved to, expired or not.
    pub fn last_known(&self, parent: Ino, name: &str) -> Option<Ino> {
        self.dentries
            .get(&(parent, name.to_string()))
            .map(|(ino, _)| *ino)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use torchfs_proto::meta::FileKind;

    #[test]
    fn a_forgotten_inode_loses_its_names_and_their_directories_completeness() {
        let now = Instant::now();
        let mut c = MetaCache::new(Duration::from_secs(1), Duration::from_secs(1), 100);
        c.put_complete(1, 5, now);
        c.put_complete(2, 5, now);
        c.put_entry(1, "journal", 7, now);
        c.put_entry(2, "other", 8, now);
        c.put_attr(attr(7, 10), now);
        c.forget_inode(7);
        assert_eq!(c.entry(1, "journal", now), None);
        assert!(c.attr(7, now).is_none());
        assert!(
            !c.known_absent(1, "journal", now),
            "dir 1 is not complete now"
        );
        assert_eq!(c.entry(2, "other", now), Some(8));
        assert!(c.known_absent(2, "journal", now), "dir 2 stays complete");
    }

    fn attr(ino: Ino, size: u64) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            nlink: 1,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
            has_xattrs: false,
            frozen: false,
        }
    }

    #[test]
    fn entries_expire_after_their_ttl() {
        let t0 = Instant::now();
        let mut c = MetaCache::new(Duration::from_millis(100), Duration::from_millis(50), 10);
        c.put_attr(attr(5, 10), t0);
        c.put_entry(1, "a", 5, t0);
        assert_eq!(c.lookup(1, "a", t0).map(|a| a.size), Some(10));
        assert_eq!(c.entry(1, "a", t0 + Duration::from_millis(60)), None);
        assert!(c.attr(5, t0 + Duration::from_millis(60)).is_some());
        assert!(c.attr(5, t0 + Duration::from_millis(100)).is_none());
        assert_eq!(c.last_known(1, "a"), Some(5));
        assert_eq!(c.remove_entry(1, "a"), Some(5));
        assert_eq!(c.last_known(1, "a"), None);
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let t0 = Instant::now();
        let mut c = MetaCache::new(Duration::ZERO, Duration::ZERO, 10);
        c.put_attr(attr(5, 10), t0);
        c.put_entry(1, "a", 5, t0);
        assert!(c.attr(5, t0).is_none());
        assert!(c.entry(1, "a", t0).is_none());
    }

    #[test]
    fn a_complete_directory_answers_missing_names_until_an_entry_ttl_after_its_last_change() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = MetaCache::new(ms(100), ms(50), 10);
        c.put_complete(1, 100, t0);
        assert!(c.known_absent(1, "b", t0 + ms(30)));
        assert!(!c.known_absent(2, "b", t0 + ms(30)), "another directory");
        // This client's create, with nobody else's change in between: the
        // name is there (its dentry outlives its TTL while complete), the
        // rest still absent, for another TTL.
        c.put_entry(1, "a", 5, t0 + ms(40));
        c.changed_complete(1, Some(100), 101, t0 + ms(40));
        assert!(c.known_absent(1, "b", t0 + ms(80)));
        assert!(!c.known_absent(1, "a", t0 + ms(80)));
        assert!(c.entry(1, "a", t0 + ms(95)).is_none(), "expired dentry");
        assert!(!c.known_absent(1, "a", t0 + ms(95)));
        assert!(
            !c.known_absent(1, "b", t0 + ms(90)),
            "a TTL after the change"
        );
        // A change whose "before" is not the ctime held: another client
        // changed the directory first.
        c.put_complete(1, 200, t0 + ms(100));
        c.changed_complete(1, Some(201), 202, t0 + ms(101));
        assert!(!c.known_absent(1, "b", t0 + ms(102)));
        // No ctime (an older metad) ends it too.
        c.put_complete(1, 200, t0 + ms(110));
        c.changed_complete(1, None, 202, t0 + ms(111));
        assert!(!c.known_absent(1, "b", t0 + ms(112)));
        // An expired one is not renewed.
        c.put_complete(1, 300, t0 + ms(120));
        c.changed_complete(1, Some(300), 301, t0 + ms(171));
        assert!(!c.known_absent(1, "b", t0 + ms(172)));
        c.put_complete(1, 400, t0 + ms(180));
        c.forget_complete(1);
        assert!(!c.known_absent(1, "b", t0 + ms(181)));
        // Evicting dentries ends completeness: they may be its names.
        c.put_complete(1, 500, t0 + ms(190));
        for i in 0..20 {
            c.put_entry(3, &format!("n{i}"), 100 + i, t0 + ms(190));
        }
        assert!(!c.known_absent(1, "b", t0 + ms(191)));
        let mut z = MetaCache::new(Duration::ZERO, Duration::ZERO, 10);
        z.put_complete(1, 0, t0);
        assert!(!z.known_absent(1, "b", t0));
    }

    #[test]
    fn bounded() {
        let t0 = Instant::now();
        let mut c = MetaCache::new(Duration::from_secs(10), Duration::from_secs(10), 4);
        for ino in 0..100 {
            c.put_attr(attr(ino, 0), t0);
            c.put_entry(1, &format!("f{ino}"), ino, t0);
        }
        assert!(c.attrs.len() <= 4 && c.dentries.len() <= 4);
        assert!(c.attr(99, t0).is_some());
        c.invalidate_attr(99);
        assert!(c.attr(99, t0).is_none());
    }
}
