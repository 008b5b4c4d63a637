//! The node's RDMA verbs listener (`torchfs_rdma::verbs`, on its own
//! thread) handing each request to the shard that owns its key over a
//! bounded channel. The shard serves it with the same [`Shard`] methods as
//! its TCP listener; bytes go between the listener's registered buffer and
//! the shard's O_DIRECT buffer with one copy, as TCP's go between the
//! socket and that buffer.

use std::rc::Rc;

use futures::channel::{mpsc, oneshot};
use futures::{SinkExt, StreamExt};
use torchfs_proto::fragment::{FragmentErrorCode, FragmentRequest, FragmentResponse};
use torchfs_rdma::verbs::pool::Slot;
use torchfs_rdma::verbs::FragmentHandler;

use crate::shard::{refuse, Busy, Shard};
use crate::store::FragmentStore;

/// Requests queued per shard before the listener waits.
pub(crate) const CALLS_QUEUED_MAX: usize = 64;

type Reply = (FragmentResponse, Option<Slot>);

pub(crate) struct Call {
    request: FragmentRequest,
    slot: Option<Slot>,
    reply: oneshot::Sender<Reply>,
}

/// The listener's handler: routes each request to its shard.
pub(crate) struct Bridge {
    pub shards: Vec<mpsc::Sender<Call>>,
}

fn stopped() -> Reply {
    (
        refuse(FragmentErrorCode::Io, "the shard is stopping".into()),
        None,
    )
}

impl FragmentHandler for Bridge {
    async fn handle(&self, request: FragmentRequest, slot: Option<Slot>) -> Reply {
        let shard = request.key().shard(self.shards.len());
        let mut tx = self.shards[shard].clone();
        let (reply, answer) = oneshot::channel();
        let call = Call {
            request,
            slot,
            reply,
        };
        if tx.send(call).await.is_err() {
            return stopped();
        }
        answer.await.unwrap_or_else(|_| stopped())
    }
}

/// Serves the calls routed to `shard` until the listener goes.
pub(crate) async fn serve_calls<S: FragmentStore + 'static>(
    shard: Rc<Shard<S>>,
    mut calls: mpsc::Receiver<Call>,
) {
    while let Some(call) = calls.next().await {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let reply = serve_call(&shard, call.request, call.slot).await;
            let _ = call.reply.send(reply);
        })
        .detach();
    }
}

async fn serve_call<S: FragmentStore>(
    shard: &Shard<S>,
    request: FragmentRequest,
    slot: Option<Slot>,
) -> Reply {
    let _busy = Busy::new(&shard.in_flight);
    if let Some(refusal) = shard.misrouted(&request.key()) {
        return (refusal, slot);
    }
    let no_slot = || {
        (
            refuse(FragmentErrorCode::BadRequest, "no buffer".into()),
            None,
        )
    };
    match request {
        FragmentRequest::Put {
            key,
            length,
            crc32c,
        } => {
            let Some(slot) = slot else { return no_slot() };
            let response = shard
                .put(key, length, crc32c, async |data: &mut [u8]| {
                    data.copy_from_slice(&slot.as_slice()[..data.len()]);
                    Ok::<(), std::io::Error>(())
                })
                .await
                .unwrap_or_else(|e| refuse(FragmentErrorCode::Io, e.to_string()));
            (response, Some(slot))
        }
        FragmentRequest::Get {
            key,
            offset,
            length,
            expected_crc32c,
        } => {
            let Some(mut slot) = slot else {
                return no_slot();
            };
            let mut response = None;
            let read = shard
                .get(key, offset, length, expected_crc32c, async |read| {
                    response = Some(match read {
                        Ok(bytes) => {
                            slot.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
                            FragmentResponse::Ok {
                                length: bytes.len() as u32,
                            }
                        }
                        Err(refusal) => refusal,
                    });
                    Ok::<(), std::io::Error>(())
                })
                .await;
            let response = match (read, response) {
                (Ok(()), Some(r)) => r,
                (Err(e), _) => refuse(FragmentErrorCode::Io, e.to_string()),
                (Ok(()), None) => refuse(FragmentErrorCode::Io, "no reply".into()),
            };
            (response, Some(slot))
        }
        FragmentRequest::Delete { key } => (shard.delete(key).await, slot),
        FragmentRequest::List { .. } => (
            refuse(
                FragmentErrorCode::BadRequest,
                "key listings go over TCP".into(),
            ),
            slot,
        ),
    }
}
