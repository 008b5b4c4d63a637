//! The client core: everything a front-end (FUSE, the preload library, the
//! Python batch API) needs to serve POSIX calls, and nothing of any
//! front-end. It caches metadata with TTLs, keeps per-inode write buffers,
//! encodes and uploads stripes, reads (degraded if need be) and commits
//! layouts on flush (close-to-open, docs/ARCHITECTURE.md: Data path and Metadata).
//!
//! Layout of the module, from the bottom up; nothing imports from a layer
//! above it (a part below learns of the client only through what it is
//! handed):
//! - parts: `error`, `config`, `sync`, `file` (per-inode state: the
//!   pure logic of buffering, read-modify-write and truncation),
//!   `lock_table` (which owners may hold locks).
//! - the metadata views, each answering what it can and passing the rest
//!   down: [`control`] (the `.torchfs/` directory, top), [`frozen`]
//!   (tables of frozen dataset versions, loaded once), `meta_cache` (the
//!   attribute and dentry cache with TTLs; `statahead` fills it a
//!   directory at a time), and `meta` (metad, bottom).
//! - [`cache`]: the epoch cache (plans, memory and disk tiers,
//!   Belady/LRU eviction, readahead windows). It hands out what to fetch as
//!   jobs and takes the bytes back; it never calls the client.
//! - `handles`: open file handles and the per-inode state they share.
//! - `client`: the [`Client`] type and what it holds.
//! - the operations, `impl Client` blocks over those parts: `namespace`,
//!   `lookup`, `open`, `read`, `write` (with `upload`: stripe buffers to storage;
//!   `commit`: commits over a base, merges with other writers), `xattrs`,
//!   `locks`, `lease` (open inodes kept alive after unlink, garbage
//!   deletion), `prefetch` (runs the epoch cache's jobs through the read
//!   path), and `connect` (building a client, its loops).
//!
//! Stripe I/O (the cluster map, fragment puts and gets, degraded reads,
//! deletes) is the storage client's (`torchfs_storage_client::StorageClient`),
//! below this core; the core refreshes the map it works from.

pub mod cache;
mod client;
mod commit;
mod config;
mod connect;
pub mod control;
mod error;
mod file;
pub mod frozen;
mod handles;
mod lease;
mod lock_table;
mod locks;
mod lookup;
mod meta;
mod meta_cache;
mod namespace;
mod open;
mod prefetch;
mod read;
mod statahead;
mod sync;
#[cfg(test)]
mod tests;
mod upload;
mod write;
#[cfg(test)]
mod writers_tests;
mod xattrs;

pub use cache::{CacheConfig, ReadBuf};
pub use client::Client;
pub use config::ClientConfig;
pub use error::{ClientError, FileHandle, FrozenTableError};
pub use locks::LockSpec;
pub use meta::MetaService;
pub use namespace::{NewMode, Owner};
