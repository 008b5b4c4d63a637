//! One reliable-connected queue pair with its completion queue, its
//! completion channel (a plain fd that tokio waits on, so no thread spins)
//! and two registered header buffers (SEND and RECV). Client and node
//! connections both use it; each runs one request at a time, so a
//! completion is awaited by its work-request id alone.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use rdma_mummy_sys::{ibv_ack_cq_events, ibv_cq, ibv_get_cq_event, ibv_req_notify_cq};
use sideway::ibverbs::completion::{
    BasicCompletionQueue, CompletionChannel, CompletionQueue, GenericCompletionQueue,
    PollCompletionQueueError, WorkCompletionStatus,
};
use sideway::ibverbs::device_context::DeviceContext;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, PostSendGuard, QueuePair, QueuePairState, SetScatterGatherEntry,
    WorkRequestFlags,
};
use sideway::rdmacm::communication_manager::Identifier;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::pool::{BufferPool, Slot};
use super::VerbsError;

/// Bytes of each header buffer: a request or response header, never bulk
/// bytes (error messages are cut to 1 KiB, so headers stay far below).
pub(crate) const HEADER_SLOT_BYTES: usize = 4096;

/// Work-request ids: one operation of each kind is outstanding at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum Op {
    Send = 1,
    Recv = 2,
    Read = 3,
    Write = 4,
}

impl Op {
    fn from_wr_id(id: u64) -> Option<Op> {
        [Op::Send, Op::Recv, Op::Read, Op::Write]
            .into_iter()
            .find(|op| *op as u64 == id)
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    pub op: Op,
    pub status: u32,
    pub byte_len: u32,
}

/// The fd of a completion channel, for `AsyncFd` (the channel owns it).
struct ChannelFd(RawFd);

impl AsRawFd for ChannelFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Fields drop in declaration order: the queue pair goes first, so no
/// remote peer can touch a buffer after this is gone; then the buffers,
/// the completion queue, its channel and the connection id.
pub(crate) struct QueuePairConn {
    qp: BasicQueuePair,
    send: Slot,
    recv: Slot,
    _headers: Arc<BufferPool>,
    cq: Arc<BasicCompletionQueue>,
    fd: AsyncFd<ChannelFd>,
    _channel: Arc<CompletionChannel>,
    pending: VecDeque<Completion>,
    /// Posted operations whose completion has not been taken yet.
    outstanding: usize,
    pub(crate) id: Arc<Identifier>,
}

impl QueuePairConn {
    /// Creates the queue pair for `id` (address and route resolved, or a
    /// connect request) in protection domain `pd`; [`Self::ready`] moves
    /// it on. Must run inside a tokio runtime.
    pub(crate) async fn new(
        id: Arc<Identifier>,
        ctx: &Arc<DeviceContext>,
        pd: &Arc<ProtectionDomain>,
    ) -> Result<Self, VerbsError> {
        let setup = |step: &'static str| {
            move |e: &dyn std::fmt::Display| VerbsError::Setup {
                step,
                message: e.to_string(),
            }
        };
        let channel =
            CompletionChannel::new(ctx).map_err(|e| setup("create completion channel")(&e))?;
        channel
            .set_nonblocking(true)
            .map_err(|e| setup("completion channel")(&e))?;
        let cq = ctx
            .create_cq_builder()
            .setup_cqe(16)
            .setup_comp_channel(&channel, 0)
            .build()
            .map_err(|e| setup("create completion queue")(&e))?;
        let qp = {
            let mut builder = pd.create_qp_builder();
            builder
                .setup_max_send_wr(4)
                .setup_max_recv_wr(2)
                .setup_max_send_sge(1)
                .setup_max_recv_sge(1)
                .setup_send_cq(GenericCompletionQueue::from(cq.clone()))
                .setup_recv_cq(GenericCompletionQueue::from(cq.clone()));
            builder
                .build()
                .map_err(|e| setup("create queue pair")(&e))?
        };
        let headers = BufferPool::register(pd, HEADER_SLOT_BYTES, 2)?;
        let send = headers.acquire().await;
        let recv = headers.acquire().await;
        // SAFETY: the channel owns the fd and outlives this AsyncFd (it is
        // declared after it in `QueuePairConn`, so dropped after).
        let fd = unsafe {
            AsyncFd::register_with_interest(ChannelFd(channel.as_raw_fd()), Interest::READABLE)
        }
        .map_err(|e| setup("watch completion channel")(&e.to_string()))?;
        let conn = Self {
            qp,
            send,
            recv,
            _headers: headers,
            cq,
            fd,
            _channel: channel,
            pending: VecDeque::new(),
            outstanding: 0,
            id,
        };
        conn.arm()?;
        Ok(conn)
    }

    /// Moves the queue pair to ready-to-send with the attributes rdma_cm
    /// computed: on the node once a connect request names the client's
    /// queue pair, on the client once the node's response does.
    pub(crate) fn ready(&mut self) -> Result<(), VerbsError> {
        for state in [
            QueuePairState::Init,
            QueuePairState::ReadyToReceive,
            QueuePairState::ReadyToSend,
        ] {
            let attr = self.id.get_qp_attr(state).map_err(|e| VerbsError::Setup {
                step: "queue pair attributes",
                message: e.to_string(),
            })?;
            self.qp.modify(&attr).map_err(|e| VerbsError::Setup {
                step: "modify queue pair",
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    pub(crate) fn qp_number(&self) -> u32 {
        self.qp.qp_number()
    }

    /// Asks for an event on the channel at the next completion.
    fn arm(&self) -> Result<(), VerbsError> {
        // SAFETY: the CQ is alive (owned by self).
        let ret = unsafe { ibv_req_notify_cq(self.cq.cq().as_ptr(), 0) };
        if ret != 0 {
            return Err(VerbsError::Setup {
                step: "arm completion queue",
                message: std::io::Error::from_raw_os_error(ret).to_string(),
            });
        }
        Ok(())
    }

    /// Posts a receive into the header buffer.
    pub(crate) fn post_recv(&mut self) -> Result<(), VerbsError> {
        let (lkey, addr, len) = (self.recv.lkey(), self.recv.addr(), HEADER_SLOT_BYTES as u32);
        let mut guard = self.qp.start_post_recv();
        let wr = guard.construct_wr(Op::Recv as u64);
        // SAFETY: the buffer is registered and lives as long as the QP.
        unsafe { wr.setup_sge(lkey, addr, len) };
        guard.post().map_err(|e| VerbsError::Post {
            op: "recv",
            message: e.to_string(),
        })?;
        self.outstanding += 1;
        Ok(())
    }

    /// Sends `header` (copied into the registered send buffer).
    pub(crate) fn post_send(&mut self, header: &[u8]) -> Result<(), VerbsError> {
        if header.len() > HEADER_SLOT_BYTES {
            return Err(VerbsError::Post {
                op: "send",
                message: format!(
                    "header of {} bytes exceeds {HEADER_SLOT_BYTES}",
                    header.len()
                ),
            });
        }
        self.send.as_mut_slice()[..header.len()].copy_from_slice(header);
        let (lkey, addr) = (self.send.lkey(), self.send.addr());
        let mut guard = self.qp.start_post_send();
        let wr = guard
            .construct_wr(Op::Send as u64, WorkRequestFlags::Signaled)
            .setup_send();
        // SAFETY: as in post_recv.
        unsafe { wr.setup_sge(lkey, addr, header.len() as u32) };
        guard.post().map_err(|e| VerbsError::Post {
            op: "send",
            message: e.to_string(),
        })?;
        self.outstanding += 1;
        Ok(())
    }

    /// RDMA READ of `len` bytes at the peer's (`addr`, `rkey`) into `slot`
    /// (`op` Read), or RDMA WRITE of `slot[..len]` there (`op` Write). The
    /// caller keeps `slot` until the completion (or until this is dropped).
    pub(crate) fn post_rdma(
        &mut self,
        op: Op,
        slot: &Slot,
        len: u32,
        remote_addr: u64,
        rkey: u32,
    ) -> Result<(), VerbsError> {
        let mut guard = self.qp.start_post_send();
        let wr = guard.construct_wr(op as u64, WorkRequestFlags::Signaled);
        let wr = match op {
            Op::Read => wr.setup_read(rkey, remote_addr),
            _ => wr.setup_write(rkey, remote_addr),
        };
        // SAFETY: the slot is registered; the caller holds it until done.
        unsafe { wr.setup_sge(slot.lkey(), slot.addr(), len) };
        guard.post().map_err(|e| VerbsError::Post {
            op: if op == Op::Read {
                "rdma read"
            } else {
                "rdma write"
            },
            message: e.to_string(),
        })?;
        self.outstanding += 1;
        Ok(())
    }

    /// The header bytes the last receive brought.
    pub(crate) fn received(&self, byte_len: u32) -> &[u8] {
        &self.recv.as_slice()[..(byte_len as usize).min(HEADER_SLOT_BYTES)]
    }

    /// Waits for the completion of `op`. A completion in error (the peer
    /// died, the queue pair broke) is an error: the connection is done.
    pub(crate) async fn wait(&mut self, op: Op) -> Result<Completion, VerbsError> {
        loop {
            if let Some(i) = self.pending.iter().position(|c| c.op == op) {
                let c = self.pending.remove(i).expect("position is in range");
                if c.status != WorkCompletionStatus::Success as u32 {
                    return Err(VerbsError::Completion {
                        op: format!("{:?}", c.op),
                        status: format!("{:?}", WorkCompletionStatus::from(c.status)),
                    });
                }
                return Ok(c);
            }
            if self.outstanding == 0 {
                return Err(VerbsError::Post {
                    op: "wait",
                    message: format!("no {op:?} outstanding"),
                });
            }
            if self.poll()? {
                continue;
            }
            // Nothing yet: wait for the channel's event, re-arm, and poll
            // again (a completion may land between the poll and the arm).
            let mut ready = self.fd.readable().await.map_err(|e| VerbsError::Post {
                op: "wait",
                message: e.to_string(),
            })?;
            let mut cq: *mut ibv_cq = std::ptr::null_mut();
            let mut context = std::ptr::null_mut();
            // SAFETY: the channel is alive; the call does not block (the fd
            // is non-blocking) and fills the two out-pointers on success.
            let got = unsafe {
                ibv_get_cq_event(self._channel.comp_channel().as_ptr(), &mut cq, &mut context)
            };
            if got == 0 {
                // SAFETY: `cq` is this connection's CQ (its only one).
                unsafe { ibv_ack_cq_events(cq, 1) };
            } else {
                ready.clear_ready();
            }
            self.arm()?;
        }
    }

    /// Moves available completions into `pending`; true when any came.
    fn poll(&mut self) -> Result<bool, VerbsError> {
        let poller = match self.cq.start_poll() {
            Ok(p) => p,
            Err(PollCompletionQueueError::CompletionQueueEmpty) => return Ok(false),
            Err(e) => {
                return Err(VerbsError::Post {
                    op: "poll",
                    message: e.to_string(),
                })
            }
        };
        let mut any = false;
        for wc in poller {
            any = true;
            self.outstanding = self.outstanding.saturating_sub(1);
            let Some(op) = Op::from_wr_id(wc.wr_id()) else {
                continue;
            };
            self.pending.push_back(Completion {
                op,
                status: wc.status(),
                byte_len: wc.byte_len(),
            });
        }
        Ok(any)
    }
}

impl Drop for QueuePairConn {
    fn drop(&mut self) {
        // Tells the peer (its rdma_cm event), so it frees its side now
        // rather than at its next failed operation.
        let _ = self.id.disconnect();
    }
}
