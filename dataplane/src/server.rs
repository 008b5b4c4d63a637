//! One shard: a glommio executor that owns a slice of the fragment key
//! space, its [`DmaStore`] and its TCP listener, and serves frames
//! (`torchfs_rdma::frame`) one request at a time per connection. Nothing is
//! shared with other shards except atomic space counters: no locks on the
//! data path.

use std::cell::Cell;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::Either;
use futures::io::{AsyncRead, AsyncWrite};
use glommio::sync::Semaphore;
use torchfs_proto::fragment::{FragmentErrorCode, FragmentKey, FragmentRequest, FragmentResponse};
use torchfs_rdma::frame::{self, FrameIoError};

use crate::faults::Faults;
use crate::io::GlommioDisk;
use crate::store::dma::{DmaStore, NodeUsage, ScanResult};
use crate::store::log::LogConfig;
use crate::store::{format, FragmentStore};

/// Bytes of fragment buffers one shard holds at once (KiB units in the
/// semaphore); requests beyond it wait, so memory stays bounded however
/// many clients connect.
const BUFFER_BUDGET_KIB: u64 = 256 << 10;
/// How long a stopping shard lets requests in progress finish.
const DRAIN_MS: u64 = 5_000;

/// Everything a shard executor starts from (all `Send`).
pub(crate) struct ShardSetup {
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
}

/// The state a shard's connections share (single-threaded).
pub(crate) struct Shard<S> {
    pub index: usize,
    pub shards: usize,
    pub store: S,
    budget: Semaphore,
    pub(crate) in_flight: Cell<usize>,
}

impl<S: FragmentStore> Shard<S> {
    pub fn new(index: usize, shards: usize, store: S) -> Self {
        Self {
            index,
            shards,
            store,
            budget: Semaphore::new(BUFFER_BUDGET_KIB),
            in_flight: Cell::new(0),
        }
    }

    /// The refusal for a key another shard owns.
    pub fn misrouted(&self, key: &FragmentKey) -> Option<FragmentResponse> {
        let owner = key.shard(self.shards);
        (owner != self.index).then(|| {
            let message = format!(
                "{key} belongs to shard {owner} of {}, not {}",
                self.shards, self.index
            );
            refuse(FragmentErrorCode::WrongShard, message)
        })
    }

    /// Waits for buffer budget for a put of `length` bytes, then fills a
    /// put buffer with `fill` (the listener's way of getting the bytes)
    /// and stores it. `fill`'s error ends the request without a response.
    pub async fn put<E>(
        &self,
        key: FragmentKey,
        length: u32,
        crc32c: u32,
        fill: impl AsyncFnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<FragmentResponse, E>
    where
        E: From<std::io::Error>,
    {
        let _permit = self
            .budget
            .acquire_permit(budget_kib(length))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut data = self.store.put_buffer(length);
        fill(data.as_mut()).await?;
        Ok(match self.store.put(key, data, crc32c).await {
            Ok(()) => FragmentResponse::Ok { length: 0 },
            Err(e) => {
                tracing::warn!("shard {}: put: {e}", self.index);
                e.to_response()
            }
        })
    }

    /// Reads `length` bytes at `offset` of `key` (checked against the
    /// CRC32Cs) under the buffer budget, and hands them to `send`.
    pub async fn get<E>(
        &self,
        key: FragmentKey,
        offset: u32,
        length: u32,
        expected_crc32c: u32,
        send: impl AsyncFnOnce(Result<&[u8], FragmentResponse>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<std::io::Error>,
    {
        // A ranged get reads the chunks around its range: up to one more
        // chunk on each side.
        let read_bytes = length.saturating_add(2 * format::CHUNK_BYTES_MIN);
        let _permit = self
            .budget
            .acquire_permit(budget_kib(read_bytes))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        match self.store.get(key, offset, length, expected_crc32c).await {
            Ok(bytes) => send(Ok(&bytes)).await,
            Err(e) => {
                if e.code() != FragmentErrorCode::NotFound {
                    tracing::warn!("shard {}: get: {e}", self.index);
                }
                send(Err(e.to_response())).await
            }
        }
    }

    pub async fn delete(&self, key: FragmentKey) -> FragmentResponse {
        match self.store.delete(key).await {
            Ok(()) => FragmentResponse::Ok { length: 0 },
            Err(e) => e.to_response(),
        }
    }
}

/// Counts a request in progress for the drain at stop.
pub(crate) struct Busy<'a>(&'a Cell<usize>);

impl<'a> Busy<'a> {
    pub(crate) fn new(c: &'a Cell<usize>) -> Self {
        c.set(c.get() + 1);
        Self(c)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Runs a shard until `setup.stop` fires (or its sender is dropped).
pub(crate) async fn run_shard(setup: ShardSetup) {
    // SAFETY: the fd comes from a listening std socket we own and give up.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(setup.listener.into_raw_fd()) };
    let store = DmaStore::new(
        setup.dir,
        GlommioDisk::new(setup.faults),
        setup.scanned,
        setup.usage,
        setup.log,
    );
    let shard = Rc::new(Shard::new(setup.index, setup.shards, store));
    if let Some(calls) = setup.verbs {
        glommio::spawn_local(crate::verbs::serve_calls(shard.clone(), calls)).detach();
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

pub(crate) fn refuse(code: FragmentErrorCode, message: String) -> FragmentResponse {
    FragmentResponse::Error {
        code,
        message,
        expected: 0,
        actual: 0,
    }
}

fn budget_kib(length_bytes: u32) -> u64 {
    (format::file_bytes(length_bytes).div_ceil(1024)).min(BUFFER_BUDGET_KIB)
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
        let key = match &request {
            FragmentRequest::Put { key, .. }
            | FragmentRequest::Get { key, .. }
            | FragmentRequest::Delete { key } => *key,
        };
        if let Some(refusal) = shard.misrouted(&key) {
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
        }
    }
}
