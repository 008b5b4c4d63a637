//! A loopback cluster of metad voters for the integration tests: start and
//! stop voters (each on a thread of its own, as `torchfs metad` runs one),
//! and the few client calls the tests share.

// Each test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use tokio::sync::oneshot;
use torchfs_metad::{run_blocking, MetadConfig};
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{MetaReply, MetaRequest, ROOT_INO};

pub struct Voter {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), torchfs_metad::MetadError>>>,
}

impl Voter {
    /// Starts voter `id` (1-based index into `addrs`) with fast elections
    /// a snapshot every 20 log entries, sent to lagging voters in 4 KiB
    /// chunks, its data under `dir`.
    pub fn start(id: u64, addrs: &[(u64, String)], dir: &Path) -> Voter {
        let listen: SocketAddr = addrs[(id - 1) as usize].1.parse().unwrap();
        let mut cfg = MetadConfig::new(id, listen, dir.join(format!("v{id}")), addrs.to_vec());
        cfg.heartbeat_interval_ms = 50;
        cfg.election_timeout_min_ms = 300;
        cfg.election_timeout_max_ms = 600;
        cfg.snapshot_every_logs = 20;
        // Snapshots sent to a lagging voter go in many pieces.
        cfg.snapshot_chunk_bytes = 4096;
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

    pub fn stop(&mut self) -> Result<()> {
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

/// (id, "127.0.0.1:port") for voters 1..=n, on ports free a moment ago.
/// Stops every voter (each waits for its thread).
pub fn stop_all(voters: &mut [Voter]) -> Result<()> {
    for v in voters {
        v.stop()?;
    }
    Ok(())
}

/// Fails when a test ran longer than `limit` since `started` (a cluster
/// that stalls instead of failing).
pub fn assert_took_less(started: std::time::Instant, limit: std::time::Duration) {
    assert!(
        started.elapsed() < limit,
        "took {:?} (limit {limit:?})",
        started.elapsed()
    );
}

pub fn voter_addrs(n: usize) -> Vec<(u64, String)> {
    let ls: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter()
        .enumerate()
        .map(|(i, l)| {
            (
                i as u64 + 1,
                format!("127.0.0.1:{}", l.local_addr().unwrap().port()),
            )
        })
        .collect()
}

/// Starts every voter of `addrs`.
pub fn start_all(addrs: &[(u64, String)], dir: &Path) -> Vec<Voter> {
    addrs
        .iter()
        .map(|(id, _)| Voter::start(*id, addrs, dir))
        .collect()
}

pub fn client_of(addrs: &[(u64, String)]) -> Result<MetaClient> {
    Ok(MetaClient::new(
        addrs.iter().map(|(_, a)| a.clone()).collect(),
        MetaClientOptions {
            retry_for_ms: 10_000,
            request_timeout_ms: 1_000,
        },
    )?)
}

/// `n` voters started in a fresh directory, a client of them and a
/// runtime to drive it: what most tests begin with.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub addrs: Vec<(u64, String)>,
    pub voters: Vec<Voter>,
    pub client: MetaClient,
    pub rt: tokio::runtime::Runtime,
}

impl TestCluster {
    pub fn start(n: usize) -> Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let addrs = voter_addrs(n);
        let voters = start_all(&addrs, dir.path());
        let client = client_of(&addrs)?;
        let rt = runtime()?;
        Ok(TestCluster {
            dir,
            addrs,
            voters,
            client,
            rt,
        })
    }
}

/// A follower of `leader` among voters 2..=`voters`: not voter 1, which
/// with an empty store would start a new cluster of its own.
pub fn follower_not_first(leader: u64, voters: u64) -> Result<u64> {
    (2..=voters)
        .find(|id| *id != leader)
        .context("a follower other than voter 1")
}

/// Creates `{prefix}0` .. `{prefix}{n - 1}` in the root, one at a time.
pub async fn create_many(client: &MetaClient, prefix: &str, n: usize) -> Result<()> {
    for i in 0..n {
        create(client, &format!("{prefix}{i}")).await?;
    }
    Ok(())
}

/// A multi-thread runtime, as callers will have.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub async fn leader(client: &MetaClient) -> Result<u64> {
    match client.call(MetaRequest::ClusterStatus).await? {
        MetaReply::ClusterStatus(s) => s.leader.context("no leader"),
        other => bail!("unexpected {other:?}"),
    }
}

pub async fn create(client: &MetaClient, name: &str) -> Result<u64> {
    match client
        .call(MetaRequest::Create {
            umask: 0,
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

pub async fn lookup(client: &MetaClient, name: &str) -> Result<u64> {
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

pub async fn files(client: &MetaClient) -> Result<u64> {
    match client.call(MetaRequest::StatFs).await? {
        MetaReply::StatFs(s) => Ok(s.files),
        other => bail!("statfs: {other:?}"),
    }
}
