//! Layout commits and truncation.

use super::*;
use torchfs_proto::meta::StripeBase;

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

/// A `CommitStripes` of `stripes` (generation `generation`, 200 bytes each)
/// over `bases`.
fn commit_stripes(
    ino: Ino,
    size: u64,
    stripes: &[(u64, u64)],
    bases: &[StripeBase],
) -> MetaRequest {
    MetaRequest::CommitStripes {
        ino,
        size_at_least: size,
        stripes: stripes
            .iter()
            .map(|&(s, generation)| StripeEntry {
                generation,
                ..stripe(s, 200)
            })
            .collect(),
        bases: bases.to_vec(),
    }
}

fn base(generation: u64, valid_bytes: u32) -> StripeBase {
    StripeBase {
        generation,
        valid_bytes,
    }
}

#[test]
fn commit_stripes_commits_only_over_the_version_it_was_based_on() {
    let mut t = T::new();
    let f = t.create(ROOT_INO, "f");
    let hole = StripeBase::default();
    // Two stripes over holes: committed, size as asked.
    let r = t.w(commit_stripes(f.ino, 400, &[(0, 5), (1, 5)], &[hole, hole]));
    let Ok(MetaReply::Committed { attr, replaced }) = r else {
        panic!("{r:?}")
    };
    assert_eq!((attr.size, replaced.len()), (400, 0));
    // A second writer based stripe 1 on the hole too: nothing changes, and
    // the answer names stripe 1 as it is now.
    let before = t.st.clone();
    let r = t.w(commit_stripes(f.ino, 800, &[(1, 6), (3, 6)], &[hole, hole]));
    let Ok(MetaReply::Conflict { attr, stripes }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(attr.size, 400);
    assert_eq!(stripes.len(), 1);
    assert_eq!((stripes[0].stripe, stripes[0].generation), (1, 5));
    assert_unchanged(&before, &t.st);
    // Merged into generation 5: committed; the size never shrinks.
    let r = t.w(commit_stripes(f.ino, 300, &[(1, 7)], &[base(5, 200)]));
    let Ok(MetaReply::Committed { attr, replaced }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(attr.size, 400, "a commit does not shrink the file");
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].generation, 5);
    // A truncation that clamps stripe 1 (same generation, fewer valid
    // bytes) is a new version: a write based on the old one conflicts.
    t.w(MetaRequest::SetAttr {
        ino: f.ino,
        set: SetAttr {
            size: Some(250),
            ..Default::default()
        },
    })
    .unwrap();
    let r = t.w(commit_stripes(f.ino, 400, &[(1, 8)], &[base(7, 200)]));
    let Ok(MetaReply::Conflict { stripes, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!((stripes[0].generation, stripes[0].valid_bytes), (7, 50));
    // A stripe that is gone is answered by its absence.
    t.w(MetaRequest::SetAttr {
        ino: f.ino,
        set: SetAttr {
            size: Some(0),
            ..Default::default()
        },
    })
    .unwrap();
    let r = t.w(commit_stripes(f.ino, 400, &[(1, 8)], &[base(7, 50)]));
    let Ok(MetaReply::Conflict { attr, stripes }) = r else {
        panic!("{r:?}")
    };
    assert_eq!((attr.size, stripes.len()), (0, 0));
    let r = t.w(commit_stripes(f.ino, 400, &[(1, 8)], &[hole]));
    let Ok(MetaReply::Committed { attr, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(attr.size, 400, "the size grows to the writer's end");
    // Bases that do not match the stripes are refused.
    let r = t.w(commit_stripes(f.ino, 400, &[(1, 9)], &[]));
    assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
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
