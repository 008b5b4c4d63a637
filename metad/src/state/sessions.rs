//! Client sessions: the state-machine half of exactly-once writes (client
//! sessions, Raft thesis §6.3).
//!
//! A write may reach the log more than once: the client retries after a
//! timeout, a dropped connection or a leader change, and the first attempt
//! may have been committed all the same. Each write carries a [`WriteId`]
//! (client id, seq, lowest outstanding seq); the table keeps, per client,
//! the result of every write from its lowest outstanding seq on, and a
//! write whose result is kept is answered with it instead of being applied
//! again. Results below the lowest outstanding seq a client reports are
//! dropped (it will not ask for them again), and so the client itself
//! bounds its entry.
//!
//! Everything here is deterministic, as `apply` must be: time is the
//! leader-stamped `now_ns` of the commands (never run backward: a new
//! leader's clock may be behind), sessions expire by it, and eviction
//! order is `(last active, client id)`. The table is part of [`State`],
//! hence of every snapshot.
//!
//! [`State`]: super::State

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use torchfs_proto::meta::{MetaError, WriteId};

use super::Outcome;

/// A session without a write for this long is forgotten. Far above how
/// long a client retries one write (`MetaClient`: 20 s by default), so a
/// retry does not find its session gone.
pub const SESSION_IDLE_EXPIRY_NS: i64 = 10 * 60 * 1_000_000_000;
/// Sessions kept at most; a new one beyond this evicts the least recently
/// active (bounds the table against a flood of short-lived clients).
pub const SESSIONS_MAX: usize = 65_536;
/// Results kept per session at most. A client with more writes outstanding
/// loses the oldest: their retries are refused rather than applied again.
pub const RESULTS_PER_SESSION_MAX: usize = 4096;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Sessions {
    by_client: BTreeMap<u64, Session>,
    /// `(last_active_ns, client_id)` of every session: expiry and eviction
    /// order.
    by_age: BTreeSet<(i64, u64)>,
    /// The latest command time seen.
    clock_ns: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Session {
    last_active_ns: i64,
    /// The highest lowest-outstanding seq the client has reported: every
    /// write below it was answered (or given up on) by the client.
    lowest_outstanding_seq: u64,
    /// Results of the writes from `lowest_outstanding_seq` on, by seq.
    results: BTreeMap<u64, Outcome>,
}

/// What to do with a write before applying it.
pub(super) enum Admit {
    /// Not seen before: apply it, then [`Sessions::record`] the result.
    Apply,
    /// A duplicate or a refused write: answer this, change nothing else.
    Answer(Box<Outcome>),
}

impl Sessions {
    /// Sessions kept.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The stored result of `id`'s write, if it was applied and is still
    /// kept. The leader answers a retry from here without a log entry:
    /// what the state machine applied is committed.
    pub fn answered(&self, id: &WriteId) -> Option<&Outcome> {
        self.by_client.get(&id.client_id)?.results.get(&id.seq)
    }

    /// Advances the clock to a command's time and forgets the sessions idle
    /// past [`SESSION_IDLE_EXPIRY_NS`]. Runs for every command, with an id
    /// or not, so expiry does not wait for the expired client.
    pub(super) fn tick(&mut self, now_ns: i64) {
        self.clock_ns = self.clock_ns.max(now_ns);
        let horizon_ns = self.clock_ns.saturating_sub(SESSION_IDLE_EXPIRY_NS);
        while let Some(&(last_active_ns, client_id)) = self.by_age.first() {
            if last_active_ns >= horizon_ns {
                break;
            }
            self.by_age.pop_first();
            self.by_client.remove(&client_id);
        }
    }

    /// Decides whether the write `id` is applied. Opens the session on a
    /// client's first write (lowest outstanding seq 1: nothing of it was
    /// answered yet) and trims results below the lowest outstanding seq.
    pub(super) fn admit(&mut self, id: &WriteId) -> Admit {
        if let Err(e) = id.check() {
            return Admit::Answer(Box::new(Err(e)));
        }
        let clock_ns = self.clock_ns;
        match self.by_client.get_mut(&id.client_id) {
            Some(s) => {
                self.by_age.remove(&(s.last_active_ns, id.client_id));
                s.last_active_ns = clock_ns;
            }
            None if id.lowest_outstanding_seq > 1 => {
                // The client had writes answered in a session we no longer
                // have: this one may be a retry of an applied write, and we
                // cannot tell, so refuse it (unapplied) rather than guess.
                return Admit::Answer(Box::new(Err(MetaError::SessionExpired {
                    client_id: id.client_id,
                    seq: id.seq,
                })));
            }
            None => {
                if self.by_client.len() >= SESSIONS_MAX {
                    if let Some((_, oldest)) = self.by_age.pop_first() {
                        self.by_client.remove(&oldest);
                    }
                }
                self.by_client.insert(
                    id.client_id,
                    Session {
                        last_active_ns: clock_ns,
                        lowest_outstanding_seq: 1,
                        results: BTreeMap::new(),
                    },
                );
            }
        }
        self.by_age.insert((clock_ns, id.client_id));
        let Some(s) = self.by_client.get_mut(&id.client_id) else {
            // Inserted or found just above.
            return Admit::Apply;
        };
        if id.lowest_outstanding_seq > s.lowest_outstanding_seq {
            s.lowest_outstanding_seq = id.lowest_outstanding_seq;
            s.results = s.results.split_off(&id.lowest_outstanding_seq);
        }
        if id.seq < s.lowest_outstanding_seq {
            // A stale copy (e.g. an attempt that sat in an old leader's
            // pipeline): the client has moved past it, its result is gone.
            return Admit::Answer(Box::new(Err(MetaError::Invalid(format!(
                "write {} of client session {:#018x} is below its lowest outstanding seq {}: \
                 it was answered or given up on already and is not applied again",
                id.seq, id.client_id, s.lowest_outstanding_seq
            )))));
        }
        match s.results.get(&id.seq) {
            Some(done) => Admit::Answer(Box::new(done.clone())),
            None => Admit::Apply,
        }
    }

    /// Keeps the result of a write [`Sessions::admit`] let through.
    pub(super) fn record(&mut self, id: &WriteId, outcome: &Outcome) {
        let Some(s) = self.by_client.get_mut(&id.client_id) else {
            return;
        };
        s.results.insert(id.seq, outcome.clone());
        while s.results.len() > RESULTS_PER_SESSION_MAX {
            // Raise the floor past a dropped result, so that a retry of it
            // is refused instead of applied again.
            if let Some((seq, _)) = s.results.pop_first() {
                s.lowest_outstanding_seq = s.lowest_outstanding_seq.max(seq.saturating_add(1));
            }
        }
    }
}
