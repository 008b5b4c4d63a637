//! The client half of exactly-once writes (client sessions, Raft thesis
//! §6.3): a [`Session`] is a random client id plus the numbering of its
//! writes, and a [`Ticket`] is one numbered write, outstanding until the
//! call that holds it returns (or is dropped).
//!
//! metad keeps the result of every write of a session from the lowest
//! outstanding seq on, so each attempt sends the current lowest: it only
//! grows, and lets metad forget results nobody will ask for again. A
//! ticket keeps the session it was numbered in, so a write that is still
//! retrying when the client moves to a new session keeps its ids.
//!
//! Single-threaded (the client's RPC thread): `Rc` and `Cell`s.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::RandomState;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::meta::WriteId;

/// A client id and the numbering of its writes.
pub(super) struct Session {
    client_id: u64,
    next_seq: Cell<u64>,
    /// Seqs handed out whose calls have not returned yet.
    outstanding: RefCell<BTreeSet<u64>>,
}

impl Session {
    /// A session under a fresh random client id.
    pub fn new() -> Rc<Self> {
        Self::with_id(random_client_id())
    }

    pub fn with_id(client_id: u64) -> Rc<Self> {
        Rc::new(Self {
            client_id,
            next_seq: Cell::new(1),
            outstanding: RefCell::new(BTreeSet::new()),
        })
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Numbers a new write; it is outstanding until the ticket is dropped.
    pub fn begin(self: &Rc<Self>) -> Ticket {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        self.outstanding.borrow_mut().insert(seq);
        Ticket {
            session: self.clone(),
            seq,
        }
    }

    /// The lowest seq still waiting for its answer, or the next one to be
    /// handed out when none is.
    fn lowest_outstanding_seq(&self) -> u64 {
        self.outstanding
            .borrow()
            .first()
            .copied()
            .unwrap_or(self.next_seq.get())
    }
}

/// One numbered write.
pub(super) struct Ticket {
    session: Rc<Session>,
    seq: u64,
}

impl Ticket {
    /// The ids to send with this attempt: the same client id and seq on
    /// every attempt, and the lowest outstanding seq as of now (never above
    /// this write's own, which is outstanding until the ticket drops).
    pub fn write_id(&self) -> WriteId {
        WriteId {
            client_id: self.session.client_id,
            seq: self.seq,
            lowest_outstanding_seq: self.session.lowest_outstanding_seq(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.session.outstanding.borrow_mut().remove(&self.seq);
    }
}

/// A random non-zero 64-bit id. std's `RandomState` is seeded from the OS
/// per process; the clock, pid and a counter make ids of clients made in
/// the same process differ too (no `rand` dependency needed for 64 bits).
pub fn random_client_id() -> u64 {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    loop {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_u64(MADE.fetch_add(1, Ordering::Relaxed));
        let id = h.finish();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_count_from_one_and_lowest_trails_the_oldest_unanswered() {
        let s = Session::with_id(9);
        let a = s.begin();
        let b = s.begin();
        let c = s.begin();
        assert_eq!(
            a.write_id(),
            WriteId {
                client_id: 9,
                seq: 1,
                lowest_outstanding_seq: 1
            }
        );
        assert_eq!(
            (c.write_id().seq, c.write_id().lowest_outstanding_seq),
            (3, 1)
        );
        // b answered first: a is still the lowest.
        drop(b);
        assert_eq!(c.write_id().lowest_outstanding_seq, 1);
        drop(a);
        assert_eq!(c.write_id().lowest_outstanding_seq, 3);
        drop(c);
        let d = s.begin();
        assert_eq!(
            (d.write_id().seq, d.write_id().lowest_outstanding_seq),
            (4, 4)
        );
    }

    #[test]
    fn a_ticket_keeps_its_session_after_the_client_moves_on() {
        let old = Session::with_id(1);
        let t = old.begin();
        let new = Session::with_id(2);
        drop(old);
        let u = new.begin();
        assert_eq!((t.write_id().client_id, t.write_id().seq), (1, 1));
        assert_eq!((u.write_id().client_id, u.write_id().seq), (2, 1));
    }

    #[test]
    fn client_ids_are_random_and_never_zero() {
        let ids: BTreeSet<u64> = (0..1000).map(|_| random_client_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(!ids.contains(&0));
        assert_ne!(Session::new().client_id(), Session::new().client_id());
    }
}
