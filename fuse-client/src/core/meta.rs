//! The bottom of the core's chain of metadata views: metad itself, as the
//! [`MetaService`] trait (the real client, or an in-memory one), wrapped in
//! [`Meta`], which counts the requests file operations send and holds this
//! client's lease id. The views above it (the TTL cache, frozen tables,
//! the control directory) answer what they can and call down to it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use torchfs_proto::client::{Answer, MetaClient};
use torchfs_proto::meta::{ChangedDir, MetaError, MetaReply, MetaRequest};

use super::error::ClientError;

/// The metadata service as the core sees it. [`MetaClient`] is the real one;
/// tests substitute an in-memory one.
pub trait MetaService: Send + Sync + 'static {
    fn call(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply, MetaError>> + Send;

    /// [`Self::call`], answered with the attributes of the directories a
    /// namespace write changed (none from a service that does not say).
    fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> impl Future<Output = Result<Answer, MetaError>> + Send {
        let call = self.call(req);
        async move { call.await.map(|reply| (reply, Vec::new())) }
    }

    /// A runtime on which calls cost no thread hop, if the service has one.
    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        None
    }
}

impl MetaService for MetaClient {
    fn call(&self, req: MetaRequest) -> impl Future<Output = Result<MetaReply, MetaError>> + Send {
        MetaClient::call(self, req)
    }

    fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> impl Future<Output = Result<Answer, MetaError>> + Send {
        MetaClient::call_dirs(self, req)
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Some(MetaClient::runtime(self).clone())
    }
}

/// metad as the core's views call it.
pub(crate) struct Meta<M> {
    service: M,
    /// Requests sent for file operations (not background work: the map
    /// refresh, keep-alives).
    requests: AtomicU64,
    /// This client's id in metad's lease table (random, never 0).
    pub lease_id: u64,
}

impl<M: MetaService> Meta<M> {
    pub fn new(service: M) -> Self {
        Self {
            service,
            requests: AtomicU64::new(0),
            lease_id: torchfs_proto::client::random_client_id(),
        }
    }

    /// A request on behalf of a file operation (counted).
    pub async fn call(&self, req: MetaRequest) -> Result<MetaReply, ClientError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(self.service.call(req).await?)
    }

    /// A namespace write: metad's reply, and the attributes of the
    /// directories it changed (counted).
    pub async fn call_dirs(
        &self,
        req: MetaRequest,
    ) -> (Result<MetaReply, ClientError>, Vec<ChangedDir>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match self.service.call_dirs(req).await {
            Ok((reply, dirs)) => (Ok(reply), dirs),
            Err(e) => (Err(e.into()), Vec::new()),
        }
    }

    /// A request of the client's own background work (not counted).
    pub async fn call_background(&self, req: MetaRequest) -> Result<MetaReply, MetaError> {
        self.service.call(req).await
    }

    /// Requests sent for file operations so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A runtime on which calls cost no thread hop, if the service has one.
    pub fn runtime(&self) -> Option<tokio::runtime::Handle> {
        self.service.runtime()
    }
}
