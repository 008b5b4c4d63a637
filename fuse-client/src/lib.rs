//! torchfs client core: metadata views and caches, file state, the stripe
//! reader/writer over the storage client (`torchfs-storage-client`: stripe
//! rules, ISA-L codec), independent of any front-end (docs/ARCHITECTURE.md:
//! Design). The FUSE front-end and other front-ends sit on top of
//! [`core::Client`].

pub mod core;
pub mod fuse;
pub mod null;

// The stripe rules and the codec live in the storage client.
pub use torchfs_storage_client::{codec, stripe};
