//! What this client knows of its own locks (the locks themselves are
//! metad's): which (inode, owner) pairs may hold one, so that closing a
//! file that was never locked costs no round trip, and which blocking
//! waits are running, so that a close by their owner stops them.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use torchfs_proto::meta::Ino;

use super::sync::lock;

/// An (inode, lock owner) pair.
pub(crate) type LockKey = (Ino, u64);

#[derive(Default)]
pub(crate) struct LockTable {
    state: Mutex<LockState>,
}

#[derive(Default)]
struct LockState {
    /// Pairs that took a lock and have not released all.
    held: HashSet<LockKey>,
    /// Blocking locks being waited for.
    waits: HashMap<LockKey, Wait>,
}

#[derive(Default)]
struct Wait {
    waiters: u32,
    /// Bumped by each close of (inode, owner): a wait that sees it change
    /// gives up.
    closes: u64,
}

/// A running wait; unregisters it when it ends, however it ends.
pub(crate) struct WaitGuard<'a> {
    table: &'a LockTable,
    key: LockKey,
    closes_at_start: u64,
}

impl WaitGuard<'_> {
    /// Whether the owner closed the file since the wait began.
    pub fn closed(&self) -> bool {
        let st = lock(&self.table.state);
        st.waits.get(&self.key).map(|w| w.closes) != Some(self.closes_at_start)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut st = lock(&self.table.state);
        if let Some(w) = st.waits.get_mut(&self.key) {
            w.waiters -= 1;
            if w.waiters == 0 {
                st.waits.remove(&self.key);
            }
        }
    }
}

impl LockTable {
    /// Registers a blocking wait for `key`.
    pub fn begin_wait(&self, key: LockKey) -> WaitGuard<'_> {
        let closes_at_start = {
            let mut st = lock(&self.state);
            let w = st.waits.entry(key).or_default();
            w.waiters += 1;
            w.closes
        };
        WaitGuard {
            table: self,
            key,
            closes_at_start,
        }
    }

    /// `key` may hold a lock from now on (noted before the request, so a
    /// close racing with it unlocks).
    pub fn note_held(&self, key: LockKey) {
        lock(&self.state).held.insert(key);
    }

    /// `key` released every lock it held.
    pub fn note_released(&self, key: LockKey) {
        lock(&self.state).held.remove(&key);
    }

    /// A close by the owner: stops its waits; answers whether it may hold
    /// a lock (then the caller unlocks with metad).
    pub fn note_close(&self, key: LockKey) -> bool {
        let mut st = lock(&self.state);
        if let Some(w) = st.waits.get_mut(&key) {
            w.closes += 1;
        }
        st.held.contains(&key)
    }

    /// [`Self::note_close`] only when `key` holds no lock: true when done.
    pub fn close_unheld(&self, key: LockKey) -> bool {
        let mut st = lock(&self.state);
        if st.held.contains(&key) {
            return false;
        }
        if let Some(w) = st.waits.get_mut(&key) {
            w.closes += 1;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_close_stops_waits_and_says_whether_a_lock_may_be_held() {
        let table = LockTable::default();
        let key = (7, 1);
        let wait = table.begin_wait(key);
        assert!(!wait.closed());
        assert!(table.close_unheld(key));
        assert!(wait.closed());
        drop(wait);
        table.note_held(key);
        assert!(!table.close_unheld(key));
        assert!(table.note_close(key));
        table.note_released(key);
        assert!(!table.note_close(key));
        assert!(lock(&table.state).waits.is_empty());
    }
}
