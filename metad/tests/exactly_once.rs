//! Exactly-once writes on a real 3-voter cluster: the same write id sent
//! again (as a retry after a lost answer would) to the same leader, to a
//! new leader after the first one stopped, and after a full restart from
//! snapshots, is answered with the first answer and applied once.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use torchfs_proto::client::MetaClient;
use torchfs_proto::meta::{
    MetaError, MetaReply, MetaRequest, StripeConfig, StripeEntry, WriteId, ROOT_INO,
};

use common::{
    assert_took_less, create, files, leader, lookup, start_all, stop_all, TestCluster, Voter,
};

const CLIENT: u64 = 0x5e55_1011_0000_0001;

fn id(seq: u64, lowest_outstanding_seq: u64) -> WriteId {
    WriteId {
        client_id: CLIENT,
        seq,
        lowest_outstanding_seq,
    }
}

fn stripe(n: u64) -> StripeEntry {
    StripeEntry {
        stripe: n,
        generation: 1,
        encoded_bytes: 100,
        valid_bytes: 100,
        crcs: vec![7; StripeConfig::DEFAULT.width()],
    }
}

/// Writes that a second application would answer differently (EEXIST,
/// ENOENT) or that would change the namespace again. `f_ino` is the inode
/// `create f` gets (the first inode after the root and `d`).
fn writes(f_ino: u64) -> Vec<MetaRequest> {
    let create = |name: &str| MetaRequest::Create {
        umask: 0,
        parent: ROOT_INO,
        name: name.into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
    };
    vec![
        MetaRequest::Mkdir {
            umask: 0,
            parent: ROOT_INO,
            name: "d".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        create("f"),
        MetaRequest::CommitLayout {
            ino: f_ino,
            size: 100,
            stripes: vec![stripe(0)],
        },
        MetaRequest::Rename {
            mode: Default::default(),
            parent: ROOT_INO,
            name: "f".into(),
            new_parent: ROOT_INO,
            new_name: "g".into(),
        },
        create("h"),
        MetaRequest::Unlink {
            parent: ROOT_INO,
            name: "h".into(),
        },
    ]
}

/// Sends every write again under its first id; each must get its first
/// answer back.
async fn replay(client: &MetaClient, ws: &[MetaRequest], first: &[MetaReply]) -> Result<()> {
    for (i, (w, answer)) in ws.iter().zip(first).enumerate() {
        let seq = i as u64 + 1;
        let again = client.call_with_write_id(w.clone(), id(seq, 1)).await?;
        ensure!(
            again == *answer,
            "write {seq} answered {again:?}, first {answer:?}"
        );
    }
    Ok(())
}

/// Root, d and g: what the writes leave when each is applied once.
async fn check_applied_once(client: &MetaClient) -> Result<()> {
    lookup(client, "d").await?;
    lookup(client, "g").await?;
    for gone in ["f", "h"] {
        ensure!(lookup(client, gone).await.is_err(), "{gone} exists");
    }
    // h was unlinked within the leader's post-election grace (when no
    // lease is known yet), so it stays an orphan until the grace ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = files(client).await?;
        if n == 3 {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{n} inodes, expected root, d and g"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_retried_write_is_applied_once_across_leader_change_and_restart() -> Result<()> {
    let started = Instant::now();
    let TestCluster {
        dir,
        addrs,
        mut voters,
        client,
        rt,
    } = TestCluster::start(3)?;

    let ws = writes(3);
    let first = rt.block_on(async {
        let mut first = Vec::new();
        for (i, w) in ws.iter().enumerate() {
            first.push(
                client
                    .call_with_write_id(w.clone(), id(i as u64 + 1, 1))
                    .await?,
            );
        }
        match &first[1] {
            MetaReply::Attr(a) if a.ino == 3 => {}
            other => bail!("create f: {other:?}"),
        }
        // The same leader answers from its table.
        replay(&client, &ws, &first).await?;
        check_applied_once(&client).await?;
        Ok(first)
    })?;

    // The leader that applied them stops; the new one has the table too.
    let old = rt.block_on(leader(&client))?;
    voters[(old - 1) as usize].stop()?;
    rt.block_on(async {
        replay(&client, &ws, &first).await?;
        ensure!(leader(&client).await? != old, "no new leader");
        check_applied_once(&client).await?;

        // The client has its answers for 1..=6: results below 7 go, and a
        // stale copy of one of them is refused, not applied again.
        let e = client
            .call_with_write_id(
                MetaRequest::Mkdir {
                    umask: 0,
                    parent: ROOT_INO,
                    name: "e".into(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                id(7, 7),
            )
            .await?;
        ensure!(matches!(e, MetaReply::Attr(_)), "mkdir e: {e:?}");
        let stale = client.call_with_write_id(ws[4].clone(), id(5, 5)).await;
        ensure!(
            matches!(stale, Err(MetaError::Invalid(_))),
            "stale write: {stale:?}"
        );
        ensure!(lookup(&client, "h").await.is_err(), "h created again");

        // A client whose session metad does not know (expired) is told so.
        let other = WriteId {
            client_id: CLIENT + 1,
            seq: 4,
            lowest_outstanding_seq: 3,
        };
        let r = client.call_with_write_id(ws[0].clone(), other).await;
        ensure!(
            r == Err(MetaError::SessionExpired {
                client_id: CLIENT + 1,
                seq: 4
            }),
            "unknown session: {r:?}"
        );
        Ok(())
    })?;

    // Bring the old leader back, write past a few snapshots, and restart
    // everything: the table comes back from snapshot and log.
    voters[(old - 1) as usize] = Voter::start(old, &addrs, dir.path());
    let e = rt.block_on(async {
        for i in 0..45 {
            create(&client, &format!("x{i}")).await?;
        }
        client
            .call_with_write_id(
                MetaRequest::Mkdir {
                    umask: 0,
                    parent: ROOT_INO,
                    name: "e".into(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                id(7, 7),
            )
            .await
            .map_err(anyhow::Error::from)
    })?;
    stop_all(&mut voters)?;
    let mut voters = start_all(&addrs, dir.path());
    rt.block_on(async {
        let again = client
            .call_with_write_id(
                MetaRequest::Mkdir {
                    umask: 0,
                    parent: ROOT_INO,
                    name: "e".into(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
                id(7, 7),
            )
            .await?;
        ensure!(again == e, "after restart {again:?}, first {e:?}");
        let n = files(&client).await?;
        ensure!(n == 3 + 1 + 45, "{n} inodes");
        Ok(())
    })?;
    stop_all(&mut voters)?;
    assert_took_less(started, Duration::from_secs(40));
    Ok(())
}
