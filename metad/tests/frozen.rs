//! A frozen dataset version on a real 3-voter cluster: freeze over RPC, a
//! change inside is refused with EROFS, and after a full restart (the
//! freeze then comes back from a snapshot) it still is, and readFrozen
//! lists the tree.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use torchfs_proto::client::MetaClient;
use torchfs_proto::meta::{errno, Attr, FrozenBody, MetaError, MetaReply, MetaRequest, ROOT_INO};

use common::{assert_took_less, create, start_all, stop_all, TestCluster};

async fn call_attr(client: &MetaClient, req: MetaRequest) -> Result<Attr> {
    match client.call(req).await? {
        MetaReply::Attr(a) => Ok(a),
        other => bail!("unexpected {other:?}"),
    }
}

fn create_in(parent: u64, name: &str) -> MetaRequest {
    MetaRequest::Create {
        umask: 0,
        parent,
        name: name.into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
    }
}

/// Asserts that creating `name` in `parent` is refused with EROFS.
async fn create_is_erofs(client: &MetaClient, parent: u64, name: &str) -> Result<()> {
    match client.call(create_in(parent, name)).await {
        Err(MetaError::Fs { errno: e, message }) if e == errno::EROFS => {
            assert!(message.contains(&format!("inode {parent}")), "{message}");
            Ok(())
        }
        other => bail!("create {name:?} in frozen inode {parent}: {other:?}"),
    }
}

#[test]
fn a_freeze_survives_a_restart() -> Result<()> {
    let started = Instant::now();
    let TestCluster {
        dir,
        addrs,
        mut voters,
        client,
        rt,
    } = TestCluster::start(3)?;

    let ds = rt.block_on(async {
        let ds = call_attr(
            &client,
            MetaRequest::Mkdir {
                umask: 0,
                parent: ROOT_INO,
                name: "ds".into(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .await?;
        for name in ["b", "a", "c"] {
            call_attr(&client, create_in(ds.ino, name)).await?;
        }
        let root = call_attr(&client, MetaRequest::Freeze { ino: ds.ino }).await?;
        assert!(root.frozen);
        create_is_erofs(&client, ds.ino, "d").await?;
        // Enough writes after the freeze for a snapshot (every 20 entries)
        // to hold it.
        let many: Vec<_> = (0..25)
            .map(|i| {
                let c = client.clone();
                tokio::spawn(async move { create(&c, &format!("f{i}")).await })
            })
            .collect();
        for h in many {
            h.await??;
        }
        Ok::<_, anyhow::Error>(ds)
    })?;

    stop_all(&mut voters)?;
    let mut voters = start_all(&addrs, dir.path());
    rt.block_on(async {
        create_is_erofs(&client, ds.ino, "d").await?;
        let root = call_attr(&client, MetaRequest::GetAttr { ino: ds.ino }).await?;
        assert!(root.frozen);
        match client
            .call(MetaRequest::ReadFrozen {
                ino: ds.ino,
                offset: 0,
                limit: 0,
            })
            .await?
        {
            MetaReply::Frozen {
                root: r,
                entries,
                more,
            } => {
                assert_eq!(r, root);
                assert!(!more);
                let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(names, ["a", "b", "c"]);
                for e in &entries {
                    assert_eq!(e.parent, ds.ino);
                    assert!(e.attr.frozen, "{}", e.name);
                    assert!(matches!(e.body, FrozenBody::File(_)), "{:?}", e.body);
                }
            }
            other => bail!("readFrozen: {other:?}"),
        }
        // Thawed, the tree takes changes again.
        let root = call_attr(&client, MetaRequest::Unfreeze { ino: ds.ino }).await?;
        assert!(!root.frozen);
        call_attr(&client, create_in(ds.ino, "d")).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    stop_all(&mut voters)?;
    assert_took_less(started, Duration::from_secs(30));
    Ok(())
}
