//! [`NullTransport`]: fragment puts are counted and dropped, gets are
//! answered with a fixed pseudo-random pattern, deletes succeed. No
//! address is ever dialled.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use torchfs_proto::fragment::FragmentKey;
use torchfs_rdma::{Transport, TransportError};

/// Length of the pattern before it repeats. Gets copy from it, as a real
/// transport copies what arrived: a period of one fragment unit (1 MiB by
/// default) keeps whole-unit gets to one copy.
const PATTERN_PERIOD_BYTES: usize = 1 << 20;
/// Seed of the pattern (any fixed value: the bytes only need to look like
/// data, not repeat within a page, and be the same in every run).
const PATTERN_SEED: u64 = 0x5eed;

/// What a [`NullTransport`] was asked to move.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NullCounters {
    /// Fragments put (and dropped).
    pub puts: u64,
    pub put_bytes: u64,
    /// Fragment ranges answered with the pattern.
    pub gets: u64,
    pub get_bytes: u64,
    pub deletes: u64,
}

/// The null backend's storage transport. Clones share the counters.
#[derive(Clone)]
pub struct NullTransport {
    inner: Arc<Inner>,
}

struct Inner {
    pattern: Vec<u8>,
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
    deletes: AtomicU64,
}

impl Default for NullTransport {
    fn default() -> Self {
        Self::new()
    }
}

impl NullTransport {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                pattern: pattern(PATTERN_PERIOD_BYTES, PATTERN_SEED),
                puts: AtomicU64::new(0),
                put_bytes: AtomicU64::new(0),
                gets: AtomicU64::new(0),
                get_bytes: AtomicU64::new(0),
                deletes: AtomicU64::new(0),
            }),
        }
    }

    /// Counts so far (of every clone).
    pub fn moved(&self) -> NullCounters {
        let i = &self.inner;
        NullCounters {
            puts: i.puts.load(Ordering::Relaxed),
            put_bytes: i.put_bytes.load(Ordering::Relaxed),
            gets: i.gets.load(Ordering::Relaxed),
            get_bytes: i.get_bytes.load(Ordering::Relaxed),
            deletes: i.deletes.load(Ordering::Relaxed),
        }
    }

    /// Fills `buf` with the pattern from byte `offset` of a fragment on.
    pub(super) fn fill(&self, offset: u64, buf: &mut [u8]) {
        let pattern = &self.inner.pattern;
        let mut at = (offset % pattern.len() as u64) as usize;
        let mut rest = buf;
        while !rest.is_empty() {
            let n = rest.len().min(pattern.len() - at);
            let (head, tail) = rest.split_at_mut(n);
            head.copy_from_slice(&pattern[at..at + n]);
            rest = tail;
            at = 0;
        }
    }
}

/// `len` pseudo-random bytes (splitmix64 from `seed`).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Transport for NullTransport {
    fn put(
        &self,
        _addr: SocketAddr,
        _key: FragmentKey,
        data: &[u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.inner.puts.fetch_add(1, Ordering::Relaxed);
        self.inner
            .put_bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        std::future::ready(Ok(()))
    }

    fn get(
        &self,
        _addr: SocketAddr,
        _key: FragmentKey,
        offset: u32,
        _expected_crc32c: u32,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.inner.gets.fetch_add(1, Ordering::Relaxed);
        self.inner
            .get_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.fill(u64::from(offset), buf);
        std::future::ready(Ok(()))
    }

    fn delete(
        &self,
        _addr: SocketAddr,
        _key: FragmentKey,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.inner.deletes.fetch_add(1, Ordering::Relaxed);
        std::future::ready(Ok(()))
    }
}
