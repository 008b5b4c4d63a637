//! Attribute and dentry cache with TTLs (DESIGN.md §3: clients cache
//! attributes and entries, revalidate on open). Pure data structure: the
//! caller passes the clock, so expiry is tested without sleeping. Bounded:
//! when full, expired entries go first, then everything (a cold cache is
//! only slower).
//!
//! A directory can also be held *complete*: every name it had when metad
//! listed it (or when this client made it) is among the dentries, so a
//! name missing there is answered "no such entry" until the listing is an
//! entry TTL old. That is the staleness a negative dentry already has (the
//! kernel keeps one for the entry TTL), applied to every name at once: a
//! create in such a directory needs no lookup round trip first.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use torchfs_proto::meta::{Attr, Ino, Xattr};

pub(crate) struct MetaCache {
    attr_ttl: Duration,
    entry_ttl: Duration,
    entries_max: usize,
    attrs: HashMap<Ino, (Attr, Instant)>,
    dentries: HashMap<(Ino, String), (Ino, Instant)>,
    /// Every extended attribute of an inode, as one GetXattrs answered
    /// (kept for the attribute TTL).
    xattrs: HashMap<Ino, (Arc<Vec<Xattr>>, Instant)>,
    /// Directories held complete, and until when.
    complete: HashMap<Ino, Instant>,
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
            // Dropping expired names keeps a complete directory complete
            // (a name its listing held expires with it); dropping fresh
            // ones does not.
            self.dentries.retain(|_, (_, expires)| now < *expires);
            if self.dentries.len() >= self.entries_max {
                self.dentries.clear();
                self.complete.clear();
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

    /// Holds `dir` complete from `now` for the entry TTL: the caller has
    /// just put every name metad listed in it (or made it, empty).
    pub fn put_complete(&mut self, dir: Ino, now: Instant) {
        if self.entry_ttl.is_zero() {
            return;
        }
        if self.complete.len() >= self.entries_max {
            self.complete.retain(|_, until| now < *until);
        }
        self.complete.insert(dir, now + self.entry_ttl);
    }

    /// Whether `name` is known absent from `dir`: the directory is held
    /// complete and no fresh dentry names it. (A dentry that expired
    /// before the listing did was not in it: put again otherwise.)
    pub fn known_absent(&self, dir: Ino, name: &str, now: Instant) -> bool {
        self.complete.get(&dir).is_some_and(|until| now < *until)
            && self.entry(dir, name, now).is_none()
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
    fn a_complete_directory_answers_missing_names_until_its_listing_expires() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = MetaCache::new(ms(100), ms(50), 10);
        // "old" was cached before the listing, which did not hold it.
        c.put_entry(1, "old", 7, t0);
        c.put_entry(1, "a", 5, t0 + ms(20));
        c.put_complete(1, t0 + ms(20));
        assert!(c.known_absent(1, "b", t0 + ms(30)));
        assert!(!c.known_absent(1, "a", t0 + ms(30)));
        assert!(!c.known_absent(1, "old", t0 + ms(30)), "fresh dentry");
        assert!(
            c.known_absent(1, "old", t0 + ms(55)),
            "expired before the listing"
        );
        assert!(!c.known_absent(2, "b", t0 + ms(30)), "another directory");
        assert!(!c.known_absent(1, "b", t0 + ms(70)), "the listing expired");
        c.put_complete(1, t0 + ms(80));
        c.forget_complete(1);
        assert!(!c.known_absent(1, "b", t0 + ms(81)));
        // Evicting fresh dentries ends completeness: they may be the
        // listing's names.
        c.put_complete(1, t0 + ms(90));
        for i in 0..20 {
            c.put_entry(3, &format!("n{i}"), 100 + i, t0 + ms(90));
        }
        assert!(!c.known_absent(1, "b", t0 + ms(91)));
        let mut z = MetaCache::new(Duration::ZERO, Duration::ZERO, 10);
        z.put_complete(1, t0);
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
