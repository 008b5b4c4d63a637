//! Unit tests of `meta`.

use super::*;

#[test]
fn placement_spreads_stripes_over_groups() {
    let mut counts = [0u32; 6];
    for stripe in 0..6000 {
        counts[(placement_hash(7, stripe) % 6) as usize] += 1;
    }
    for c in counts {
        assert!((800..1200).contains(&c), "uneven placement {counts:?}");
    }
}

#[test]
fn write_ids_are_checked() {
    let id = |client_id, seq, lowest_outstanding_seq| WriteId {
        client_id,
        seq,
        lowest_outstanding_seq,
    };
    assert!(id(7, 1, 1).check().is_ok());
    assert!(id(7, 9, 3).check().is_ok());
    assert!(id(0, 1, 1).check().is_err());
    assert!(id(7, 0, 0).check().is_err());
    assert!(id(7, 3, 4).check().is_err());
}

#[test]
fn only_mutations_are_writes() {
    assert!(!MetaRequest::GetAttr { ino: 1 }.is_write());
    assert!(MetaRequest::Unlink {
        parent: 1,
        name: "a".into()
    }
    .is_write());
}
