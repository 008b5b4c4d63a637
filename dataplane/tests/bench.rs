//! Rough performance figures for the storage node, ignored by default:
//! `cargo test -p torchfs-dataplane --release --test bench -- --ignored --nocapture --test-threads 1`.
//!
//! - `put_stripes_6_nodes`: what a mount's sequential write asks of the
//!   local cluster (6 nodes of 2 shards, each stripe 6 puts of 1 MiB, 8
//!   stripes in flight); `put_small_stripes_6_nodes` the same with 16 KiB
//!   fragments, where syncs rather than bandwidth set the pace.
//! - `ranged_gets`: shuffled small reads into 1 MiB fragments, with the
//!   bytes the process read from disk (`/proc/self/io`) per byte served.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use torchfs_dataplane::{start, StorageConfig, StorageNode};
use torchfs_proto::fragment::FragmentKey;
use torchfs_rdma::{TcpOptions, TcpTransport, Transport};

const SHARDS: usize = 2;

fn config(dir: &Path, node_id: u64) -> StorageConfig {
    StorageConfig {
        node_id,
        data_dir: dir.to_path_buf(),
        shards: SHARDS,
        capacity_bytes: Some(64 << 30),
        io_memory_bytes: Some(2 << 20),
        ..StorageConfig::default()
    }
}

fn key(ino: u64, stripe: u64, index: u8) -> FragmentKey {
    FragmentKey {
        ino,
        stripe,
        generation: 1,
        index,
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect()
}

fn transport() -> TcpTransport {
    TcpTransport::new(TcpOptions {
        connect_timeout_ms: 1_000,
        request_timeout_ms: 30_000,
        idle_connections_max: 64,
    })
}

fn addr_of(node: &StorageNode, key: &FragmentKey) -> std::net::SocketAddr {
    node.shard_addrs()[key.shard(SHARDS)]
}

/// Bytes this process has read from block devices so far.
fn disk_read_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("read_bytes: "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentile_us(sorted: &[Duration], p: f64) -> u128 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_micros()
}

/// Puts `stripes` stripes of 6 fragments of `fragment_bytes` to 6 nodes
/// of [`SHARDS`] shards, `stripes_in_flight` at a time, twice (fresh keys
/// each round); prints the rate and the put latencies.
async fn put_stripes(stripes: u64, stripes_in_flight: u64, fragment_bytes: usize) {
    const NODES: usize = 6;
    let dirs: Vec<_> = (0..NODES).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Arc<Vec<StorageNode>> = Arc::new(
        dirs.iter()
            .enumerate()
            .map(|(i, d)| start(config(d.path(), i as u64 + 1)).unwrap())
            .collect(),
    );
    let t = Arc::new(transport());
    let d = Arc::new(data(fragment_bytes, 3));
    for round in 0..2 {
        let started = Instant::now();
        let tasks: Vec<_> = (0..stripes_in_flight)
            .map(|w| {
                let (t, d, nodes) = (t.clone(), d.clone(), nodes.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    for stripe in (w..stripes).step_by(stripes_in_flight as usize) {
                        let puts = (0..NODES).map(|i| {
                            let (t, d, nodes) = (&t, &d, &nodes);
                            async move {
                                let k = key(round + 1, stripe, i as u8);
                                let begun = Instant::now();
                                t.put(addr_of(&nodes[i], &k), k, d).await.unwrap();
                                begun.elapsed()
                            }
                        });
                        latencies.extend(futures::future::join_all(puts).await);
                    }
                    latencies
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        let secs = started.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "round {round}: {stripes} stripes of 4+2 x {} KiB, {stripes_in_flight} in flight, 6 nodes x {SHARDS} shards: \
             {:.0} MB/s of file data, {:.0} puts/s; put latency p50 {} us, p99 {} us",
            fragment_bytes >> 10,
            (stripes * 4 * fragment_bytes as u64) as f64 / secs / 1e6,
            (stripes * NODES as u64) as f64 / secs,
            percentile_us(&latencies, 0.5),
            percentile_us(&latencies, 0.99),
        );
    }
    drop(nodes);
}

/// A mount's sequential write: 1 MiB units, 8 stripes in flight.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_stripes_6_nodes() {
    put_stripes(96, 8, 1 << 20).await;
}

/// Small files (or small units): bound by syncs rather than bandwidth.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_small_stripes_6_nodes() {
    put_stripes(256, 8, 16 << 10).await;
}

#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_gets() {
    const FRAGMENTS: u64 = 64;
    const IN_FLIGHT: u64 = 8;
    const GETS: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(start(config(dir.path(), 1)).unwrap());
    let t = Arc::new(transport());
    let d = Arc::new(data(1 << 20, 9));
    let crc = crc32c::crc32c(&d);
    for f in 0..FRAGMENTS {
        let k = key(1, f, 0);
        t.put(addr_of(&node, &k), k, &d).await.unwrap();
    }
    for len in [4096usize, 128 << 10] {
        let read_before = disk_read_bytes();
        let started = Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|w| {
                let (t, d, node) = (t.clone(), d.clone(), node.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; len];
                    // xorshift: shuffled, reproducible offsets.
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (w + 1);
                    for _ in (w..GETS).step_by(IN_FLIGHT as usize) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = key(1, x % FRAGMENTS, 0);
                        // 4 KiB-aligned offsets, as the kernel's page reads are.
                        let offset = ((x >> 20) as usize % ((d.len() - len) / 4096 + 1)) * 4096;
                        t.get(addr_of(&node, &k), k, offset as u32, crc, &mut buf)
                            .await
                            .unwrap();
                        assert_eq!(&buf[..], &d[offset..offset + len]);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let read = disk_read_bytes() - read_before;
        println!(
            "ranged gets of {} KiB at shuffled offsets of 1 MiB fragments, {IN_FLIGHT} in flight: \
             {:.0} gets/s, {:.0} MB/s served, disk bytes read per byte served {:.1}",
            len >> 10,
            GETS as f64 / secs,
            (GETS * len as u64) as f64 / secs / 1e6,
            read as f64 / (GETS * len as u64) as f64,
        );
    }
}

/// One put at a time of 100 KB fragments to a one-shard node, as fragment
/// files and as log records: what a single writer's close waits for.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_latency_files_and_log() {
    use torchfs_dataplane::store::log::LogConfig;
    const PUTS: u64 = 400;
    for (name, log) in [
        ("files", LogConfig::off()),
        ("log", LogConfig::default()),
        ("files", LogConfig::off()),
        ("log", LogConfig::default()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let node = start(StorageConfig {
            shards: 1,
            log,
            ..config(dir.path(), 1)
        })
        .unwrap();
        let t = transport();
        let d = data(100_000, 4);
        let addr = node.shard_addrs()[0];
        let mut latencies = Vec::new();
        for i in 0..PUTS {
            let k = key(1, i, 0);
            let begun = Instant::now();
            t.put(addr, k, &d).await.unwrap();
            latencies.push(begun.elapsed());
        }
        latencies.sort();
        println!(
            "{name}: {PUTS} puts of 100 KB one at a time: p50 {} us, p90 {} us, p99 {} us",
            percentile_us(&latencies, 0.5),
            percentile_us(&latencies, 0.9),
            percentile_us(&latencies, 0.99),
        );
        node.stop();
    }
}
