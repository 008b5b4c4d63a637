//! The epoch cache through the client core, over the in-memory metad and
//! storage of `core::tests`: plans written to the control file drive
//! prefetching, reads hit, the byte bounds hold (every cache operation in a
//! test also asserts them), LRU and readahead without a plan, invalidation,
//! rejection of malformed plans, and the disk tier with passthrough files.

use std::sync::atomic::Ordering;
use std::time::Duration;

use torchfs_proto::meta::{Ino, ROOT_INO};

use super::plan::{render_plan, ByteRange};
use super::CacheConfig;
use crate::core::control::{CONTROL_DIR_INO, CONTROL_DIR_NAME, PLAN_INO, STATS_INO};
use crate::core::tests::{pattern, read_all, FakeMeta, FakeStore, TestClient};
use crate::core::{Client, ClientConfig, ClientError, NewMode, Owner};

async fn client_with(meta: &FakeMeta, store: &FakeStore, cache: CacheConfig) -> TestClient {
    let config = ClientConfig {
        map_refresh_ms: 60_000,
        cache,
        ..ClientConfig::default()
    };
    Client::with_parts(config, meta.clone(), store.clone())
        .await
        .unwrap()
}

fn mem_only(mem_bytes: u64) -> CacheConfig {
    CacheConfig {
        mem_bytes,
        ..CacheConfig::default()
    }
}

/// Files `f0..fN` in the root, written by a client without a cache.
async fn write_files(meta: &FakeMeta, store: &FakeStore, sizes: &[usize]) -> Vec<(Ino, Vec<u8>)> {
    let w = client_with(meta, store, mem_only(0)).await;
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let attr = w
            .create(
                ROOT_INO,
                &format!("f{i}"),
                NewMode {
                    mode: 0o644,
                    umask: 0,
                },
                Owner { uid: 0, gid: 0 },
                true,
            )
            .await
            .unwrap();
        let fh = w.open(attr.ino, true, false).await.unwrap();
        let data = pattern(size, i as u8);
        w.write(fh, 0, &data).await.unwrap();
        w.release(fh).await.unwrap();
        out.push((attr.ino, data));
    }
    out
}

async fn publish(c: &TestClient, text: &str) -> Result<(), ClientError> {
    let fh = c.open(PLAN_INO, true, false).await?;
    c.write(fh, 0, text.as_bytes()).await?;
    let flushed = c.flush(fh).await;
    c.release(fh).await?;
    flushed
}

fn whole_files(order: &[usize]) -> Vec<(String, Option<ByteRange>)> {
    order.iter().map(|i| (format!("f{i}"), None)).collect()
}

async fn stats(c: &TestClient) -> serde_json::Value {
    let fh = c.open(STATS_INO, false, false).await.unwrap();
    let mut text = Vec::new();
    loop {
        let chunk = c.read(fh, text.len() as u64, 100).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        text.extend_from_slice(&chunk);
    }
    c.release(fh).await.unwrap();
    serde_json::from_slice(&text).unwrap()
}

async fn wait_for(
    c: &TestClient,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    for _ in 0..1000 {
        let s = stats(c).await;
        if pred(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}: {}", stats(c).await);
}

async fn read_file(c: &TestClient, ino: Ino) -> Vec<u8> {
    let fh = c.open(ino, false, false).await.unwrap();
    let data = read_all(c, fh).await;
    c.release(fh).await.unwrap();
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_drives_prefetching_and_reads_hit() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let sizes: Vec<usize> = (0..12).map(|i| 10 + i * 17).chain([300]).collect();
    let files = write_files(&meta, &store, &sizes).await;
    let c = client_with(&meta, &store, mem_only(1 << 20)).await;
    let order = [7, 3, 11, 0, 5, 9, 1, 10, 2, 8, 4, 6];
    let mut items = whole_files(&order);
    for offset in [200, 0, 100] {
        let range = ByteRange {
            offset,
            len_bytes: 100,
        };
        items.push(("f12".into(), Some(range)));
    }
    publish(&c, &render_plan(0, 0, &items)).await.unwrap();
    let n = items.len() as u64;
    wait_for(&c, "the whole plan cached", |s| {
        s["plans"][0]["lead_items"] == n
    })
    .await;

    store.gets.store(0, Ordering::Relaxed);
    for &i in &order {
        assert_eq!(read_file(&c, files[i].0).await, files[i].1, "f{i}");
    }
    let fh = c.open(files[12].0, false, false).await.unwrap();
    for offset in [200u64, 0, 100] {
        let got = c.read(fh, offset, 100).await.unwrap();
        assert_eq!(*got, files[12].1[offset as usize..offset as usize + 100]);
    }
    c.release(fh).await.unwrap();
    assert_eq!(
        store.gets.load(Ordering::Relaxed),
        0,
        "nothing read from storage"
    );
    let s = stats(&c).await;
    assert_eq!(s["hits"], n, "{s}");
    assert_eq!(s["misses"], 0, "{s}");
    assert_eq!(s["stalls"], 0, "{s}");
    let planned_bytes: usize = order.iter().map(|&i| sizes[i]).sum::<usize>() + 300;
    assert_eq!(
        s["tiers"]["memory"]["prefetched_bytes"],
        planned_bytes as u64
    );
    assert_eq!(s["plans"][0]["position"], n, "every item read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plans_names_are_refreshed_by_one_lookup_many_per_directory() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let files = write_files(&meta, &store, &[10; 12]).await;
    let c = client_with(&meta, &store, mem_only(1 << 20)).await;
    let order = [7, 3, 11, 0, 5, 9, 1, 10, 2, 8, 4, 6];
    publish(&c, &render_plan(0, 0, &whole_files(&order)))
        .await
        .unwrap();
    wait_for(&c, "the whole plan cached", |s| {
        s["plans"][0]["lead_items"] == 12
    })
    .await;
    // The names loop ticks every 50 ms: every name ahead asked by then.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let asked = loop {
        let asked: Vec<Vec<String>> = meta.0.lock().unwrap().lookup_many.clone();
        if asked.iter().map(Vec::len).sum::<usize>() >= order.len()
            || std::time::Instant::now() > deadline
        {
            break asked;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut names: Vec<String> = asked.concat();
    names.sort();
    let mut want: Vec<String> = order.iter().map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(names, want, "each planned name asked once: {asked:?}");
    assert!(
        asked.len() <= 2,
        "one request per tick, not per name: {asked:?}"
    );
    // And the names still resolve to their files.
    for &i in &order {
        assert_eq!(
            c.lookup(ROOT_INO, &format!("f{i}")).await.unwrap().ino,
            files[i].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_one_file_share_the_layout_the_prefetcher_fetched() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let files = write_files(&meta, &store, &[1000]).await;
    let c = client_with(&meta, &store, mem_only(1 << 20)).await;
    let items: Vec<_> = [700u64, 0, 300, 900, 100, 500, 200, 800, 400, 600]
        .into_iter()
        .map(|offset| {
            let range = ByteRange {
                offset,
                len_bytes: 100,
            };
            ("f0".to_string(), Some(range))
        })
        .collect();
    {
        let mut m = meta.0.lock().unwrap();
        m.get_layouts = 0;
        m.layout_batches.clear();
    }
    publish(&c, &render_plan(0, 0, &items)).await.unwrap();
    wait_for(&c, "every chunk cached", |s| {
        s["plans"][0]["lead_items"] == 10
    })
    .await;
    let asked = {
        let m = meta.0.lock().unwrap();
        m.get_layouts + m.layout_batches.len()
    };
    assert!(
        (1..=2).contains(&asked),
        "10 chunks of one file fetched with {asked} GetLayout(s) requests"
    );
    // The chunks are the file's bytes.
    let fh = c.open(files[0].0, false, false).await.unwrap();
    for offset in [0u64, 300, 900] {
        let got = c.read(fh, offset, 100).await.unwrap();
        assert_eq!(*got, files[0].1[offset as usize..offset as usize + 100]);
    }
    c.release(fh).await.unwrap();
    assert_eq!(stats(&c).await["stalls"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_over_many_files_fetches_their_layouts_in_batches() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let sizes = vec![1000usize; 40];
    let files = write_files(&meta, &store, &sizes).await;
    let c = client_with(&meta, &store, mem_only(1 << 20)).await;
    let order: Vec<usize> = (0..40).map(|i| (i * 7) % 40).collect();
    let items: Vec<_> = order.iter().map(|i| (format!("f{i}"), None)).collect();
    meta.0.lock().unwrap().get_layouts = 0;
    publish(&c, &render_plan(0, 0, &items)).await.unwrap();
    wait_for(&c, "every file cached", |s| {
        s["plans"][0]["lead_items"] == 40
    })
    .await;
    let (single, batches) = {
        let m = meta.0.lock().unwrap();
        (m.get_layouts, m.layout_batches.clone())
    };
    let batched: usize = batches.iter().sum();
    assert!(
        single + batches.len() <= 10 && single + batched >= 40,
        "40 files prefetched with {single} GetLayout and GetLayouts of {batches:?}"
    );
    for &i in &order[..5] {
        let fh = c.open(files[i].0, false, false).await.unwrap();
        let got = c.read(fh, 0, 1000).await.unwrap();
        assert_eq!(*got, files[i].1[..]);
        c.release(fh).await.unwrap();
    }
    assert_eq!(stats(&c).await["stalls"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_stays_within_its_byte_bounds() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let sizes = vec![100; 40];
    let files = write_files(&meta, &store, &sizes).await;
    store.get_delay_ms.store(2, Ordering::Relaxed);
    let cache = CacheConfig {
        mem_bytes: 2_000,
        inflight_bytes_max: 500,
        inflight_requests_max: 8,
        ..CacheConfig::default()
    };
    let c = client_with(&meta, &store, cache).await;
    let order: Vec<usize> = (0..40).rev().collect();
    publish(&c, &render_plan(0, 0, &whole_files(&order)))
        .await
        .unwrap();
    // The cache fills up to its budget and stops there.
    let s = wait_for(&c, "a full cache", |s| {
        s["tiers"]["memory"]["cached_bytes"] == 2_000
    })
    .await;
    assert_eq!(s["prefetch"]["bytes_in_flight"], 0, "{s}");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        stats(&c).await["prefetch"]["issued"],
        20,
        "no fetch past the budget"
    );
    for &i in &order {
        assert_eq!(read_file(&c, files[i].0).await, files[i].1, "f{i}");
    }
    let s = stats(&c).await;
    let high = s["prefetch"]["bytes_in_flight_high_water"]
        .as_u64()
        .unwrap();
    assert!(high > 0 && high <= 500, "{s}");
    assert!(s["tiers"]["memory"]["cached_bytes"].as_u64().unwrap() <= 2_000);
    assert!(s["hits"].as_u64().unwrap() >= 20, "{s}");
    assert_eq!(s["tiers"]["memory"]["wasted_bytes"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_plan_lru_and_sequential_readahead() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let files = write_files(&meta, &store, &[300, 300, 300, 300, 300, 300, 1200]).await;
    let c = client_with(&meta, &store, mem_only(8_000)).await;
    for (ino, data) in &files[..6] {
        assert_eq!(&read_file(&c, *ino).await, data);
    }
    let s = stats(&c).await;
    assert_eq!(
        (s["hits"].as_u64(), s["misses"].as_u64()),
        (Some(0), Some(6))
    );
    read_file(&c, files[5].0).await;
    assert_eq!(stats(&c).await["hits"], 1, "kept");

    // Sequential reads of a file trigger readahead of the rest of it.
    let (ino, data) = &files[6];
    let fh = c.open(*ino, false, false).await.unwrap();
    assert_eq!(*c.read(fh, 0, 100).await.unwrap(), data[..100]);
    assert_eq!(*c.read(fh, 100, 100).await.unwrap(), data[100..200]);
    wait_for(&c, "readahead", |s| {
        s["prefetch"]["readahead_bytes"] == 1000
    })
    .await;
    let hits = stats(&c).await["hits"].as_u64().unwrap();
    assert_eq!(*c.read(fh, 200, 300).await.unwrap(), data[200..500]);
    assert_eq!(stats(&c).await["hits"].as_u64().unwrap(), hits + 1);
    c.release(fh).await.unwrap();

    // LRU: a cache for four 300-byte files drops the least recently used.
    let c = client_with(&meta, &store, mem_only(1_200)).await;
    for i in [0, 1, 2, 3, 0, 4] {
        read_file(&c, files[i].0).await;
    }
    let s = stats(&c).await;
    assert_eq!(
        (s["hits"].as_u64(), s["misses"].as_u64()),
        (Some(1), Some(5))
    );
    read_file(&c, files[0].0).await; // recent: still there
    read_file(&c, files[1].0).await; // least recent: evicted by 4
    let s = stats(&c).await;
    assert_eq!(
        (s["hits"].as_u64(), s["misses"].as_u64()),
        (Some(2), Some(6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_invalidate_cached_data() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let files = write_files(&meta, &store, &[100]).await;
    let ino = files[0].0;
    let c = client_with(&meta, &store, mem_only(1 << 20)).await;
    assert_eq!(read_file(&c, ino).await, files[0].1);
    assert_eq!(read_file(&c, ino).await, files[0].1);
    assert_eq!(stats(&c).await["hits"], 1);

    // Another client rewrites the file: the next open here sees it.
    let w = client_with(&meta, &store, mem_only(0)).await;
    let fh = w.open(ino, true, true).await.unwrap();
    w.write(fh, 0, &pattern(80, 9)).await.unwrap();
    w.release(fh).await.unwrap();
    assert_eq!(read_file(&c, ino).await, pattern(80, 9));

    // This client's own write drops its cached copy at once.
    let fh = c.open(ino, true, false).await.unwrap();
    c.write(fh, 0, b"new").await.unwrap();
    c.release(fh).await.unwrap();
    let mut want = pattern(80, 9);
    want[..3].copy_from_slice(b"new");
    assert_eq!(read_file(&c, ino).await, want);

    // A prefetched copy made stale before the open is not served either.
    publish(&c, &render_plan(0, 0, &whole_files(&[0])))
        .await
        .unwrap();
    wait_for(&c, "prefetch", |s| s["plans"][0]["lead_items"] == 1).await;
    let fh = w.open(ino, true, true).await.unwrap();
    w.write(fh, 0, b"other").await.unwrap();
    w.release(fh).await.unwrap();
    assert_eq!(read_file(&c, ino).await, b"other");
    c.unlink(ROOT_INO, "f0").await.unwrap();
    assert_eq!(stats(&c).await["tiers"]["memory"]["cached_bytes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_plans_are_einval_and_change_nothing() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    write_files(&meta, &store, &[10, 10]).await;
    let c = client_with(&meta, &store, mem_only(1 << 20)).await;
    assert_eq!(
        c.lookup(ROOT_INO, CONTROL_DIR_NAME).await.unwrap().ino,
        CONTROL_DIR_INO
    );
    assert_eq!(
        c.lookup(CONTROL_DIR_INO, "plan").await.unwrap().ino,
        PLAN_INO
    );
    let names: Vec<String> = c
        .readdir(CONTROL_DIR_INO, "", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["plan", "stats"]);
    assert_eq!(
        c.open(STATS_INO, true, false).await.unwrap_err().errno(),
        libc::EPERM
    );
    let err = c
        .create(
            CONTROL_DIR_INO,
            "x",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(err.errno(), libc::EPERM);

    publish(&c, &render_plan(0, 0, &whole_files(&[1, 0])))
        .await
        .unwrap();
    let bad = render_plan(1, 0, &whole_files(&[1, 0])).replace("items 2", "items 3");
    let err = publish(&c, &bad).await.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    let err = publish(&c, "not a plan").await.unwrap_err();
    assert_eq!(err.errno(), libc::EINVAL, "{err}");
    let s = stats(&c).await;
    assert_eq!(s["plans_rejected"], 2);
    assert!(
        s["last_plan_error"].as_str().unwrap().contains("line 1"),
        "{s}"
    );
    assert_eq!(s["plans"][0]["epoch"], 0, "the accepted plan stays: {s}");
    assert_eq!(s["plans"][0]["next_epoch"], serde_json::Value::Null);
    publish(&c, &render_plan(1, 0, &whole_files(&[0])))
        .await
        .unwrap();
    let s = stats(&c).await;
    assert_eq!(s["plans"][0]["next_epoch"], 1, "{s}");
    assert_eq!(s["last_plan_error"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_keeps_what_the_next_epoch_needs() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let files = write_files(&meta, &store, &[200; 20]).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheConfig {
        mem_bytes: 1_000,
        disk_dir: Some(dir.path().to_path_buf()),
        disk_bytes: 100_000,
        ..CacheConfig::default()
    };
    let c = client_with(&meta, &store, cache).await;
    let order: Vec<usize> = (0..20).collect();
    publish(&c, &render_plan(0, 0, &whole_files(&order)))
        .await
        .unwrap();
    publish(&c, &render_plan(1, 0, &whole_files(&order)))
        .await
        .unwrap();
    for &i in &order {
        wait_for(&c, "the next item", |s| {
            s["plans"][0]["lead_items"].as_u64() > Some(0)
        })
        .await;
        assert_eq!(read_file(&c, files[i].0).await, files[i].1);
    }
    let s = wait_for(&c, "demotions", |s| {
        s["tiers"]["disk"]["prefetched_bytes"].as_u64() >= Some(2_000)
    })
    .await;
    assert_eq!(s["misses"], 0, "{s}");
    // Epoch 1: what is on disk is served from there, some of it by
    // passthrough files.
    let mut passthrough = 0;
    for &i in &order {
        let fh = c.open(files[i].0, false, false).await.unwrap();
        if let Some(file) = c.backing_file(fh).await {
            let mut buf = vec![0u8; 200];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).unwrap();
            assert_eq!(buf, files[i].1);
            passthrough += 1;
        } else {
            assert_eq!(read_all(&c, fh).await, files[i].1);
        }
        c.release(fh).await.unwrap();
    }
    let s = stats(&c).await;
    assert!(passthrough > 0, "{s}");
    assert_eq!(s["tiers"]["disk"]["passthrough_opens"], passthrough);
    assert!(
        s["tiers"]["disk"]["hits"].as_u64().unwrap() >= passthrough,
        "{s}"
    );
    assert_eq!(s["tiers"]["disk"]["enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_window_opens_prefetched_files_without_metad() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let files = write_files(&meta, &store, &[100]).await;
    let cache = CacheConfig {
        trust_layout_ms: 60_000,
        ..mem_only(1 << 20)
    };
    let c = client_with(&meta, &store, cache).await;
    publish(&c, &render_plan(0, 0, &whole_files(&[0])))
        .await
        .unwrap();
    wait_for(&c, "prefetch", |s| s["plans"][0]["lead_items"] == 1).await;
    // Another client's change inside the window is not seen (the opt-in
    // trade-off); this client's own write ends the trust at once.
    let w = client_with(&meta, &store, mem_only(0)).await;
    let fh = w.open(files[0].0, true, true).await.unwrap();
    w.write(fh, 0, b"changed").await.unwrap();
    w.release(fh).await.unwrap();
    assert_eq!(read_file(&c, files[0].0).await, files[0].1);
    let fh = c.open(files[0].0, true, false).await.unwrap();
    c.write(fh, 0, b"mine").await.unwrap();
    c.release(fh).await.unwrap();
    assert_eq!(&read_file(&c, files[0].0).await[..4], b"mine");
}
