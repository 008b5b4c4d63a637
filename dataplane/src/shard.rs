//! A shard's request handling, shared by its listeners (TCP in
//! `server`, RDMA verbs in `verbs`): the key-space check, the bound on
//! buffer memory, and put, get and delete against the shard's store.

use std::cell::Cell;

use glommio::sync::Semaphore;
use torchfs_proto::fragment::{
    encode_keys, FragmentErrorCode, FragmentKey, FragmentResponse, LIST_KEYS_MAX,
};

use crate::store::{format, FragmentStore};

/// Bytes of fragment buffers one shard holds at once (KiB units in the
/// semaphore); requests beyond it wait, so memory stays bounded however
/// many clients connect.
const BUFFER_BUDGET_KIB: u64 = 256 << 10;

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

    /// The keys this shard stores after `after`, at most `limit` (capped
    /// at [`LIST_KEYS_MAX`]), as a `List` answer's bulk bytes.
    pub fn list(&self, after: FragmentKey, limit: u32) -> Vec<u8> {
        let limit = match limit {
            0 => LIST_KEYS_MAX,
            n => n.min(LIST_KEYS_MAX),
        } as usize;
        let keys: Vec<FragmentKey> = self
            .store
            .list()
            .into_iter()
            .filter(|k| *k > after)
            .take(limit)
            .collect();
        encode_keys(&keys)
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

pub(crate) fn refuse(code: FragmentErrorCode, message: String) -> FragmentResponse {
    FragmentResponse::Error {
        code,
        message,
        expected: 0,
        actual: 0,
    }
}

pub(crate) fn budget_kib(length_bytes: u32) -> u64 {
    (format::file_bytes(length_bytes).div_ceil(1024)).min(BUFFER_BUDGET_KIB)
}
