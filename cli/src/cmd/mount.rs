//! `torchfs mount`: a FUSE mount of a cluster, in the foreground.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use torchfs_client::core::{CacheConfig, Client, ClientConfig};
use torchfs_client::fuse::{default_cache_mem_bytes, FuseOptions, MountError, Mounted};

#[derive(Args)]
#[command(args_override_self = true)]
pub struct MountArgs {
    /// Directory to mount on (must exist and be empty of other mounts).
    pub mountpoint: PathBuf,
    /// metad voters' addresses.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = super::DEFAULT_METAD_ADDRS
    )]
    pub metad: Vec<String>,
    /// FUSE worker threads (they answer cache hits and empty closes
    /// themselves, and hand the rest to the client's tasks).
    #[arg(long, default_value_t = FuseOptions::default().threads)]
    pub threads: usize,
    /// Mount read-only, for reading datasets: the kernel opens and closes
    /// files itself (no round trip per file) and keeps their pages;
    /// changes made elsewhere are seen within a second (a frozen dataset's
    /// names and attributes are kept 10 minutes: an unfreeze is seen within
    /// that). No control files (`.torchfs/`: plans and stats need a
    /// read-write mount), and locks hold on this host only.
    #[arg(long)]
    pub read_only: bool,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// TOML file with defaults for these flags (table [mount]).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Who may use the mount (shared by `mount` and `up`). A mount run by root
/// serves every user, with the kernel checking modes; one run by another
/// user serves only that user unless asked.
#[derive(Args, Clone, Debug, Default)]
pub struct AccessArgs {
    /// Let every user use the mount (the default when run as root; a
    /// non-root user needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long, conflicts_with = "owner_only")]
    pub allow_other: bool,
    /// Serve only the user who mounts (no `allow_other`), even as root.
    #[arg(long)]
    pub owner_only: bool,
}

impl AccessArgs {
    /// Whether the mount gets `allow_other`.
    pub fn allow_other(&self) -> bool {
        if self.owner_only {
            return false;
        }
        self.allow_other || torchfs_client::fuse::allow_other_by_default()
    }
}

/// The epoch cache's flags (shared by `mount` and `up`). Byte counts take
/// binary suffixes: 512M, 4GiB, 64K.
#[derive(Args, Clone, Debug, Default)]
pub struct CacheArgs {
    /// Memory tier budget (cached plus in-flight bytes); 0 turns the cache
    /// and prefetching off [default: 1G or an eighth of RAM, the smaller].
    #[arg(long, value_parser = parse_bytes)]
    pub cache_mem_bytes: Option<u64>,
    /// Directory of the local-disk tier (files go in <dir>/torchfs-cache-v1;
    /// hits are served by FUSE passthrough). No disk tier without it.
    #[arg(long)]
    pub cache_disk_dir: Option<PathBuf>,
    /// Disk tier budget.
    #[arg(long, value_parser = parse_bytes, default_value = "10G")]
    pub cache_disk_bytes: u64,
    /// How many plan items the prefetcher may run ahead of the reads.
    #[arg(long, default_value_t = CacheConfig::default().window_items)]
    pub prefetch_window_items: u64,
    /// Bytes the prefetcher keeps in flight at most.
    #[arg(long, value_parser = parse_bytes, default_value = "64M")]
    pub prefetch_inflight_bytes: u64,
    /// For immutable datasets: read-only opens of files prefetched less
    /// than this many ms ago skip revalidation with metad (0: always
    /// revalidate, close-to-open). Other clients' changes can go unseen
    /// for that long.
    #[arg(long, default_value_t = 0)]
    pub cache_trust_ms: u64,
    /// How often a loaded frozen dataset's root is rechecked with metad
    /// (`torchfs unfreeze` is seen within this long).
    #[arg(long, default_value_t = ClientConfig::default().frozen_check_ms)]
    pub frozen_check_ms: u64,
    /// Largest frozen tree (inodes) loaded as an in-memory table (about
    /// 350 bytes each); 0: never load, ask metad as for any directory.
    #[arg(long, default_value_t = ClientConfig::default().frozen_entries_max)]
    pub frozen_entries_max: usize,
    /// How to reach storage nodes: auto (RDMA verbs to nodes that serve it
    /// when this host has a device, else TCP), tcp, or verbs (or fail).
    #[arg(long, default_value = "auto")]
    pub transport: torchfs_rdma::endpoint::TransportMode,
}

impl CacheArgs {
    /// The client's configuration: these flags over the defaults.
    pub fn client_config(&self, metad: &[String]) -> ClientConfig {
        ClientConfig {
            metad: metad.to_vec(),
            transport_mode: self.transport,
            cache: self.config(),
            frozen_check_ms: self.frozen_check_ms,
            frozen_entries_max: self.frozen_entries_max,
            ..ClientConfig::default()
        }
    }

    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            mem_bytes: self.cache_mem_bytes.unwrap_or_else(default_cache_mem_bytes),
            disk_dir: self.cache_disk_dir.clone(),
            disk_bytes: self.cache_disk_bytes,
            window_items: self.prefetch_window_items,
            inflight_bytes_max: self.prefetch_inflight_bytes,
            trust_layout_ms: self.cache_trust_ms,
            ..CacheConfig::default()
        }
    }
}

/// Parses a byte count: digits with an optional K, M, G or T suffix
/// (powers of 1024; `KiB`, `KB` and `k` read the same).
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a byte count (e.g. 1073741824, 512M, 4GiB)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Gives a root directory still owned by root (a new cluster) to the
/// calling user, so a cluster that user started is writable for them (the
/// kernel checks modes: `default_permissions`).
pub fn adopt_new_root(mounted: &Mounted) -> Result<()> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let client = mounted.client();
    let root = torchfs_proto::meta::ROOT_INO;
    let attr = mounted
        .block_on(client.getattr(root))
        .context("stat the root directory")?;
    if uid == 0 || attr.uid != 0 {
        return Ok(());
    }
    let set = torchfs_proto::meta::SetAttr {
        uid: Some(uid),
        gid: Some(gid),
        ..Default::default()
    };
    mounted
        .block_on(client.setattr(root, set))
        .context("give the root directory to this user")?;
    Ok(())
}

/// Checks the mount point, connects to the cluster and mounts it.
pub fn mount(config: &ClientConfig, mountpoint: &Path, options: &FuseOptions) -> Result<Mounted> {
    let metad = &config.metad;
    super::check_metad_addrs(metad)?;
    check_mountpoint(mountpoint)?;
    Mounted::start(config.clone(), mountpoint, options, Client::connect).map_err(|e| match e {
        MountError::Client(source) => anyhow::Error::new(source).context(format!(
            "connect to metad at {} (is the cluster running?)",
            metad.join(",")
        )),
        MountError::Mount { source, .. } => anyhow::Error::new(source).context(format!(
            "mount on {} (is /dev/fuse there, and are you root or is fusermount3 installed?)",
            mountpoint.display()
        )),
        other => other.into(),
    })
}

/// A mount point must be an existing directory that is not already a mount.
pub fn check_mountpoint(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "mount point {} is a dead FUSE mount (its daemon died): run `umount {}` and try again",
            path.display(),
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "mount point {} does not exist: create it with `mkdir -p {}`",
            path.display(),
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("stat mount point {}", path.display())),
    };
    if !meta.is_dir() {
        bail!("mount point {} is not a directory", path.display());
    }
    let canonical = path
        .canonicalize()
        .with_context(|| format!("resolve mount point {}", path.display()))?;
    if let Some(parent) = canonical.parent() {
        let parent_meta =
            std::fs::metadata(parent).with_context(|| format!("stat {}", parent.display()))?;
        if parent_meta.dev() != meta.dev() {
            bail!(
                "mount point {} is busy: something is already mounted there (unmount it with `umount {}`)",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

pub fn run(args: MountArgs) -> Result<()> {
    let options = FuseOptions {
        threads: args.threads,
        allow_other: args.access.allow_other(),
        read_only: args.read_only,
        ..FuseOptions::default()
    };
    let mounted = mount(
        &args.cache.client_config(&args.metad),
        &args.mountpoint,
        &options,
    )?;
    eprintln!(
        "torchfs: mounted on {} (stop with Ctrl-C or `umount {}`)",
        args.mountpoint.display(),
        args.mountpoint.display()
    );
    let signal_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    signal_runtime.block_on(super::stop_signal());
    mounted
        .unmount()
        .with_context(|| format!("unmount {}", args.mountpoint.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_take_binary_suffixes() {
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("4g"), Ok(4 << 30));
        assert!(parse_bytes("1.5G").is_err());
        assert!(parse_bytes("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("99999999999T")
            .unwrap_err()
            .contains("too large"));
    }

    /// `torchfs mount`'s flags left out give the mount defaults the FUSE
    /// ceiling (torchfs-perf's fuse-null) also takes.
    #[test]
    fn flag_defaults_are_the_mount_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            mount: MountArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["torchfs", "/mnt"]).unwrap();
        let args = cli.mount;
        let metad = vec!["127.0.0.1:7401".to_string()];
        let expected = torchfs_client::fuse::default_client_config(metad.clone());
        let config = args.cache.client_config(&metad);
        assert_eq!(format!("{config:?}"), format!("{expected:?}"));
        assert_eq!(args.threads, FuseOptions::default().threads);
        assert_eq!(
            args.access.allow_other(),
            torchfs_client::fuse::allow_other_by_default()
        );
        let d = default_cache_mem_bytes();
        assert!(d > 0 && d <= 1 << 30);
    }

    #[test]
    fn mountpoint_checks_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = format!("{:#}", check_mountpoint(&missing).unwrap_err());
        assert!(
            err.contains("does not exist") && err.contains("mkdir -p"),
            "{err}"
        );
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let err = format!("{:#}", check_mountpoint(&file).unwrap_err());
        assert!(err.contains("not a directory"), "{err}");
        assert!(check_mountpoint(dir.path()).is_ok());
        // /proc is a mount of its own on Linux.
        let err = format!("{:#}", check_mountpoint(Path::new("/proc")).unwrap_err());
        assert!(err.contains("busy"), "{err}");
    }
}
