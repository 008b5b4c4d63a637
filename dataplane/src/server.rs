//! One shard: a glommio executor that owns a slice of the fragment key
//! space, its [`DmaStore`] and its TCP listener, and serves frames
//! (`torchfs_rdma::frame`) one request at a time per connection. Nothing is
//! shared with other shards except atomic space counters: no locks on the
//! data path.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::Either;
use futures::io::{AsyncRead, AsyncWrite};
use torchfs_proto::fragment::{FragmentErrorCode, FragmentRequest, FragmentResponse};
use torchfs_rdma::frame::{self, FrameIoError};

use crate::faults::Faults;
use crate::io::GlommioDisk;
use crate::shard::{refuse, Busy, Shard};
use crate::store::dma::{DmaStore, NodeUsage, ScanResult};
use crate::store::log::LogConfig;
use crate::store::FragmentStore;

/// How long a stopping shard lets requests in progress finish.
const DRAIN_MS: u64 = 5_000;

/// Everything a shard executor starts from (all `Send`).
pub(crate) struct ShardSetup {
    /// Seeds this shard's disk faults (feature `testing`).
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    pub node_id: u64,
    pub index: usize,
    pub shards: usize,
    pub listener: std::net::TcpListener,
    pub dir: PathBuf,
    pub scanned: ScanResult,
    pub log: LogConfig,
    pub usage: Arc<NodeUsage>,
    pub faults: Faults,
    pub stop: oneshot::Receiver<()>,
    /// Requests from the node's verbs listener, when it runs one.
    pub verbs: Option<futures::channel::mpsc::Receiver<crate::verbs::Call>>,
    pub scrub: crate::scrub::ScrubConfig,
    /// Where the scrub sends the fragments it found bad.
    pub bad_fragments: futures::channel::mpsc::Sender<torchfs_proto::fragment::FragmentKey>,
}

/// Runs a shard until `setup.stop` fires (or its sender is dropped).
pub(crate) async fn run_shard(setup: ShardSetup) {
    // SAFETY: the fd comes from a listening std socket we own and give up.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(setup.listener.into_raw_fd()) };
    #[cfg(feature = "testing")]
    let disk = crate::io::FaultyDisk::new(
        GlommioDisk::new(setup.faults.clone()),
        setup.faults,
        crate::faults::stream(setup.node_id, setup.index),
    );
    #[cfg(not(feature = "testing"))]
    let disk = GlommioDisk::new(setup.faults);
    let store = DmaStore::new(setup.dir, disk, setup.scanned, setup.usage, setup.log);
    let shard = Rc::new(Shard::new(setup.index, setup.shards, store));
    if let Some(calls) = setup.verbs {
        glommio::spawn_local(crate::verbs::serve_calls(shard.clone(), calls)).detach();
    }
    if setup.scrub.bytes_per_s > 0 {
        let scrub = crate::scrub::run(shard.clone(), setup.scrub, setup.bad_fragments);
        glommio::spawn_local(scrub).detach();
    }
    let mut stop = setup.stop;
    loop {
        match futures::future::select(std::pin::pin!(listener.accept()), &mut stop).await {
            Either::Right(_) => break,
            Either::Left((Ok(stream), _)) => {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("shard {}: TCP_NODELAY: {e}", shard.index);
                }
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    let mut stream = stream;
                    if let Err(e) = serve_connection(&mut stream, &shard).await {
                        tracing::debug!("shard {}: connection closed: {e}", shard.index);
                    }
                })
                .detach();
            }
            Either::Left((Err(e), _)) => {
                // E.g. out of file descriptors: back off rather than spin.
                tracing::warn!("shard {}: accept: {e}", shard.index);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + Duration::from_millis(DRAIN_MS);
    while shard.in_flight.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves requests on one connection until the peer closes it or an I/O
/// or framing error makes the stream unusable.
pub(crate) async fn serve_connection<S, C>(
    conn: &mut C,
    shard: &Shard<S>,
) -> Result<(), FrameIoError>
where
    S: FragmentStore,
    C: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let request = match frame::read_request(conn).await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(FrameIoError::Frame(e)) => {
                // The stream cannot be resynchronised: say why, then close.
                let _ = frame::write_response(
                    conn,
                    &refuse(FragmentErrorCode::BadRequest, e.to_string()),
                    &[],
                )
                .await;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        let _busy = Busy::new(&shard.in_flight);
        // A listing is of this shard, whatever key it starts after.
        if let FragmentRequest::List { after, limit } = request {
            let keys = shard.list(after, limit);
            let response = FragmentResponse::Ok {
                length: keys.len() as u32,
            };
            frame::write_response(conn, &response, &keys).await?;
            continue;
        }
        if let Some(refusal) = shard.misrouted(&request.key()) {
            if let FragmentRequest::Put { length, .. } = request {
                frame::skip_bulk(conn, u64::from(length)).await?;
            }
            frame::write_response(conn, &refusal, &[]).await?;
            continue;
        }
        match request {
            FragmentRequest::Put {
                key,
                length,
                crc32c,
            } => {
                let response = shard
                    .put(key, length, crc32c, async |data: &mut [u8]| {
                        frame::read_bulk(conn, data).await
                    })
                    .await?;
                frame::write_response(conn, &response, &[]).await?;
            }
            FragmentRequest::Get {
                key,
                offset,
                length,
                expected_crc32c,
            } => {
                shard
                    .get(
                        key,
                        offset,
                        length,
                        expected_crc32c,
                        async |read| match read {
                            Ok(bytes) => {
                                let response = FragmentResponse::Ok {
                                    length: bytes.len() as u32,
                                };
                                frame::write_response(conn, &response, bytes).await
                            }
                            Err(refusal) => frame::write_response(conn, &refusal, &[]).await,
                        },
                    )
                    .await?;
            }
            FragmentRequest::Delete { key } => {
                let response = shard.delete(key).await;
                frame::write_response(conn, &response, &[]).await?;
            }
            FragmentRequest::List { .. } => {} // answered above
        }
    }
}
