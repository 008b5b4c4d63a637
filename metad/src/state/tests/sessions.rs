//! Client sessions: duplicates answered from the table and not applied
//! again, trimming by the lowest outstanding seq, the per-session and
//! table bounds, expiry by leader time, and the table in a snapshot.

use super::*;

const CLIENT: u64 = 0xc11e_0000_0000_0001;
const MINUTE_NS: i64 = 60 * 1_000_000_000;

fn id(client_id: u64, seq: u64, lowest_outstanding_seq: u64) -> WriteId {
    WriteId {
        client_id,
        seq,
        lowest_outstanding_seq,
    }
}

impl T {
    /// Applies `req` under write id `id`, one nanosecond after the last.
    fn wi(&mut self, id: WriteId, req: MetaRequest) -> Outcome {
        self.now += 1;
        let closed = self.st.inodes.keys().copied().collect();
        self.st.apply(&Command {
            now_ns: self.now,
            op: crate::state::Op::Client {
                req,
                write_id: Some(id),
                closed,
            },
        })
    }

    /// The namespace: what a duplicate must not change (the session table
    /// does change: a retry makes its session active).
    fn namespace(&self) -> (BTreeMap<Ino, Inode>, Ino) {
        (self.st.inodes.clone(), self.st.next_ino)
    }
}

fn mkdir(name: &str) -> MetaRequest {
    MetaRequest::Mkdir {
        umask: 0,
        parent: ROOT_INO,
        name: name.into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    }
}

fn create(name: &str) -> MetaRequest {
    MetaRequest::Create {
        umask: 0,
        parent: ROOT_INO,
        name: name.into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
    }
}

fn chmod_root(mode: u32) -> MetaRequest {
    MetaRequest::SetAttr {
        ino: ROOT_INO,
        set: SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        },
    }
}

#[test]
fn duplicates_are_answered_from_the_table_not_applied_again() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f");
    let writes = [
        mkdir("d"),
        create("g"),
        MetaRequest::CommitLayout {
            ino: f.ino,
            size: 250,
            stripes: vec![stripe(0, 200), stripe(1, 50)],
        },
        MetaRequest::Rename {
            mode: Default::default(),
            parent: ROOT_INO,
            name: "f".into(),
            new_parent: ROOT_INO,
            new_name: "f2".into(),
        },
        MetaRequest::Unlink {
            parent: ROOT_INO,
            name: "f2".into(),
        },
    ];
    let mut first = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        let seq = i as u64 + 1;
        let answer = t.wi(id(CLIENT, seq, 1), w.clone());
        assert!(answer.is_ok(), "write {seq}: {answer:?}");
        first.push(answer);
    }
    // Unlink freed the committed stripes.
    assert!(matches!(&first[4], Ok(MetaReply::Unlinked { freed, .. }) if freed.len() == 2));
    let before = t.namespace();
    // Each retried twice, in another order; as plain repeats they would
    // have been EEXIST, EEXIST, ENOENT, ENOENT, ENOENT.
    for round in 0..2 {
        for (i, w) in writes.iter().enumerate().rev() {
            let seq = i as u64 + 1;
            assert_eq!(
                t.wi(id(CLIENT, seq, 1), w.clone()),
                first[i],
                "round {round}, write {seq}"
            );
        }
    }
    assert_eq!(t.namespace(), before);
    assert_eq!(t.st.sessions().answered(&id(CLIENT, 3, 1)), Some(&first[2]));
    // Without ids a repeat is applied again: what the ids prevent.
    assert_eq!(errno_of(t.w(mkdir("d"))), EEXIST);
}

#[test]
fn an_error_answer_is_kept_too() {
    let mut t = T::new();
    t.mkdir(ROOT_INO, "d");
    let e = t.wi(id(CLIENT, 1, 1), mkdir("d"));
    assert_eq!(errno_of(e.clone()), EEXIST);
    // The name is gone now, but the retry is the same write: same answer.
    t.w(MetaRequest::Rmdir {
        parent: ROOT_INO,
        name: "d".into(),
    })
    .unwrap();
    assert_eq!(t.wi(id(CLIENT, 1, 1), mkdir("d")), e);
    assert!(t.lookup(ROOT_INO, "d").is_err());
}

#[test]
fn clients_and_seqs_are_told_apart() {
    let mut t = T::new();
    let a = t.wi(id(CLIENT, 1, 1), create("a")).unwrap();
    // Same seq, another client: a write of its own.
    let b = t.wi(id(CLIENT + 1, 1, 1), create("b")).unwrap();
    assert_ne!(a, b);
    // Next seq of the first client: applied.
    assert!(t.wi(id(CLIENT, 2, 1), create("c")).is_ok());
    assert!(t.lookup(ROOT_INO, "c").is_ok());
    assert_eq!(t.st.sessions().len(), 2);
}

#[test]
fn results_below_the_lowest_outstanding_seq_are_trimmed_and_refused() {
    let mut t = T::new();
    for seq in 1..=3 {
        t.wi(id(CLIENT, seq, 1), mkdir(&format!("d{seq}"))).unwrap();
    }
    // The client has its answers for 1 and 2.
    t.wi(id(CLIENT, 4, 3), mkdir("d4")).unwrap();
    assert_eq!(t.st.sessions().answered(&id(CLIENT, 2, 1)), None);
    assert!(t.st.sessions().answered(&id(CLIENT, 3, 3)).is_some());
    // A stale copy of 2 (or of 1) is refused, not applied again, even
    // with a lowest seq that would let it in.
    let before = t.namespace();
    for seq in [1, 2] {
        let r = t.wi(id(CLIENT, seq, 1), mkdir("late"));
        assert!(
            matches!(&r, Err(MetaError::Invalid(m)) if m.contains("lowest outstanding seq 3")),
            "{r:?}"
        );
    }
    assert_eq!(t.namespace(), before);
    // 3 is still answered from the table.
    assert!(t.wi(id(CLIENT, 3, 3), mkdir("d3")).is_ok());
    assert_eq!(t.namespace(), before);
}

#[test]
fn a_session_keeps_a_bounded_number_of_results() {
    let mut t = T::new();
    // A client that never reports progress (lowest stays 1).
    let n = RESULTS_PER_SESSION_MAX as u64 + 2;
    for seq in 1..=n {
        t.wi(id(CLIENT, seq, 1), chmod_root(0o700 + (seq % 8) as u32))
            .unwrap();
    }
    // The two oldest results were dropped: their retries are refused.
    for seq in [1, 2] {
        let r = t.wi(id(CLIENT, seq, 1), chmod_root(0o777));
        assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
    }
    assert_ne!(t.attr(ROOT_INO).mode, 0o777);
    assert!(t.st.sessions().answered(&id(CLIENT, 3, 1)).is_some());
}

#[test]
fn idle_sessions_expire_by_leader_time() {
    let mut t = T::new();
    t.wi(id(CLIENT, 1, 1), mkdir("a")).unwrap();
    t.wi(id(CLIENT + 1, 1, 1), mkdir("b")).unwrap();
    // Just inside the window, another client's write keeps the clock going:
    // nothing expires.
    t.now += SESSION_IDLE_EXPIRY_NS - 10;
    t.wi(id(CLIENT + 1, 2, 2), mkdir("c")).unwrap();
    assert_eq!(t.st.sessions().len(), 2);
    // Past it for CLIENT (idle), not for CLIENT + 1; a command without a
    // write id advances the clock too.
    t.now += 20;
    t.w(mkdir("tick")).unwrap();
    assert_eq!(t.st.sessions().len(), 1);
    assert_eq!(t.st.sessions().answered(&id(CLIENT, 1, 1)), None);
    // CLIENT's next write is refused, unapplied, with a clear error.
    let before = t.namespace();
    let r = t.wi(id(CLIENT, 2, 2), mkdir("again"));
    assert_eq!(
        r,
        Err(MetaError::SessionExpired {
            client_id: CLIENT,
            seq: 2
        })
    );
    assert_eq!(t.namespace(), before);
    // A first write (lowest outstanding 1) opens a session again: it
    // cannot be told from a new client's (see `MetaClient`, which renews
    // its session under a new id).
    assert!(t.wi(id(CLIENT, 1, 1), mkdir("again")).is_ok());
    assert_eq!(t.st.sessions().len(), 2);
}

#[test]
fn session_time_never_runs_backward() {
    let mut t = T::new();
    t.now = 100 * MINUTE_NS;
    t.w(mkdir("a")).unwrap();
    // A new leader whose clock is 5 minutes behind stamps this write: the
    // session is active as of the table's clock, not 5 minutes earlier.
    t.now -= 5 * MINUTE_NS;
    t.wi(id(CLIENT, 1, 1), mkdir("b")).unwrap();
    t.now = 100 * MINUTE_NS + SESSION_IDLE_EXPIRY_NS - MINUTE_NS;
    t.w(mkdir("c")).unwrap();
    assert!(t.st.sessions().answered(&id(CLIENT, 1, 1)).is_some());
    t.now += 2 * MINUTE_NS;
    t.w(mkdir("d")).unwrap();
    assert!(t.st.sessions().is_empty());
}

#[test]
fn a_write_of_a_forgotten_session_is_refused() {
    let mut t = T::new();
    let r = t.wi(id(CLIENT, 5, 4), mkdir("x"));
    assert_eq!(
        r,
        Err(MetaError::SessionExpired {
            client_id: CLIENT,
            seq: 5
        })
    );
    assert!(t.lookup(ROOT_INO, "x").is_err());
    assert!(t.st.sessions().is_empty());
    assert_eq!(errno_of(r), EIO);
}

#[test]
fn the_table_is_bounded_least_recently_active_first() {
    let mut t = T::new();
    for c in 1..=SESSIONS_MAX as u64 {
        t.wi(id(c, 1, 1), chmod_root(0o755)).unwrap();
    }
    // Client 1 writes again: client 2 is now the least recently active.
    t.wi(id(1, 2, 2), chmod_root(0o755)).unwrap();
    t.wi(id(u64::MAX, 1, 1), chmod_root(0o755)).unwrap();
    assert_eq!(t.st.sessions().len(), SESSIONS_MAX);
    assert!(t.st.sessions().answered(&id(2, 1, 1)).is_none());
    assert!(t.st.sessions().answered(&id(1, 2, 2)).is_some());
    assert!(t.st.sessions().answered(&id(3, 1, 1)).is_some());
}

#[test]
fn malformed_ids_are_refused_without_applying() {
    let mut t = T::new();
    let before = t.namespace();
    for bad in [id(0, 1, 1), id(CLIENT, 0, 0), id(CLIENT, 2, 3)] {
        let r = t.wi(bad, mkdir("x"));
        assert!(matches!(r, Err(MetaError::Invalid(_))), "{bad:?}: {r:?}");
    }
    assert_eq!(t.namespace(), before);
    assert!(t.st.sessions().is_empty());
}

#[test]
fn the_table_survives_a_snapshot_round_trip() {
    let mut t = T::new();
    let first = t.wi(id(CLIENT, 1, 1), mkdir("d")).unwrap();
    t.wi(id(CLIENT, 2, 1), create("f")).unwrap();
    let bytes = bincode::serialize(&t.st).unwrap();
    let back: State = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, t.st);
    let mut t2 = T {
        st: back,
        now: t.now,
    };
    assert_eq!(t2.wi(id(CLIENT, 1, 1), mkdir("d")), Ok(first));
    assert_eq!(t2.namespace(), t.namespace());
}
