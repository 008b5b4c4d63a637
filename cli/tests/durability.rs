//! Acknowledged metadata writes survive crashes: a storm of creates from 8
//! clients while the metad leader is SIGKILLed every few seconds, then all
//! three voters SIGKILLed at once and restarted. Every create that was
//! acknowledged is there afterwards, none is there twice, and the namespace
//! is consistent (the root's link count, the inode count).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{exe, serial};
use torchfs_cli::local_cluster::{ClusterSpec, LocalCluster};
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{MetaError, MetaReply, MetaRequest, ROOT_INO};

const CLIENTS: usize = 8;
/// Leader kills during the storm, one every `KILL_EVERY`.
const KILLS: usize = 3;
const KILL_EVERY: Duration = Duration::from_secs(5);

fn client(cluster: &LocalCluster) -> Result<MetaClient> {
    Ok(MetaClient::new(
        cluster.metad_addrs(),
        MetaClientOptions {
            retry_for_ms: 20_000,
            request_timeout_ms: 2_000,
        },
    )?)
}

/// Creates `c<k>-<i>` for i = 0.. until `stop`; the names acknowledged.
async fn storm(client: MetaClient, k: usize, stop: Arc<AtomicBool>) -> Result<Vec<String>> {
    let mut acked = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("c{k}-{i}");
        i += 1;
        match client
            .call(MetaRequest::Create {
                parent: ROOT_INO,
                name: name.clone(),
                mode: 0o644,
                umask: 0,
                uid: 0,
                gid: 0,
                exclusive: true,
            })
            .await
        {
            Ok(MetaReply::Attr(_)) => acked.push(name),
            Ok(other) => bail!("create {name}: answered {other:?}"),
            // Given up while no leader could answer: it may or may not
            // have been applied, like any timeout; not acknowledged.
            Err(MetaError::Unavailable(_)) => {}
            // A retry of an applied create is answered from the session
            // table, never with EEXIST: that would be a create applied twice.
            Err(e) => bail!("create {name}: {e}"),
        }
    }
    Ok(acked)
}

async fn list_root(client: &MetaClient) -> Result<Vec<String>> {
    let mut names = Vec::new();
    loop {
        let after = names.last().cloned().unwrap_or_default();
        match client
            .call(MetaRequest::ReadDir {
                ino: ROOT_INO,
                after,
                limit: 1000,
            })
            .await?
        {
            MetaReply::Entries(es) if es.is_empty() => return Ok(names),
            MetaReply::Entries(es) => names.extend(es.into_iter().map(|e| e.name)),
            other => bail!("readdir: {other:?}"),
        }
    }
}

fn leader_index(cluster: &LocalCluster) -> Result<usize> {
    let status = cluster.status(Duration::from_secs(20))?;
    let leader = status.leader.context("no leader")?;
    Ok(leader as usize - 1)
}

#[test]
fn acknowledged_creates_survive_leader_kills_and_a_full_crash() -> Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let mut spec = ClusterSpec::with_free_ports(exe(), dir.path().to_path_buf())?;
    // The namespace alone: no storage nodes needed.
    spec.storage_nodes = 0;
    let mut cluster = LocalCluster::start(spec)?;
    leader_index(&cluster)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let c = client(&cluster)?;
            Ok(rt.spawn(storm(c, k, stop.clone())))
        })
        .collect::<Result<_>>()?;
    for _ in 0..KILLS {
        std::thread::sleep(KILL_EVERY);
        let leader = leader_index(&cluster)?;
        cluster.kill_metad(leader)?;
        // Back as a follower, so the next kill still leaves a quorum.
        cluster.start_metad(leader)?;
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeSet::new();
    for w in workers {
        acked.extend(rt.block_on(w)??);
    }
    assert!(
        acked.len() > 100,
        "only {} creates acknowledged in {} s: the storm did not get going",
        acked.len(),
        KILL_EVERY.as_secs() * KILLS as u64
    );

    // Every voter at once, then back from their disks.
    for i in 0..3 {
        cluster.kill_metad(i)?;
    }
    for i in 0..3 {
        cluster.start_metad(i)?;
    }
    let check = client(&cluster)?;
    let names = rt.block_on(list_root(&check))?;
    let listed: BTreeSet<&String> = names.iter().collect();
    assert_eq!(listed.len(), names.len(), "a name is listed twice");
    let lost: Vec<&String> = acked.iter().filter(|n| !listed.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged creates lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    // Consistency: files only below the root (link count 2), and the inode
    // count is the root plus what it lists (no orphan inodes, no dentry
    // without an inode).
    let root = match rt.block_on(check.call(MetaRequest::GetAttr { ino: ROOT_INO }))? {
        MetaReply::Attr(a) => a,
        other => bail!("getattr /: {other:?}"),
    };
    assert_eq!(root.nlink, 2);
    let files = match rt.block_on(check.call(MetaRequest::StatFs))? {
        MetaReply::StatFs(s) => s.files,
        other => bail!("statfs: {other:?}"),
    };
    assert_eq!(files, names.len() as u64 + 1);
    println!(
        "{} creates acknowledged by {CLIENTS} clients across {KILLS} leader kills and a full crash, \
         {} applied, none lost or doubled ({:.1} s)",
        acked.len(),
        names.len(),
        started.elapsed().as_secs_f64()
    );
    cluster.stop();
    Ok(())
}
