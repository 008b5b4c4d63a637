//! A real 3-voter cluster on loopback: writes and reads through MetaClient,
//! leader failover, and a full restart from the same data dirs.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use torchfs_metad::store::{open_db, StateMachineStore};
use torchfs_metad::{run_blocking, MetadConfig};
use torchfs_proto::meta::{
    errno, Attr, ChangedDir, MetaError, MetaReply, MetaRequest, NodeInfo, StripeConfig, ROOT_INO,
};

use common::{
    assert_took_less, create, create_many, follower_not_first, leader, lookup, start_all, stop_all,
    TestCluster, Voter,
};

#[test]
fn three_voters_failover_and_restart() -> Result<()> {
    let started = Instant::now();
    let TestCluster {
        dir,
        addrs,
        mut voters,
        client,
        rt,
    } = TestCluster::start(3)?;

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

/// A voter that was away while the others purged the log it needs comes
/// back from a snapshot, sent in many chunks, and then holds what was
/// written while it was away.
#[test]
fn a_voter_far_behind_catches_up_by_a_chunked_snapshot() -> Result<()> {
    let started = Instant::now();
    let TestCluster {
        dir,
        addrs,
        mut voters,
        client,
        rt,
    } = TestCluster::start(5)?;
    rt.block_on(create(&client, "before"))?;
    let first_leader = rt.block_on(leader(&client))?;
    // Not voter 1, which would start a new cluster if its store were empty.
    let away = (2..=5u64)
        .rev()
        .find(|id| *id != first_leader)
        .context("a follower")?;
    voters[(away - 1) as usize].stop()?;
    rt.block_on(create(&client, "g-first"))?;
    // A new leader, which never replicated to the away voter (so nothing in
    // flight to it holds the log back), takes five snapshots (one every 20
    // entries, 2 kept behind each) and purges the log behind them.
    voters[(first_leader - 1) as usize].stop()?;
    rt.block_on(async {
        for i in 0..100 {
            create(&client, &format!("g{i}")).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    voters[(first_leader - 1) as usize] = Voter::start(first_leader, &addrs, dir.path());
    voters[(away - 1) as usize] = Voter::start(away, &addrs, dir.path());
    // Its store can be read only while it is stopped: look until what it
    // installed holds the names (the snapshot alone, no log replay).
    let db_path = dir.path().join(format!("v{away}")).join("metad.redb");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        voters[(away - 1) as usize].stop()?;
        let found = {
            let db = std::sync::Arc::new(open_db(&db_path)?);
            let sm = StateMachineStore::open(db, StripeConfig::DEFAULT)?;
            let d = sm.data.read().map_err(|_| anyhow::anyhow!("poisoned"))?;
            ["before", "g-first", "g0", "g59"]
                .iter()
                .all(|n| d.state.entry_ino(ROOT_INO, n).is_some())
        };
        if found {
            break;
        }
        if Instant::now() > deadline {
            bail!("voter {away} did not catch up from a snapshot in 15 s");
        }
        voters[(away - 1) as usize] = Voter::start(away, &addrs, dir.path());
    }
    voters[(away - 1) as usize] = Voter::start(away, &addrs, dir.path());
    rt.block_on(async {
        create(&client, "after").await?;
        for name in ["before", "g-first", "g0", "g99", "after"] {
            lookup(&client, name)
                .await
                .with_context(|| format!("lookup {name}"))?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    stop_all(&mut voters)?;
    assert_took_less(started, Duration::from_secs(40));
    Ok(())
}

/// A voter whose store was erased comes back empty: the leader resets its
/// progress (instead of stopping on a follower log that went backwards) and
/// sends it a snapshot; the cluster keeps answering.
#[test]
fn an_erased_voter_rejoins_from_a_snapshot() -> Result<()> {
    let started = Instant::now();
    let TestCluster {
        dir,
        addrs,
        mut voters,
        client,
        rt,
    } = TestCluster::start(3)?;
    rt.block_on(create_many(&client, "e", 60))?;
    let leader_id = rt.block_on(leader(&client))?;
    let erased = follower_not_first(leader_id, 3)?;
    voters[(erased - 1) as usize].stop()?;
    std::fs::remove_dir_all(dir.path().join(format!("v{erased}")))?;
    voters[(erased - 1) as usize] = Voter::start(erased, &addrs, dir.path());
    std::thread::sleep(Duration::from_secs(1));
    // The third voter goes: the leader now needs the erased one for a quorum.
    let third = (1..=3u64)
        .find(|id| *id != leader_id && *id != erased)
        .context("the third voter")?;
    voters[(third - 1) as usize].stop()?;
    rt.block_on(async {
        create(&client, "after").await?;
        for name in ["e0", "e59", "after"] {
            lookup(&client, name)
                .await
                .with_context(|| format!("lookup {name}"))?;
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

fn attrs(dirs: &[ChangedDir]) -> Vec<Attr> {
    dirs.iter().map(|d| d.attr.clone()).collect()
}

#[test]
fn namespace_writes_answer_with_the_directories_they_changed() -> Result<()> {
    // Bound, not `..`: the voters and their directory live to the end.
    let TestCluster {
        client,
        rt,
        voters: _voters,
        dir: _dir,
        ..
    } = TestCluster::start(3)?;
    rt.block_on(async {
        let mkdir = |parent, name: &str| MetaRequest::Mkdir {
            umask: 0,
            parent,
            name: name.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let client = &client;
        let getattr = |ino| async move {
            match client.call(MetaRequest::GetAttr { ino }).await? {
                MetaReply::Attr(a) => Ok::<_, anyhow::Error>(a),
                other => bail!("GetAttr: {other:?}"),
            }
        };
        let root_before = getattr(ROOT_INO).await?;
        let (reply, dirs) = client.call_dirs(mkdir(ROOT_INO, "a")).await?;
        let MetaReply::Attr(a) = reply else {
            bail!("Mkdir: {reply:?}");
        };
        // The parent as it is after the write (one more link, new times),
        // and its ctime before it.
        let root = getattr(ROOT_INO).await?;
        assert_eq!(attrs(&dirs), vec![root.clone()]);
        assert_eq!(dirs[0].attr.mtime_ns, a.ctime_ns);
        assert_eq!(dirs[0].ctime_before_ns, Some(root_before.ctime_ns));
        // Each change gives the directory a later ctime, and the next
        // change's "before" is exactly it: nothing came between.
        let (_, dirs) = client.call_dirs(mkdir(ROOT_INO, "b")).await?;
        assert_eq!(dirs[0].ctime_before_ns, Some(root.ctime_ns));
        assert!(dirs[0].attr.ctime_ns > root.ctime_ns);
        let b = getattr(ROOT_INO).await?;
        let rename = MetaRequest::Rename {
            parent: ROOT_INO,
            name: "b".into(),
            new_parent: a.ino,
            new_name: "b".into(),
            mode: torchfs_proto::meta::RenameMode::Replace,
        };
        let (_, dirs) = client.call_dirs(rename).await?;
        let (root, a_now) = (getattr(ROOT_INO).await?, getattr(a.ino).await?);
        assert_eq!(attrs(&dirs), vec![root.clone(), a_now]);
        let before: Vec<_> = dirs.iter().map(|d| d.ctime_before_ns).collect();
        assert_eq!(before, vec![Some(b.ctime_ns), Some(a.ctime_ns)]);
        assert_eq!(root.nlink, b.nlink - 1);
        // Reads, and writes that fail, carry none.
        let (_, dirs) = client
            .call_dirs(MetaRequest::GetAttr { ino: ROOT_INO })
            .await?;
        assert!(dirs.is_empty());
        let failed = client.call_dirs(mkdir(ROOT_INO, "a")).await;
        assert!(matches!(failed, Err(MetaError::Fs { .. })), "{failed:?}");
        Ok(())
    })
}
