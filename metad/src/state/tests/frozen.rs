//! Frozen dataset versions: freeze, unfreeze, EROFS on every change inside,
//! and the paged listing of a frozen tree.

use super::*;
use torchfs_proto::meta::{FrozenBody, FrozenEntry, FROZEN_PAGE_ENTRIES_MAX};

/// root/
///   data/          <- frozen by `frozen_tree`
///     a            file, also linked as root/ext and data/b/a2
///     b/
///       a2         (= a)
///       x          file with two committed stripes
///     c -> "a"
///     z/           empty
///   ext            (= data/a)
///   out            file
///   o/             dir
struct Tree {
    data: Attr,
    a: Attr,
    b: Attr,
    x: Attr,
    c: Attr,
    z: Attr,
    out: Attr,
    o: Attr,
}

impl T {
    fn symlink(&mut self, parent: Ino, name: &str, target: &str) -> Attr {
        match self.w(MetaRequest::Symlink {
            parent,
            name: name.into(),
            target: target.into(),
            uid: 0,
            gid: 0,
        }) {
            Ok(MetaReply::Attr(a)) => a,
            other => panic!("symlink {name}: {other:?}"),
        }
    }
    fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &str) -> Outcome {
        self.w(MetaRequest::Link {
            ino,
            new_parent,
            new_name: new_name.into(),
        })
    }
    fn freeze(&mut self, ino: Ino) -> Outcome {
        self.w(MetaRequest::Freeze { ino })
    }
    fn unfreeze(&mut self, ino: Ino) -> Outcome {
        self.w(MetaRequest::Unfreeze { ino })
    }
    /// One ReadFrozen page: (root, entries, more).
    fn page(&self, ino: Ino, offset: u64, limit: u32) -> (Attr, Vec<FrozenEntry>, bool) {
        match self.r(MetaRequest::ReadFrozen { ino, offset, limit }) {
            Ok(MetaReply::Frozen {
                root,
                entries,
                more,
            }) => (root, entries, more),
            other => panic!("readFrozen {ino} at {offset} limit {limit}: {other:?}"),
        }
    }
    /// Every ReadFrozen page of `ino` at `limit`, concatenated.
    fn all_pages(&self, ino: Ino, limit: u32) -> Vec<FrozenEntry> {
        let mut out = Vec::new();
        for _ in 0..1000 {
            let (_, entries, more) = self.page(ino, out.len() as u64, limit);
            assert!(entries.len() <= limit as usize, "{} entries", entries.len());
            out.extend(entries);
            if !more {
                return out;
            }
        }
        panic!("readFrozen {ino} never ended");
    }
}

impl Tree {
    /// The dataset directory and every inode below it.
    fn inside(&self) -> [Ino; 6] {
        [
            self.data.ino,
            self.a.ino,
            self.b.ino,
            self.x.ino,
            self.c.ino,
            self.z.ino,
        ]
    }
}

fn tree(t: &mut T) -> Tree {
    let data = t.mkdir(ROOT_INO, "data");
    let a = t.create(data.ino, "a");
    let b = t.mkdir(data.ino, "b");
    let x = t.create(b.ino, "x");
    t.commit(x.ino, 300, &[0, 1]).unwrap();
    let c = t.symlink(data.ino, "c", "a");
    let z = t.mkdir(data.ino, "z");
    t.link(a.ino, b.ino, "a2").unwrap();
    t.link(a.ino, ROOT_INO, "ext").unwrap();
    let out = t.create(ROOT_INO, "out");
    let o = t.mkdir(ROOT_INO, "o");
    Tree {
        data,
        a,
        b,
        x,
        c,
        z,
        out,
        o,
    }
}

/// [`tree`], with `data` frozen.
fn frozen_tree(t: &mut T) -> Tree {
    let tr = tree(t);
    t.freeze(tr.data.ino).unwrap();
    tr
}

fn create_req(parent: Ino, name: &str, exclusive: bool) -> MetaRequest {
    MetaRequest::Create {
        umask: 0,
        parent,
        name: name.into(),
        mode: 0o644,
        uid: 0,
        gid: 0,
        exclusive,
    }
}

fn rename_req(parent: Ino, name: &str, new_parent: Ino, new_name: &str) -> MetaRequest {
    MetaRequest::Rename {
        mode: Default::default(),
        parent,
        name: name.into(),
        new_parent,
        new_name: new_name.into(),
    }
}

fn chmod(ino: Ino) -> MetaRequest {
    MetaRequest::SetAttr {
        ino,
        set: SetAttr {
            mode: Some(0o600),
            ..Default::default()
        },
    }
}

#[test]
fn freeze_marks_the_whole_subtree_and_bumps_ctime() {
    let mut t = T::new();
    let tr = tree(&mut t);
    let MetaReply::Attr(root) = t.freeze(tr.data.ino).unwrap() else {
        panic!()
    };
    let now = t.now;
    assert!(root.frozen);
    assert_eq!(root.ctime_ns, now);
    assert_eq!(root, t.attr(tr.data.ino));
    for ino in tr.inside() {
        let a = t.attr(ino);
        assert!(a.frozen, "inode {ino}");
        assert_eq!(a.ctime_ns, now, "inode {ino}");
    }
    // Only the ctime and the flag changed.
    let x = t.attr(tr.x.ino);
    assert_eq!(
        (x.size, x.mtime_ns, x.mode),
        (300, tr.x.ctime_ns + 1, 0o644)
    );
    // Outside the tree nothing changed.
    for ino in [ROOT_INO, tr.out.ino, tr.o.ino] {
        assert!(!t.attr(ino).frozen, "inode {ino}");
    }
    assert_ne!(t.attr(ROOT_INO).ctime_ns, now);
}

#[test]
fn freeze_is_idempotent_and_needs_a_directory() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let before = t.st.clone();
    assert_eq!(
        t.freeze(tr.data.ino),
        Ok(MetaReply::Attr(t.attr(tr.data.ino)))
    );
    assert_unchanged(&before, &t.st);
    // A directory inside a frozen tree is frozen already: nothing changes.
    assert_eq!(t.freeze(tr.b.ino), Ok(MetaReply::Attr(t.attr(tr.b.ino))));
    assert_unchanged(&before, &t.st);
    assert_eq!(errno_of(t.freeze(tr.out.ino)), ENOTDIR);
    assert_eq!(errno_of(t.freeze(12345)), ENOENT);
    assert_unchanged(&before, &t.st);
}

#[test]
fn freezing_around_a_frozen_tree_keeps_its_ctime() {
    let mut t = T::new();
    let tr = tree(&mut t);
    t.freeze(tr.b.ino).unwrap();
    let b_frozen_at = t.now;
    t.freeze(tr.data.ino).unwrap();
    assert_eq!(t.attr(tr.b.ino).ctime_ns, b_frozen_at);
    assert_eq!(t.attr(tr.x.ino).ctime_ns, b_frozen_at);
    assert_eq!(t.attr(tr.z.ino).ctime_ns, t.now);
    // b is no longer a root: only data may be thawed.
    assert_eq!(errno_of(t.unfreeze(tr.b.ino)), EROFS);
}

#[test]
fn every_change_inside_a_frozen_tree_is_erofs_and_changes_nothing() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let (data, a, b, x, z) = (tr.data.ino, tr.a.ino, tr.b.ino, tr.x.ino, tr.z.ino);
    let empty = t.mkdir(ROOT_INO, "empty").ino;
    t.freeze(empty).unwrap();
    let unlink = |parent, name: &str| MetaRequest::Unlink {
        parent,
        name: name.into(),
    };
    let rmdir = |parent, name: &str| MetaRequest::Rmdir {
        parent,
        name: name.into(),
    };
    let link = |ino, new_parent, new_name: &str| MetaRequest::Link {
        ino,
        new_parent,
        new_name: new_name.into(),
    };
    let set = |ino, set| MetaRequest::SetAttr { ino, set };
    let mkdir = MetaRequest::Mkdir {
        umask: 0,
        parent: z,
        name: "new".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    let symlink = MetaRequest::Symlink {
        parent: data,
        name: "new".into(),
        target: "a".into(),
        uid: 0,
        gid: 0,
    };
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    let touch = SetAttr {
        atime: Some(SetTime::Now),
        ..Default::default()
    };
    let commit = MetaRequest::CommitLayout {
        ino: x,
        size: 600,
        stripes: vec![stripe(2, 200)],
    };
    // (the frozen inode the refusal names, the change)
    let refused: Vec<(Ino, MetaRequest)> = vec![
        (data, create_req(data, "new", true)),
        (b, create_req(b, "new", false)),
        (z, mkdir),
        (data, symlink),
        (a, link(a, ROOT_INO, "new")),
        (data, link(tr.out.ino, data, "new")),
        (data, unlink(data, "a")),
        (a, unlink(ROOT_INO, "ext")),
        (data, rmdir(data, "z")),
        (empty, rmdir(ROOT_INO, "empty")),
        (data, rename_req(data, "a", data, "a3")),
        (data, rename_req(data, "a", ROOT_INO, "a3")),
        (b, rename_req(ROOT_INO, "out", b, "out")),
        (data, rename_req(ROOT_INO, "data", ROOT_INO, "d2")),
        (a, rename_req(ROOT_INO, "out", ROOT_INO, "ext")),
        (data, rename_req(data, "a", data, "a")),
        (a, chmod(a)),
        (data, chmod(data)),
        (tr.c.ino, chmod(tr.c.ino)),
        (x, set(x, truncate)),
        (x, set(x, touch)),
        (x, commit),
    ];
    let before = t.st.clone();
    for (frozen, req) in refused {
        let what = format!("{req:?}");
        match t.w(req) {
            Err(MetaError::Fs { errno, message }) => {
                assert_eq!(errno, EROFS, "{what}: {message}");
                assert!(
                    message.contains(&format!("inode {frozen} is frozen")),
                    "{what}: {message}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_unchanged(&before, &t.st);
    }
    // Outside the tree everything still works.
    t.create(ROOT_INO, "fine");
    t.w(chmod(tr.out.ino)).unwrap();
    t.w(rename_req(ROOT_INO, "out", tr.o.ino, "out")).unwrap();
}

#[test]
fn errors_that_change_nothing_come_before_erofs() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let before = t.st.clone();
    // open(O_CREAT) of an existing file in a frozen dir answers the file.
    assert_eq!(
        t.w(create_req(tr.data.ino, "a", false)),
        Ok(MetaReply::Attr(t.attr(tr.a.ino)))
    );
    assert_eq!(errno_of(t.w(create_req(tr.data.ino, "a", true))), EEXIST);
    assert_eq!(errno_of(t.w(create_req(tr.data.ino, "b", false))), EISDIR);
    assert_eq!(
        errno_of(t.w(MetaRequest::Unlink {
            parent: tr.data.ino,
            name: "missing".into()
        })),
        ENOENT
    );
    assert_unchanged(&before, &t.st);
}

#[test]
fn unfreeze_of_a_dir_inside_a_frozen_tree_is_erofs() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let before = t.st.clone();
    match t.unfreeze(tr.b.ino) {
        Err(MetaError::Fs { errno, message }) => {
            assert_eq!(errno, EROFS);
            assert!(
                message.contains(&format!("inode {} is inside a frozen tree", tr.b.ino)),
                "{message}"
            );
            assert!(message.contains("unfreeze its root"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(errno_of(t.unfreeze(tr.a.ino)), ENOTDIR);
    assert_eq!(errno_of(t.unfreeze(12345)), ENOENT);
    // Not frozen: nothing to do.
    assert_eq!(t.unfreeze(tr.o.ino), Ok(MetaReply::Attr(t.attr(tr.o.ino))));
    assert_unchanged(&before, &t.st);
}

#[test]
fn unfreeze_thaws_and_changes_work_again() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let MetaReply::Attr(root) = t.unfreeze(tr.data.ino).unwrap() else {
        panic!()
    };
    let now = t.now;
    assert!(!root.frozen);
    assert_eq!(root.ctime_ns, now);
    for ino in tr.inside() {
        let a = t.attr(ino);
        assert!(!a.frozen, "inode {ino}");
        assert_eq!(a.ctime_ns, now, "inode {ino}");
    }
    assert_eq!(
        errno_of(t.r(MetaRequest::ReadFrozen {
            ino: tr.data.ino,
            offset: 0,
            limit: 0
        })),
        EINVAL
    );
    t.create(tr.b.ino, "new");
    t.w(chmod(tr.a.ino)).unwrap();
    t.commit(tr.x.ino, 600, &[2]).unwrap();
    t.rename(tr.data.ino, "a", ROOT_INO, "a3").unwrap();
    t.w(MetaRequest::Rmdir {
        parent: tr.data.ino,
        name: "z".into(),
    })
    .unwrap();
    // And the tree can be frozen again.
    t.freeze(tr.data.ino).unwrap();
    assert!(t.attr(tr.x.ino).frozen);
    assert_eq!(errno_of(t.w(create_req(tr.data.ino, "n", true))), EROFS);
}

#[test]
fn the_whole_namespace_can_be_frozen_and_thawed() {
    let mut t = T::new();
    let tr = tree(&mut t);
    t.freeze(ROOT_INO).unwrap();
    assert!(t.attr(tr.out.ino).frozen);
    assert_eq!(errno_of(t.w(create_req(ROOT_INO, "n", true))), EROFS);
    // The root is its own parent, and still a tree's root.
    t.unfreeze(ROOT_INO).unwrap();
    assert!(!t.attr(tr.x.ino).frozen);
    t.create(ROOT_INO, "n");
}

#[test]
fn unfreeze_keeps_a_file_another_frozen_tree_names() {
    let mut t = T::new();
    let tr = tree(&mut t);
    // data/a is also named by data/b/a2 and root/ext; freeze b, then o
    // holding another link, and thaw b: a stays frozen for o's sake.
    t.link(tr.a.ino, tr.o.ino, "a").unwrap();
    t.freeze(tr.b.ino).unwrap();
    t.freeze(tr.o.ino).unwrap();
    t.unfreeze(tr.b.ino).unwrap();
    assert!(!t.attr(tr.x.ino).frozen);
    assert!(t.attr(tr.a.ino).frozen);
    t.unfreeze(tr.o.ino).unwrap();
    assert!(!t.attr(tr.a.ino).frozen);
}

#[test]
fn read_frozen_lists_depth_first_in_name_order() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let (root, entries, more) = t.page(tr.data.ino, 0, 0);
    assert!(!more);
    assert_eq!(root, t.attr(tr.data.ino));
    let names: Vec<(Ino, &str)> = entries
        .iter()
        .map(|e| (e.parent, e.name.as_str()))
        .collect();
    let (data, b) = (tr.data.ino, tr.b.ino);
    assert_eq!(
        names,
        [
            (data, "a"),
            (data, "b"),
            (b, "a2"),
            (b, "x"),
            (data, "c"),
            (data, "z")
        ]
    );
    // A hard-linked file appears once per name.
    assert_eq!(entries[0].attr, t.attr(tr.a.ino));
    assert_eq!(entries[2].attr, entries[0].attr);
    for e in &entries {
        assert!(e.attr.frozen, "{}", e.name);
    }
    let MetaReply::Layout { layout, .. } = t.r(MetaRequest::GetLayout { ino: tr.x.ino }).unwrap()
    else {
        panic!()
    };
    assert_eq!(layout.stripes.len(), 2);
    assert_eq!(entries[3].body, FrozenBody::File(layout));
    assert_eq!(entries[1].body, FrozenBody::Dir);
    assert_eq!(entries[4].body, FrozenBody::Symlink("a".into()));
    assert_eq!(entries[4].attr, t.attr(tr.c.ino));
    // Below an inner directory of the tree.
    let (_, inner, _) = t.page(tr.b.ino, 0, 0);
    assert_eq!(inner, entries[2..4]);
    // An empty frozen directory lists nothing.
    assert_eq!(t.page(tr.z.ino, 0, 0).1, []);
}

#[test]
fn read_frozen_pages_concatenate_to_the_whole() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let (_, whole, more) = t.page(tr.data.ino, 0, FROZEN_PAGE_ENTRIES_MAX);
    assert!(!more);
    assert_eq!(whole.len(), 6);
    for limit in [1, 2, 3, 5, 6, 7, u32::MAX] {
        assert_eq!(t.all_pages(tr.data.ino, limit), whole, "limit {limit}");
    }
    // A page that ends exactly at the end says no more.
    let (_, last, more) = t.page(tr.data.ino, 4, 2);
    assert_eq!((last.as_slice(), more), (&whole[4..], false));
    let (_, mid, more) = t.page(tr.data.ino, 1, 2);
    assert_eq!((mid.as_slice(), more), (&whole[1..3], true));
    for offset in [6, 7, u64::MAX] {
        let (root, past, more) = t.page(tr.data.ino, offset, 3);
        assert_eq!((past.len(), more), (0, false), "offset {offset}");
        assert_eq!(root, t.attr(tr.data.ino));
    }
}

#[test]
fn read_frozen_pages_hold_at_most_the_maximum() {
    let mut t = T::new();
    let d = t.mkdir(ROOT_INO, "d");
    let n = FROZEN_PAGE_ENTRIES_MAX as usize + 3;
    for i in 0..n {
        t.create(d.ino, &format!("f{i:05}"));
    }
    t.freeze(d.ino).unwrap();
    for limit in [0, FROZEN_PAGE_ENTRIES_MAX + 1] {
        let (_, page, more) = t.page(d.ino, 0, limit);
        assert_eq!((page.len(), more), (FROZEN_PAGE_ENTRIES_MAX as usize, true));
    }
    let (_, rest, more) = t.page(d.ino, u64::from(FROZEN_PAGE_ENTRIES_MAX), 0);
    assert_eq!((rest.len(), more), (3, false));
    assert_eq!(rest[2].name, format!("f{:05}", n - 1));
}

#[test]
fn read_frozen_needs_a_frozen_directory() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let read = |ino| MetaRequest::ReadFrozen {
        ino,
        offset: 0,
        limit: 0,
    };
    match t.r(read(tr.o.ino)) {
        Err(MetaError::Fs { errno, message }) => {
            assert_eq!(errno, EINVAL);
            assert_eq!(message, format!("inode {} is not frozen", tr.o.ino));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(errno_of(t.r(read(ROOT_INO))), EINVAL);
    assert_eq!(errno_of(t.r(read(tr.a.ino))), ENOTDIR);
    assert_eq!(errno_of(t.r(read(12345))), ENOENT);
}

#[test]
fn walks_of_a_corrupt_tree_end() {
    let mut t = T::new();
    let d = t.mkdir(ROOT_INO, "d");
    let e = t.mkdir(d.ino, "e");
    // Corrupt: e names its own parent, a cycle.
    if let Some(Inode {
        body: Body::Dir { entries, .. },
        ..
    }) = t.st.inodes.get_mut(&e.ino)
    {
        entries.insert("up".into(), d.ino);
    }
    t.freeze(d.ino).unwrap();
    assert!(t.attr(e.ino).frozen);
    let names: Vec<String> = t.all_pages(d.ino, 1).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["e", "up"]);
    t.unfreeze(d.ino).unwrap();
    assert!(!t.attr(e.ino).frozen);
    // An entry naming a missing inode is refused before any change.
    if let Some(Inode {
        body: Body::Dir { entries, .. },
        ..
    }) = t.st.inodes.get_mut(&e.ino)
    {
        entries.insert("gone".into(), 99_999);
    }
    let before = t.st.clone();
    assert_eq!(errno_of(t.freeze(d.ino)), ENOENT);
    assert_unchanged(&before, &t.st);
}

#[test]
fn frozen_flags_survive_a_snapshot_round_trip() {
    let mut t = T::new();
    let tr = frozen_tree(&mut t);
    let bytes = bincode::serialize(&t.st).unwrap();
    let back: State = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back, t.st);
    let mut t2 = T {
        st: back,
        now: t.now,
    };
    assert!(t2.attr(tr.x.ino).frozen);
    assert!(!t2.attr(tr.out.ino).frozen);
    assert_eq!(errno_of(t2.w(create_req(tr.data.ino, "n", true))), EROFS);
    assert_eq!(t2.page(tr.data.ino, 0, 0), t.page(tr.data.ino, 0, 0));
}
