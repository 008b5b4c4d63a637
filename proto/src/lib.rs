//! Wire schemas, ids and error codes shared by every torchfs part
//! (docs/ARCHITECTURE.md: Design: services meet only here and in the transport).
//!
//! - [`meta`]: metadata API domain types (requests, replies, errors).
//! - [`convert`]: domain types <-> Cap'n Proto (`metadata_capnp`).
//! - [`client`]: [`client::MetaClient`], the leader-following metad client.
//! - [`fragment`]: fragment data-path headers and framing.
//! - [`rpc`]: the two-party Cap'n Proto RPC setup over TCP, address checks.
//! - `fragment_capnp`, `metadata_capnp`: code generated from `schema/`.

pub mod client;
pub mod convert;
pub mod fragment;
pub mod meta;
pub mod rpc;

#[allow(clippy::all, dead_code, unused_parens)]
pub mod fragment_capnp {
    include!(concat!(env!("OUT_DIR"), "/fragment_capnp.rs"));
}

#[allow(clippy::all, dead_code, unused_parens)]
pub mod metadata_capnp {
    include!(concat!(env!("OUT_DIR"), "/metadata_capnp.rs"));
}
