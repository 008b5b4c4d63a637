//! torchfs client core: metadata cache, stripe reader/writer and
//! Reed-Solomon coding (ISA-L), independent of any front-end (docs/ARCHITECTURE.md: Design).
//! The FUSE front-end and other front-ends sit on top of [`core::Client`].

pub mod codec;
pub mod core;
pub mod fuse;
pub mod stripe;
