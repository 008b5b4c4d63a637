//! Library side of the `torchfs` binary: what `torchfs up` and the
//! integration tests share (running a local cluster of real processes).

pub mod local_cluster;
