//! The transport conformance suite (`torchfs_rdma::conformance`) over TCP,
//! against a real storage node (glommio shards, O_DIRECT files): what the
//! RDMA verbs transport must also pass where a device exists.

use std::path::{Path, PathBuf};
use std::time::Duration;

use torchfs_dataplane::{start, StorageConfig, StorageNode};
use torchfs_proto::fragment::FragmentKey;
use torchfs_rdma::conformance::{self, Peer};
use torchfs_rdma::{TcpOptions, TcpTransport};

const SHARDS: usize = 2;
const REQUEST_TIMEOUT_MS: u64 = 1_000;

struct Node {
    node: Option<StorageNode>,
    addrs: Vec<std::net::SocketAddr>,
    dir: PathBuf,
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
    };
    let t = TcpTransport::new(TcpOptions {
        connect_timeout_ms: REQUEST_TIMEOUT_MS,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        idle_connections_max: 4,
    });
    conformance::run(&t, &mut peer, Duration::from_millis(REQUEST_TIMEOUT_MS)).await;
}
