//! A real 3-voter cluster on loopback: writes and reads through MetaClient,
//! leader failover, and a full restart from the same data dirs.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;
use torchfs_metad::{run_blocking, MetadConfig};
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{errno, MetaError, MetaReply, MetaRequest, NodeInfo, ROOT_INO};

struct Voter {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), torchfs_metad::MetadError>>>,
}

impl Voter {
    fn start(id: u64, addrs: &[(u64, String)], dir: &Path) -> Voter {
        let listen: SocketAddr = addrs[(id - 1) as usize].1.parse().unwrap();
        let mut cfg = MetadConfig::new(id, listen, dir.join(format!("v{id}")), addrs.to_vec());
        cfg.heartbeat_interval_ms = 50;
        cfg.election_timeout_min_ms = 300;
        cfg.election_timeout_max_ms = 600;
        cfg.snapshot_every_logs = 20;
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            run_blocking(cfg, async move {
                let _ = stop_rx.await;
            })
        });
        Voter {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("voter thread panicked"))??;
        }
        Ok(())
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

async fn leader(client: &MetaClient) -> Result<u64> {
    match client.call(MetaRequest::ClusterStatus).await? {
        MetaReply::ClusterStatus(s) => s.leader.context("no leader"),
        other => bail!("unexpected {other:?}"),
    }
}

async fn create(client: &MetaClient, name: &str) -> Result<u64> {
    match client
        .call(MetaRequest::Create {
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive: true,
        })
        .await?
    {
        MetaReply::Attr(a) => Ok(a.ino),
        other => bail!("unexpected {other:?}"),
    }
}

async fn lookup(client: &MetaClient, name: &str) -> Result<u64> {
    match client
        .call(MetaRequest::Lookup {
            parent: ROOT_INO,
            name: name.into(),
        })
        .await?
    {
        MetaReply::Attr(a) => Ok(a.ino),
        other => bail!("unexpected {other:?}"),
    }
}

#[test]
fn three_voters_failover_and_restart() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let addrs: Vec<(u64, String)> = free_ports(3)
        .into_iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}")))
        .collect();
    let mut voters: Vec<Voter> = (1..=3)
        .map(|id| Voter::start(id, &addrs, dir.path()))
        .collect();
    let client = MetaClient::new(
        addrs.iter().map(|(_, a)| a.clone()).collect(),
        MetaClientOptions {
            retry_for_ms: 10_000,
            request_timeout_ms: 1_000,
        },
    )?;
    // A multi-thread runtime, as callers will have.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    rt.block_on(async {
        let ino = create(&client, "a").await?;
        assert_eq!(lookup(&client, "a").await?, ino);
        match client
            .call(MetaRequest::Lookup {
                parent: ROOT_INO,
                name: "zz".into(),
            })
            .await
        {
            Err(MetaError::Fs { errno: e, .. }) => assert_eq!(e, errno::ENOENT),
            other => bail!("lookup of a missing name: {other:?}"),
        }
        // Enough writes to take a snapshot and purge the log (every 20).
        let many: Vec<_> = (0..40)
            .map(|i| {
                let c = client.clone();
                tokio::spawn(async move { create(&c, &format!("f{i}")).await })
            })
            .collect();
        for h in many {
            h.await??;
        }
        client
            .call(MetaRequest::RegisterNode {
                info: NodeInfo {
                    id: 7,
                    host: "127.0.0.1".into(),
                    shard_ports: vec![9000],
                    capacity_bytes: 1000,
                    used_bytes: 1,
                    cores: 1,
                    transports: vec!["tcp".into()],
                },
            })
            .await?;
        client
            .call(MetaRequest::Heartbeat {
                id: 7,
                used_bytes: 5,
                capacity_bytes: 1000,
            })
            .await?;
        match client.call(MetaRequest::StatFs).await? {
            MetaReply::StatFs(s) => {
                assert_eq!(s.files, 42);
                assert_eq!((s.total_bytes, s.used_bytes), (1000, 5));
            }
            other => bail!("statfs: {other:?}"),
        }
        Ok(())
    })?;

    // Stop the leader: another voter takes over and the client follows.
    let old = rt.block_on(leader(&client))?;
    voters[(old - 1) as usize].stop()?;
    rt.block_on(async {
        let ino = create(&client, "b").await?;
        assert_eq!(lookup(&client, "b").await?, ino);
        lookup(&client, "a").await?;
        let new = leader(&client).await?;
        assert_ne!(new, old);
        Ok::<_, anyhow::Error>(())
    })?;
    // The old leader comes back and catches up.
    voters[(old - 1) as usize] = Voter::start(old, &addrs, dir.path());
    rt.block_on(create(&client, "c"))?;

    // Stop everything, restart from the same dirs: nothing is lost.
    for v in &mut voters {
        v.stop()?;
    }
    let mut voters: Vec<Voter> = (1..=3)
        .map(|id| Voter::start(id, &addrs, dir.path()))
        .collect();
    rt.block_on(async {
        for name in ["a", "b", "c", "f0", "f39"] {
            lookup(&client, name)
                .await
                .with_context(|| format!("after restart: {name}"))?;
        }
        match client.call(MetaRequest::ClusterMap).await? {
            MetaReply::ClusterMap(m) => assert_eq!(m.nodes.len(), 1),
            other => bail!("cluster map: {other:?}"),
        }
        Ok::<_, anyhow::Error>(())
    })?;
    for v in &mut voters {
        v.stop()?;
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn port_in_use_fails_fast_with_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = MetadConfig::new(
        1,
        addr,
        dir.path().to_path_buf(),
        vec![(1, addr.to_string())],
    );
    let err = run_blocking(cfg, std::future::pending()).unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}
