//! A voter whose Raft log was damaged on disk, in a real 3-voter cluster:
//! a write torn by a crash is dropped and the voter rejoins; a flipped bit
//! in an acknowledged record stops the voter with an error that names the
//! file and offset, and nothing acknowledged is lost either way.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use common::{
    assert_took_less, create, create_many, follower_not_first, leader, lookup, stop_all,
    TestCluster, Voter,
};

/// The voter's last log segment.
fn last_segment(dir: &Path, id: u64) -> Result<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("v{id}/raft-log")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segs.sort();
    segs.pop().context("no log segment")
}

/// (offset, payload length) of each record in a segment, read by the
/// format's header (length u32, crc u32, index u64).
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= bytes.len() && bytes[at..at + 16].iter().any(|b| *b != 0) {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        out.push((at, len));
        at += 16 + len;
    }
    out
}

#[test]
fn a_torn_log_tail_is_dropped_and_a_corrupt_record_stops_the_voter() -> Result<()> {
    let started = Instant::now();
    let TestCluster {
        dir,
        addrs,
        mut voters,
        client,
        rt,
    } = TestCluster::start(3)?;
    rt.block_on(create_many(&client, "t", 30))?;
    let leader_id = rt.block_on(leader(&client))?;
    let victim = follower_not_first(leader_id, 3)?;
    let third = (1..=3u64)
        .find(|id| *id != leader_id && *id != victim)
        .context("the third voter")?;

    // A crash tore the victim's last write: a header and its first bytes
    // reached the disk, the rest of the record did not.
    voters[(victim - 1) as usize].stop()?;
    let seg = last_segment(dir.path(), victim)?;
    let mut bytes = std::fs::read(&seg)?;
    let end = records(&bytes).last().map_or(0, |(at, len)| at + 16 + len);
    let next_index = u64::MAX / 2;
    bytes[end..end + 4].copy_from_slice(&3000u32.to_le_bytes());
    bytes[end + 4..end + 8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    bytes[end + 8..end + 16].copy_from_slice(&next_index.to_le_bytes());
    bytes[end + 16..end + 300].fill(0x5a);
    std::fs::write(&seg, &bytes)?;
    voters[(victim - 1) as usize] = Voter::start(victim, &addrs, dir.path());
    std::thread::sleep(Duration::from_secs(1));
    // Without the third voter the leader needs the victim for a quorum.
    voters[(third - 1) as usize].stop()?;
    rt.block_on(async {
        create(&client, "after-tear").await?;
        for name in ["t0", "t29", "after-tear"] {
            lookup(&client, name)
                .await
                .with_context(|| format!("lookup {name} after the torn tail"))?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    voters[(third - 1) as usize] = Voter::start(third, &addrs, dir.path());

    // A bit flips in an acknowledged record: the victim refuses to start,
    // saying where, and the file is left as it was for whoever looks.
    voters[(victim - 1) as usize].stop()?;
    let seg = last_segment(dir.path(), victim)?;
    let mut bytes = std::fs::read(&seg)?;
    let recs = records(&bytes);
    let Some(&(at, len)) = recs.get(recs.len().saturating_sub(2)) else {
        bail!("the victim's log holds {} records", recs.len());
    };
    bytes[at + 16 + len / 2] ^= 0x08;
    std::fs::write(&seg, &bytes)?;
    let mut broken = Voter::start(victim, &addrs, dir.path());
    let e = match broken.stop() {
        Ok(()) => bail!("a voter with a corrupt log record started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("corrupt Raft log record"), "{e}");
    assert!(e.contains(&seg.display().to_string()), "{e}");
    assert!(e.contains(&format!("offset {at}")), "{e}");
    assert_eq!(
        std::fs::read(&seg)?,
        bytes,
        "the corrupt segment was changed"
    );

    // The other two hold everything; the erased victim rejoins.
    rt.block_on(async {
        create(&client, "after-flip").await?;
        for name in ["t0", "t29", "after-tear", "after-flip"] {
            lookup(&client, name)
                .await
                .with_context(|| format!("lookup {name} after the flip"))?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    std::fs::remove_dir_all(dir.path().join(format!("v{victim}")))?;
    voters[(victim - 1) as usize] = Voter::start(victim, &addrs, dir.path());
    std::thread::sleep(Duration::from_secs(1));
    voters[(third - 1) as usize].stop()?;
    rt.block_on(async {
        create(&client, "after-rejoin").await?;
        lookup(&client, "after-flip").await
    })
    .context("lookup after the victim rejoined")?;
    stop_all(&mut voters)?;
    assert_took_less(started, Duration::from_secs(40));
    Ok(())
}
