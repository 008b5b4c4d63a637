//! The null backend: the FUSE ceiling. [`NullMeta`] answers the client
//! core's metadata requests from an in-memory namespace, at once, and
//! [`NullTransport`] drops every fragment put (counting it) and answers
//! every get with a fixed pseudo-random pattern. A [`crate::core::Client`]
//! built over the two with [`crate::core::Client::with_parts`] and mounted
//! with [`crate::fuse::mount`] is everything of torchfs's mount but metad
//! and the storage nodes: the same FUSE front-end, settings, caches,
//! stripe encoding and request handling, with no network and no disk
//! behind them. What it achieves is the most torchfs's mount can achieve
//! on this machine; `torchfs-perf` measures it as the `fuse-null` target.
//!
//! Data is not kept: a file reads back as the pattern (its length is the
//! file's), not as what was written. The namespace is kept (names,
//! attributes, layouts, open files, byte-range locks) so that metadata
//! workloads and the core's close-to-open revalidation run as they do
//! against metad. Requests no benchmark needs (links, symlinks, device
//! nodes, extended attribute changes, frozen datasets, RENAME_EXCHANGE,
//! storage-node registration) are answered with EOPNOTSUPP, never a panic.
//!
//! - `meta`: [`NullMeta`], the service: requests routed to the namespace.
//! - `namespace`: inodes, entries, renames.
//! - `files`: opens, layouts, leases and orphans, setattr, commits.
//! - `locks`: byte-range locks as metad keeps them.
//! - `transport`: [`NullTransport`] and its counters.

mod files;
mod locks;
mod meta;
mod namespace;
#[cfg(test)]
mod tests;
mod transport;

pub use meta::NullMeta;
pub use transport::{NullCounters, NullTransport};
