//! Client leases, held by the leader only (volatile, like storage-node
//! liveness): which inodes each client (mount) holds open, renewed by its
//! keep-alives, and which garbage was handed to whom. The state machine
//! learns from it only through what the leader vouches in a command (an
//! inode nobody holds open) and through the `Reclaim`s it proposes.
//!
//! A new leader knows nothing yet, so for one lease after taking office it
//! vouches for nothing and reclaims nothing: every client that holds files
//! open has renewed its lease with it by then. Pure data structure: the
//! caller passes the clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use torchfs_proto::meta::Ino;

/// How often clients renew their lease (they are told the lease, not this).
pub const KEEPALIVE_INTERVAL_MS: u64 = 1000;
/// A client silent this long holds nothing open any more.
pub const LEASE_MS: u64 = 5 * KEEPALIVE_INTERVAL_MS;
/// Clients one leader tracks at most; past it, the longest silent goes.
pub const CLIENTS_MAX: usize = 65_536;
/// Open inodes one client may claim (more are ignored, and logged).
pub const OPEN_PER_CLIENT_MAX: usize = 1 << 20;
/// Garbage files handed out per keep-alive.
pub const GARBAGE_PER_KEEPALIVE_MAX: usize = 64;

struct ClientLease {
    seen: Instant,
    /// Each open inode and when the client last said it holds it.
    open: HashMap<Ino, Instant>,
}

pub(crate) struct Leases {
    term: u64,
    since: Instant,
    clients: HashMap<u64, ClientLease>,
    /// Garbage handed to a client, and when: not handed again for a lease.
    handed: HashMap<Ino, Instant>,
}

impl Leases {
    pub fn new(now: Instant) -> Self {
        Self {
            term: 0,
            since: now,
            clients: HashMap::new(),
            handed: HashMap::new(),
        }
    }

    fn lease() -> Duration {
        Duration::from_millis(LEASE_MS)
    }

    /// Starts over when this voter (re)took office in a new term.
    pub fn for_term(&mut self, term: u64, now: Instant) -> &mut Self {
        if self.term != term {
            self.term = term;
            self.since = now;
            self.clients.clear();
            self.handed.clear();
        }
        self
    }

    /// Within one lease of taking office: what clients hold open is not
    /// known yet.
    pub fn in_grace(&self, now: Instant) -> bool {
        now.duration_since(self.since) < Self::lease()
    }

    fn client(&mut self, client_id: u64, now: Instant) -> &mut ClientLease {
        if !self.clients.contains_key(&client_id) && self.clients.len() >= CLIENTS_MAX {
            let oldest = self
                .clients
                .iter()
                .min_by_key(|(_, c)| c.seen)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.clients.remove(&id);
            }
        }
        let c = self
            .clients
            .entry(client_id)
            .or_insert_with(|| ClientLease {
                seen: now,
                open: HashMap::new(),
            });
        c.seen = now;
        c
    }

    /// Client `client_id` was heard from (a lock request): its lease runs
    /// from now, as after a keep-alive that changed nothing open.
    pub fn seen(&mut self, client_id: u64, now: Instant) {
        self.client(client_id, now);
    }

    /// Whether `client_id`'s lease may still run (always within the grace:
    /// it may not have renewed with this leader yet).
    pub fn may_be_live(&self, client_id: u64, now: Instant) -> bool {
        self.in_grace(now)
            || self
                .clients
                .get(&client_id)
                .is_some_and(|c| now.duration_since(c.seen) < Self::lease())
    }

    /// Client `client_id` opened `ino` (an `Open` request).
    pub fn opened(&mut self, client_id: u64, ino: Ino, now: Instant) {
        let c = self.client(client_id, now);
        if c.open.len() < OPEN_PER_CLIENT_MAX {
            c.open.insert(ino, now);
        }
    }

    /// A keep-alive: `open` is all the client holds open now. An inode it
    /// no longer lists is dropped unless it was opened less than one
    /// keep-alive interval ago (that open may have crossed this message).
    pub fn keep_alive(&mut self, client_id: u64, open: &[Ino], now: Instant) {
        let c = self.client(client_id, now);
        let recent = Duration::from_millis(KEEPALIVE_INTERVAL_MS);
        c.open.retain(|_, at| now.duration_since(*at) < recent);
        for ino in open.iter().take(OPEN_PER_CLIENT_MAX) {
            c.open.insert(*ino, now);
        }
    }

    /// Forgets clients whose lease ran out.
    pub fn expire(&mut self, now: Instant) {
        self.clients
            .retain(|_, c| now.duration_since(c.seen) < Self::lease());
        self.handed
            .retain(|_, at| now.duration_since(*at) < Self::lease());
    }

    /// Whether some live client may hold `ino` open.
    pub fn may_be_open(&self, ino: Ino, now: Instant) -> bool {
        if self.in_grace(now) {
            return true;
        }
        self.clients
            .values()
            .any(|c| now.duration_since(c.seen) < Self::lease() && c.open.contains_key(&ino))
    }

    /// Picks up to [`GARBAGE_PER_KEEPALIVE_MAX`] of `garbage` not handed to
    /// anyone within a lease, and marks them handed.
    pub fn hand_out(&mut self, garbage: impl Iterator<Item = Ino>, now: Instant) -> Vec<Ino> {
        let picked: Vec<Ino> = garbage
            .filter(|ino| !self.handed.contains_key(ino))
            .take(GARBAGE_PER_KEEPALIVE_MAX)
            .collect();
        for ino in &picked {
            self.handed.insert(*ino, now);
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_new_leader_vouches_for_nothing_for_one_lease() {
        let t0 = Instant::now();
        let mut l = Leases::new(t0);
        l.for_term(3, t0);
        assert!(l.may_be_open(9, t0), "clients may not have renewed yet");
        assert!(l.may_be_open(9, t0 + ms(LEASE_MS - 1)));
        assert!(!l.may_be_open(9, t0 + ms(LEASE_MS)));
        // A new term starts the grace again and forgets every lease.
        l.opened(1, 9, t0 + ms(LEASE_MS));
        l.for_term(4, t0 + ms(LEASE_MS + 1));
        assert!(l.may_be_open(10, t0 + ms(LEASE_MS + 2)));
        assert!(!l.may_be_open(9, t0 + ms(2 * LEASE_MS + 1)));
    }

    #[test]
    fn opens_last_while_renewed_and_end_with_the_lease() {
        let t0 = Instant::now();
        let mut l = Leases::new(t0);
        let t = t0 + ms(LEASE_MS);
        l.opened(7, 100, t);
        assert!(l.may_be_open(100, t));
        assert!(!l.may_be_open(101, t));
        // Renewed: still open long after.
        for i in 1..20 {
            l.keep_alive(7, &[100], t + ms(i * KEEPALIVE_INTERVAL_MS));
        }
        let later = t + ms(19 * KEEPALIVE_INTERVAL_MS);
        assert!(l.may_be_open(100, later));
        // The client dies: its lease runs out.
        assert!(!l.may_be_open(100, later + ms(LEASE_MS)));
    }

    #[test]
    fn a_keep_alive_drops_closed_files_but_not_a_crossing_open() {
        let t0 = Instant::now();
        let mut l = Leases::new(t0);
        let t = t0 + ms(LEASE_MS);
        l.opened(7, 100, t);
        l.opened(7, 200, t + ms(2 * KEEPALIVE_INTERVAL_MS));
        // The keep-alive was sent before the open of 200 and lists neither.
        l.keep_alive(7, &[], t + ms(2 * KEEPALIVE_INTERVAL_MS + 10));
        let now = t + ms(2 * KEEPALIVE_INTERVAL_MS + 10);
        assert!(
            !l.may_be_open(100, now),
            "closed: not listed, opened long ago"
        );
        assert!(l.may_be_open(200, now), "opened within the interval");
    }

    #[test]
    fn a_client_is_live_while_it_renews_and_through_the_grace() {
        let t0 = Instant::now();
        let mut l = Leases::new(t0);
        assert!(l.may_be_live(5, t0), "within the grace nothing is known");
        let t = t0 + ms(LEASE_MS);
        assert!(!l.may_be_live(5, t), "never heard from");
        l.seen(5, t);
        assert!(l.may_be_live(5, t + ms(LEASE_MS - 1)));
        l.keep_alive(5, &[], t + ms(LEASE_MS - 1));
        assert!(l.may_be_live(5, t + ms(2 * LEASE_MS - 2)));
        assert!(!l.may_be_live(5, t + ms(2 * LEASE_MS)));
    }

    #[test]
    fn garbage_is_handed_to_one_client_at_a_time() {
        let t0 = Instant::now();
        let mut l = Leases::new(t0);
        let all: Vec<Ino> = (1..=100).collect();
        let first = l.hand_out(all.iter().copied(), t0);
        assert_eq!(first.len(), GARBAGE_PER_KEEPALIVE_MAX);
        let second = l.hand_out(all.iter().copied(), t0);
        assert_eq!(second.len(), 100 - GARBAGE_PER_KEEPALIVE_MAX);
        assert!(first.iter().all(|i| !second.contains(i)));
        // Unreported after a lease: handed again.
        l.expire(t0 + ms(LEASE_MS));
        assert_eq!(l.hand_out(all.iter().copied(), t0 + ms(LEASE_MS)).len(), 64);
    }
}
