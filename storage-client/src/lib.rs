//! torchfs storage client (docs/ARCHITECTURE.md: Data path): what every
//! front-end, and metad, share about file data. Today: the stripe and
//! layout rules ([`stripe`]: where file bytes live, which entries are
//! valid) and the Reed-Solomon codec over ISA-L ([`codec`]). The stripe I/O
//! (locate, put, get, reconstruct, delete) still lives in the client core
//! (`fuse-client/src/core/upload.rs`, `read.rs`) and moves here next.
//! Nothing here knows of FUSE, inodes' metadata or caches.

pub mod codec;
pub mod stripe;
