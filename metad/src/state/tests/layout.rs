//! Layout commits and truncation.

use super::*;

#[test]
fn truncation_drops_and_clamps_stripes() {
    // stripe_bytes = 200
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f");
    t.commit(f.ino, 800, &[0, 1, 2, 3]).unwrap();
    let trunc = |size| MetaRequest::SetAttr {
        ino: f.ino,
        set: SetAttr {
            size: Some(size),
            ..Default::default()
        },
    };
    let r = t.w(trunc(450)).unwrap();
    let MetaReply::AttrFreed { attr, freed } = r else {
        panic!("{r:?}")
    };
    assert_eq!(attr.size, 450);
    assert_eq!(attr.mtime_ns, t.now);
    assert_eq!(freed, vec![stripe(3, 200)]);
    let MetaReply::Layout { layout, .. } = t.r(MetaRequest::GetLayout { ino: f.ino }).unwrap()
    else {
        panic!()
    };
    assert_eq!(layout.stripes.len(), 3);
    assert_eq!(layout.stripes[2].valid_bytes, 50);
    assert_eq!(layout.stripes[2].encoded_bytes, 200);
    assert_eq!(layout.stripes[1].valid_bytes, 200);
    // Exactly on a boundary: stripe 2 goes entirely.
    let MetaReply::AttrFreed { freed, .. } = t.w(trunc(400)).unwrap() else {
        panic!()
    };
    assert_eq!(freed.len(), 1);
    assert_eq!(freed[0].stripe, 2);
    // Growing frees nothing and keeps the layout.
    let MetaReply::AttrFreed { attr, freed } = t.w(trunc(10_000)).unwrap() else {
        panic!()
    };
    assert_eq!((attr.size, freed.len()), (10_000, 0));
    let MetaReply::AttrFreed { freed, .. } = t.w(trunc(0)).unwrap() else {
        panic!()
    };
    assert_eq!(freed.len(), 2);
}

#[test]
fn commit_layout_replaces_by_stripe() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f");
    let r = t.commit(f.ino, 500, &[2, 0]).unwrap();
    let MetaReply::Committed { attr, replaced } = r else {
        panic!()
    };
    assert_eq!((attr.size, replaced.len()), (500, 0));
    let mut newer = stripe(2, 100);
    newer.generation = 2;
    let r = t
        .w(MetaRequest::CommitLayout {
            ino: f.ino,
            size: 500,
            stripes: vec![newer.clone(), stripe(1, 200)],
        })
        .unwrap();
    let MetaReply::Committed { replaced, .. } = r else {
        panic!()
    };
    assert_eq!(replaced, vec![stripe(2, 200)]);
    let MetaReply::Layout { layout, .. } = t.r(MetaRequest::GetLayout { ino: f.ino }).unwrap()
    else {
        panic!()
    };
    assert_eq!(layout.stripes, vec![stripe(0, 200), stripe(1, 200), newer]);
    // Malformed entries.
    let mut bad = stripe(5, 200);
    bad.crcs.pop();
    let r = t.w(MetaRequest::CommitLayout {
        ino: f.ino,
        size: 1,
        stripes: vec![bad],
    });
    assert!(matches!(r, Err(MetaError::Invalid(_))));
    let r = t.w(MetaRequest::CommitLayout {
        ino: f.ino,
        size: 1,
        stripes: vec![stripe(5, 201)],
    });
    assert!(matches!(r, Err(MetaError::Invalid(_))));
    let r = t.w(MetaRequest::CommitLayout {
        ino: f.ino,
        size: 1,
        stripes: vec![stripe(1, 2), stripe(1, 2)],
    });
    assert!(matches!(r, Err(MetaError::Invalid(_))));
    assert_eq!(errno_of(t.commit(ROOT_INO, 1, &[])), EISDIR);
}

#[test]
fn create_open_answers_the_layout_of_a_new_or_existing_file() {
    let mut t = T::new();
    let req = |name: &str, exclusive| MetaRequest::CreateOpen {
        parent: ROOT_INO,
        name: name.into(),
        mode: 0o640,
        umask: 0o022,
        uid: 3,
        gid: 4,
        exclusive,
        client_id: 9,
    };
    let Ok(MetaReply::Layout { attr, layout }) = t.w(req("f", true)) else {
        panic!("new file")
    };
    assert_eq!(
        (attr.mode & 0o7777, attr.uid, attr.gid, attr.size),
        (0o640, 3, 4, 0)
    );
    assert!(layout.stripes.is_empty());
    let found = t.r(MetaRequest::Lookup {
        parent: ROOT_INO,
        name: "f".into(),
    });
    assert!(matches!(found, Ok(MetaReply::Attr(a)) if a.ino == attr.ino));

    // Without O_EXCL an existing file opens with its stripes; with it, EEXIST.
    t.commit(attr.ino, 300, &[0, 1]).unwrap();
    let Ok(MetaReply::Layout {
        attr: again,
        layout,
    }) = t.w(req("f", false))
    else {
        panic!("existing file")
    };
    assert_eq!(
        (again.ino, again.size, layout.stripes.len()),
        (attr.ino, 300, 2)
    );
    let err = t.w(req("f", true)).unwrap_err();
    assert!(
        matches!(err, MetaError::Fs { errno, .. } if errno == errno::EEXIST),
        "{err:?}"
    );
    // A directory in the way: EISDIR, nothing created.
    t.mkdir(ROOT_INO, "d");
    let err = t.w(req("d", false)).unwrap_err();
    assert!(
        matches!(err, MetaError::Fs { errno, .. } if errno == errno::EISDIR),
        "{err:?}"
    );
}
