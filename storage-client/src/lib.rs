//! torchfs storage client (docs/ARCHITECTURE.md: Data path): what every
//! front-end, and metad, share about file data, and the stripe I/O under
//! every front-end (and, later, repair and a preload client). Nothing here
//! knows of FUSE, inodes' metadata or caches.
//!
//! - [`stripe`]: the stripe and layout rules (where file bytes live, which
//!   entries are valid), shared with metad.
//! - [`codec`]: the Reed-Solomon codec over ISA-L.
//! - [`map`]: the cluster map a client works from, and where a fragment
//!   lives by it.
//! - [`io`]: [`StorageClient`], stripe I/O over a `torchfs_rdma::Transport`:
//!   encode and put, ranged reads with degraded decode, deletes.
//! - [`error`]: why stripe I/O failed ([`StorageError`]).

pub mod codec;
pub mod error;
pub mod io;
pub mod map;
pub mod stripe;

pub use error::StorageError;
pub use io::StorageClient;
