//! `LookupMany`: many names of one directory in one read.

use super::*;

fn names_of(r: Outcome) -> Vec<(String, Ino)> {
    match r {
        Ok(MetaReply::LookedUp(found)) => found.into_iter().map(|f| (f.name, f.attr.ino)).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lookup_many_answers_the_names_that_exist_in_the_order_asked() {
    let mut t = T::new();
    let b = t.create(ROOT_INO, "b");
    let a = t.create(ROOT_INO, "a");
    let d = t.mkdir(ROOT_INO, "d");
    let many = |parent, names: &[&str]| MetaRequest::LookupMany {
        parent,
        names: names.iter().map(|n| n.to_string()).collect(),
    };
    assert_eq!(
        names_of(t.r(many(ROOT_INO, &["b", "missing", "d", "a"]))),
        [
            ("b".to_string(), b.ino),
            ("d".to_string(), d.ino),
            ("a".to_string(), a.ino)
        ]
    );
    assert_eq!(names_of(t.r(many(d.ino, &["b"]))), []);
    assert_eq!(names_of(t.r(many(ROOT_INO, &[]))), []);
    // The same errors as a lookup: a bad name or parent fails the request.
    assert_eq!(errno_of(t.r(many(ROOT_INO, &["a", "x/y"]))), EINVAL);
    assert_eq!(errno_of(t.r(many(a.ino, &["b"]))), ENOTDIR);
    assert_eq!(errno_of(t.r(many(999_999, &["b"]))), ENOENT);
    // Bounded: one request holds at most LOOKUP_NAMES_MAX names.
    let too_many: Vec<String> = (0..=LOOKUP_NAMES_MAX).map(|i| format!("n{i}")).collect();
    let r = t.r(MetaRequest::LookupMany {
        parent: ROOT_INO,
        names: too_many,
    });
    assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
}

#[test]
fn readdir_plus_pages_entries_with_attributes_from_a_name_on() {
    let mut t = T::new();
    let d = t.mkdir(ROOT_INO, "d");
    let files: Vec<_> = ["c", "a", "e", "b", "d"]
        .iter()
        .map(|n| (n.to_string(), t.create(d.ino, n)))
        .collect();
    let ino_of = |n: &str| {
        files
            .iter()
            .find(|(f, _)| f == n)
            .map(|(_, a)| a.ino)
            .unwrap()
    };
    let plus = |start: &str, limit| MetaRequest::ReadDirPlus {
        ino: d.ino,
        start: start.to_string(),
        limit,
    };
    let all = names_of(t.r(plus("", 0)));
    let want: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| (n.to_string(), ino_of(n)))
        .collect();
    assert_eq!(all, want);
    // `start` is inclusive when the name exists, and need not exist.
    assert_eq!(names_of(t.r(plus("c", 2))), want[2..4]);
    assert_eq!(names_of(t.r(plus("bb", 0))), want[2..]);
    assert_eq!(names_of(t.r(plus("f", 0))), []);
    // The attributes are the inodes' own (as GetAttr answers them).
    match t.r(plus("e", 1)) {
        Ok(MetaReply::LookedUp(found)) => {
            assert_eq!(found[0].attr, files[2].1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        errno_of(t.r(MetaRequest::ReadDirPlus {
            ino: ino_of("a"),
            start: String::new(),
            limit: 0
        })),
        ENOTDIR
    );
}

#[test]
fn readdir_plus_answers_at_most_its_page_bound() {
    let mut t = T::new();
    let d = t.mkdir(ROOT_INO, "d");
    for i in 0..(READDIR_PLUS_MAX + 5) {
        t.create(d.ino, &format!("f{i:05}"));
    }
    for limit in [0, READDIR_PLUS_MAX + 1, u32::MAX] {
        let got = names_of(t.r(MetaRequest::ReadDirPlus {
            ino: d.ino,
            start: String::new(),
            limit,
        }));
        assert_eq!(got.len(), READDIR_PLUS_MAX as usize, "limit {limit}");
    }
}

#[test]
fn get_layouts_answers_the_files_that_exist_in_the_order_asked() {
    let mut t = T::new();
    let a = t.create(ROOT_INO, "a");
    let b = t.create(ROOT_INO, "b");
    let d = t.mkdir(ROOT_INO, "d");
    let inos = |r: Outcome| match r {
        Ok(MetaReply::Layouts(found)) => found.into_iter().map(|f| f.attr.ino).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let ask = |inos: Vec<Ino>| MetaRequest::GetLayouts { inos };
    // A directory and a missing inode are left out, as is nothing else.
    assert_eq!(
        inos(t.r(ask(vec![b.ino, d.ino, 999_999, a.ino]))),
        [b.ino, a.ino]
    );
    assert_eq!(inos(t.r(ask(vec![]))), Vec::<Ino>::new());
    // Each answer is what GetLayout says of that file.
    let Ok(MetaReply::Layouts(found)) = t.r(ask(vec![a.ino])) else {
        panic!("GetLayouts")
    };
    match t.r(MetaRequest::GetLayout { ino: a.ino }) {
        Ok(MetaReply::Layout { attr, layout }) => {
            assert_eq!(found[0].attr, attr);
            assert_eq!(found[0].layout, layout);
        }
        other => panic!("{other:?}"),
    }
    let too_many = (0..=torchfs_proto::meta::LAYOUTS_MAX as u64).collect();
    let r = t.r(ask(too_many));
    assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
}
