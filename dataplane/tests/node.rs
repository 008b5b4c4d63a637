//! A real storage node (glommio shards, O_DIRECT files) driven through the
//! client transport, without metad.

use std::path::Path;

use torchfs_dataplane::store::log::LogConfig;
use torchfs_dataplane::{start, DataplaneError, StorageConfig, StorageNode};
use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};
use torchfs_rdma::{TcpOptions, TcpTransport, Transport, TransportError};

const SHARDS: usize = 2;

/// Fragments of up to 100,000 bytes go to the log: the tests below store
/// both records and files.
fn config(dir: &Path, node_id: u64) -> StorageConfig {
    StorageConfig {
        node_id,
        data_dir: dir.to_path_buf(),
        shards: SHARDS,
        capacity_bytes: Some(1 << 30),
        log: LogConfig {
            fragment_bytes_max: 100_000,
            ..LogConfig::default()
        },
        ..StorageConfig::default()
    }
}

fn key(stripe: u64, index: u8) -> FragmentKey {
    FragmentKey {
        ino: 1000,
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

fn addr_of(node: &StorageNode, key: &FragmentKey) -> std::net::SocketAddr {
    node.shard_addrs()[key.shard(SHARDS)]
}

fn transport() -> TcpTransport {
    TcpTransport::new(TcpOptions {
        connect_timeout_ms: 1_000,
        request_timeout_ms: 5_000,
        idle_connections_max: 4,
    })
}

#[tokio::test]
async fn put_get_delete_corrupt_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path(), 7)).unwrap();
    assert_eq!(node.shard_addrs().len(), SHARDS);
    let t = transport();

    let fragments: Vec<(FragmentKey, Vec<u8>)> = (0..8u8)
        .map(|i| (key(i as u64, i % 6), data(1 + i as usize * 50_000, i)))
        .collect();
    for (k, d) in &fragments {
        t.put(addr_of(&node, k), *k, d).await.unwrap();
    }
    for (k, d) in &fragments {
        let crc = crc32c::crc32c(d);
        let mut whole = vec![0u8; d.len()];
        t.get(addr_of(&node, k), *k, 0, crc, &mut whole)
            .await
            .unwrap();
        assert_eq!(&whole, d);
        if d.len() > 100 {
            let mut part = vec![0u8; 60];
            t.get(addr_of(&node, k), *k, 40, crc, &mut part)
                .await
                .unwrap();
            assert_eq!(&part[..], &d[40..100]);
            let mut prefix = vec![0u8; 10];
            t.get(addr_of(&node, k), *k, 0, crc, &mut prefix)
                .await
                .unwrap();
            assert_eq!(&prefix[..], &d[..10]);
        }
    }

    // Missing fragment.
    let missing = key(999, 0);
    let mut buf = vec![0u8; 10];
    let err = t
        .get(addr_of(&node, &missing), missing, 0, 0, &mut buf)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Remote {
                code: FragmentErrorCode::NotFound,
                ..
            }
        ),
        "{err}"
    );

    // The wrong shard says so.
    let (k, d) = &fragments[1];
    let wrong = node.shard_addrs()[(k.shard(SHARDS) + 1) % SHARDS];
    let err = t
        .get(wrong, *k, 0, crc32c::crc32c(d), &mut buf)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Remote {
                code: FragmentErrorCode::WrongShard,
                ..
            }
        ),
        "{err}"
    );

    // Delete.
    let (k, d) = &fragments[0];
    t.delete(addr_of(&node, k), *k).await.unwrap();
    let err = t
        .get(addr_of(&node, k), *k, 0, crc32c::crc32c(d), &mut buf[..1])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(FragmentErrorCode::NotFound), "{err}");
    let used = node.used_bytes();

    // A flipped byte on disk (in the last 64 KiB chunk): caught by every
    // get that covers it, whole or ranged; gets of other chunks still read
    // right bytes without reading that chunk.
    let (k, d) = &fragments[3];
    let crc = crc32c::crc32c(d);
    let path = dir
        .path()
        .join(format!("shard-{}", k.shard(SHARDS)))
        .join(format!("{k}.frag"));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + d.len() - 1] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let last = d.len() as u32 - 1;
    for (offset, len) in [(0u32, d.len()), (last - 9, 10), (131_072, 1000), (last, 1)] {
        let mut buf = vec![0u8; len];
        let err = t
            .get(addr_of(&node, k), *k, offset, crc, &mut buf)
            .await
            .unwrap_err();
        match err {
            TransportError::ChecksumMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, crc);
                assert_ne!(actual, crc);
            }
            other => panic!("corrupt fragment, {offset}+{len}: {other}"),
        }
    }
    for (offset, len) in [(0usize, 10usize), (5, 100), (65_536, 65_536)] {
        let mut buf = vec![0u8; len];
        t.get(addr_of(&node, k), *k, offset as u32, crc, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf[..], &d[offset..offset + len]);
    }

    // Another node id may not take the directory, even while stopped.
    node.stop();
    let err = start(config(dir.path(), 8)).err().unwrap();
    assert!(
        matches!(
            err,
            DataplaneError::NodeIdMismatch {
                found: 7,
                configured: 8,
                ..
            }
        ),
        "{err}"
    );

    // Restart on the same directory: everything still served, records
    // (fragments 1 and 2) and files alike.
    let node = start(config(dir.path(), 7)).unwrap();
    assert_eq!(node.used_bytes(), used);
    for (k, d) in fragments[1..3].iter().chain(&fragments[4..]) {
        let mut whole = vec![0u8; d.len()];
        t.get(addr_of(&node, k), *k, 0, crc32c::crc32c(d), &mut whole)
            .await
            .unwrap();
        assert_eq!(&whole, d);
    }
    node.stop();
}

#[tokio::test]
async fn a_new_shard_count_moves_records_and_files_to_their_shards() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path(), 3)).unwrap();
    let t = transport();
    let fragments: Vec<(FragmentKey, Vec<u8>)> = (0..12u8)
        .map(|i| (key(100 + i as u64, i % 6), data(1 + i as usize * 20_000, i)))
        .collect();
    for (k, d) in &fragments {
        t.put(addr_of(&node, k), *k, d).await.unwrap();
    }
    let used = node.used_bytes();
    node.stop();

    let shards = 3;
    let node = start(StorageConfig {
        shards,
        ..config(dir.path(), 3)
    })
    .unwrap();
    assert_eq!(node.used_bytes(), used);
    for (k, d) in &fragments {
        let mut whole = vec![0u8; d.len()];
        t.get(
            node.shard_addrs()[k.shard(shards)],
            *k,
            0,
            crc32c::crc32c(d),
            &mut whole,
        )
        .await
        .unwrap_or_else(|e| panic!("{k} ({} bytes): {e}", d.len()));
        assert_eq!(&whole, d);
    }
    node.stop();
}

#[tokio::test]
async fn bad_log_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = start(StorageConfig {
        log: LogConfig {
            fragment_bytes_max: 1 << 20,
            segment_bytes: 1 << 20,
        },
        ..config(dir.path(), 1)
    })
    .err()
    .unwrap();
    assert!(matches!(err, DataplaneError::LogConfig(_)), "{err}");
    assert!(err.to_string().contains("log segments"), "{err}");
}

#[tokio::test]
async fn port_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = start(StorageConfig {
        base_port: port,
        ..config(dir.path(), 1)
    })
    .err()
    .unwrap();
    assert!(
        matches!(err, DataplaneError::PortInUse { port: p, shard: 0, .. } if p == port),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()));
}

#[tokio::test]
async fn unwritable_data_dir_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = start(config(&file.join("data"), 1)).err().unwrap();
    assert!(
        matches!(err, DataplaneError::DataDirNotWritable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn injected_faults_reach_the_client() {
    use torchfs_dataplane::faults::{set, FaultSet};
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path(), 3)).unwrap();
    let t = transport();
    let k = key(1, 1);
    let d = data(10_000, 1);
    t.put(addr_of(&node, &k), k, &d).await.unwrap();

    set(
        dir.path(),
        FaultSet {
            put_no_space: true,
            get_io: false,
        },
    );
    let err = t
        .put(addr_of(&node, &k), k, &data(10_000, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Remote {
                code: FragmentErrorCode::NoSpace,
                ..
            }
        ),
        "{err}"
    );
    let mut buf = vec![0u8; d.len()];
    t.get(addr_of(&node, &k), k, 0, crc32c::crc32c(&d), &mut buf)
        .await
        .unwrap();
    assert_eq!(buf, d, "the old fragment survived the failed put");

    set(
        dir.path(),
        FaultSet {
            put_no_space: false,
            get_io: true,
        },
    );
    let err = t
        .get(addr_of(&node, &k), k, 0, crc32c::crc32c(&d), &mut buf)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Remote {
                code: FragmentErrorCode::Io,
                ..
            }
        ),
        "{err}"
    );
    set(dir.path(), FaultSet::default());
    node.stop();
}

/// Rough throughput figure: `cargo test -p torchfs-dataplane --release --test node -- --ignored --nocapture`.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_1mib_fragments() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(config(dir.path(), 1)).unwrap();
    let t = std::sync::Arc::new(transport());
    let d = std::sync::Arc::new(data(1 << 20, 9));
    let crc = crc32c::crc32c(&d);
    let addrs = node.shard_addrs();
    const N: u64 = 256;
    const IN_FLIGHT: u64 = 8;
    for (label, is_put) in [("put", true), ("get", false)] {
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|w| {
                let (t, d, addrs) = (t.clone(), d.clone(), addrs.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; d.len()];
                    for i in (w..N).step_by(IN_FLIGHT as usize) {
                        let k = key(i, 0);
                        let addr = addrs[k.shard(SHARDS)];
                        if is_put {
                            t.put(addr, k, &d).await.unwrap();
                        } else {
                            t.get(addr, k, 0, crc, &mut buf).await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{label}: {N} x 1 MiB, {IN_FLIGHT} in flight: {:.0} MB/s",
            (N << 20) as f64 / secs / 1e6
        );
    }
    node.stop();
}
