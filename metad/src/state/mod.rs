//! The namespace state machine: inodes, directory entries, file layouts,
//! the storage-node registry and placement groups.
//!
//! `apply` must be deterministic: every voter applies the same log and must
//! end in the same state, so the leader stamps the time into each
//! [`Command`] before proposing it and nothing here reads a clock, a random
//! source or a hash map's iteration order (all maps are `BTreeMap`).
//!
//! Errors are answers (ENOENT ...), not failures of the state machine: every
//! command runs all of its checks before its first change, so the state is
//! unchanged when one is returned.
//!
//! Layout of the module:
//! - this file: the [`State`] and its data, lookups shared by the others,
//!   and the dispatch of reads ([`State::read`]) and commands
//!   ([`State::apply`]).
//! - `namespace`: the directory tree (create, mkdir, mknod, symlink, link,
//!   unlink, rmdir) and setattr.
//! - `rename`: rename, including RENAME_NOREPLACE and RENAME_EXCHANGE.
//! - `xattrs`: extended attributes (set, remove, list with values).
//! - `orphans`: files unlinked while open, their reclaim, and the garbage
//!   (freed stripes) clients delete.
//! - `locks`: byte-range and flock locks across mounts.
//! - `layout`: file layouts (commit, truncation).
//! - `frozen`: frozen dataset versions (freeze, unfreeze, the paged listing
//!   of a frozen tree) and the EROFS check every change runs.
//! - `nodes`: the storage-node registry and [`placement_groups`].
//! - `sessions`: client sessions, which make retried writes exactly-once
//!   ([`Sessions`]).

mod acl;
mod frozen;
mod layout;
mod locks;
mod namespace;
mod nodes;
mod orphans;
mod rename;
mod sessions;
#[cfg(test)]
mod tests;
mod xattrs;

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use torchfs_proto::meta::{
    errno, Attr, ChangedDir, DirEntry, FileKind, FileLock, Ino, Layout, MetaError, MetaReply,
    MetaRequest, NamedAttr, NodeId, NodeInfo, PlacementGroup, StripeConfig, WriteId,
    LOOKUP_NAMES_MAX, NAME_BYTES_MAX, READDIR_PLUS_MAX, ROOT_INO,
};

pub use nodes::placement_groups;

use namespace::NewMode;
pub use sessions::{Sessions, RESULTS_PER_SESSION_MAX, SESSIONS_MAX, SESSION_IDLE_EXPIRY_NS};

use sessions::Admit;

/// One entry of the Raft log: what to do, and the leader's clock when it
/// was proposed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub now_ns: i64,
    pub op: Op,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A client's mutating request, with its id for the write (None from a
    /// client without sessions: then it is applied as often as it
    /// arrives). `closed` lists inodes the leader vouched that no client
    /// held open when it proposed this: an unlink or rename that drops the
    /// last link of one of them frees it at once; any other file losing its
    /// last link becomes an orphan (`orphans`), freed by a later `Reclaim`.
    Client {
        req: MetaRequest,
        write_id: Option<WriteId>,
        closed: Vec<Ino>,
    },
    /// Frees orphans no client holds open any more (the leader decides);
    /// their stripes become garbage for clients to delete.
    Reclaim { inos: Vec<Ino> },
    /// Forgets garbage whose fragments a client deleted.
    DropGarbage { inos: Vec<Ino> },
    /// Releases every lock of these clients (the leader saw their leases
    /// end).
    ReleaseLocks { client_ids: Vec<u64> },
}

impl Command {
    /// A client request with no inode vouched closed (tests, old callers).
    pub fn client(now_ns: i64, req: MetaRequest, write_id: Option<WriteId>) -> Self {
        Self {
            now_ns,
            op: Op::Client {
                req,
                write_id,
                closed: Vec::new(),
            },
        }
    }
}

/// A log line's worth (openraft logs entries with `Display`): the operation's
/// kind, not its arguments.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.op {
            Op::Client { req, write_id, .. } => {
                let name = format!("{req:?}");
                let kind = name.split([' ', '{', '(']).next().unwrap_or("");
                write!(f, "{kind}")?;
                if let Some(id) = write_id {
                    write!(f, " (write {id:?})")?;
                }
                Ok(())
            }
            Op::Reclaim { inos } => write!(f, "Reclaim {} inodes", inos.len()),
            Op::DropGarbage { inos } => write!(f, "DropGarbage {} inodes", inos.len()),
            Op::ReleaseLocks { client_ids } => {
                write!(f, "ReleaseLocks of {} clients", client_ids.len())
            }
        }
    }
}

/// What `apply` answers for one command.
pub type Outcome = Result<MetaReply, MetaError>;

/// What a write answers its client: the outcome and the directories it
/// changed (see [`State::apply_reporting`]). openraft's response type.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    pub dirs: Vec<ChangedDir>,
}

impl From<Outcome> for Applied {
    fn from(outcome: Outcome) -> Self {
        Self {
            outcome,
            dirs: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
enum Body {
    File {
        layout: Layout,
    },
    /// `parent` of the root is the root itself.
    Dir {
        parent: Ino,
        entries: BTreeMap<String, Ino>,
    },
    Symlink {
        target: String,
    },
    /// A FIFO, device node or socket: nothing but its attributes.
    Node,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Inode {
    attr: Attr,
    body: Body,
    /// Extended attributes by full name (`user.x`); bounded by
    /// `XATTR_INODE_BYTES_MAX` (see `xattrs`).
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl Inode {
    fn new(attr: Attr, body: Body) -> Self {
        Self {
            attr,
            body,
            xattrs: BTreeMap::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct State {
    config: StripeConfig,
    inodes: BTreeMap<Ino, Inode>,
    next_ino: Ino,
    nodes: BTreeMap<NodeId, NodeInfo>,
    groups: Vec<PlacementGroup>,
    /// Bumped whenever nodes or groups change.
    epoch: u64,
    sessions: Sessions,
    /// Files without a name that some client may still hold open, with
    /// when they lost their last link (see `orphans`).
    orphans: BTreeMap<Ino, i64>,
    /// Freed files whose fragments are still stored: handed to clients to
    /// delete, forgotten when one says it did.
    garbage: BTreeMap<Ino, Layout>,
    /// Held locks per inode, sorted by start (see `locks`).
    locks: BTreeMap<Ino, Vec<FileLock>>,
}

/// Sets `attr`'s ctime for a change at `now`, strictly later than the
/// ctime it had: a directory's ctime then names each change to it, so a
/// client that knows it as of one change can tell whether another came
/// between (see `Response.dirsCtimeBefore`), however the clock moved.
pub(super) fn stamp_ctime(attr: &mut Attr, now: i64) {
    attr.ctime_ns = now.max(attr.ctime_ns.saturating_add(1));
}

fn fs(errno: i32, what: impl Into<String>) -> MetaError {
    MetaError::fs(errno, what)
}

fn check_name(name: &str) -> Result<(), MetaError> {
    if name.len() > NAME_BYTES_MAX {
        return Err(fs(
            errno::ENAMETOOLONG,
            format!("name is {} bytes, at most {NAME_BYTES_MAX}", name.len()),
        ));
    }
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(fs(errno::EINVAL, format!("invalid name {name:?}")));
    }
    Ok(())
}

impl State {
    /// A fresh namespace: only the root directory (ino 1, mode 0o755).
    pub fn new(config: StripeConfig) -> Self {
        let root = Inode::new(
            Attr {
                ino: ROOT_INO,
                kind: FileKind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: 0,
                nlink: 2,
                atime_ns: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                rdev: 0,
                has_xattrs: false,
                frozen: false,
            },
            Body::Dir {
                parent: ROOT_INO,
                entries: BTreeMap::new(),
            },
        );
        Self {
            config,
            inodes: BTreeMap::from([(ROOT_INO, root)]),
            next_ino: ROOT_INO + 1,
            nodes: BTreeMap::new(),
            groups: Vec::new(),
            epoch: 0,
            sessions: Sessions::default(),
            orphans: BTreeMap::new(),
            garbage: BTreeMap::new(),
            locks: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> StripeConfig {
        self.config
    }
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.nodes
    }
    pub fn groups(&self) -> &[PlacementGroup] {
        &self.groups
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn file_count(&self) -> u64 {
        self.inodes.len() as u64
    }
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    // ------------------------------------------------------------- reads

    /// Answers a read-only namespace request. Cluster-level reads (statfs,
    /// cluster map/status, heartbeat) need the leader's volatile node
    /// liveness and are answered by the service.
    pub fn read(&self, req: &MetaRequest) -> Outcome {
        match req {
            MetaRequest::Lookup { parent, name } => {
                check_name(name)?;
                let ino = self.entry(*parent, name)?;
                Ok(MetaReply::Attr(self.inode(ino)?.attr.clone()))
            }
            MetaRequest::GetAttr { ino } => Ok(MetaReply::Attr(self.inode(*ino)?.attr.clone())),
            MetaRequest::LookupMany { parent, names } => self.lookup_many(*parent, names),
            MetaRequest::ReadDir { ino, after, limit } => self.readdir(*ino, after, *limit),
            MetaRequest::ReadDirPlus { ino, start, limit } => {
                self.readdir_plus(*ino, start, *limit)
            }
            MetaRequest::ReadLink { ino } => match &self.inode(*ino)?.body {
                Body::Symlink { target } => Ok(MetaReply::Link(target.clone())),
                _ => Err(fs(errno::EINVAL, format!("inode {ino} is not a symlink"))),
            },
            MetaRequest::GetLayout { ino } => self.get_layout(*ino),
            MetaRequest::GetLayouts { inos } => self.get_layouts(inos),
            MetaRequest::ScanLayouts { after, limit } => self.scan_layouts(*after, *limit),
            MetaRequest::ReadFrozen { ino, offset, limit } => {
                self.read_frozen(*ino, *offset, *limit)
            }
            MetaRequest::GetXattrs { ino } => self.get_xattrs(*ino),
            MetaRequest::GetLock { ino, lock } => self.get_lock(*ino, lock),
            other => Err(MetaError::Invalid(format!(
                "not a namespace read: {other:?}"
            ))),
        }
    }

    fn inode(&self, ino: Ino) -> Result<&Inode, MetaError> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| fs(errno::ENOENT, format!("no inode {ino}")))
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, MetaError> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| fs(errno::ENOENT, format!("no inode {ino}")))
    }

    fn dir_entries(&self, ino: Ino) -> Result<&BTreeMap<String, Ino>, MetaError> {
        match &self.inode(ino)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(fs(
                errno::ENOTDIR,
                format!("inode {ino} is not a directory"),
            )),
        }
    }

    fn dir_entries_mut(&mut self, ino: Ino) -> Result<&mut BTreeMap<String, Ino>, MetaError> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => Err(fs(
                errno::ENOTDIR,
                format!("inode {ino} is not a directory"),
            )),
        }
    }

    fn entry(&self, parent: Ino, name: &str) -> Result<Ino, MetaError> {
        self.dir_entries(parent)?.get(name).copied().ok_or_else(|| {
            fs(
                errno::ENOENT,
                format!("no entry {name:?} in inode {parent}"),
            )
        })
    }

    /// The names of `names` that exist in directory `parent`, with their
    /// attributes, in the order asked. A malformed name or too many names
    /// fail the whole request; a missing one is left out.
    fn lookup_many(&self, parent: Ino, names: &[String]) -> Outcome {
        if names.len() > LOOKUP_NAMES_MAX {
            return Err(MetaError::Invalid(format!(
                "lookupMany of {} names, at most {LOOKUP_NAMES_MAX}",
                names.len()
            )));
        }
        let entries = self.dir_entries(parent)?;
        let mut found = Vec::with_capacity(names.len());
        for name in names {
            check_name(name)?;
            if let Some(ino) = entries.get(name.as_str()) {
                found.push(NamedAttr {
                    name: name.clone(),
                    attr: self.inode(*ino)?.attr.clone(),
                });
            }
        }
        Ok(MetaReply::LookedUp(found))
    }

    fn readdir_plus(&self, ino: Ino, start: &str, limit: u32) -> Outcome {
        let entries = self.dir_entries(ino)?;
        let limit = match limit {
            0 => READDIR_PLUS_MAX,
            n => n.min(READDIR_PLUS_MAX),
        } as usize;
        let mut out = Vec::with_capacity(limit.min(entries.len()));
        for (name, child) in entries
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .take(limit)
        {
            out.push(NamedAttr {
                name: name.clone(),
                attr: self.inode(*child)?.attr.clone(),
            });
        }
        Ok(MetaReply::LookedUp(out))
    }

    fn readdir(&self, ino: Ino, after: &str, limit: u32) -> Outcome {
        let entries = self.dir_entries(ino)?;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.to_string())
        };
        let limit = if limit == 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let mut out = Vec::new();
        for (name, child) in entries.range((start, Bound::Unbounded)).take(limit) {
            out.push(DirEntry {
                name: name.clone(),
                ino: *child,
                kind: self.inode(*child)?.attr.kind,
            });
        }
        Ok(MetaReply::Entries(out))
    }

    // ------------------------------------------------------------ writes

    /// Applies one committed command. Errors are answers (ENOENT ...), not
    /// failures of the state machine: the namespace is unchanged when one is
    /// returned, because every check runs before the first change. A write
    /// already applied under the same write id is answered with its stored
    /// result and not applied again.
    pub fn apply(&mut self, cmd: &Command) -> Outcome {
        self.sessions.tick(cmd.now_ns);
        let (req, write_id, closed) = match &cmd.op {
            Op::Client {
                req,
                write_id,
                closed,
            } => (req, write_id, closed.as_slice()),
            Op::Reclaim { inos } => return Ok(self.reclaim(inos)),
            Op::DropGarbage { inos } => return Ok(self.drop_garbage(inos)),
            Op::ReleaseLocks { client_ids } => return Ok(self.release_locks(client_ids)),
        };
        let Some(id) = write_id else {
            return self.apply_request(req, cmd.now_ns, closed);
        };
        match self.sessions.admit(id) {
            Admit::Answer(outcome) => *outcome,
            Admit::Apply => {
                let outcome = self.apply_request(req, cmd.now_ns, closed);
                self.sessions.record(id, &outcome);
                outcome
            }
        }
    }

    /// [`Self::apply`], also saying which directories the command changed:
    /// each one's attributes after it and ctime before it (the reply's
    /// `dirs`; none when it failed).
    pub fn apply_reporting(&mut self, cmd: &Command) -> Applied {
        let changed = match &cmd.op {
            Op::Client { req, .. } => req.changed_dirs(),
            _ => Vec::new(),
        };
        let before: Vec<Option<i64>> = changed
            .iter()
            .map(|ino| self.inodes.get(ino).map(|n| n.attr.ctime_ns))
            .collect();
        let outcome = self.apply(cmd);
        if outcome.is_err() {
            return Applied::from(outcome);
        }
        let dirs = changed
            .iter()
            .zip(before)
            .filter_map(|(ino, ctime_before_ns)| {
                Some(ChangedDir {
                    attr: self.inodes.get(ino)?.attr.clone(),
                    ctime_before_ns: Some(ctime_before_ns?),
                })
            })
            .collect();
        Applied { outcome, dirs }
    }

    fn apply_request(&mut self, req: &MetaRequest, now: i64, closed: &[Ino]) -> Outcome {
        match req {
            MetaRequest::SetAttr { ino, set } => self.setattr(*ino, set, now),
            MetaRequest::Create {
                parent,
                name,
                mode,
                umask,
                uid,
                gid,
                exclusive,
            } => self.create(
                (*parent, name),
                NewMode(*mode, *umask),
                (*uid, *gid),
                *exclusive,
                now,
            ),
            MetaRequest::CreateOpen {
                parent,
                name,
                mode,
                umask,
                uid,
                gid,
                exclusive,
                client_id: _,
            } => {
                let created = self.create(
                    (*parent, name),
                    NewMode(*mode, *umask),
                    (*uid, *gid),
                    *exclusive,
                    now,
                )?;
                match created {
                    MetaReply::Attr(attr) => self.get_layout(attr.ino),
                    other => Ok(other),
                }
            }
            MetaRequest::Mkdir {
                parent,
                name,
                mode,
                umask,
                uid,
                gid,
            } => self.mkdir((*parent, name), NewMode(*mode, *umask), (*uid, *gid), now),
            MetaRequest::Unlink { parent, name } => self.unlink(*parent, name, now, closed),
            MetaRequest::Rmdir { parent, name } => self.rmdir(*parent, name, now),
            MetaRequest::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => self.rename((*parent, name), (*new_parent, new_name), *mode, now, closed),
            MetaRequest::Link {
                ino,
                new_parent,
                new_name,
            } => self.link(*ino, *new_parent, new_name, now),
            MetaRequest::Symlink {
                parent,
                name,
                target,
                uid,
                gid,
            } => self.symlink(*parent, name, target, *uid, *gid, now),
            MetaRequest::Mknod {
                parent,
                name,
                kind,
                mode,
                umask,
                uid,
                gid,
                rdev,
            } => self.mknod(
                (*parent, name),
                *kind,
                NewMode(*mode, *umask),
                (*uid, *gid),
                *rdev,
                now,
            ),
            MetaRequest::SetXattr {
                ino,
                name,
                value,
                mode,
            } => self.set_xattr(*ino, name, value, *mode, now),
            MetaRequest::RemoveXattr { ino, name } => self.remove_xattr(*ino, name, now),
            MetaRequest::SetLock { ino, lock } => self.set_lock(*ino, lock),
            MetaRequest::CommitLayout { ino, size, stripes } => {
                self.commit_layout(*ino, *size, stripes, now)
            }
            MetaRequest::CommitStripes {
                ino,
                size_at_least,
                stripes,
                bases,
            } => self.commit_stripes(*ino, *size_at_least, stripes, bases, now),
            MetaRequest::RegisterNode { info } => self.register_node(info),
            MetaRequest::ReplaceNode { node, candidates } => self.replace_node(*node, candidates),
            MetaRequest::Freeze { ino } => self.freeze(*ino, now),
            MetaRequest::Unfreeze { ino } => self.unfreeze(*ino, now),
            other => Err(MetaError::Invalid(format!("not a log command: {other:?}"))),
        }
    }
}
