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
