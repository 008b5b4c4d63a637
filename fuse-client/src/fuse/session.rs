//! Starting a mount: the options it takes, the session fuser serves, and
//! the state every request task shares ([`Fs`]), with how a request
//! becomes a task on the client's runtime.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use fuser::{Config, MountOption, Notifier, SessionACL};
use tokio::runtime::Handle;
use torchfs_rdma::Transport;

use super::dirs::DirStreams;
use super::no_open::{InodeHandles, SWEEP_INTERVAL};
use super::passthrough::IoModes;
use super::{readahead, MountSession};
use crate::core::{Client, MetaService};

/// How the mount behaves; set at mount time.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// fuser worker threads (each with its own /dev/fuse fd). They read
    /// and dispatch requests, and answer cache hits and empty closes
    /// themselves: 4 served 16 creating threads ~11% faster than 2 here
    /// (2 vCPUs), with single-thread creates unchanged.
    pub threads: usize,
    /// How long the kernel may cache a name lookup.
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes.
    pub attr_ttl: Duration,
    /// Let users other than the mounting one use the mount (`allow_other`).
    pub allow_other: bool,
    /// Largest read/write request the kernel sends (bytes).
    pub request_bytes_max: u32,
    /// Ask the kernel for FUSE passthrough, so that files the epoch cache's
    /// disk tier holds whole are read by the kernel directly. Only useful
    /// with a disk tier; off if the kernel refuses it.
    pub passthrough: bool,
    /// Mount read-only, in the kernel's no-open mode (see `no_open`): no
    /// round trip per open or close; changes made elsewhere are seen
    /// within `attr_ttl`; no control files, no passthrough, and locks
    /// local to this host.
    pub read_only: bool,
    /// On a read-only mount, how long the kernel may cache the names and
    /// attributes of a frozen dataset's inodes (a change after an unfreeze
    /// is seen there within this long).
    pub frozen_ttl: Duration,
}

impl Default for FuseOptions {
    fn default() -> Self {
        Self {
            threads: 4,
            entry_ttl: Duration::from_secs(1),
            attr_ttl: Duration::from_secs(1),
            allow_other: false,
            request_bytes_max: 1 << 20,
            passthrough: false,
            read_only: false,
            frozen_ttl: Duration::from_secs(600),
        }
    }
}

/// Mounts `client` at `mountpoint` and serves it until the returned session
/// is dropped or unmounted. Requests run as tasks on `runtime`. Any client
/// core serves: the real one (metad and storage nodes) or the null backend
/// of the FUSE ceiling ([`crate::null`]), through the same code.
pub fn mount<M: MetaService, T: Transport>(
    client: Client<M, T>,
    runtime: Handle,
    mountpoint: &Path,
    options: &FuseOptions,
) -> io::Result<MountSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("torchfs".into()),
        MountOption::Subtype("torchfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    if options.read_only {
        config.mount_options.push(MountOption::RO);
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let meta_runtime = client.meta_runtime();
    let fs = TorchFs {
        fs: Arc::new(Fs {
            client,
            options: options.clone(),
            dirs: DirStreams::default(),
            next_dir_handle: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            io_modes: IoModes::default(),
            no_open: InodeHandles::default(),
            notifier: OnceLock::new(),
        }),
        runtime,
        meta_runtime,
    };
    let shared = fs.fs.clone();
    if options.read_only {
        fs.runtime
            .spawn(sweep_kept_handles(Arc::downgrade(&shared)));
    }
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    let _ = shared.notifier.set(session.notifier());
    readahead::raise(mountpoint, options.request_bytes_max);
    Ok(session)
}

/// A read-only mount's sweep of the handles it keeps (see `no_open`),
/// until the mount is gone.
async fn sweep_kept_handles<M: MetaService, T: Transport>(fs: Weak<Fs<M, T>>) {
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let Some(fs) = fs.upgrade() else { return };
        let stale = fs
            .no_open
            .take_stale(SWEEP_INTERVAL, |ino| fs.client.is_immutable(ino));
        fs.release_kept(stale).await;
    }
}

/// What fuser calls: dispatches each request onto the runtime.
pub(super) struct TorchFs<M: MetaService, T: Transport> {
    pub(super) fs: Arc<Fs<M, T>>,
    pub(super) runtime: Handle,
    /// Where requests that only talk to metad run: the metad client's own
    /// thread, which saves a thread hop each way per call (a lookup or a
    /// create is mostly waiting on metad).
    pub(super) meta_runtime: Handle,
}

/// What the request tasks share.
pub(super) struct Fs<M: MetaService, T: Transport> {
    pub(super) client: Client<M, T>,
    pub(super) options: FuseOptions,
    pub(super) dirs: DirStreams,
    pub(super) next_dir_handle: AtomicU64,
    /// Whether the kernel granted passthrough at init.
    pub(super) passthrough: AtomicBool,
    pub(super) io_modes: IoModes,
    /// The core handle of each inode read with handle 0 (read-only mounts).
    pub(super) no_open: InodeHandles,
    /// Tells the kernel to drop what it caches of a file (set once the
    /// session is up).
    pub(super) notifier: OnceLock<Notifier>,
}

impl<M: MetaService, T: Transport> TorchFs<M, T> {
    /// Runs one request's task; it owns its reply, so a task that ends
    /// without answering (the runtime shutting down) still answers EIO
    /// (fuser's reply drop).
    pub(super) fn spawn<F>(&self, task: impl FnOnce(Arc<Fs<M, T>>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(task(self.fs.clone()));
    }

    /// [`Self::spawn`] for a request that only talks to metad.
    pub(super) fn spawn_meta<F>(&self, task: impl FnOnce(Arc<Fs<M, T>>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.meta_runtime.spawn(task(self.fs.clone()));
    }
}
