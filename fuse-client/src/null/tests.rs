//! The null backend under the client core, as the FUSE front-end drives
//! it, and its metadata service on its own.

use torchfs_proto::meta::{
    errno, FileKind, FileLock, Ino, LockKind, MetaError, MetaReply, MetaRequest, RenameMode,
    SetAttr, StripeBase, StripeEntry, ROOT_INO,
};

use super::{NullMeta, NullTransport};
use crate::core::{Client, ClientConfig, ClientError, MetaService, NewMode, Owner};

type NullClient = Client<NullMeta, NullTransport>;

const FILE_MODE: NewMode = NewMode {
    mode: 0o644,
    umask: 0o022,
};
const DIR_MODE: NewMode = NewMode {
    mode: 0o755,
    umask: 0o022,
};
const ROOT: Owner = Owner { uid: 0, gid: 0 };

async fn client(meta: &NullMeta, transport: &NullTransport) -> NullClient {
    let config = ClientConfig {
        metad: Vec::new(),
        ..ClientConfig::default()
    };
    Client::with_parts(config, meta.clone(), transport.clone())
        .await
        .unwrap()
}

fn errno_of(result: Result<impl std::fmt::Debug, ClientError>) -> i32 {
    result.unwrap_err().errno()
}

#[tokio::test]
async fn create_then_lookup_then_readdir() {
    let meta = NullMeta::default();
    let c = client(&meta, &NullTransport::new()).await;
    let a = c
        .create(ROOT_INO, "a", FILE_MODE, ROOT, true)
        .await
        .unwrap();
    assert_eq!((a.kind, a.mode, a.size), (FileKind::File, 0o644, 0));
    c.mkdir(ROOT_INO, "d", DIR_MODE, ROOT).await.unwrap();
    assert_eq!(
        errno_of(c.create(ROOT_INO, "a", FILE_MODE, ROOT, true).await),
        libc::EEXIST
    );

    // A second client (nothing cached) asks the namespace.
    let c2 = client(&meta, &NullTransport::new()).await;
    assert_eq!(c2.lookup(ROOT_INO, "a").await.unwrap().ino, a.ino);
    assert_eq!(errno_of(c2.lookup(ROOT_INO, "b").await), libc::ENOENT);
    let listed: Vec<(String, FileKind)> = c2
        .readdir(ROOT_INO, "", 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.kind))
        .collect();
    assert_eq!(
        listed,
        vec![("a".into(), FileKind::File), ("d".into(), FileKind::Dir)]
    );
    assert_eq!(c2.getattr(ROOT_INO).await.unwrap().nlink, 3);
}

#[tokio::test]
async fn write_then_read_returns_the_pattern_of_the_written_length() {
    let meta = NullMeta::default();
    let transport = NullTransport::new();
    let c = client(&meta, &transport).await;
    let (attr, fh) = c
        .create_open(ROOT_INO, "f", FILE_MODE, ROOT, true, false)
        .await
        .unwrap();
    let len_bytes = 300_000;
    let written = c.write(fh, 0, &vec![7u8; len_bytes]).await.unwrap();
    assert_eq!(written as usize, len_bytes);
    c.flush(fh).await.unwrap();
    c.release(fh).await.unwrap();
    // One stripe of k=4 m=2 with 1 MiB units: data fragment 0 and the two
    // parity fragments hold bytes, data fragments 1..3 are not stored.
    let moved = transport.moved();
    assert_eq!(
        (moved.puts, moved.put_bytes),
        (3, 3 * len_bytes as u64),
        "{moved:?}"
    );

    let fh = c.open(attr.ino, false, false).await.unwrap();
    let got = c.read(fh, 0, 1 << 20).await.unwrap();
    let mut want = vec![0u8; len_bytes];
    transport.fill(0, &mut want);
    assert!(*got == want[..], "read {} bytes", got.len());
    assert_eq!(c.getattr(attr.ino).await.unwrap().size, len_bytes as u64);
    c.release(fh).await.unwrap();
    assert!(transport.moved().gets > 0);
}

#[tokio::test]
async fn unsupported_requests_are_refused_with_eopnotsupp() {
    let meta = NullMeta::default();
    let err = meta
        .call(MetaRequest::Freeze { ino: ROOT_INO })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MetaError::Fs { errno: e, message } if *e == errno::EOPNOTSUPP && message.contains("Freeze")),
        "{err:?}"
    );
    let c = client(&meta, &NullTransport::new()).await;
    assert_eq!(
        errno_of(c.symlink(ROOT_INO, "l", "a", ROOT).await),
        libc::EOPNOTSUPP
    );
    c.create(ROOT_INO, "a", FILE_MODE, ROOT, true)
        .await
        .unwrap();
    c.create(ROOT_INO, "b", FILE_MODE, ROOT, true)
        .await
        .unwrap();
    let exchange = c
        .rename(ROOT_INO, "a", ROOT_INO, "b", RenameMode::Exchange)
        .await;
    assert_eq!(errno_of(exchange), libc::EOPNOTSUPP);
}

#[tokio::test]
async fn rename_unlink_and_rmdir_keep_posix_rules() {
    let meta = NullMeta::default();
    let c = client(&meta, &NullTransport::new()).await;
    let d = c.mkdir(ROOT_INO, "d", DIR_MODE, ROOT).await.unwrap().ino;
    let f = c
        .create(ROOT_INO, "f", FILE_MODE, ROOT, true)
        .await
        .unwrap();
    c.rename(ROOT_INO, "f", d, "g", RenameMode::Replace)
        .await
        .unwrap();
    let c2 = client(&meta, &NullTransport::new()).await;
    assert_eq!(c2.lookup(d, "g").await.unwrap().ino, f.ino);
    assert_eq!(errno_of(c2.lookup(ROOT_INO, "f").await), libc::ENOENT);

    // Over an existing file: replaced; NOREPLACE refuses.
    c.create(ROOT_INO, "h", FILE_MODE, ROOT, true)
        .await
        .unwrap();
    let noreplace = c.rename(ROOT_INO, "h", d, "g", RenameMode::NoReplace).await;
    assert_eq!(errno_of(noreplace), libc::EEXIST);
    c.rename(ROOT_INO, "h", d, "g", RenameMode::Replace)
        .await
        .unwrap();
    let replaced = meta.call(MetaRequest::GetAttr { ino: f.ino }).await;
    assert_eq!(replaced.unwrap_err().errno(), errno::ENOENT);

    assert_eq!(errno_of(c.rmdir(ROOT_INO, "d").await), libc::ENOTEMPTY);
    assert_eq!(errno_of(c.unlink(ROOT_INO, "d").await), libc::EISDIR);
    let sub = c.mkdir(d, "sub", DIR_MODE, ROOT).await.unwrap().ino;
    let into_itself = c.rename(ROOT_INO, "d", sub, "x", RenameMode::Replace).await;
    assert_eq!(errno_of(into_itself), libc::EINVAL);
    c.rmdir(d, "sub").await.unwrap();
    c.unlink(d, "g").await.unwrap();
    c.rmdir(ROOT_INO, "d").await.unwrap();
    assert!(c2.readdir(ROOT_INO, "", 0).await.unwrap().is_empty());
    assert_eq!(c2.getattr(ROOT_INO).await.unwrap().nlink, 2);
}

/// The replies of `req` from `meta`, unwrapped.
async fn call(meta: &NullMeta, req: MetaRequest) -> MetaReply {
    meta.call(req).await.unwrap()
}

fn create_open(name: &str, client_id: u64) -> MetaRequest {
    MetaRequest::CreateOpen {
        parent: ROOT_INO,
        name: name.into(),
        mode: 0o644,
        umask: 0,
        uid: 0,
        gid: 0,
        exclusive: true,
        client_id,
    }
}

async fn create_file(meta: &NullMeta, name: &str, client_id: u64) -> Ino {
    match call(meta, create_open(name, client_id)).await {
        MetaReply::Layout { attr, .. } => attr.ino,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_file_unlinked_while_open_stays_until_its_lease_lets_go() {
    let meta = NullMeta::default();
    let ino = create_file(&meta, "f", 7).await;
    let unlink = MetaRequest::Unlink {
        parent: ROOT_INO,
        name: "f".into(),
    };
    assert!(matches!(
        call(&meta, unlink).await,
        MetaReply::Unlinked { ino: i, freed } if i == ino && freed.is_empty()
    ));
    match call(&meta, MetaRequest::GetAttr { ino }).await {
        MetaReply::Attr(attr) => assert_eq!(attr.nlink, 0),
        other => panic!("{other:?}"),
    }
    let keep_alive = |open: Vec<Ino>| MetaRequest::KeepAlive {
        client_id: 7,
        open,
        deleted: Vec::new(),
    };
    match call(&meta, keep_alive(vec![ino])).await {
        MetaReply::KeepAlive { garbage, .. } => assert!(garbage.is_empty()),
        other => panic!("{other:?}"),
    }
    match call(&meta, keep_alive(Vec::new())).await {
        MetaReply::KeepAlive { garbage, .. } => {
            assert_eq!(garbage.iter().map(|g| g.ino).collect::<Vec<_>>(), [ino])
        }
        other => panic!("{other:?}"),
    }
    assert!(meta.call(MetaRequest::GetAttr { ino }).await.is_err());
}

#[tokio::test]
async fn locks_conflict_between_owners_and_unlocks_split_ranges() {
    let meta = NullMeta::default();
    let ino = create_file(&meta, "f", 1).await;
    let lock = |client_id, kind, start, end| FileLock {
        client_id,
        owner: 1,
        pid: 1,
        kind,
        start,
        end,
    };
    let set = |lock| MetaRequest::SetLock { ino, lock };
    call(&meta, set(lock(1, LockKind::Write, 0, 99))).await;
    let read = lock(2, LockKind::Read, 50, 60);
    let err = meta.call(set(read)).await.unwrap_err();
    assert_eq!(err.errno(), errno::EAGAIN);
    match call(&meta, MetaRequest::GetLock { ino, lock: read }).await {
        MetaReply::Lock { conflict } => assert_eq!(conflict, Some(lock(1, LockKind::Write, 0, 99))),
        other => panic!("{other:?}"),
    }
    call(&meta, set(lock(1, LockKind::Unlock, 40, 69))).await;
    call(&meta, set(read)).await;
    let err = meta
        .call(set(lock(2, LockKind::Read, 69, 70)))
        .await
        .unwrap_err();
    assert_eq!(err.errno(), errno::EAGAIN, "70..=99 is still locked");
}

fn entry(stripe: u64, generation: u64, valid_bytes: u32) -> StripeEntry {
    StripeEntry {
        stripe,
        generation,
        encoded_bytes: valid_bytes,
        valid_bytes,
        crcs: vec![0; 6],
    }
}

#[tokio::test]
async fn commits_check_their_bases_and_truncation_frees_stripes() {
    let meta = NullMeta::default();
    let ino = create_file(&meta, "f", 1).await;
    let stripe_bytes = 4 << 20;
    let commit = |stripes: Vec<StripeEntry>, bases: Vec<StripeBase>| MetaRequest::CommitStripes {
        ino,
        size_at_least: 2 * stripe_bytes,
        stripes,
        bases,
    };
    let first = commit(
        vec![
            entry(0, 1, stripe_bytes as u32),
            entry(1, 1, stripe_bytes as u32),
        ],
        vec![StripeBase::default(); 2],
    );
    assert!(matches!(
        call(&meta, first).await,
        MetaReply::Committed { attr, replaced } if attr.size == 2 * stripe_bytes && replaced.is_empty()
    ));
    // Based on a hole, but stripe 0 exists now: nothing changes.
    let stale = commit(vec![entry(0, 2, 10)], vec![StripeBase::default()]);
    assert!(matches!(
        call(&meta, stale).await,
        MetaReply::Conflict { stripes, .. } if stripes == [entry(0, 1, stripe_bytes as u32)]
    ));
    let truncate = MetaRequest::SetAttr {
        ino,
        set: SetAttr {
            size: Some(100),
            ..SetAttr::default()
        },
    };
    assert!(matches!(
        call(&meta, truncate).await,
        MetaReply::AttrFreed { attr, freed } if attr.size == 100 && freed == [entry(1, 1, stripe_bytes as u32)]
    ));
    match call(&meta, MetaRequest::GetLayout { ino }).await {
        MetaReply::Layout { layout, .. } => {
            assert_eq!(layout.stripes.len(), 1);
            assert_eq!(layout.stripes[0].valid_bytes, 100);
        }
        other => panic!("{other:?}"),
    }
}
