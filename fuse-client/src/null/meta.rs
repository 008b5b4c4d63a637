//! [`NullMeta`]: the metadata service of the null backend. One in-memory
//! namespace (`namespace`) behind a mutex, answering each request
//! synchronously with the replies metad gives, the directories a write
//! changed included (so the core caches what it caches against metad).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use torchfs_proto::client::Answer;
use torchfs_proto::meta::{
    errno, ChangedDir, ClusterMap, Ino, MetaError, MetaReply, MetaRequest, NodeInfo, NodeState,
    NodeStatus, PlacementGroup, StripeConfig,
};

use super::namespace::{Namespace, CAPACITY_BYTES, LEASE_MS};
use crate::core::MetaService;

/// Address of the cluster map's nodes: TEST-NET-1 (RFC 5737), reserved
/// for documentation, so a request that reached a real socket by mistake
/// would fail instead of reaching some local service. The null transport
/// never dials it.
const NODE_HOST: &str = "192.0.2.1";

/// The discard port; as unused as the host.
const NODE_PORT: u16 = 9;

/// The null backend's metadata service. Clones share one namespace: a
/// fresh client over a clone sees the files the last one left (what a
/// remount of a real cluster sees).
#[derive(Clone)]
pub struct NullMeta {
    state: Arc<Mutex<Namespace>>,
}

impl Default for NullMeta {
    fn default() -> Self {
        Self::new(StripeConfig::DEFAULT)
    }
}

impl NullMeta {
    /// An empty namespace (the root directory, mode 0755, owned by root)
    /// whose files are cut into stripes of `config`; the cluster map
    /// names `k + m` nodes, one placement group per rotation of them.
    pub fn new(config: StripeConfig) -> Self {
        let state = Namespace::new(cluster_map(config), now_ns());
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Namespace> {
        // Every change is made after its checks pass, with no step that can
        // panic halfway: a poisoned namespace is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request, with the directories it changed (their
    /// attributes after it, and their ctime before).
    fn answer(&self, req: MetaRequest) -> Result<Answer, MetaError> {
        let changed = req.changed_dirs();
        let mut ns = self.lock();
        let before: Vec<(Ino, Option<i64>)> = changed
            .iter()
            .map(|&dir| (dir, ns.attr(dir).ok().map(|a| a.ctime_ns)))
            .collect();
        let reply = handle(&mut ns, req, Instant::now(), now_ns())?;
        let dirs = before
            .into_iter()
            .filter_map(|(dir, ctime_before_ns)| {
                Some(ChangedDir {
                    attr: ns.attr(dir).ok()?.clone(),
                    ctime_before_ns,
                })
            })
            .collect();
        Ok((reply, dirs))
    }
}

impl MetaService for NullMeta {
    fn call(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply, MetaError>> + Send {
        let reply = self.answer(req).map(|(reply, _)| reply);
        async move { reply }
    }

    fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> impl Future<Output = Result<Answer, MetaError>> + Send {
        let answer = self.answer(req);
        async move { answer }
    }
}

/// The cluster map: `k + m` nodes at an address nobody dials, all up.
fn cluster_map(config: StripeConfig) -> ClusterMap {
    let width = config.width() as u64;
    let nodes = (1..=width)
        .map(|id| NodeStatus {
            info: NodeInfo {
                id,
                host: NODE_HOST.into(),
                shard_ports: vec![NODE_PORT],
                capacity_bytes: CAPACITY_BYTES / width,
                used_bytes: 0,
                cores: 1,
                transports: vec!["null".into()],
            },
            state: NodeState::Up,
            last_heartbeat_ms_ago: Some(0),
        })
        .collect();
    let groups = (0..width)
        .map(|g| PlacementGroup {
            id: g as u32,
            nodes: (0..width).map(|i| 1 + (g + i) % width).collect(),
        })
        .collect();
    ClusterMap {
        epoch: 1,
        config,
        nodes,
        groups,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The answer to a request the null backend does not serve.
fn unsupported(req: &MetaRequest) -> MetaError {
    let text = format!("{req:?}");
    let op = text
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("");
    MetaError::fs(
        errno::EOPNOTSUPP,
        format!("the null backend (FUSE ceiling) does not serve {op}"),
    )
}

/// Routes one request to the namespace.
fn handle(
    ns: &mut Namespace,
    req: MetaRequest,
    now: Instant,
    now_ns: i64,
) -> Result<MetaReply, MetaError> {
    use MetaReply as R;
    use MetaRequest as Q;
    Ok(match req {
        Q::ClusterMap => R::ClusterMap(ns.map().clone()),
        Q::StatFs => R::StatFs(ns.statfs()),
        Q::Lookup { parent, name } => R::Attr(ns.lookup(parent, &name)?.clone()),
        Q::LookupMany { parent, names } => R::LookedUp(ns.lookup_many(parent, names)?),
        Q::GetAttr { ino } => R::Attr(ns.attr(ino)?.clone()),
        Q::GetXattrs { ino } => {
            // None is ever set (SetXattr is not served).
            ns.attr(ino)?;
            R::Xattrs(Vec::new())
        }
        Q::SetAttr { ino, set } => ns.setattr(ino, set, now_ns)?,
        Q::ReadDir { ino, after, limit } => R::Entries(ns.readdir(ino, &after, limit)?),
        Q::ReadDirPlus { ino, start, limit } => R::LookedUp(ns.readdir_plus(ino, &start, limit)?),
        Q::Create {
            parent,
            name,
            mode,
            umask,
            uid,
            gid,
            exclusive,
        } => R::Attr(ns.create(parent, &name, (mode, umask), (uid, gid), exclusive, now_ns)?),
        Q::CreateOpen {
            parent,
            name,
            mode,
            umask,
            uid,
            gid,
            exclusive,
            client_id,
        } => {
            let attr = ns.create(parent, &name, (mode, umask), (uid, gid), exclusive, now_ns)?;
            ns.open(attr.ino, client_id, now)?
        }
        Q::Mkdir {
            parent,
            name,
            mode,
            umask,
            uid,
            gid,
        } => R::Attr(ns.mkdir(parent, &name, (mode, umask), (uid, gid), now_ns)?),
        Q::Unlink { parent, name } => ns.unlink(parent, &name, now, now_ns)?,
        Q::Rmdir { parent, name } => {
            ns.rmdir(parent, &name, now_ns)?;
            R::Unit
        }
        Q::Rename {
            parent,
            name,
            new_parent,
            new_name,
            mode,
        } => ns.rename((parent, &name), (new_parent, &new_name), mode, now, now_ns)?,
        Q::Open { ino, client_id } => ns.open(ino, client_id, now)?,
        Q::GetLayout { ino } => ns.layout_reply(ino)?,
        Q::GetLayouts { inos } => R::Layouts(ns.layouts(&inos)),
        Q::CommitStripes {
            ino,
            size_at_least,
            stripes,
            bases,
        } => ns.commit(ino, size_at_least, stripes, bases, now_ns)?,
        Q::KeepAlive {
            client_id, open, ..
        } => R::KeepAlive {
            lease_ms: LEASE_MS,
            garbage: ns.keep_alive(client_id, open, now),
        },
        Q::SetLock { ino, lock } => {
            ns.set_lock(ino, &lock, now)?;
            R::Unit
        }
        Q::GetLock { ino, lock } => R::Lock {
            conflict: ns.get_lock(ino, &lock)?,
        },
        other => return Err(unsupported(&other)),
    })
}
