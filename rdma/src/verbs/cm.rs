//! rdma_cm events awaited on tokio: an event channel's fd is plain, so a
//! non-blocking channel and `AsyncFd` wait for events without a thread.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use sideway::rdmacm::communication_manager::{Event, EventChannel, GetEventErrorKind};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::VerbsError;

struct ChannelFd(RawFd);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// An rdma_cm event channel in non-blocking mode, watched by tokio.
pub(crate) struct Events {
    fd: AsyncFd<ChannelFd>,
    pub(crate) channel: Arc<EventChannel>,
}

impl Events {
    pub(crate) fn new() -> Result<Self, VerbsError> {
        let setup = |e: &dyn std::fmt::Display| VerbsError::Setup {
            step: "rdma_cm event channel",
            message: e.to_string(),
        };
        let channel = EventChannel::new().map_err(|e| setup(&e))?;
        channel.set_nonblocking(true).map_err(|e| setup(&e))?;
        // SAFETY: the channel owns the fd and outlives this AsyncFd (it is
        // declared after it in `Events`, so dropped after).
        let fd = unsafe {
            AsyncFd::register_with_interest(ChannelFd(channel.as_raw_fd()), Interest::READABLE)
        }
        .map_err(|e| setup(&e.to_string()))?;
        Ok(Self { fd, channel })
    }

    /// The next event. The caller acknowledges it (drop or `ack`) before
    /// it awaits anything: an id cannot be destroyed while an event of
    /// its is held.
    pub(crate) async fn next(&self) -> Result<Event, VerbsError> {
        loop {
            if let Some(event) = self.try_next()? {
                return Ok(event);
            }
            let mut ready = self.fd.readable().await.map_err(|e| VerbsError::Setup {
                step: "rdma_cm event",
                message: e.to_string(),
            })?;
            ready.clear_ready();
        }
    }

    fn try_next(&self) -> Result<Option<Event>, VerbsError> {
        match self.channel.get_cm_event() {
            Ok(event) => Ok(Some(event)),
            Err(e) if matches!(e.0, GetEventErrorKind::NoEvent) => Ok(None),
            Err(e) => Err(VerbsError::Setup {
                step: "rdma_cm event",
                message: e.to_string(),
            }),
        }
    }
}
