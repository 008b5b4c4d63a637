@0xc4aa9b82df42073b;
# The metadata service: the client/storage-node API and the Raft transport
# between metad voters. Every request goes through one `execute` call so that
# redirects to the leader and retries are handled in one place by clients.

using Fragment = import "fragment.capnp";

annotation noLog @0xc0d7ca4c7a494013 (field, group) :Void;
# On a Request member: answered without a Raft log write (reads, and what a
# leader keeps to itself: heartbeats, leases).
annotation optional @0xd531e561b5f4b15b (field) :Void;
# On a struct field of a Request or Response member: it may be absent
# (`Option<T>` in Rust); without it an absent struct is a malformed message.


enum FileKind {
  file @0;
  dir @1;
  symlink @2;
  fifo @3;
  charDevice @4;
  blockDevice @5;
  socket @6;
}

struct Attr {
  ino @0 :UInt64;
  kind @1 :FileKind;
  mode @2 :UInt32;        # permission bits (0o7777)
  uid @3 :UInt32;
  gid @4 :UInt32;
  size @5 :UInt64;
  nlink @6 :UInt32;
  atimeNs @7 :Int64;      # nanoseconds since the Unix epoch
  mtimeNs @8 :Int64;
  ctimeNs @9 :Int64;
  frozen @10 :Bool;       # part of a frozen dataset version: nothing in it changes
  rdev @11 :UInt32;       # device number of a character or block device (Linux makedev encoding)
  hasXattrs @12 :Bool;    # it has extended attributes (without: getxattr needs no round trip)
}

# What rename does with an existing target (renameat2 flags).
enum RenameMode {
  replace @0;     # replace it (rename(2))
  noReplace @1;   # fail with EEXIST (RENAME_NOREPLACE)
  exchange @2;    # swap the two names; both must exist (RENAME_EXCHANGE)
}

# When setXattr may set a name (setxattr(2) flags).
enum XattrMode {
  any @0;         # create or replace
  create @1;      # fail with EEXIST if it exists (XATTR_CREATE)
  replace @2;     # fail with ENODATA if it does not (XATTR_REPLACE)
}

# A freed file whose fragments a client should delete.
struct Garbage {
  ino @0 :UInt64;
  layout @1 :Layout;
}

enum LockKind {
  read @0;
  write @1;
  unlock @2;
}

# A byte-range lock of one owner (the kernel's lock owner within mount
# `clientId`); flock locks are whole-file locks of the open file.
struct FileLock {
  clientId @0 :UInt64;
  owner @1 :UInt64;
  pid @2 :UInt32;      # for F_GETLK's answer
  kind @3 :LockKind;
  start @4 :UInt64;
  end @5 :UInt64;      # inclusive; 2^64-1: to the end of the file
}

struct Xattr {
  name @0 :Text;
  value @1 :Data;
}

struct StripeConfig {
  k @0 :UInt8;
  m @1 :UInt8;
  unitBytes @2 :UInt32;
}

struct StripeEntry {
  stripe @0 :UInt64;
  generation @1 :UInt64;
  encodedBytes @2 :UInt32;  # file bytes in the stripe when it was encoded
  validBytes @3 :UInt32;    # bytes still part of the file (<= encodedBytes; truncation)
  crcs @4 :List(UInt32);    # CRC32C of each of the k+m fragments (0 for a fragment not stored)
}

# The version of a stripe that a client's write was merged into
# (`commitStripes`): its generation and valid bytes as the client read them.
# Generation 0: the stripe did not exist (a hole).
struct StripeBase {
  generation @0 :UInt64;
  validBytes @1 :UInt32;
}

struct Layout {
  config @0 :StripeConfig;
  stripes @1 :List(StripeEntry);
}

# A name found in a directory and its inode's attributes (lookupMany).
struct NamedAttr {
  name @0 :Text;
  attr @1 :Attr;
}

struct FileLayout {
  # A file's attributes and layout (`GetLayouts`).
  attr @0 :Attr;
  layout @1 :Layout;
}

struct DirEntry {
  name @0 :Text;
  ino @1 :UInt64;
  kind @2 :FileKind;
}

# One inode of a frozen tree, as `readFrozen` lists it: the entry naming
# it (`parent`, `name`), its attributes, and its layout (files) or target
# (symlinks).
struct FrozenEntry {
  parent @0 :UInt64;
  name @1 :Text;
  attr @2 :Attr;
  layout @3 :Layout;      # files only
  target @4 :Text;        # symlinks only
}

struct OptU32 { union { none @0 :Void; some @1 :UInt32; } }
struct OptU64 { union { none @0 :Void; some @1 :UInt64; } }
struct OptTime { union { none @0 :Void; now @1 :Void; ns @2 :Int64; } }

struct SetAttr {
  mode @0 :OptU32;
  uid @1 :OptU32;
  gid @2 :OptU32;
  size @3 :OptU64;
  atime @4 :OptTime;
  mtime @5 :OptTime;
}

struct NodeInfo {
  id @0 :UInt64;
  host @1 :Text;
  shardPorts @2 :List(UInt16);  # one TCP port per executor (shard) of the node
  capacityBytes @3 :UInt64;
  usedBytes @4 :UInt64;
  cores @5 :UInt32;
  transports @6 :List(Text);
}

enum NodeState {
  up @0;
  down @1;
}

struct NodeStatus {
  info @0 :NodeInfo;
  state @1 :NodeState;
  lastHeartbeatMsAgo @2 :OptU64;
}

struct PlacementGroup {
  id @0 :UInt32;
  nodes @1 :List(UInt64);   # k+m distinct nodes: fragment i goes to nodes[i]
}

struct ClusterMap {
  epoch @0 :UInt64;
  config @1 :StripeConfig;
  nodes @2 :List(NodeStatus);
  groups @3 :List(PlacementGroup);
}

struct Voter {
  id @0 :UInt64;
  addr @1 :Text;
}

struct ClusterStatus {
  leader @0 :OptU64;
  term @1 :UInt64;
  lastApplied @2 :UInt64;
  voters @3 :List(Voter);
  map @4 :ClusterMap;
  repair @5 :RepairProgress;   # the repair service's last report (zeros: none)
}

# One fragment of a stripe: fragment `index` of stripe `stripe` (written
# as `generation`) of file `ino`.
struct FragmentRef {
  ino @0 :UInt64;
  stripe @1 :UInt64;
  generation @2 :UInt64;
  index @3 :UInt8;
}

# What the repair service reports of its current (or last) pass over the
# stored stripes.
struct RepairProgress {
  pass @0 :UInt64;             # passes started since the service started
  mapEpoch @1 :UInt64;         # the map whose placement the pass restores
  reason @2 :Text;             # why the pass runs ("start", "node 3 replaced", ...)
  stripesChecked @3 :UInt64;
  fragmentsRebuilt @4 :UInt64;
  bytesRebuilt @5 :UInt64;
  fragmentsFailed @6 :UInt64;  # could not be rebuilt (fewer than k readable)
  elapsedMs @7 :UInt64;
  done @8 :Bool;
  nodesReplaced @9 :List(UInt64);  # by this service, oldest first
  badReported @10 :UInt64;     # fragments reported corrupt (scrubs) or left out (degraded writes), since start
  badRebuilt @11 :UInt64;      # of those, rebuilt
  orphansDeleted @12 :UInt64;  # fragments no one needed, deleted (since start)
}

# Usable capacity (after the erasure code's overhead) and inodes.
struct StatFs {
  totalBytes @0 :UInt64;
  usedBytes @1 :UInt64;
  files @2 :UInt64;       # inodes in use
  filesFree @3 :UInt64;   # inodes that can still be made
}

# Names one write so that metad applies it exactly once however often the
# client retries it (client sessions, Raft thesis §6.3). Writes only; reads
# and heartbeats carry none.
struct WriteId {
  clientId @0 :UInt64;              # random per client, never 0
  seq @1 :UInt64;                   # the client's number for this write, from 1; the same on every retry
  lowestOutstandingSeq @2 :UInt64;  # the lowest seq the client still waits on (<= seq): results below it may be forgotten
}

struct Request {
  # What clients and storage nodes ask metad. Each member of the union is one
  # operation: the Rust `MetaRequest` enum and its converters are generated
  # from it (proto/build/ops), so adding an operation touches this schema and
  # metad's state machine only. Members are in the Rust enum's order, which
  # metad's Raft log encodes (an operation is appended, never inserted).
  # Comments follow what they document (Cap'n Proto's convention), and
  # become the Rust docs. `$noLog` marks an operation answered without a
  # Raft log write.
  union {
    lookup :group $noLog { parent @0 :UInt64; name @1 :Text; }
    getAttr :group $noLog { ino @2 :UInt64; }
    setAttr :group { ino @3 :UInt64; set @4 :SetAttr; }
    readDir :group $noLog {
      # Entries with names after `after` (all when empty), at most `limit`
      # (0: no limit), in name order. "." and ".." are not included.
      ino @5 :UInt64; after @6 :Text; limit @7 :UInt32;
    }
    create :group {
      # `mode` comes without the caller's `umask` applied: metad applies it,
      # unless the parent has a default ACL, which replaces it (as POSIX
      # says). The same holds for `Mkdir` and `Mknod`.
      parent @8 :UInt64; name @9 :Text; mode @10 :UInt32; umask @68 :UInt32;
      uid @11 :UInt32; gid @12 :UInt32; exclusive @13 :Bool;
    }
    mkdir :group {
      parent @14 :UInt64; name @15 :Text; mode @16 :UInt32; umask @69 :UInt32;
      uid @17 :UInt32; gid @18 :UInt32;
    }
    unlink :group { parent @19 :UInt64; name @20 :Text; }
    rmdir :group { parent @21 :UInt64; name @22 :Text; }
    rename :group {
      parent @23 :UInt64; name @24 :Text; newParent @25 :UInt64; newName @26 :Text;
      mode @53 :RenameMode;
    }
    link :group { ino @27 :UInt64; newParent @28 :UInt64; newName @29 :Text; }
    symlink :group { parent @30 :UInt64; name @31 :Text; target @32 :Text; uid @33 :UInt32; gid @34 :UInt32; }
    readLink :group $noLog { ino @35 :UInt64; }
    mknod :group {
      # Makes a FIFO, device node, socket or empty regular file (`kind`
      # must not be a directory or symlink); `rdev` is kept for devices.
      parent @54 :UInt64; name @55 :Text; kind @56 :FileKind; mode @57 :UInt32;
      umask @70 :UInt32; uid @58 :UInt32; gid @59 :UInt32; rdev @60 :UInt32;
    }
    statFs @36 :Void $noLog;
    getLayout :group $noLog { ino @37 :UInt64; }
    commitLayout :group {
      # Replace the named stripes of a file's layout and set its size
      # (close-to-open: called on flush/fsync/close).
      ino @38 :UInt64; size @39 :UInt64; stripes @40 :List(StripeEntry);
    }
    registerNode :group { info @41 :NodeInfo; }
    heartbeat :group $noLog { id @42 :UInt64; usedBytes @43 :UInt64; capacityBytes @44 :UInt64; }
    clusterMap @45 :Void $noLog;
    clusterStatus @46 :Void $noLog;
    freeze :group {
      # Makes the directory `ino` and everything below it a frozen dataset
      # version: every later change to it is refused with EROFS. Freezing
      # a frozen inode changes nothing.
      ino @48 :UInt64;
    }
    unfreeze :group {
      # Thaws a frozen tree; `ino` must be its root (a frozen directory in
      # a directory that is not). Clients holding its table notice within
      # their check interval.
      ino @49 :UInt64;
    }
    readFrozen :group $noLog {
      # One page of the frozen tree below the directory `ino`: its inodes in
      # depth-first order (each directory's entries in name order), skipping
      # `offset`, at most `limit` (0: [`FROZEN_PAGE_ENTRIES_MAX`]).
      ino @50 :UInt64; offset @51 :UInt64; limit @52 :UInt32;
    }
    setXattr :group {
      # Sets one extended attribute (limits: [`XATTR_NAME_BYTES_MAX`],
      # [`XATTR_VALUE_BYTES_MAX`], [`XATTR_INODE_BYTES_MAX`]).
      ino @61 :UInt64; name @62 :Text; value @63 :Data; mode @64 :XattrMode;
    }
    removeXattr :group {
      # Removes one extended attribute (ENODATA when it is not there).
      ino @65 :UInt64; name @66 :Text;
    }
    getXattrs :group $noLog {
      # All extended attributes of an inode, in name order.
      ino @67 :UInt64;
    }
    open :group $noLog {
      # A file's attributes and layout, like `GetLayout`, for an open by
      # client `client_id` (a mount): while the client holds it open
      # (renewed by `KeepAlive`), unlinking its last name leaves it an
      # orphan that the open handles still read and write.
      ino @71 :UInt64; clientId @72 :UInt64;
    }
    keepAlive :group $noLog {
      # Renews client `client_id`'s lease: the inodes it holds open, and the
      # garbage (freed files) whose fragments it deleted since the last
      # call. Answered with the lease and more garbage to delete. A client
      # silent for longer than the lease holds nothing open any more.
      clientId @73 :UInt64; open @74 :List(UInt64); deleted @75 :List(UInt64);
    }
    setLock :group {
      # Takes, changes or releases (`LockKind::Unlock`) a byte-range lock,
      # as F_SETLK does for the owner's locks over the range: EAGAIN when
      # another owner's lock conflicts (nothing changes then).
      ino @76 :UInt64; lock @77 :FileLock;
    }
    getLock :group $noLog {
      # The first held lock that conflicts with `lock` (F_GETLK), if any.
      ino @78 :UInt64; lock @79 :FileLock;
    }
    createOpen :group {
      # `Create` and `Open` in one write (open(2) with O_CREAT): answered
      # with the file's attributes and layout, and the file counts as held
      # open by client `client_id` from the moment it exists.
      parent @80 :UInt64; name @81 :Text; mode @82 :UInt32; umask @83 :UInt32;
      uid @84 :UInt32; gid @85 :UInt32; exclusive @86 :Bool; clientId @87 :UInt64;
    }
    lookupMany :group $noLog {
      # `lookup` of many names in one directory, answered with those that
      # exist (in the order asked; at most `LOOKUP_NAMES_MAX` names).
      parent @88 :UInt64; names @89 :List(Text);
    }
    readDirPlus :group $noLog {
      # Entries with their inodes' attributes, names from `start` on
      # (inclusive; all when empty), at most `limit` of them (0 or more than
      # `READDIR_PLUS_MAX`: that many), in name order. Fewer than asked:
      # the directory ends there. A client's statahead (and `ls -l`).
      ino @90 :UInt64; start @91 :Text; limit @92 :UInt32;
    }
    getLayouts :group $noLog {
      # `getLayout` of many files in one request, answered with those that
      # exist and are regular files (in the order asked; at most
      # `LAYOUTS_MAX` inodes). A prefetcher's batch.
      inos @93 :List(UInt64);
    }
    commitStripes :group {
      # `commitLayout` for a file that other clients may write too:
      # `bases[i]` is the version of `stripes[i]` the client merged its
      # writes into. If any stripe's version is no longer its base, nothing
      # changes and the answer is `conflict`; the client merges again and
      # retries. Else the stripes replace theirs and the size becomes
      # max(size, `sizeAtLeast`): a commit never shrinks a file (truncation
      # is `setAttr`'s).
      ino @94 :UInt64; sizeAtLeast @95 :UInt64; stripes @96 :List(StripeEntry);
      bases @97 :List(StripeBase);
    }
    replaceNode :group {
      # Takes storage node `node` out of every placement group: each of its
      # slots goes to an up node not in that group (the one in the fewest
      # groups, then the lowest id), and the repair service rebuilds the
      # slot's fragments there. Refused (EBUSY) while the leader sees the
      # node up. The leader fills `candidates` (the nodes up as it proposes
      # it); what a client sends there is ignored. Answered with the map's
      # new epoch in `unit`.
      node @98 :UInt64; candidates @99 :List(UInt64);
    }
    scanLayouts :group $noLog {
      # The layouts of regular files with inodes above `after`, in inode
      # order, at most `limit` (0 or more than `LAYOUTS_MAX`: that many);
      # fewer: the scan ends there. The repair service's walk of every
      # stored stripe (orphans included, garbage not).
      after @100 :UInt64; limit @101 :UInt32;
    }
    reportBadFragments :group $noLog {
      # Fragments to put back: storage node `node`'s scrub found them
      # corrupt at rest and dropped them, or (`node` 0) a client's degraded
      # write left them out. Kept by the leader (not logged, bounded) until
      # the repair service takes them to rebuild.
      node @103 :UInt64; fragments @104 :List(FragmentRef);
    }
    takeBadFragments @105 :Void $noLog;
    # The reported bad fragments, handed over once (the repair service's).
    checkOrphans :group $noLog {
      # Of `fragments`, stored on storage node `node`, those no one needs:
      # no layout holds their stripe at their generation on that node, and
      # no live client holds their file open (an upload in flight). Orphan
      # collection deletes what it is answered twice, a grace period apart.
      node @106 :UInt64; fragments @107 :List(FragmentRef);
    }
    reportRepair :group $noLog {
      # The repair service's progress: kept by the leader (not logged) and
      # shown in `clusterStatus`.
      progress @102 :RepairProgress;
    }
  }
  writeId @47 :WriteId;   # absent: applied as often as it arrives (an old client)
}

enum ErrorKind {
  fs @0;           # a POSIX error; `errno` says which
  notLeader @1;    # ask `leaderAddr` instead (empty when no leader is known yet)
  unavailable @2;  # no quorum, shutting down, storage failure: retry later
  invalid @3;      # malformed request
  sessionExpired @4;  # metad no longer knows `clientId`'s session: write `seq` was not applied
}

struct Error {
  kind @0 :ErrorKind;
  errno @1 :Int32;
  message @2 :Text;
  leaderId @3 :UInt64;
  leaderAddr @4 :Text;
  clientId @5 :UInt64;    # sessionExpired only
  seq @6 :UInt64;         # sessionExpired only
}

struct Response {
  # What metad answers: an error, or one of the replies (the Rust
  # `MetaReply` enum, generated like `MetaRequest`; `error` is read into a
  # `MetaError` instead). Members are in the Rust enum's order, which
  # metad's Raft log encodes (its session table keeps replies).
  union {
    error @0 :Error;
    attr @1 :Attr;
    entries @2 :List(DirEntry);
    unit @3 :Void;
    freed @4 :List(StripeEntry);
    # Stripes no longer referenced by any file (unlink of the last link,
    # rename over a file): their fragments may be deleted.
    link @5 :Text;
    statFs @6 :StatFs;
    layout :group { attr @7 :Attr; layout @8 :Layout; }
    committed :group { attr @9 :Attr; replaced @10 :List(StripeEntry); }
    attrFreed :group {
      # setAttr: new attributes, and stripes dropped by a truncation.
      attr @13 :Attr; freed @14 :List(StripeEntry);
    }
    clusterMap @11 :ClusterMap;
    clusterStatus @12 :ClusterStatus;
    frozen :group {
      # A page of a frozen tree: its root as it is now (its `ctime_ns`
      # changes if the tree is thawed or refrozen between pages), the
      # entries, and whether more follow.
      root @15 :Attr; entries @16 :List(FrozenEntry); more @17 :Bool;
    }
    xattrs @18 :List(Xattr);
    # Every extended attribute of an inode, in name order.
    keepAlive :group {
      # KeepAlive: how long the lease lasts without another keep-alive, and
      # freed files whose fragments this client should delete (then report
      # them in its next keep-alive's `deleted`).
      leaseMs @19 :UInt64; garbage @20 :List(Garbage);
    }
    lock :group {
      # GetLock: the conflicting lock, if any.
      conflict @21 :FileLock $optional;
    }
    unlinked :group {
      # Unlink: the inode the name led to (a client needs it for fragment
      # keys and its caches, and need not look it up first), and the stripes
      # freed when that was its last link.
      ino @22 :UInt64; freed @23 :List(StripeEntry);
    }
    lookedUp @24 :List(NamedAttr);
    # LookupMany: the names found and their inodes' attributes;
    # ReadDirPlus: the entries and their attributes.
    layouts @27 :List(FileLayout);
    # GetLayouts: the files found.
    conflict :group {
      # CommitStripes: nothing was committed. The file's attributes and the
      # current entries of the stripes the commit named (a stripe missing
      # here does not exist now).
      attr @28 :Attr; stripes @29 :List(StripeEntry);
    }
    count @30 :UInt64;
    # ReplaceNode: placement-group slots given to other nodes.
    fragments @31 :List(FragmentRef);
    # TakeBadFragments: the fragments reported bad since the last take.
  }
  dirs @25 :List(Attr);
  # After a write that changed directories (a create, link, unlink, rmdir
  # or rename that succeeded): their attributes as read right after it
  # applied, so a client need not ask for them (the kernel revalidates a
  # directory after each change in it). Empty otherwise and from an older
  # metad.
  dirsCtimeBefore @26 :List(Int64);
  # For each of `dirs`, its ctime just before this request changed it
  # (metad keeps a directory's ctime strictly increasing). A client that
  # holds the directory's listing as of that ctime knows no one else
  # changed it in between. Empty from an older metad.
}

interface Metadata {
  execute @0 (request :Request) -> (response :Response);
}

# Raft messages between voters. The payloads are openraft's own request and
# response types, serialized with bincode: they are an internal format of
# metad (both ends are the same build), not part of the public API.
interface Raft {
  appendEntries @0 (payload :Data) -> (payload :Data);
  vote @1 (payload :Data) -> (payload :Data);
  # A whole snapshot: bincode of (vote, snapshot meta, state bytes).
  installSnapshot @2 (payload :Data) -> (payload :Data);
  # Would the peer vote for this candidate? (Asked before a real election,
  # so a voter that was cut off cannot unseat a healthy leader.)
  preVote @3 (payload :Data) -> (payload :Data);
}

# What a metad listener hands out at bootstrap: both interfaces.
interface Service {
  metadata @0 () -> (metadata :Metadata);
  raft @1 () -> (raft :Raft);
}
