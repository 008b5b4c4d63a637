//! TCP and RDMA verbs side by side, chosen per storage node
//! ([`crate::endpoint::select`]): the client core addresses every fragment
//! by its shard's TCP address, and this transport sends it over verbs to
//! the node's verbs address when both ends have it. A node whose verbs
//! connection cannot be set up (no route, a refused connection, buffers
//! that cannot be registered under the memlock limit) is reached over TCP
//! for a while, with one log line, under `--transport auto`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use torchfs_proto::fragment::FragmentKey;
use torchfs_proto::meta::NodeStatus;

use crate::endpoint::{self, TransportKind, TransportMode};
use crate::verbs::{VerbsOptions, VerbsTransport};
use crate::{TcpOptions, TcpTransport, Transport, TransportCounters, TransportError};

/// How long a node whose verbs connection failed is reached over TCP
/// before verbs is tried again.
const FALLBACK_MS: u64 = 30_000;

pub struct MultiTransport {
    mode: TransportMode,
    tcp: TcpTransport,
    /// None under `--transport tcp` or without a local device.
    verbs: Option<VerbsTransport>,
    /// A shard's TCP address -> its node's verbs address.
    routes: RwLock<HashMap<SocketAddr, SocketAddr>>,
    /// Verbs addresses reached over TCP until the instant.
    fallen_back: Mutex<HashMap<SocketAddr, Instant>>,
    tcp_requests: AtomicU64,
    tcp_bytes: AtomicU64,
    verbs_requests: AtomicU64,
    verbs_bytes: AtomicU64,
    verbs_fallbacks: AtomicU64,
    /// Seeded network faults (`TORCHFS_NET_FAULTS`, feature `testing`).
    #[cfg(feature = "testing")]
    faults: Option<crate::faults::Injector>,
}

/// What fault injection left of a request: go on (and, when `true`, fail
/// as lost after the node handled it).
type Injected = Result<bool, TransportError>;

impl MultiTransport {
    pub fn new(mode: TransportMode, tcp: TcpOptions, verbs: VerbsOptions) -> Self {
        let devices = match mode {
            TransportMode::Tcp => Vec::new(),
            _ => crate::verbs::devices(),
        };
        if mode == TransportMode::Verbs && devices.is_empty() {
            tracing::warn!(
                "--transport verbs, but this host has no RDMA device: requests will fail"
            );
        }
        Self {
            mode,
            tcp: TcpTransport::new(tcp),
            verbs: (!devices.is_empty()).then(|| VerbsTransport::new(verbs)),
            routes: RwLock::new(HashMap::new()),
            fallen_back: Mutex::new(HashMap::new()),
            tcp_requests: AtomicU64::new(0),
            tcp_bytes: AtomicU64::new(0),
            verbs_requests: AtomicU64::new(0),
            verbs_bytes: AtomicU64::new(0),
            verbs_fallbacks: AtomicU64::new(0),
            #[cfg(feature = "testing")]
            faults: crate::faults::NetFaults::from_env().map(crate::faults::Injector::new),
        }
    }

    /// Applies the injected fate of a request (`op`: 0 put, 1 get, 2
    /// delete); without the `testing` feature, nothing.
    async fn inject(
        &self,
        _op: u8,
        _addr: SocketAddr,
        _key: FragmentKey,
        _offset: u32,
        _len: usize,
    ) -> Injected {
        #[cfg(feature = "testing")]
        if let Some(inj) = &self.faults {
            use crate::faults::{lost, reset, Fate};
            match inj.fate(_op, _addr, _key, _offset, _len) {
                Fate::Pass => {}
                Fate::Delay(d) => tokio::time::sleep(d).await,
                Fate::Drop { after: false } => {
                    tokio::time::sleep(inj.drop_wait()).await;
                    return Err(lost(_addr, inj.drop_wait()));
                }
                Fate::Drop { after: true } => return Ok(true),
                Fate::Reset => return Err(reset(_addr)),
            }
        }
        Ok(false)
    }

    /// The end of a request whose reply fault injection loses.
    async fn lose_reply(&self, addr: SocketAddr) -> TransportError {
        #[cfg(feature = "testing")]
        if let Some(inj) = &self.faults {
            tokio::time::sleep(inj.drop_wait()).await;
            return crate::faults::lost(addr, inj.drop_wait());
        }
        TransportError::Protocol {
            addr,
            message: "a reply lost with no fault injection".into(),
        }
    }

    async fn put_routed(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        data: &[u8],
    ) -> Result<(), TransportError> {
        if let (Some(v), Some(verbs)) = (self.route(addr, data.len())?, &self.verbs) {
            match verbs.put(v, key, data).await {
                Err(e) if self.falls_back(v, &e) => {}
                r => {
                    self.count(TransportKind::Verbs, data.len());
                    return r;
                }
            }
        }
        self.count(TransportKind::Tcp, data.len());
        self.tcp.put(addr, key, data).await
    }

    /// The verbs address for a request to `addr` of `bulk_bytes`, if it
    /// goes over verbs; an error when it must and cannot.
    fn route(
        &self,
        addr: SocketAddr,
        bulk_bytes: usize,
    ) -> Result<Option<SocketAddr>, TransportError> {
        let via = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .copied();
        let (Some(verbs), Some(v)) = (&self.verbs, via) else {
            if self.mode == TransportMode::Verbs {
                return Err(TransportError::Connect {
                    addr,
                    source: std::io::Error::other(match &self.verbs {
                        None => "--transport verbs, but this host has no RDMA device",
                        Some(_) => "--transport verbs, but the node advertises no verbs",
                    }),
                });
            }
            return Ok(None);
        };
        if bulk_bytes > verbs.fragment_bytes_max() {
            return Ok(None);
        }
        if self.mode == TransportMode::Auto && verbs.unusable() {
            return Ok(None);
        }
        if self.mode == TransportMode::Auto {
            let mut fallen = self.fallen_back.lock().unwrap_or_else(|p| p.into_inner());
            match fallen.get(&v) {
                Some(until) if Instant::now() < *until => return Ok(None),
                Some(_) => {
                    fallen.remove(&v);
                }
                None => {}
            }
        }
        Ok(Some(v))
    }

    /// Whether a verbs failure sends this request (and the node, for a
    /// while) to TCP: a connection that could not be set up, under auto.
    fn falls_back(&self, verbs_addr: SocketAddr, e: &TransportError) -> bool {
        if self.mode != TransportMode::Auto || !matches!(e, TransportError::Connect { .. }) {
            return false;
        }
        let until = Instant::now() + Duration::from_millis(FALLBACK_MS);
        let first = self
            .fallen_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(verbs_addr, until)
            .is_none();
        // A host-wide failure (buffers not registered) was logged once by
        // the verbs transport; a node's own failure is logged here.
        let host_wide = self.verbs.as_ref().is_some_and(VerbsTransport::unusable);
        if first && !host_wide {
            tracing::warn!("verbs to {verbs_addr} failed ({e}); using TCP for {FALLBACK_MS} ms");
        }
        self.verbs_fallbacks.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn count(&self, kind: TransportKind, bytes: usize) {
        let (requests, total) = match kind {
            TransportKind::Tcp => (&self.tcp_requests, &self.tcp_bytes),
            TransportKind::Verbs => (&self.verbs_requests, &self.verbs_bytes),
        };
        requests.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

impl Transport for MultiTransport {
    async fn put(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let lose_reply = self.inject(0, addr, key, 0, data.len()).await?;
        let result = self.put_routed(addr, key, data).await;
        if lose_reply && result.is_ok() {
            return Err(self.lose_reply(addr).await);
        }
        result
    }

    async fn get(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        expected_crc32c: u32,
        buf: &mut [u8],
    ) -> Result<(), TransportError> {
        self.inject(1, addr, key, offset, buf.len()).await?;
        if let (Some(v), Some(verbs)) = (self.route(addr, buf.len())?, &self.verbs) {
            match verbs.get(v, key, offset, expected_crc32c, buf).await {
                Err(e) if self.falls_back(v, &e) => {}
                r => {
                    self.count(TransportKind::Verbs, buf.len());
                    return r;
                }
            }
        }
        self.count(TransportKind::Tcp, buf.len());
        self.tcp.get(addr, key, offset, expected_crc32c, buf).await
    }

    async fn delete(&self, addr: SocketAddr, key: FragmentKey) -> Result<(), TransportError> {
        self.inject(2, addr, key, 0, 0).await?;
        if let (Some(v), Some(verbs)) = (self.route(addr, 0)?, &self.verbs) {
            match verbs.delete(v, key).await {
                Err(e) if self.falls_back(v, &e) => {}
                r => {
                    self.count(TransportKind::Verbs, 0);
                    return r;
                }
            }
        }
        self.count(TransportKind::Tcp, 0);
        self.tcp.delete(addr, key).await
    }
    /// Listings go over TCP (the node serves them there only).
    async fn list(
        &self,
        addr: SocketAddr,
        after: FragmentKey,
        limit: u32,
    ) -> Result<Vec<FragmentKey>, TransportError> {
        self.tcp.list(addr, after, limit).await
    }

    fn learn_nodes(&self, nodes: &[NodeStatus]) {
        let local_device = self.verbs.is_some();
        let mut routes = HashMap::new();
        for n in nodes {
            let Ok(ip) = n.info.host.parse::<IpAddr>() else {
                continue;
            };
            match endpoint::select(self.mode, local_device, &n.info.transports) {
                Ok((TransportKind::Verbs, Some(v))) => {
                    for port in &n.info.shard_ports {
                        routes.insert(SocketAddr::new(ip, *port), v);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("node {}: {e}", n.info.id),
            }
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    fn counters(&self) -> TransportCounters {
        let verbs_nodes = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            let mut nodes: Vec<_> = routes.values().collect();
            nodes.sort();
            nodes.dedup();
            nodes.len() as u64
        };
        TransportCounters {
            tcp_requests: self.tcp_requests.load(Ordering::Relaxed),
            tcp_bytes: self.tcp_bytes.load(Ordering::Relaxed),
            verbs_requests: self.verbs_requests.load(Ordering::Relaxed),
            verbs_bytes: self.verbs_bytes.load(Ordering::Relaxed),
            verbs_fallbacks: self.verbs_fallbacks.load(Ordering::Relaxed),
            verbs_nodes,
        }
    }
}
