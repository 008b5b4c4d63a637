@0xd5f5cbe66673ed0c;
# Fragment data path headers. On the wire (TCP) every message is
#   u32 little-endian header length | Cap'n Proto header (single segment) | bulk bytes
# The bulk bytes (fragment contents) never go inside a Cap'n Proto message:
# their length is named by the header.

struct FragmentKey {
  ino @0 :UInt64;
  stripe @1 :UInt64;
  generation @2 :UInt64;
  index @3 :UInt8;
}

struct FragmentRequest {
  union {
    put :group {
      key @0 :FragmentKey;
      length @1 :UInt32;      # bulk bytes that follow the header
      crc32c @2 :UInt32;      # CRC32C of those bytes, checked before anything is stored
    }
    get :group {
      key @3 :FragmentKey;
      offset @4 :UInt32;      # byte range inside the fragment
      length @5 :UInt32;
      expectedCrc32c @6 :UInt32; # CRC32C metad holds for the whole fragment
    }
    delete :group {
      key @7 :FragmentKey;
    }
    list :group {
      # The keys this shard stores after `after` (key order), at most
      # `limit` (0 or above LIST_KEYS_MAX: that many). Answered `ok` with
      # `length` bulk bytes: 25 per key (ino, stripe, generation as u64 LE,
      # index as u8). Fewer than asked: the listing ends there. Over TCP
      # only (orphan collection).
      after @8 :FragmentKey;
      limit @9 :UInt32;
    }
  }
}

enum ErrorCode {
  notFound @0;
  checksumMismatch @1;
  noSpace @2;
  io @3;
  badRequest @4;
  wrongShard @5;
}

struct FragmentResponse {
  union {
    ok :group {
      length @0 :UInt32;      # bulk bytes that follow the header (get), else 0
    }
    error :group {
      code @1 :ErrorCode;
      message @2 :Text;
      expected @3 :UInt32;    # checksumMismatch: the CRC that was expected
      actual @4 :UInt32;      # checksumMismatch: the CRC that was computed
    }
  }
}

# RDMA verbs (docs/ARCHITECTURE.md: Transports). A request header goes by
# SEND and names the client's registered buffer: the node RDMA-READs a put's
# bytes from it, or RDMA-WRITEs a get's bytes into it before it SENDs the
# FragmentResponse. No bulk bytes follow a header on verbs.
struct RemoteBuffer {
  addr @0 :UInt64;
  rkey @1 :UInt32;
  length @2 :UInt32;
}

struct VerbsRequest {
  request @0 :FragmentRequest;
  buffer @1 :RemoteBuffer;
}
