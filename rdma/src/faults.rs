//! Seeded network faults on the client's fragment requests (feature
//! `testing`): drops, delays, connection resets and partitions, decided
//! per request from one seed, so a failing run is reproduced by its seed.
//! [`MultiTransport`](crate::MultiTransport) consults it when the process
//! was started with `TORCHFS_NET_FAULTS` (see [`NetFaults::from_env`]).
//!
//! A decision is a hash of (seed, operation, fragment key, offset, length,
//! how many times that same request was made), not a draw from a shared
//! generator, so it does not depend on how concurrent requests interleave.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use torchfs_proto::fragment::FragmentKey;

use crate::TransportError;

/// What to inject, each as a rate per thousand requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetFaults {
    pub seed: u64,
    /// The request is lost (after the node handled it, for half of the
    /// puts: the reply is what is lost): a timeout after `delay_ms_max`.
    pub drop_per_mille: u32,
    /// The request waits up to `delay_ms_max` first.
    pub delay_per_mille: u32,
    pub delay_ms_max: u64,
    /// The connection is reset before the request is sent.
    pub reset_per_mille: u32,
    /// A node (its address) cut off for the next requests to it: a
    /// partition of `partition_requests` requests.
    pub partition_per_mille: u32,
    pub partition_requests: u32,
}

impl FromStr for NetFaults {
    type Err = String;
    /// `seed=42,drop=10,delay=100,delay_ms=30,reset=10,partition=2,partition_requests=20`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut f = NetFaults {
            delay_ms_max: 20,
            partition_requests: 16,
            ..NetFaults::default()
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=value"))?;
            let n: u64 = value
                .parse()
                .map_err(|e| format!("{part:?}: {value:?} is not a number ({e})"))?;
            let per_mille = || u32::try_from(n.min(1000)).unwrap_or(1000);
            match name {
                "seed" => f.seed = n,
                "drop" => f.drop_per_mille = per_mille(),
                "delay" => f.delay_per_mille = per_mille(),
                "delay_ms" => f.delay_ms_max = n,
                "reset" => f.reset_per_mille = per_mille(),
                "partition" => f.partition_per_mille = per_mille(),
                "partition_requests" => f.partition_requests = u32::try_from(n).unwrap_or(u32::MAX),
                other => return Err(format!("unknown network fault {other:?}")),
            }
        }
        Ok(f)
    }
}

impl NetFaults {
    /// The faults `TORCHFS_NET_FAULTS` names, if it is set (a malformed
    /// value is logged and ignored).
    pub fn from_env() -> Option<Self> {
        let text = std::env::var("TORCHFS_NET_FAULTS").ok()?;
        match text.parse() {
            Ok(f) => {
                tracing::warn!("network fault injection on: {f:?} (TORCHFS_NET_FAULTS)");
                Some(f)
            }
            Err(e) => {
                tracing::error!("TORCHFS_NET_FAULTS={text:?}: {e}; no faults injected");
                None
            }
        }
    }
}

/// What happens to one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Pass,
    Delay(Duration),
    /// Lost; `after` = the node handled it and the reply was lost.
    Drop {
        after: bool,
    },
    Reset,
}

/// The decisions of one client.
pub struct Injector {
    faults: NetFaults,
    /// How many times each request was made (its attempt number).
    attempts: Mutex<HashMap<(u8, FragmentKey, u32, usize), u32>>,
    /// Nodes cut off: requests left in the partition.
    partitioned: Mutex<HashMap<SocketAddr, u32>>,
}

/// splitmix64 of `x`: a well-mixed 64-bit hash (also the
/// storage node's seeded disk faults hash their decisions with it).
pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Injector {
    pub fn new(faults: NetFaults) -> Self {
        Self {
            faults,
            attempts: Mutex::new(HashMap::new()),
            partitioned: Mutex::new(HashMap::new()),
        }
    }

    /// The fate of a request (`op`: 0 put, 1 get, 2 delete) to `addr`.
    pub fn fate(
        &self,
        op: u8,
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        len: usize,
    ) -> Fate {
        let f = &self.faults;
        {
            let mut cut = self.partitioned.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(left) = cut.get_mut(&addr) {
                *left -= 1;
                if *left == 0 {
                    cut.remove(&addr);
                }
                return Fate::Drop { after: false };
            }
        }
        let attempt = {
            let mut a = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let n = a.entry((op, key, offset, len)).or_insert(0);
            *n += 1;
            *n
        };
        let mut h = splitmix(f.seed ^ u64::from(op));
        for v in [
            key.ino,
            key.stripe,
            key.generation,
            u64::from(key.index),
            u64::from(offset),
            len as u64,
            u64::from(attempt),
        ] {
            h = splitmix(h ^ v);
        }
        let roll = (h % 1000) as u32;
        let delay = Duration::from_millis(if f.delay_ms_max == 0 {
            0
        } else {
            (h >> 20) % (f.delay_ms_max + 1)
        });
        let mut edge = f.partition_per_mille;
        if roll < edge {
            if f.partition_requests > 1 {
                self.partitioned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(addr, f.partition_requests - 1);
            }
            return Fate::Drop { after: false };
        }
        edge += f.drop_per_mille;
        if roll < edge {
            return Fate::Drop {
                after: op == 0 && (h >> 40) & 1 == 1,
            };
        }
        edge += f.reset_per_mille;
        if roll < edge {
            return Fate::Reset;
        }
        edge += f.delay_per_mille;
        if roll < edge {
            return Fate::Delay(delay);
        }
        Fate::Pass
    }

    /// How long a lost request takes to fail.
    pub fn drop_wait(&self) -> Duration {
        Duration::from_millis(self.faults.delay_ms_max.max(1))
    }
}

/// The error a lost request ends with.
pub fn lost(addr: SocketAddr, wait: Duration) -> TransportError {
    TransportError::Timeout {
        addr,
        timeout_ms: wait.as_millis() as u64,
    }
}

/// The error a reset connection ends with.
pub fn reset(addr: SocketAddr) -> TransportError {
    TransportError::Io {
        addr,
        source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(stripe: u64) -> FragmentKey {
        FragmentKey {
            ino: 7,
            stripe,
            generation: 1,
            index: 0,
        }
    }

    #[test]
    fn parses_and_refuses_bad_specs() {
        let f: NetFaults = "seed=42,drop=10,delay=100,delay_ms=30,reset=5"
            .parse()
            .unwrap();
        assert_eq!(f.seed, 42);
        assert_eq!(f.drop_per_mille, 10);
        assert_eq!(f.delay_ms_max, 30);
        assert!("drop".parse::<NetFaults>().is_err());
        assert!("drop=x".parse::<NetFaults>().is_err());
        assert!("flood=3".parse::<NetFaults>().is_err());
    }

    #[test]
    fn one_seed_gives_the_same_fates_whatever_the_order() {
        let f: NetFaults = "seed=9,drop=200,delay=200,reset=100".parse().unwrap();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = Injector::new(f.clone());
        let b = Injector::new(f);
        let forward: Vec<Fate> = (0..200).map(|s| a.fate(1, addr, key(s), 0, 10)).collect();
        let mut backward: Vec<Fate> = (0..200)
            .rev()
            .map(|s| b.fate(1, addr, key(s), 0, 10))
            .collect();
        backward.reverse();
        assert_eq!(forward, backward);
        let dropped = forward
            .iter()
            .filter(|f| matches!(f, Fate::Drop { .. }))
            .count();
        assert!(
            (20..70).contains(&dropped),
            "{dropped} of 200 dropped at 20%"
        );
        // A retry of the same request is a new decision.
        let again: Vec<Fate> = (0..200).map(|s| a.fate(1, addr, key(s), 0, 10)).collect();
        assert_ne!(forward, again);
    }

    #[test]
    fn a_partition_cuts_a_node_off_for_its_next_requests() {
        let f: NetFaults = "seed=1,partition=1000,partition_requests=3"
            .parse()
            .unwrap();
        let (x, y): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let i = Injector::new(f);
        for s in 0..3 {
            assert_eq!(i.fate(0, x, key(s), 0, 1), Fate::Drop { after: false });
        }
        assert_eq!(i.fate(0, y, key(9), 0, 1), Fate::Drop { after: false });
    }
}
