//! The core end to end over an in-memory metad and in-memory storage nodes
//! (with injectable node failures): the write, flush, read, degraded-read,
//! truncate and unlink paths without any process or socket.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey};
use torchfs_proto::meta::*;
use torchfs_rdma::{Transport, TransportError};

use std::future::Future;

use torchfs_proto::client::Answer;

pub(crate) use super::sync::lock;
use super::*;
use torchfs_storage_client::map::testing::test_map;

pub(crate) const CFG: StripeConfig = StripeConfig {
    k: 4,
    m: 2,
    unit_bytes: 16,
};
const STRIPE: u64 = 64;

#[derive(Default)]
pub(crate) struct MetaState {
    map: ClusterMap,
    pub(crate) files: HashMap<Ino, (Attr, Layout)>,
    names: HashMap<(Ino, String), Ino>,
    next_ino: Ino,
    /// Every `Open` seen: (client id, inode).
    pub(crate) opened: Vec<(u64, Ino)>,
    /// Every `KeepAlive` seen: (client id, open, deleted).
    pub(crate) keep_alives: Vec<(u64, Vec<Ino>, Vec<Ino>)>,
    /// Handed out by the next keep-alive.
    pub(crate) garbage: Vec<Garbage>,
    /// The names of every `LookupMany` seen, a list per request.
    pub(crate) lookup_many: Vec<Vec<String>>,
    /// `GetLayout` requests seen.
    pub(crate) get_layouts: usize,
    /// `GetLayouts` requests seen: the inodes each asked.
    pub(crate) layout_batches: Vec<usize>,
    /// `Lookup` requests seen.
    pub(crate) lookups: usize,
    /// `CommitStripes` requests seen (conflicting ones too).
    pub(crate) commits: usize,
    /// Before each `CommitStripes`: another client changes the named
    /// stripes that exist (a hot stripe): their valid bytes drop by one.
    pub(crate) interfere: bool,
    /// `ReadDirPlus` requests seen: (directory, start).
    pub(crate) readdir_plus: Vec<(Ino, String)>,
}

impl MetaState {
    /// Gives directory `ino` a later ctime (as metad does on each change
    /// in it); its ctime before and its attributes after.
    fn dir_changed(&mut self, ino: Ino) -> Option<ChangedDir> {
        let (attr, _) = self.files.get_mut(&ino)?;
        let before = attr.ctime_ns;
        attr.ctime_ns += 1;
        Some(ChangedDir {
            attr: attr.clone(),
            ctime_before_ns: Some(before),
        })
    }
}

impl MetaState {
    /// A new inode of `kind` named `name` in `parent`, with an empty layout.
    fn add(
        &mut self,
        parent: Ino,
        name: String,
        kind: FileKind,
        mode: u32,
        (uid, gid): (u32, u32),
    ) -> Attr {
        self.next_ino += 1;
        let ino = self.next_ino;
        let attr = Attr {
            ino,
            kind,
            mode,
            uid,
            gid,
            size: 0,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            rdev: 0,
            has_xattrs: false,
            frozen: false,
        };
        self.names.insert((parent, name), ino);
        let layout = Layout {
            config: CFG,
            stripes: vec![],
        };
        self.files.insert(ino, (attr.clone(), layout));
        attr
    }
}

#[derive(Clone)]
pub(crate) struct FakeMeta(pub(crate) Arc<Mutex<MetaState>>);

impl FakeMeta {
    pub(crate) fn new(nodes: u64) -> Self {
        let st = MetaState {
            map: test_map(CFG, nodes),
            next_ino: 100,
            ..Default::default()
        };
        FakeMeta(Arc::new(Mutex::new(st)))
    }

    fn handle(&self, req: MetaRequest) -> Result<MetaReply, MetaError> {
        if let MetaRequest::CreateOpen {
            parent,
            name,
            mode,
            umask,
            uid,
            gid,
            exclusive,
            client_id,
        } = req
        {
            let create = MetaRequest::Create {
                parent,
                name,
                mode,
                umask,
                uid,
                gid,
                exclusive,
            };
            let MetaReply::Attr(attr) = self.handle(create)? else {
                unreachable!("Create answers Attr");
            };
            let mut st = self.0.lock().unwrap();
            st.opened.push((client_id, attr.ino));
            let layout = st.files[&attr.ino].1.clone();
            return Ok(MetaReply::Layout { attr, layout });
        }
        let mut st = self.0.lock().unwrap();
        let enoent = || MetaError::fs(errno::ENOENT, "no such file");
        match req {
            MetaRequest::ClusterMap => Ok(MetaReply::ClusterMap(st.map.clone())),
            MetaRequest::Create {
                parent,
                name,
                mode,
                uid,
                gid,
                exclusive,
                ..
            } => {
                // Like metad: an existing name is EEXIST, or opened as is.
                if let Some(ino) = st.names.get(&(parent, name.clone())).copied() {
                    if exclusive {
                        return Err(MetaError::fs(errno::EEXIST, "file exists"));
                    }
                    return Ok(MetaReply::Attr(st.files[&ino].0.clone()));
                }
                Ok(MetaReply::Attr(st.add(
                    parent,
                    name,
                    FileKind::File,
                    mode,
                    (uid, gid),
                )))
            }
            MetaRequest::Mkdir { parent, name, .. } => {
                if st.names.contains_key(&(parent, name.clone())) {
                    return Err(MetaError::fs(errno::EEXIST, "file exists"));
                }
                Ok(MetaReply::Attr(st.add(
                    parent,
                    name,
                    FileKind::Dir,
                    0o755,
                    (0, 0),
                )))
            }
            MetaRequest::ReadDirPlus { ino, start, limit } => {
                st.readdir_plus.push((ino, start.clone()));
                let mut names: Vec<(String, Ino)> = st
                    .names
                    .iter()
                    .filter(|((p, n), _)| *p == ino && *n >= start)
                    .map(|((_, n), i)| (n.clone(), *i))
                    .collect();
                names.sort();
                let limit = if limit == 0 {
                    READDIR_PLUS_MAX
                } else {
                    limit.min(READDIR_PLUS_MAX)
                };
                Ok(MetaReply::LookedUp(
                    names
                        .into_iter()
                        .take(limit as usize)
                        .map(|(name, i)| NamedAttr {
                            name,
                            attr: st.files[&i].0.clone(),
                        })
                        .collect(),
                ))
            }
            MetaRequest::Lookup { parent, name } => {
                st.lookups += 1;
                let ino = *st.names.get(&(parent, name)).ok_or_else(enoent)?;
                Ok(MetaReply::Attr(st.files[&ino].0.clone()))
            }
            MetaRequest::LookupMany { parent, names } => {
                st.lookup_many.push(names.clone());
                let found = names
                    .into_iter()
                    .filter_map(|name| {
                        let ino = *st.names.get(&(parent, name.clone()))?;
                        Some(NamedAttr {
                            name,
                            attr: st.files[&ino].0.clone(),
                        })
                    })
                    .collect();
                Ok(MetaReply::LookedUp(found))
            }
            MetaRequest::GetAttr { ino } => Ok(MetaReply::Attr(
                st.files.get(&ino).ok_or_else(enoent)?.0.clone(),
            )),
            MetaRequest::GetLayout { ino } => {
                st.get_layouts += 1;
                let (attr, layout) = st.files.get(&ino).ok_or_else(enoent)?.clone();
                Ok(MetaReply::Layout { attr, layout })
            }
            MetaRequest::GetLayouts { inos } => {
                st.layout_batches.push(inos.len());
                let found = inos
                    .iter()
                    .filter_map(|i| st.files.get(i))
                    .filter(|(attr, _)| attr.kind == FileKind::File)
                    .map(|(attr, layout)| FileLayout {
                        attr: attr.clone(),
                        layout: layout.clone(),
                    })
                    .collect();
                Ok(MetaReply::Layouts(found))
            }
            MetaRequest::Open { ino, client_id } => {
                st.opened.push((client_id, ino));
                let (attr, layout) = st.files.get(&ino).ok_or_else(enoent)?.clone();
                Ok(MetaReply::Layout { attr, layout })
            }
            MetaRequest::KeepAlive {
                client_id,
                open,
                deleted,
            } => {
                st.keep_alives.push((client_id, open, deleted));
                Ok(MetaReply::KeepAlive {
                    lease_ms: 5_000,
                    garbage: std::mem::take(&mut st.garbage),
                })
            }
            MetaRequest::CommitStripes {
                ino,
                size_at_least,
                stripes,
                bases,
            } => {
                st.commits += 1;
                let interfere = st.interfere;
                let (attr, layout) = st.files.get_mut(&ino).ok_or_else(enoent)?;
                for e in layout.stripes.iter_mut() {
                    if interfere && stripes.iter().any(|s| s.stripe == e.stripe) {
                        e.valid_bytes = e.valid_bytes.saturating_sub(1);
                    }
                }
                let current = |s: u64| layout.stripes.iter().find(|o| o.stripe == s);
                if stripes
                    .iter()
                    .zip(&bases)
                    .any(|(e, base)| StripeBase::of(current(e.stripe)) != *base)
                {
                    let now = stripes
                        .iter()
                        .filter_map(|e| current(e.stripe).cloned())
                        .collect();
                    return Ok(MetaReply::Conflict {
                        attr: attr.clone(),
                        stripes: now,
                    });
                }
                let mut replaced = Vec::new();
                for e in stripes {
                    if let Some(pos) = layout.stripes.iter().position(|o| o.stripe == e.stripe) {
                        replaced.push(std::mem::replace(&mut layout.stripes[pos], e));
                    } else {
                        layout.stripes.push(e);
                    }
                }
                layout.stripes.sort_by_key(|e| e.stripe);
                attr.size = attr.size.max(size_at_least);
                Ok(MetaReply::Committed {
                    attr: attr.clone(),
                    replaced,
                })
            }
            MetaRequest::SetAttr { ino, set } => {
                let (attr, layout) = st.files.get_mut(&ino).ok_or_else(enoent)?;
                let mut freed = Vec::new();
                if let Some(size) = set.size {
                    let stripes = std::mem::take(&mut layout.stripes);
                    for mut e in stripes {
                        let start = e.stripe * STRIPE;
                        if start >= size {
                            freed.push(e);
                        } else {
                            e.valid_bytes = e.valid_bytes.min((size - start).min(STRIPE) as u32);
                            layout.stripes.push(e);
                        }
                    }
                    attr.size = size;
                }
                if let Some(mode) = set.mode {
                    attr.mode = mode;
                }
                Ok(MetaReply::AttrFreed {
                    attr: attr.clone(),
                    freed,
                })
            }
            MetaRequest::Unlink { parent, name } => {
                let ino = st.names.remove(&(parent, name)).ok_or_else(enoent)?;
                let (_, layout) = st.files.remove(&ino).ok_or_else(enoent)?;
                Ok(MetaReply::Unlinked {
                    ino,
                    freed: layout.stripes,
                })
            }
            other => Err(MetaError::Invalid(format!(
                "fake metad does not do {other:?}"
            ))),
        }
    }
}

impl MetaService for FakeMeta {
    fn call(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply, MetaError>> + Send {
        let reply = self.handle(req);
        async move { reply }
    }

    fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> impl Future<Output = Result<Answer, MetaError>> + Send {
        let changed = req.changed_dirs();
        let answer = self.handle(req).map(|reply| {
            let mut st = self.0.lock().unwrap();
            let dirs = changed
                .into_iter()
                .filter_map(|ino| st.dir_changed(ino))
                .collect();
            (reply, dirs)
        });
        async move { answer }
    }
}

type Fragments = HashMap<(SocketAddr, FragmentKey), Vec<u8>>;

#[derive(Clone, Default)]
pub(crate) struct FakeStore {
    fragments: Arc<Mutex<Fragments>>,
    /// Shard addresses that refuse connections.
    down: Arc<Mutex<HashSet<SocketAddr>>>,
    pub(crate) gets: Arc<AtomicUsize>,
    /// Delay of every get, to keep fetches in flight (ms).
    pub(crate) get_delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Delay of every put, to keep uploads in flight (ms).
    pub(crate) put_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl FakeStore {
    fn check_up(&self, addr: SocketAddr) -> Result<(), TransportError> {
        if self.down.lock().unwrap().contains(&addr) {
            return Err(TransportError::Connect {
                addr,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            });
        }
        Ok(())
    }

    /// Takes every shard of node `id` (ports as in `test_map`) down or up.
    fn set_node_down(&self, id: u64, down: bool) {
        let mut set = self.down.lock().unwrap();
        for port in [10_000 + 2 * id as u16, 10_001 + 2 * id as u16] {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if down {
                set.insert(addr);
            } else {
                set.remove(&addr);
            }
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.fragments.lock().unwrap().len()
    }
}

impl Transport for FakeStore {
    fn put(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        data: &[u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let delay_ms = self.put_delay_ms.load(Ordering::Relaxed);
        let up = self.check_up(addr);
        let (fragments, data) = (self.fragments.clone(), data.to_vec());
        async move {
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            up?;
            fragments.lock().unwrap().insert((addr, key), data);
            Ok(())
        }
    }

    fn get(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
        offset: u32,
        expected_crc32c: u32,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        self.gets.fetch_add(1, Ordering::Relaxed);
        let remote = |code, message: &str| TransportError::Remote {
            addr,
            key,
            code,
            message: message.into(),
        };
        let delay_ms = self.get_delay_ms.load(Ordering::Relaxed);
        let result = self.check_up(addr).and_then(|()| {
            let frags = self.fragments.lock().unwrap();
            let data = frags
                .get(&(addr, key))
                .ok_or_else(|| remote(FragmentErrorCode::NotFound, "no such fragment"))?;
            if crc32c::crc32c(data) != expected_crc32c {
                return Err(remote(FragmentErrorCode::ChecksumMismatch, "crc"));
            }
            let range = offset as usize..offset as usize + buf.len();
            let src = data
                .get(range)
                .ok_or_else(|| remote(FragmentErrorCode::BadRequest, "past the end"))?;
            buf.copy_from_slice(src);
            Ok(())
        });
        async move {
            if delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
            }
            result
        }
    }

    fn delete(
        &self,
        addr: SocketAddr,
        key: FragmentKey,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let result = self.check_up(addr).map(|()| {
            self.fragments.lock().unwrap().remove(&(addr, key));
        });
        async move { result }
    }
}

pub(crate) type TestClient = Client<FakeMeta, FakeStore>;

pub(crate) async fn client(
    meta: &FakeMeta,
    store: &FakeStore,
    dirty_stripes_max: usize,
) -> TestClient {
    // These tests are about the storage path: no epoch cache in front of
    // it (cache/tests.rs covers the cache).
    let config = ClientConfig {
        dirty_stripes_max,
        map_refresh_ms: 60_000,
        keep_alive_ms: 20,
        cache: CacheConfig {
            mem_bytes: 0,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    };
    Client::with_parts(config, meta.clone(), store.clone())
        .await
        .unwrap()
}

pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// Creates an empty file `name` (mode 0644, owned by root) in the root.
pub(crate) async fn create_file(c: &TestClient, name: &str) -> Attr {
    let mode = NewMode {
        mode: 0o644,
        umask: 0,
    };
    c.create(ROOT_INO, name, mode, Owner { uid: 0, gid: 0 }, true)
        .await
        .unwrap()
}

pub(crate) async fn read_all(c: &TestClient, fh: FileHandle) -> Vec<u8> {
    c.read(fh, 0, 1 << 20).await.unwrap().to_vec()
}

/// Lets background deletes run.
pub(crate) async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn random_writes_match_a_model_before_and_after_flush() {
    let (meta, store) = (FakeMeta::new(8), FakeStore::default());
    let c = client(&meta, &store, 2).await;
    let attr = c
        .create(
            ROOT_INO,
            "f",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    let mut model = Vec::new();
    let mut x: u64 = 12345;
    for round in 0..200u32 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let offset = (x >> 33) % 700;
        let len = 1 + (x >> 20) as usize % 90;
        let data = pattern(len, round as u8);
        assert_eq!(c.write(fh, offset, &data).await.unwrap(), len as u32);
        let end = offset as usize + len;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[offset as usize..end].copy_from_slice(&data);
        {
            let (file, _) = c.inner.handles.get(fh).unwrap();
            assert!(
                file.state.lock().await.dirty.len() <= 2,
                "dirty budget kept"
            );
        }
        if round % 50 == 49 {
            c.flush(fh).await.unwrap();
        }
        if round % 10 == 0 {
            assert_eq!(read_all(&c, fh).await, model, "round {round}");
            assert_eq!(c.getattr(attr.ino).await.unwrap().size, model.len() as u64);
        }
        // Unaligned partial reads.
        let got = c.read(fh, offset.saturating_sub(5), 40).await.unwrap();
        let lo = offset.saturating_sub(5) as usize;
        assert_eq!(got, model[lo..(lo + 40).min(model.len())]);
    }
    c.release(fh).await.unwrap();
    // Another client sees everything after close (close-to-open).
    let other = client(&meta, &store, 8).await;
    let fh = other.open(attr.ino, false, false).await.unwrap();
    assert_eq!(read_all(&other, fh).await, model);
    assert_eq!(
        other.getattr(attr.ino).await.unwrap().size,
        model.len() as u64
    );
    // Superseded generations were deleted: exactly one stored set per
    // stripe remains (k+m fragments for full stripes).
    settle().await;
    let layout = meta.0.lock().unwrap().files[&attr.ino].1.clone();
    let expected: usize = layout
        .stripes
        .iter()
        .map(|e| {
            (0..6)
                .filter(|&i| crate::stripe::fragment_bytes(&CFG, e.encoded_bytes, i) > 0)
                .count()
        })
        .sum();
    assert_eq!(store.count(), expected);
}

#[tokio::test]
async fn small_file_is_one_round_trip_and_survives_m_failures() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "small",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    c.write(fh, 0, b"hello").await.unwrap();
    c.release(fh).await.unwrap();
    assert_eq!(store.count(), 3, "one data fragment + two parity");

    let fh = c.open(attr.ino, false, false).await.unwrap();
    store.gets.store(0, Ordering::Relaxed);
    assert_eq!(read_all(&c, fh).await, b"hello");
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);

    let map = meta.0.lock().unwrap().map.clone();
    let group = map.group_of(attr.ino, 0).unwrap().nodes.clone();
    store.set_node_down(group[0], true);
    assert_eq!(
        read_all(&c, fh).await,
        b"hello",
        "decoded from a parity fragment"
    );
    store.set_node_down(group[4], true);
    assert_eq!(read_all(&c, fh).await, b"hello", "from the other parity");
    store.set_node_down(group[5], true);
    let err = c.read(fh, 0, 100).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
}

#[tokio::test]
async fn degraded_reads_of_full_stripes() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "big",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    let data = pattern(5 * STRIPE as usize + 21, 7);
    c.write(fh, 0, &data).await.unwrap();
    c.release(fh).await.unwrap();
    let fh = c.open(attr.ino, false, false).await.unwrap();
    // Six nodes, every group uses all six: any two down is survivable.
    for (a, b) in [(1, 2), (3, 6), (2, 5), (4, 1)] {
        store.set_node_down(a, true);
        store.set_node_down(b, true);
        assert_eq!(read_all(&c, fh).await, data, "nodes {a} and {b} down");
        assert_eq!(*c.read(fh, 13, 77).await.unwrap(), data[13..90]);
        store.set_node_down(a, false);
        store.set_node_down(b, false);
    }
    // A corrupted fragment is caught by its checksum and decoded around.
    {
        let mut frags = store.fragments.lock().unwrap();
        let (_, bytes) = frags
            .iter_mut()
            .find(|((_, k), _)| k.stripe == 1 && k.index == 2)
            .unwrap();
        bytes[3] ^= 0xFF;
    }
    assert_eq!(read_all(&c, fh).await, data);
    // The map saying a node is down routes around it without asking it.
    meta.0.lock().unwrap().map.nodes[0].state = NodeState::Down;
    meta.0.lock().unwrap().map.epoch += 1;
    let c2 = client(&meta, &store, 8).await;
    let fh2 = c2.open(attr.ino, false, false).await.unwrap();
    assert_eq!(read_all(&c2, fh2).await, data);
}

#[tokio::test]
async fn overwrite_after_commit_reads_modifies_and_writes() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "rmw",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    let mut model = pattern(3 * STRIPE as usize + 10, 1);
    c.write(fh, 0, &model).await.unwrap();
    c.release(fh).await.unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    c.write(fh, 70, b"XYZ").await.unwrap();
    model[70..73].copy_from_slice(b"XYZ");
    c.write(fh, 3 * STRIPE + 12, b"tail").await.unwrap();
    model.resize(3 * STRIPE as usize + 12, 0);
    model.extend_from_slice(b"tail");
    c.release(fh).await.unwrap();
    let other = client(&meta, &store, 8).await;
    let fh = other.open(attr.ino, false, false).await.unwrap();
    assert_eq!(read_all(&other, fh).await, model);
}

#[tokio::test]
async fn truncation_applies_to_metad_and_dirty_state() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "t",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    let data = pattern(200, 3);
    c.write(fh, 0, &data).await.unwrap();
    c.flush(fh).await.unwrap();
    c.write(fh, 180, &[0xEE; 40]).await.unwrap(); // dirty, past the cut
    let set = |size| SetAttr {
        size: Some(size),
        ..SetAttr::default()
    };
    assert_eq!(c.setattr(attr.ino, set(70)).await.unwrap().size, 70);
    assert_eq!(read_all(&c, fh).await, &data[..70]);
    assert_eq!(c.setattr(attr.ino, set(100)).await.unwrap().size, 100);
    let mut expect = data[..70].to_vec();
    expect.resize(100, 0);
    assert_eq!(read_all(&c, fh).await, expect, "extension reads zeros");
    c.write(fh, 90, b"ab").await.unwrap();
    expect[90..92].copy_from_slice(b"ab");
    c.release(fh).await.unwrap();
    let other = client(&meta, &store, 8).await;
    let fh = other.open(attr.ino, true, true).await.unwrap();
    assert_eq!(other.getattr(attr.ino).await.unwrap().size, 0);
    assert!(read_all(&other, fh).await.is_empty());
    other.release(fh).await.unwrap();
    let fh = c.open(attr.ino, false, false).await.unwrap();
    assert!(read_all(&c, fh).await.is_empty());
    settle().await;
    assert_eq!(store.count(), 0, "freed and dropped fragments deleted");
    let _ = expect;
}

#[tokio::test]
async fn writes_pass_with_m_nodes_down_and_fail_with_eio_beyond_keeping_the_data() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "w",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    // A full stripe: all k+m fragments are stored.
    let first: Vec<u8> = (0..CFG.stripe_bytes()).map(|i| (i % 251) as u8).collect();
    c.write(fh, 0, &first).await.unwrap();
    // m = 2 nodes down: the stripe is stored without their fragments, and
    // reads of it decode.
    store.set_node_down(2, true);
    store.set_node_down(5, true);
    c.flush(fh).await.unwrap();
    assert_eq!(read_all(&c, fh).await, first);
    // A third node down: fewer than k fragments could be stored.
    store.set_node_down(3, true);
    let second: Vec<u8> = first.iter().map(|b| b ^ 0x5a).collect();
    c.write(fh, 0, &second).await.unwrap();
    let err = c.flush(fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // The nodes come back: the kept write goes through, and the degraded
    // stripe written before reads back too.
    for id in [2, 3, 5] {
        store.set_node_down(id, false);
    }
    c.flush(fh).await.unwrap();
    assert_eq!(read_all(&c, fh).await, second);
    c.release(fh).await.unwrap();
}

#[tokio::test]
async fn no_placement_groups_is_enospc_and_unlink_frees() {
    let (meta, store) = (FakeMeta::new(3), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "x",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    c.write(fh, 0, b"abc").await.unwrap();
    assert_eq!(c.flush(fh).await.unwrap_err().errno(), libc::ENOSPC);
    let _ = c.release(fh).await;

    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "y",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    c.write(fh, 0, &pattern(150, 9)).await.unwrap();
    c.release(fh).await.unwrap();
    assert!(store.count() > 0);
    assert_eq!(c.lookup(ROOT_INO, "y").await.unwrap().ino, attr.ino);
    c.unlink(ROOT_INO, "y").await.unwrap();
    settle().await;
    assert_eq!(store.count(), 0);
    assert_eq!(
        c.lookup(ROOT_INO, "y").await.unwrap_err().errno(),
        libc::ENOENT
    );
    assert_eq!(c.read(fh, 0, 1).await.unwrap_err().errno(), libc::EBADF);
}

#[tokio::test]
async fn a_layout_replaced_by_another_client_is_refetched_on_read() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let writer = client(&meta, &store, 8).await;
    let reader = client(&meta, &store, 8).await;
    let attr = writer
        .create(
            ROOT_INO,
            "shared",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = writer.open(attr.ino, true, false).await.unwrap();
    writer.write(fh, 0, &pattern(100, 1)).await.unwrap();
    writer.release(fh).await.unwrap();

    let rfh = reader.open(attr.ino, false, false).await.unwrap();
    assert_eq!(read_all(&reader, rfh).await, pattern(100, 1));
    let fh = writer.open(attr.ino, true, false).await.unwrap();
    writer.write(fh, 0, &pattern(120, 2)).await.unwrap();
    writer.release(fh).await.unwrap();
    settle().await; // the old generation is deleted
    assert_eq!(read_all(&reader, rfh).await, pattern(120, 2));
}

#[tokio::test]
async fn the_map_is_refetched_after_a_placement_failure() {
    let (meta, store) = (FakeMeta::new(3), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "later",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    c.write(fh, 0, b"data").await.unwrap();
    // Nodes register after the client connected.
    meta.0.lock().unwrap().map = test_map(CFG, 6);
    assert_eq!(c.flush(fh).await.unwrap_err().errno(), libc::ENOSPC);
    settle().await; // the refresher was woken by the failure
    c.flush(fh).await.unwrap();
    assert_eq!(read_all(&c, fh).await, b"data");
}

#[tokio::test]
async fn empty_writes_change_nothing_and_huge_offsets_are_efbig() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = c
        .create(
            ROOT_INO,
            "e",
            NewMode {
                mode: 0o644,
                umask: 0,
            },
            Owner { uid: 0, gid: 0 },
            true,
        )
        .await
        .unwrap();
    let fh = c.open(attr.ino, true, false).await.unwrap();
    assert_eq!(c.write(fh, 1000, b"").await.unwrap(), 0);
    assert_eq!(c.getattr(attr.ino).await.unwrap().size, 0);
    assert_eq!(
        c.write(fh, u64::MAX - 1, b"abc").await.unwrap_err().errno(),
        libc::EFBIG
    );
    assert!(c.read(fh, u64::MAX - 1, 10).await.unwrap().is_empty());
    c.release(fh).await.unwrap();
    assert_eq!(store.count(), 0);
}

#[tokio::test]
async fn closes_with_nothing_to_do_are_done_at_once_and_others_are_not() {
    let (meta, store) = (FakeMeta::new(6), FakeStore::default());
    let c = client(&meta, &store, 8).await;
    let attr = create_file(&c, "f").await;
    let fh = c.open(attr.ino, true, false).await.unwrap();
    c.write(fh, 0, b"hello").await.unwrap();
    // Unflushed data: only the async path may close it.
    assert!(c.flush_now(attr.ino, fh, 7).is_none());
    assert!(c.release_now(attr.ino, fh, None).is_none());
    assert_eq!(store.count(), 0);
    c.flush(fh).await.unwrap();
    assert_eq!(store.count(), 3);
    assert!(matches!(c.flush_now(attr.ino, fh, 7), Some(Ok(()))));
    assert!(matches!(c.release_now(attr.ino, fh, Some(7)), Some(Ok(()))));
    // Released: the handle is gone.
    let gone = c.flush_now(attr.ino, fh, 7);
    assert!(
        matches!(gone, Some(Err(ClientError::BadHandle { .. }))),
        "{gone:?}"
    );
    // A read-only open closes at once too.
    let fh = c.open(attr.ino, false, false).await.unwrap();
    assert_eq!(read_all(&c, fh).await, b"hello");
    assert!(matches!(c.flush_now(attr.ino, fh, 8), Some(Ok(()))));
    assert!(matches!(c.release_now(attr.ino, fh, None), Some(Ok(()))));
}
