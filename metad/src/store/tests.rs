//! The store on a real database: reopening, snapshots, corrupt input.

use std::sync::Arc;

use std::collections::BTreeSet;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder};
use torchfs_proto::meta::{MetaReply, StripeConfig};

use super::*;
use crate::state::Command;

type Payload = alias::EntryPayloadOf<TypeConfig>;

/// The log position `index` of term 1, leader 1.
fn at_index(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}
use torchfs_proto::meta::{MetaRequest, ROOT_INO};

fn entry(index: u64, payload: Payload) -> Entry {
    Entry {
        log_id: at_index(index),
        payload,
    }
}

fn mkdir(name: &str) -> Payload {
    EntryPayload::Normal(Command::client(
        5,
        MetaRequest::Mkdir {
            umask: 0,
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        None,
    ))
}

#[tokio::test]
async fn log_vote_and_snapshot_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    {
        let db = Arc::new(open_db(&path).unwrap());
        // Entries where an older metad kept them (IOFlushed cannot be built
        // outside openraft): opening moves them into the segments.
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(LOG).unwrap();
            for i in 1..=5 {
                let e = entry(i, mkdir(&format!("d{i}")));
                t.insert(i, bincode::serialize(&e).unwrap().as_slice())
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        let mut log = LogStore::open(db.clone(), &dir.path().join("log")).unwrap();
        log.save_vote(&Vote::new(3, 1)).await.unwrap();
        log.truncate_after(Some(at_index(4))).await.unwrap();
        log.purge(at_index(2)).await.unwrap();
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.unwrap().index, 4);
        assert_eq!(st.last_purged_log_id.unwrap().index, 2);
        let es = log.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            es.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [3, 4]
        );

        let mut sm = StateMachineStore::open(db.clone(), StripeConfig::DEFAULT).unwrap();
        let members = Membership::new_with_defaults(vec![BTreeSet::from([1u64])], [1u64]);
        let out = sm.apply_all([
            entry(1, EntryPayload::Membership(members)),
            entry(2, mkdir("a")),
        ]);
        assert!(out.iter().all(|o| o.is_ok()));
        sm.build_snapshot().await.unwrap();
        sm.apply_all([entry(3, mkdir("b"))]);
    }
    let db = Arc::new(open_db(&path).unwrap());
    let mut log = LogStore::open(db.clone(), &dir.path().join("log")).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    // The log came back from the segments, truncated and purged.
    let es = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(
        es.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(at_index(4))
    );
    let mut sm = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
    let (applied, membership) = sm.applied_state().await.unwrap();
    // Only what the snapshot held: entry 3 comes back by log replay.
    assert_eq!(applied.unwrap().index, 2);
    assert!(membership.log_id().is_some());
    let d = sm.data.read().unwrap();
    assert!(d
        .state
        .read(&MetaRequest::Lookup {
            parent: ROOT_INO,
            name: "a".into()
        })
        .is_ok());
    assert!(d
        .state
        .read(&MetaRequest::Lookup {
            parent: ROOT_INO,
            name: "b".into()
        })
        .is_err());
}

#[tokio::test]
async fn session_table_survives_snapshot_reopen_and_install() {
    use torchfs_proto::meta::WriteId;
    let id = WriteId {
        client_id: 77,
        seq: 1,
        lowest_outstanding_seq: 1,
    };
    let with_id = |p: Payload| match p {
        EntryPayload::Normal(Command {
            now_ns,
            op: crate::state::Op::Client { req, closed, .. },
        }) => EntryPayload::Normal(Command {
            now_ns,
            op: crate::state::Op::Client {
                req,
                write_id: Some(id),
                closed,
            },
        }),
        other => other,
    };
    let dir = tempfile::tempdir().unwrap();
    let snapshot = {
        let db = Arc::new(open_db(&dir.path().join("a.redb")).unwrap());
        let mut sm = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
        let out = sm.apply_all([entry(1, with_id(mkdir("a")))]);
        assert!(out[0].is_ok());
        sm.build_snapshot().await.unwrap()
    };
    // A restart: the table comes back from the stored snapshot, and the
    // retry (a second log entry with the same id) is not applied.
    let db = Arc::new(open_db(&dir.path().join("a.redb")).unwrap());
    let sm = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
    let first = sm
        .data
        .read()
        .unwrap()
        .state
        .sessions()
        .answered(&id)
        .cloned();
    assert!(matches!(first, Some(Ok(MetaReply::Attr(_)))), "{first:?}");
    let out = sm.apply_all([entry(2, with_id(mkdir("a")))]);
    assert_eq!(Some(&out[0]), first.as_ref());
    // A new voter installing the snapshot gets the table too.
    let db = Arc::new(open_db(&dir.path().join("b.redb")).unwrap());
    let mut fresh = StateMachineStore::open(db, StripeConfig::DEFAULT).unwrap();
    fresh
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let out = fresh.apply_all([entry(2, with_id(mkdir("a")))]);
    assert_eq!(Some(&out[0]), first.as_ref());
    assert_eq!(fresh.data.read().unwrap().state.file_count(), 2);
}

#[tokio::test]
async fn corrupt_entries_are_errors_naming_what_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(open_db(&dir.path().join("m.redb")).unwrap());
    let tx = db.begin_write().unwrap();
    {
        let mut log = tx.open_table(LOG).unwrap();
        log.insert(7, [0xffu8; 3].as_slice()).unwrap();
        let mut meta = tx.open_table(META).unwrap();
        meta.insert(KEY_VOTE, [0xffu8; 2].as_slice()).unwrap();
    }
    tx.commit().unwrap();
    let mut log = LogStore::open(db, &dir.path().join("log")).unwrap();
    let e = log.try_get_log_entries(0..10).await.unwrap_err();
    assert!(e.to_string().contains("log entry 7"), "{e}");
    let e = log.get_log_state().await.unwrap_err();
    assert!(e.to_string().contains("log entry 7"), "{e}");
    let e = log.read_vote().await.unwrap_err();
    assert!(e.to_string().contains("`vote`"), "{e}");
}

#[tokio::test]
async fn committed_index_rides_with_the_next_write_and_is_never_lost_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let at = |index| Some(at_index(index));
    let db = Arc::new(open_db(&path).unwrap());
    let mut log = LogStore::open(db.clone(), &dir.path().join("log")).unwrap();

    // Put off: not in the database until a durable write comes along...
    log.save_committed(at(7)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(log.read_committed().await.unwrap(), None);
    // ...which writes it in the same commit, before its own change.
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), at(7));

    // With no write coming, it is committed on its own after the wait.
    log.save_committed(at(8)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(DEFER_WAIT_TEST_MS)).await;
    assert_eq!(log.read_committed().await.unwrap(), at(8));

    // Of many changes before it is written, the latest is what lands.
    for index in 10..=12 {
        log.save_committed(at(index)).await.unwrap();
    }
    log.save_vote(&Vote::new(3, 1)).await.unwrap();
    assert_eq!(log.read_committed().await.unwrap(), at(12));

    // And closing the store writes what is still put off.
    log.save_committed(at(9)).await.unwrap();
    drop(log);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Arc::strong_count(&db) > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(db);
    let db = Arc::new(open_db(&path).unwrap());
    let mut log = LogStore::open(db, &dir.path().join("log")).unwrap();
    assert_eq!(log.read_committed().await.unwrap(), at(9));
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
}

/// Longer than the flusher's wait for a commit to ride along with.
const DEFER_WAIT_TEST_MS: u64 = 600;
