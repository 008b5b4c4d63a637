//! What a write reports of the directories it changed
//! (`State::apply_reporting`), and the ctime order that report relies on.

use super::*;
use torchfs_proto::meta::RenameMode;

impl T {
    /// A write at `now`, with its report.
    fn w_at(&mut self, now: i64, req: MetaRequest) -> Applied {
        self.st.apply_reporting(&Command {
            now_ns: now,
            op: super::super::Op::Client {
                req,
                write_id: None,
                closed: Vec::new(),
            },
        })
    }
}

fn mkdir(parent: Ino, name: &str) -> MetaRequest {
    MetaRequest::Mkdir {
        parent,
        name: name.into(),
        mode: 0o755,
        umask: 0,
        uid: 0,
        gid: 0,
    }
}

#[test]
fn each_change_names_the_ctime_before_it_even_when_the_clock_goes_back() {
    let mut t = T::new();
    let first = t.w_at(5_000, mkdir(ROOT_INO, "a"));
    assert!(first.outcome.is_ok());
    let root = first.dirs[0].attr.clone();
    assert_eq!(root.ino, ROOT_INO);
    assert_eq!(root.ctime_ns, 5_000);
    // The clock steps back: the directory's ctime still moves forward, so
    // no two changes share one.
    let second = t.w_at(4_000, mkdir(ROOT_INO, "b"));
    let after = &second.dirs[0];
    assert_eq!(after.ctime_before_ns, Some(5_000));
    assert_eq!(after.attr.ctime_ns, 5_001);
    // A change of the directory's own attributes counts too.
    let chmod = t.w_at(
        4_500,
        MetaRequest::SetAttr {
            ino: ROOT_INO,
            set: SetAttr {
                mode: Some(0o700),
                ..Default::default()
            },
        },
    );
    assert!(chmod.outcome.is_ok());
    assert!(chmod.dirs.is_empty(), "a setattr changes no entries");
    let third = t.w_at(6_000, mkdir(ROOT_INO, "c"));
    assert_eq!(third.dirs[0].ctime_before_ns, Some(5_002));
    assert_eq!(third.dirs[0].attr.ctime_ns, 6_000);
}

#[test]
fn failed_writes_report_nothing_and_renames_report_both_directories() {
    let mut t = T::new();
    let a = match t.w_at(10, mkdir(ROOT_INO, "a")).outcome {
        Ok(MetaReply::Attr(a)) => a,
        other => panic!("mkdir: {other:?}"),
    };
    let taken = t.w_at(11, mkdir(ROOT_INO, "a"));
    assert!(taken.outcome.is_err());
    assert!(taken.dirs.is_empty());
    t.w_at(12, mkdir(ROOT_INO, "b"));
    let moved = t.w_at(
        13,
        MetaRequest::Rename {
            parent: ROOT_INO,
            name: "b".into(),
            new_parent: a.ino,
            new_name: "b".into(),
            mode: RenameMode::Replace,
        },
    );
    let report: Vec<_> = moved
        .dirs
        .iter()
        .map(|d| (d.attr.ino, d.ctime_before_ns, d.attr.ctime_ns))
        .collect();
    assert_eq!(
        report,
        vec![(ROOT_INO, Some(12), 13), (a.ino, Some(10), 13)]
    );
}
