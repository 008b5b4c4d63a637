//! A live mount and the runtime its client runs on, started the one way
//! `torchfs mount` (and `torchfs up`) and the FUSE ceiling ([`crate::null`],
//! in `torchfs-perf`) both start it, with the defaults a mount takes when
//! no flag says otherwise. What the two share lives here, so the ceiling
//! cannot drift from the real mount.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

use torchfs_proto::client::MetaClient;
use torchfs_rdma::{MultiTransport, Transport};

use super::{FuseOptions, MountSession};
use crate::core::cache::DEFAULT_CACHE_MEM_BYTES;
use crate::core::{CacheConfig, Client, ClientConfig, ClientError, MetaService};

/// Worker threads of the client's runtime. Requests that only talk to
/// metad run on the metadata client's own runtime; these carry the data
/// path (reads, writes, uploads).
const RUNTIME_THREADS: usize = 2;
/// The disk tier's budget unless told (used only with a disk tier).
const DEFAULT_CACHE_DISK_BYTES: u64 = 10 << 30;

/// The memory tier a mount gets unless told: 1 GiB, or an eighth of the
/// machine's memory when that is less.
pub fn default_cache_mem_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 when unknown.
    let (pages, page_bytes) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let total = (pages.max(0) as u64).saturating_mul(page_bytes.max(0) as u64);
    match total {
        0 => DEFAULT_CACHE_MEM_BYTES,
        t => (t / 8).min(DEFAULT_CACHE_MEM_BYTES),
    }
}

/// The client configuration of a mount of the metad voters `metad` with
/// no flag given: the core's defaults, with the cache sized for this
/// machine. `torchfs mount`'s flags default to these values.
pub fn default_client_config(metad: Vec<String>) -> ClientConfig {
    ClientConfig {
        metad,
        cache: CacheConfig {
            mem_bytes: default_cache_mem_bytes(),
            disk_bytes: DEFAULT_CACHE_DISK_BYTES,
            ..CacheConfig::default()
        },
        ..ClientConfig::default()
    }
}

/// Whether a mount lets every user in unless told: when it is run by root
/// (the kernel checks modes, `default_permissions`). A mount by another
/// user serves only that user unless asked (`user_allow_other`).
pub fn allow_other_by_default() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Why a mount could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("start the client's runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("create cache disk-tier directory {}: {source}", dir.display())]
    CacheDir { dir: PathBuf, source: io::Error },
    /// The client could not be built (metad unreachable, for the real one).
    #[error(transparent)]
    Client(ClientError),
    #[error("mount on {}: {source}", mountpoint.display())]
    Mount {
        mountpoint: PathBuf,
        source: io::Error,
    },
}

/// A mount being served, the client behind it and the runtime its
/// requests run on. Unmounts when dropped.
pub struct Mounted<M: MetaService = MetaClient, T: Transport = MultiTransport> {
    session: Option<MountSession>,
    mountpoint: PathBuf,
    client: Client<M, T>,
    // Dropped after the session: FUSE threads call into it until unmount.
    runtime: tokio::runtime::Runtime,
}

impl<M: MetaService, T: Transport> Mounted<M, T> {
    /// Starts the client's runtime, builds the client on it with
    /// `make_client(config)` and mounts it at `mountpoint` with `options`;
    /// FUSE passthrough is asked for exactly when the cache has a disk
    /// tier (its hits are what passes through).
    pub fn start<F, Fut>(
        config: ClientConfig,
        mountpoint: &Path,
        options: &FuseOptions,
        make_client: F,
    ) -> Result<Self, MountError>
    where
        F: FnOnce(ClientConfig) -> Fut,
        Fut: Future<Output = Result<Client<M, T>, ClientError>>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("torchfs-client")
            .enable_all()
            .build()
            .map_err(MountError::Runtime)?;
        if let Some(dir) = &config.cache.disk_dir {
            std::fs::create_dir_all(dir).map_err(|source| MountError::CacheDir {
                dir: dir.clone(),
                source,
            })?;
        }
        let options = FuseOptions {
            passthrough: config.cache.disk_dir.is_some() && config.cache.mem_bytes > 0,
            ..options.clone()
        };
        let client = runtime
            .block_on(make_client(config))
            .map_err(MountError::Client)?;
        let session = super::mount(
            client.clone(),
            runtime.handle().clone(),
            mountpoint,
            &options,
        )
        .map_err(|source| MountError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
        Ok(Self {
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
            client,
            runtime,
        })
    }

    /// The client the mount serves.
    pub fn client(&self) -> &Client<M, T> {
        &self.client
    }

    /// Runs `future` to completion on the client's runtime (client calls
    /// made beside the mount).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the FUSE threads to finish.
    pub fn unmount(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl<M: MetaService, T: Transport> Drop for Mounted<M, T> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.umount_and_join();
        }
    }
}
