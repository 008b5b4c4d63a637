//! Namespace semantics: every errno the state machine gives, rename cases,
//! and the shared harness; layouts, nodes, sessions and frozen trees have
//! test modules of their own (locks too).

mod dirs;
mod encoding;
mod frozen;
mod layout;
mod locks;
mod lookup;
mod nodes;
mod sessions;

use super::*;
use torchfs_proto::meta::errno::*;
use torchfs_proto::meta::{SetAttr, SetTime, StripeEntry};

const CFG: StripeConfig = StripeConfig {
    k: 2,
    m: 1,
    unit_bytes: 100,
};

struct T {
    st: State,
    now: i64,
}

impl T {
    fn new() -> Self {
        T {
            st: State::new(CFG),
            now: 1000,
        }
    }
    fn w(&mut self, req: MetaRequest) -> Outcome {
        self.now += 1;
        // No client holds anything open in these tests: the leader would
        // vouch every inode closed.
        let closed = self.st.inodes.keys().copied().collect();
        self.st.apply(&Command {
            now_ns: self.now,
            op: super::Op::Client {
                req,
                write_id: None,
                closed,
            },
        })
    }
    fn r(&self, req: MetaRequest) -> Outcome {
        self.st.read(&req)
    }
    fn create(&mut self, parent: Ino, name: &str) -> Attr {
        match self.w(MetaRequest::Create {
            umask: 0,
            parent,
            name: name.into(),
            mode: 0o644,
            uid: 1,
            gid: 2,
            exclusive: true,
        }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("create {name}: {other:?}"),
        }
    }
    fn mkdir(&mut self, parent: Ino, name: &str) -> Attr {
        match self.w(MetaRequest::Mkdir {
            umask: 0,
            parent,
            name: name.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("mkdir {name}: {other:?}"),
        }
    }
    fn attr(&self, ino: Ino) -> Attr {
        match self.r(MetaRequest::GetAttr { ino }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("getattr {ino}: {other:?}"),
        }
    }
    fn lookup(&self, parent: Ino, name: &str) -> Outcome {
        self.r(MetaRequest::Lookup {
            parent,
            name: name.into(),
        })
    }
    fn rename(&mut self, p: Ino, n: &str, np: Ino, nn: &str) -> Outcome {
        self.w(MetaRequest::Rename {
            mode: Default::default(),
            parent: p,
            name: n.into(),
            new_parent: np,
            new_name: nn.into(),
        })
    }
    fn commit(&mut self, ino: Ino, size: u64, stripes: &[u64]) -> Outcome {
        let stripes = stripes.iter().map(|&s| stripe(s, 200)).collect();
        self.w(MetaRequest::CommitLayout { ino, size, stripes })
    }
}

fn stripe(s: u64, bytes: u32) -> StripeEntry {
    StripeEntry {
        stripe: s,
        generation: 1,
        encoded_bytes: bytes,
        valid_bytes: bytes,
        crcs: vec![s as u32; 3],
    }
}

/// Asserts `after` is `before` but for the session table, whose clock
/// every command advances (a failed command may change nothing else).
fn assert_unchanged(before: &State, after: &State) {
    let mut after = after.clone();
    after.sessions = before.sessions.clone();
    assert_eq!(*before, after);
}

fn errno_of(o: Outcome) -> i32 {
    match o {
        Err(e) => e.errno(),
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
}

#[test]
fn root_exists() {
    let t = T::new();
    let a = t.attr(ROOT_INO);
    assert_eq!(a.kind, FileKind::Dir);
    assert_eq!(a.mode, 0o755);
    assert_eq!(a.nlink, 2);
}

#[test]
fn create_lookup_and_exclusive() {
    let mut t = T::new();
    let a = t.create(ROOT_INO, "f");
    assert_eq!(a.nlink, 1);
    assert_eq!(a.mode, 0o644);
    assert_eq!(t.lookup(ROOT_INO, "f"), Ok(MetaReply::Attr(a.clone())));
    let dup = MetaRequest::Create {
        umask: 0,
        parent: ROOT_INO,
        name: "f".into(),
        mode: 0o600,
        uid: 0,
        gid: 0,
        exclusive: true,
    };
    assert_eq!(errno_of(t.w(dup.clone())), EEXIST);
    let MetaRequest::Create {
        parent,
        name,
        mode,
        uid,
        gid,
        ..
    } = dup
    else {
        unreachable!()
    };
    let again = t.w(MetaRequest::Create {
        umask: 0,
        parent,
        name,
        mode,
        uid,
        gid,
        exclusive: false,
    });
    assert_eq!(again, Ok(MetaReply::Attr(a)));
    t.mkdir(ROOT_INO, "d");
    let on_dir = MetaRequest::Create {
        umask: 0,
        parent: ROOT_INO,
        name: "d".into(),
        mode: 0o600,
        uid: 0,
        gid: 0,
        exclusive: false,
    };
    assert_eq!(errno_of(t.w(on_dir)), EISDIR);
    assert_eq!(errno_of(t.lookup(ROOT_INO, "nope")), ENOENT);
    assert_eq!(errno_of(t.lookup(999, "x")), ENOENT);
    let f = t.lookup(ROOT_INO, "f").unwrap();
    let MetaReply::Attr(f) = f else { panic!() };
    assert_eq!(errno_of(t.lookup(f.ino, "x")), ENOTDIR);
}

#[test]
fn bad_names() {
    let mut t = T::new();
    for bad in ["", ".", "..", "a/b", "a\0b"] {
        let r = t.w(MetaRequest::Mkdir {
            umask: 0,
            parent: ROOT_INO,
            name: bad.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
        assert_eq!(errno_of(r), EINVAL, "{bad:?}");
    }
    let long = "x".repeat(256);
    assert_eq!(errno_of(t.lookup(ROOT_INO, &long)), ENAMETOOLONG);
    t.create(ROOT_INO, &"y".repeat(255));
}

#[test]
fn mkdir_nlink_and_rmdir() {
    let mut t = T::new();
    let d = t.mkdir(ROOT_INO, "d");
    assert_eq!(t.attr(ROOT_INO).nlink, 3);
    assert_eq!(
        errno_of(t.w(MetaRequest::Mkdir {
            umask: 0,
            parent: ROOT_INO,
            name: "d".into(),
            mode: 0,
            uid: 0,
            gid: 0
        })),
        EEXIST
    );
    t.mkdir(d.ino, "sub");
    assert_eq!(t.attr(d.ino).nlink, 3);
    t.create(ROOT_INO, "f");
    let rmdir = |name: &str| MetaRequest::Rmdir {
        parent: ROOT_INO,
        name: name.into(),
    };
    assert_eq!(errno_of(t.w(rmdir("d"))), ENOTEMPTY);
    assert_eq!(errno_of(t.w(rmdir("f"))), ENOTDIR);
    assert_eq!(errno_of(t.w(rmdir("zz"))), ENOENT);
    t.w(MetaRequest::Rmdir {
        parent: d.ino,
        name: "sub".into(),
    })
    .unwrap();
    assert_eq!(t.attr(d.ino).nlink, 2);
    t.w(rmdir("d")).unwrap();
    assert_eq!(t.attr(ROOT_INO).nlink, 2);
    assert_eq!(errno_of(t.r(MetaRequest::GetAttr { ino: d.ino })), ENOENT);
}

#[test]
fn unlink_frees_on_last_link() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f");
    t.commit(f.ino, 300, &[0, 1]).unwrap();
    let l = t
        .w(MetaRequest::Link {
            ino: f.ino,
            new_parent: ROOT_INO,
            new_name: "g".into(),
        })
        .unwrap();
    let MetaReply::Attr(l) = l else { panic!() };
    assert_eq!(l.nlink, 2);
    let unlink = |n: &str| MetaRequest::Unlink {
        parent: ROOT_INO,
        name: n.into(),
    };
    assert_eq!(
        t.w(unlink("f")),
        Ok(MetaReply::Unlinked {
            ino: f.ino,
            freed: vec![]
        })
    );
    assert_eq!(t.attr(f.ino).nlink, 1);
    let freed = t.w(unlink("g")).unwrap();
    assert_eq!(
        freed,
        MetaReply::Unlinked {
            ino: f.ino,
            freed: vec![stripe(0, 200), stripe(1, 200)]
        }
    );
    assert_eq!(errno_of(t.w(unlink("g"))), ENOENT);
    t.mkdir(ROOT_INO, "d");
    assert_eq!(errno_of(t.w(unlink("d"))), EISDIR);
}

#[test]
fn link_errors() {
    let mut t = T::new();
    let d = t.mkdir(ROOT_INO, "d");
    let f = t.create(ROOT_INO, "f");
    let link = |ino, name: &str| MetaRequest::Link {
        ino,
        new_parent: ROOT_INO,
        new_name: name.into(),
    };
    assert_eq!(errno_of(t.w(link(d.ino, "d2"))), EPERM);
    assert_eq!(errno_of(t.w(link(f.ino, "d"))), EEXIST);
    assert_eq!(errno_of(t.w(link(12345, "x"))), ENOENT);
    assert_eq!(
        errno_of(t.w(MetaRequest::Link {
            ino: f.ino,
            new_parent: f.ino,
            new_name: "x".into()
        })),
        ENOTDIR
    );
}

#[test]
fn symlink_and_readlink() {
    let mut t = T::new();
    let s = t
        .w(MetaRequest::Symlink {
            parent: ROOT_INO,
            name: "s".into(),
            target: "../x".into(),
            uid: 0,
            gid: 0,
        })
        .unwrap();
    let MetaReply::Attr(s) = s else { panic!() };
    assert_eq!(s.kind, FileKind::Symlink);
    assert_eq!(s.size, 4);
    assert_eq!(
        t.r(MetaRequest::ReadLink { ino: s.ino }),
        Ok(MetaReply::Link("../x".into()))
    );
    assert_eq!(
        errno_of(t.r(MetaRequest::ReadLink { ino: ROOT_INO })),
        EINVAL
    );
    assert_eq!(errno_of(t.r(MetaRequest::GetLayout { ino: s.ino })), EINVAL);
    assert_eq!(
        errno_of(t.r(MetaRequest::GetLayout { ino: ROOT_INO })),
        EISDIR
    );
    assert_eq!(
        errno_of(t.w(MetaRequest::Symlink {
            parent: ROOT_INO,
            name: "s".into(),
            target: "y".into(),
            uid: 0,
            gid: 0
        })),
        EEXIST
    );
}

#[test]
fn readdir_order_after_limit() {
    let mut t = T::new();
    for n in ["c", "a", "e", "b", "d"] {
        t.create(ROOT_INO, n);
    }
    let names = |r: Outcome| match r {
        Ok(MetaReply::Entries(es)) => es.into_iter().map(|e| e.name).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let rd = |after: &str, limit| MetaRequest::ReadDir {
        ino: ROOT_INO,
        after: after.into(),
        limit,
    };
    assert_eq!(names(t.r(rd("", 0))), ["a", "b", "c", "d", "e"]);
    assert_eq!(names(t.r(rd("b", 2))), ["c", "d"]);
    assert_eq!(names(t.r(rd("bb", 0))), ["c", "d", "e"]);
    assert_eq!(names(t.r(rd("e", 0))), Vec::<String>::new());
    let f = t.create(ROOT_INO, "f");
    assert_eq!(
        errno_of(t.r(MetaRequest::ReadDir {
            ino: f.ino,
            after: "".into(),
            limit: 0
        })),
        ENOTDIR
    );
}

#[test]
fn rename_cases() {
    let mut t = T::new();
    let a = t.mkdir(ROOT_INO, "a");
    let b = t.mkdir(ROOT_INO, "b");
    let f = t.create(a.ino, "f");
    t.commit(f.ino, 10, &[0]).unwrap();
    let g = t.create(b.ino, "g");
    t.commit(g.ino, 10, &[0, 3]).unwrap();

    // Missing source.
    assert_eq!(errno_of(t.rename(a.ino, "zz", b.ino, "x")), ENOENT);
    // File over file: target freed.
    let r = t.rename(a.ino, "f", b.ino, "g").unwrap();
    assert_eq!(
        r,
        MetaReply::Unlinked {
            ino: g.ino,
            freed: vec![stripe(0, 200), stripe(3, 200)]
        }
    );
    assert_eq!(t.lookup(b.ino, "g"), Ok(MetaReply::Attr(t.attr(f.ino))));
    assert_eq!(errno_of(t.lookup(a.ino, "f")), ENOENT);
    assert_eq!(errno_of(t.r(MetaRequest::GetAttr { ino: g.ino })), ENOENT);

    // File over a file that has another link: nothing freed.
    let h = t.create(ROOT_INO, "h");
    t.w(MetaRequest::Link {
        ino: h.ino,
        new_parent: ROOT_INO,
        new_name: "h2".into(),
    })
    .unwrap();
    t.create(ROOT_INO, "i");
    assert_eq!(
        t.rename(ROOT_INO, "i", ROOT_INO, "h"),
        Ok(MetaReply::Unlinked {
            ino: h.ino,
            freed: vec![]
        })
    );
    assert_eq!(t.attr(h.ino).nlink, 1);

    // Rename onto another link of the same inode: no-op.
    t.w(MetaRequest::Link {
        ino: h.ino,
        new_parent: ROOT_INO,
        new_name: "h3".into(),
    })
    .unwrap();
    assert_eq!(
        t.rename(ROOT_INO, "h2", ROOT_INO, "h3"),
        Ok(MetaReply::Freed(vec![]))
    );
    assert!(t.lookup(ROOT_INO, "h2").is_ok());

    // File over dir, dir over file.
    assert_eq!(errno_of(t.rename(b.ino, "g", ROOT_INO, "a")), EISDIR);
    assert_eq!(errno_of(t.rename(ROOT_INO, "a", b.ino, "g")), ENOTDIR);

    // Dir over empty dir; dir over non-empty dir.
    let e = t.mkdir(ROOT_INO, "empty");
    assert_eq!(t.attr(ROOT_INO).nlink, 5);
    t.rename(ROOT_INO, "a", ROOT_INO, "empty").unwrap();
    assert_eq!(t.attr(ROOT_INO).nlink, 4);
    assert_eq!(errno_of(t.r(MetaRequest::GetAttr { ino: e.ino })), ENOENT);
    assert_eq!(
        t.lookup(ROOT_INO, "empty"),
        Ok(MetaReply::Attr(t.attr(a.ino)))
    );
    assert_eq!(
        errno_of(t.rename(ROOT_INO, "empty", ROOT_INO, "b")),
        ENOTEMPTY
    );

    // Dir into its own subtree, and onto itself.
    let sub = t.mkdir(a.ino, "sub");
    assert_eq!(errno_of(t.rename(ROOT_INO, "empty", sub.ino, "x")), EINVAL);
    assert_eq!(errno_of(t.rename(ROOT_INO, "empty", a.ino, "x")), EINVAL);

    // Dir moves between parents: nlink and parent pointer follow.
    t.rename(a.ino, "sub", b.ino, "sub").unwrap();
    assert_eq!(t.attr(a.ino).nlink, 2);
    assert_eq!(t.attr(b.ino).nlink, 3);
    // Now b/sub is under b: moving b into b/sub must fail, moving a into b/sub works.
    assert_eq!(errno_of(t.rename(ROOT_INO, "b", sub.ino, "b")), EINVAL);
    t.rename(ROOT_INO, "empty", sub.ino, "a").unwrap();
    assert_eq!(t.attr(ROOT_INO).nlink, 3);
    assert_eq!(errno_of(t.rename(ROOT_INO, "b", a.ino, "b")), EINVAL);

    // Bad names.
    assert_eq!(errno_of(t.rename(ROOT_INO, "b", ROOT_INO, "..")), EINVAL);
}

#[test]
fn setattr_fields_and_times() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f");
    let r = t
        .w(MetaRequest::SetAttr {
            ino: f.ino,
            set: SetAttr {
                mode: Some(0o100600),
                uid: Some(7),
                gid: Some(8),
                atime: Some(SetTime::Ns(5)),
                mtime: Some(SetTime::Now),
                ..Default::default()
            },
        })
        .unwrap();
    let MetaReply::Attr(a) = r else {
        panic!("{r:?}")
    };
    assert_eq!((a.mode, a.uid, a.gid, a.atime_ns), (0o600, 7, 8, 5));
    assert_eq!(a.mtime_ns, t.now);
    assert_eq!(a.ctime_ns, t.now);
    let d = t.mkdir(ROOT_INO, "d");
    let size = |ino| MetaRequest::SetAttr {
        ino,
        set: SetAttr {
            size: Some(0),
            ..Default::default()
        },
    };
    assert_eq!(errno_of(t.w(size(d.ino))), EISDIR);
    assert_eq!(errno_of(t.w(size(999))), ENOENT);
}

#[test]
fn failed_commands_leave_state_unchanged() {
    let mut t = T::new();
    t.mkdir(ROOT_INO, "d");
    t.create(ROOT_INO, "f");
    let before = t.st.clone();
    let _ = t.rename(ROOT_INO, "d", ROOT_INO, "f");
    let _ = t.w(MetaRequest::Unlink {
        parent: ROOT_INO,
        name: "d".into(),
    });
    let _ = t.w(MetaRequest::Rmdir {
        parent: ROOT_INO,
        name: "f".into(),
    });
    assert_unchanged(&before, &t.st);
}

#[test]
fn exhausted_inode_numbers_are_enospc_not_reused() {
    let mut t = T::new();
    t.st.next_ino = u64::MAX;
    let before = t.st.clone();
    let r = t.w(MetaRequest::Create {
        umask: 0,
        parent: ROOT_INO,
        name: "f".into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive: true,
    });
    assert_eq!(errno_of(r), ENOSPC);
    let r = t.w(MetaRequest::Mkdir {
        umask: 0,
        parent: ROOT_INO,
        name: "d".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    });
    assert_eq!(errno_of(r), ENOSPC);
    assert_unchanged(&before, &t.st);
}

#[test]
fn unlinked_files_not_vouched_closed_become_orphans_until_reclaimed() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "held");
    // No inode vouched closed: the file keeps its inode with no name.
    t.now += 1;
    let unlinked = t.st.apply(&Command::client(
        t.now,
        MetaRequest::Unlink {
            parent: ROOT_INO,
            name: "held".into(),
        },
        None,
    ));
    assert!(
        matches!(&unlinked, Ok(MetaReply::Unlinked { ino, freed }) if *ino == f.ino && freed.is_empty())
    );
    assert_eq!(t.attr(f.ino).nlink, 0);
    assert!(t.st.orphans().contains_key(&f.ino));
    assert_eq!(
        errno_of(t.r(MetaRequest::Lookup {
            parent: ROOT_INO,
            name: "held".into()
        })),
        ENOENT
    );
    t.now += 1;
    t.st.apply(&Command {
        now_ns: t.now,
        op: super::Op::Reclaim { inos: vec![f.ino] },
    })
    .unwrap();
    assert!(t.st.orphans().is_empty());
    assert_eq!(errno_of(t.r(MetaRequest::GetAttr { ino: f.ino })), ENOENT);
    // Vouched closed: freed at once, no orphan.
    let g = t.create(ROOT_INO, "closed");
    t.now += 1;
    t.st.apply(&Command {
        now_ns: t.now,
        op: super::Op::Client {
            req: MetaRequest::Unlink {
                parent: ROOT_INO,
                name: "closed".into(),
            },
            write_id: None,
            closed: vec![g.ino],
        },
    })
    .unwrap();
    assert!(t.st.orphans().is_empty());
    assert_eq!(errno_of(t.r(MetaRequest::GetAttr { ino: g.ino })), ENOENT);
}
