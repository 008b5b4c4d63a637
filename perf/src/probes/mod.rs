//! Physical-limit probes: what the hardware under every target can do, so a
//! figure can be read against a bound rather than only against another
//! filesystem. The disk (fio, O_DIRECT, on the disk the storage nodes and
//! bricks use; and its commit latency, `sync`) and loopback TCP (the path
//! between torchfs's client and its storage nodes). The FUSE ceiling is a target of its own
//! (`targets::nullfs`), since it runs the workloads themselves.

pub mod fio;
pub mod sync;
pub mod tcp;

use anyhow::Result;

use crate::ctx::Ctx;

/// Figures of probes are recorded on this pseudo-target.
pub const TARGET: &str = "machine";

pub fn run_all(ctx: &mut Ctx) -> Result<()> {
    fio::run(ctx)?;
    sync::run(ctx)?;
    tcp::run(ctx)?;
    Ok(())
}
