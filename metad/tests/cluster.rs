//! A real 3-voter cluster on loopback: writes and reads through MetaClient,
//! leader failover, and a full restart from the same data dirs.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torchfs_metad::{run_blocking, MetadConfig};
use torchfs_proto::meta::{errno, MetaError, MetaReply, MetaRequest, NodeInfo, ROOT_INO};

use common::{
    assert_took_less, client_of, create, leader, lookup, runtime, start_all, stop_all, voter_addrs,
    Voter,
};

#[test]
fn three_voters_failover_and_restart() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let addrs = voter_addrs(3);
    let mut voters = start_all(&addrs, dir.path());
    let client = client_of(&addrs)?;
    let rt = runtime()?;

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
                // Usable bytes: k/(k+m) of the raw ones (4+2).
                assert_eq!((s.total_bytes, s.used_bytes), (666, 3));
                assert_eq!(s.files_free, torchfs_proto::meta::FILES_MAX - 42);
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
    stop_all(&mut voters)?;
    let mut voters = start_all(&addrs, dir.path());
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
    stop_all(&mut voters)?;
    assert_took_less(started, Duration::from_secs(30));
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
