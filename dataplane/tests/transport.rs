//! The transport conformance suite (`torchfs_rdma::conformance`) over TCP,
//! against a real storage node (glommio shards, O_DIRECT files): what the
//! RDMA verbs transport must also pass where a device exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use torchfs_dataplane::{start, StorageConfig, StorageNode};
use torchfs_proto::fragment::FragmentKey;
use torchfs_rdma::conformance::{self, Peer};
use torchfs_rdma::{TcpOptions, TcpTransport, Transport};

const SHARDS: usize = 2;
const REQUEST_TIMEOUT_MS: u64 = 1_000;

struct Node {
    node: Option<StorageNode>,
    addrs: Vec<std::net::SocketAddr>,
    dir: PathBuf,
    silent: Option<std::net::TcpListener>,
}

impl Peer for Node {
    fn addr(&self, key: &FragmentKey) -> std::net::SocketAddr {
        self.addrs[key.shard(SHARDS)]
    }

    /// Fragments of the suite's size are files: `<shard>/<key>.frag`,
    /// data after a 4 KiB header block.
    fn corrupt(&self, key: &FragmentKey, at: usize) {
        let path = fragment_path(&self.dir, key);
        let mut bytes = std::fs::read(&path).expect("read the fragment file");
        bytes[4096 + at] ^= 0x80;
        std::fs::write(&path, &bytes).expect("write the fragment file");
    }

    fn kill(&mut self) {
        if let Some(node) = self.node.take() {
            node.stop();
        }
    }

    /// A TCP listener nobody accepts from: connects, then silence.
    fn silent(&mut self) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
        let addr = listener.local_addr().expect("silent listener address");
        self.silent = Some(listener);
        addr
    }
}

fn fragment_path(dir: &Path, key: &FragmentKey) -> PathBuf {
    dir.join(format!("shard-{}", key.shard(SHARDS)))
        .join(format!("{key}.frag"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passes_the_transport_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(StorageConfig {
        node_id: 3,
        data_dir: dir.path().to_path_buf(),
        shards: SHARDS,
        capacity_bytes: Some(1 << 30),
        ..StorageConfig::default()
    })
    .unwrap();
    let mut peer = Node {
        addrs: node.shard_addrs(),
        node: Some(node),
        dir: dir.path().to_path_buf(),
        silent: None,
    };
    let t = TcpTransport::new(TcpOptions {
        connect_timeout_ms: REQUEST_TIMEOUT_MS,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        idle_connections_max: 4,
    });
    conformance::run(&t, &mut peer, Duration::from_millis(REQUEST_TIMEOUT_MS)).await;
}

/// A shard lists the keys it stores, in key order, page by page; a key
/// another shard owns is not in its listing (orphan collection lists each
/// shard over TCP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_lists_a_shard_s_keys_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(StorageConfig {
        node_id: 4,
        data_dir: dir.path().to_path_buf(),
        shards: SHARDS,
        capacity_bytes: Some(1 << 30),
        ..StorageConfig::default()
    })
    .unwrap();
    let addrs = node.shard_addrs();
    let t = TcpTransport::new(TcpOptions::default());
    let keys: Vec<FragmentKey> = (0..40)
        .map(|i| FragmentKey {
            ino: 5 + i / 4,
            stripe: i % 4,
            generation: 1,
            index: (i % 3) as u8,
        })
        .collect();
    for k in &keys {
        t.put(addrs[k.shard(SHARDS)], *k, b"fragment bytes")
            .await
            .unwrap();
    }
    let zero = FragmentKey {
        ino: 0,
        stripe: 0,
        generation: 0,
        index: 0,
    };
    for (shard, addr) in addrs.iter().enumerate() {
        let mut want: Vec<FragmentKey> = keys
            .iter()
            .copied()
            .filter(|k| k.shard(SHARDS) == shard)
            .collect();
        want.sort();
        let mut got = Vec::new();
        let mut after = zero;
        loop {
            let page = t.list(*addr, after, 7).await.unwrap();
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            after = *last;
            got.extend(page);
        }
        assert_eq!(got, want, "shard {shard}");
    }
    node.stop();
}

/// The same suite over RDMA verbs, against a node that serves verbs
/// (`VerbsMode::On`). Needs an RDMA device (soft-RoCE in `ci/rxe-vm.sh`, or
/// a NIC): `TORCHFS_VERBS_IP` is an address of its interface. Where there
/// is none it prints SKIPPED and why, except under CI or with
/// `TORCHFS_VERBS_REQUIRED` set, where it fails (`ci/test.sh` runs it in the
/// VM and skips it on the host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_verbs_passes_the_transport_conformance_suite() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let devices = torchfs_rdma::verbs::devices();
    if devices.is_empty() {
        let why = "no RDMA device on this host (run it in ci/rxe-vm.sh)";
        let required = std::env::var_os("TORCHFS_VERBS_REQUIRED").is_some()
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!required, "verbs required (CI): {why}");
        println!("SKIPPED device_verbs_passes_the_transport_conformance_suite: {why}");
        return;
    }
    let ip: std::net::IpAddr = std::env::var("TORCHFS_VERBS_IP")
        .unwrap_or_else(|_| "127.0.0.1".into())
        .parse()
        .expect("TORCHFS_VERBS_IP is an IP address");
    let dir = tempfile::tempdir().unwrap();
    let node = start(StorageConfig {
        node_id: 4,
        data_dir: dir.path().to_path_buf(),
        shards: SHARDS,
        capacity_bytes: Some(1 << 30),
        listen_ip: ip,
        host: ip.to_string(),
        verbs: torchfs_dataplane::VerbsMode::On,
        ..StorageConfig::default()
    })
    .unwrap();
    let verbs_addr = node.verbs_addr().expect("the node serves verbs");
    println!("verbs devices {devices:?}; node serves verbs at {verbs_addr}");
    let mut peer = VerbsNode {
        inner: Node {
            addrs: node.shard_addrs(),
            node: Some(node),
            dir: dir.path().to_path_buf(),
            silent: None,
        },
        verbs_addr,
        silent: None,
    };
    let t = torchfs_rdma::verbs::VerbsTransport::new(torchfs_rdma::verbs::VerbsOptions {
        // The first connection registers the client's buffers, which
        // takes a while under emulation.
        connect_timeout_ms: 10 * REQUEST_TIMEOUT_MS,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        ..Default::default()
    });
    conformance::run(&t, &mut peer, Duration::from_millis(REQUEST_TIMEOUT_MS)).await;
}

/// A verbs node: one address for every shard (the node routes by key).
struct VerbsNode {
    inner: Node,
    verbs_addr: std::net::SocketAddr,
    silent: Option<torchfs_rdma::verbs::VerbsListener>,
}

/// Takes requests and never answers them.
struct Silent;

impl torchfs_rdma::verbs::FragmentHandler for Silent {
    async fn handle(
        &self,
        _request: torchfs_proto::fragment::FragmentRequest,
        slot: Option<torchfs_rdma::verbs::pool::Slot>,
    ) -> (
        torchfs_proto::fragment::FragmentResponse,
        Option<torchfs_rdma::verbs::pool::Slot>,
    ) {
        let _slot = slot;
        futures::future::pending().await
    }
}

impl Peer for VerbsNode {
    fn addr(&self, _key: &FragmentKey) -> std::net::SocketAddr {
        self.verbs_addr
    }
    fn corrupt(&self, key: &FragmentKey, at: usize) {
        self.inner.corrupt(key, at)
    }
    fn kill(&mut self) {
        self.inner.kill()
    }

    /// A verbs listener whose handler never answers, on a port that was
    /// free for TCP (rdma_cm's port space is its own, and as free).
    fn silent(&mut self) -> std::net::SocketAddr {
        let port = std::net::TcpListener::bind((self.verbs_addr.ip(), 0))
            .and_then(|l| l.local_addr())
            .expect("pick a port")
            .port();
        let addr = std::net::SocketAddr::new(self.verbs_addr.ip(), port);
        let listener = torchfs_rdma::verbs::VerbsListener::start(
            addr,
            torchfs_rdma::verbs::ListenerOptions::default(),
            std::sync::Arc::new(Silent),
        )
        .expect("start a silent verbs listener");
        self.silent = Some(listener);
        addr
    }
}
