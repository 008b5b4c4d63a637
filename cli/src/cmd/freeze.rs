//! `torchfs freeze` / `torchfs unfreeze`: make a directory tree an
//! immutable dataset version, or thaw one (docs/ARCHITECTURE.md: Metadata). Mounts load a
//! frozen tree's metadata once and then serve it with no metad round trip.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use torchfs_proto::client::{MetaClient, MetaClientOptions};
use torchfs_proto::meta::{Attr, MetaReply, MetaRequest, ROOT_INO};

#[derive(Args)]
#[command(args_override_self = true)]
pub struct FreezeArgs {
    /// The directory: a path under a torchfs mount on this machine
    /// (/mnt/torchfs/datasets/x), or a path inside the filesystem from its
    /// root (/datasets/x) when no mount holds it.
    pub path: PathBuf,
    /// metad voters' addresses (any one that answers will do).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = super::DEFAULT_METAD_ADDRS
    )]
    pub metad: Vec<String>,
    /// Give up after this long without an answer.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// TOML file with defaults for these flags (table [freeze] or [unfreeze]).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: FreezeArgs, freeze: bool) -> Result<()> {
    super::check_metad_addrs(&args.metad)?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let inner = path_in_filesystem(&args.path, &torchfs_mounts(&mounts))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start runtime")?;
    let attr = runtime.block_on(apply(&args, &inner, freeze))?;
    let done = if freeze { "frozen" } else { "thawed" };
    println!(
        "{} (inode {}): {done}; frozen = {}",
        inner.display(),
        attr.ino,
        attr.frozen
    );
    Ok(())
}

async fn apply(args: &FreezeArgs, inner: &Path, freeze: bool) -> Result<Attr> {
    let opts = MetaClientOptions {
        retry_for_ms: args.timeout_ms,
        ..MetaClientOptions::default()
    };
    let client = MetaClient::new(args.metad.clone(), opts).context("metad addresses")?;
    let mut ino = ROOT_INO;
    for name in inner.iter().skip(1) {
        let name = name.to_string_lossy().into_owned();
        let req = MetaRequest::Lookup {
            parent: ino,
            name: name.clone(),
        };
        ino = match client.call(req).await {
            Ok(MetaReply::Attr(a)) => a.ino,
            Ok(other) => bail!("metad answered a lookup with {other:?}"),
            Err(e) => return Err(e).with_context(|| format!("look up {name:?}")),
        };
    }
    let (req, verb) = if freeze {
        (MetaRequest::Freeze { ino }, "freeze")
    } else {
        (MetaRequest::Unfreeze { ino }, "unfreeze")
    };
    match client.call(req).await {
        Ok(MetaReply::Attr(a)) => Ok(a),
        Ok(other) => bail!("metad answered {verb} with {other:?}"),
        Err(e) => Err(e).with_context(|| format!("{verb} {}", inner.display())),
    }
}

/// Mount points of torchfs FUSE mounts in a `/proc/self/mountinfo` text.
fn torchfs_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mut post = post.split(' ');
            let (fstype, source) = (post.next()?, post.next()?);
            let mountpoint = pre.split(' ').nth(4)?;
            // mountinfo escapes spaces and the like as octal (\040).
            let mountpoint = mountpoint.replace("\\040", " ");
            // The subtype shows only when the mount helper sets it; a
            // direct mount(2) reads "fuse" with source "torchfs".
            let torchfs = fstype == "fuse.torchfs" || (fstype == "fuse" && source == "torchfs");
            torchfs.then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// The path inside the filesystem (from its root, normalized) that `path`
/// names: relative to the deepest torchfs mount holding it, else `path`
/// itself taken from the filesystem's root.
fn path_in_filesystem(path: &Path, mounts: &[PathBuf]) -> Result<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("current directory")?
            .join(path)
    };
    let under_mount = mounts
        .iter()
        .filter(|m| absolute.starts_with(m))
        .max_by_key(|m| m.components().count())
        .and_then(|m| absolute.strip_prefix(m).ok().map(Path::to_path_buf));
    let inner = match under_mount {
        Some(rel) => rel,
        None if path.is_absolute() => path.to_path_buf(),
        None => bail!(
            "{} is not under a torchfs mount; give the path inside the filesystem from its root, e.g. /datasets/x",
            path.display()
        ),
    };
    let mut out = PathBuf::from("/");
    for c in inner.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                bail!("path {}: `..` is not supported here", path.display())
            }
        }
    }
    if out == Path::new("/") {
        bail!("the filesystem's root cannot be frozen; freeze a directory in it");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
90 22 0:50 / /mnt/torchfs rw,nosuid,nodev,relatime shared:50 - fuse.torchfs torchfs rw,user_id=0
91 22 0:51 / /mnt/other rw,relatime shared:51 - fuse.sshfs host: rw
92 22 0:52 / /tmp/my\\040mount rw,relatime shared:52 - fuse.torchfs torchfs rw
93 22 0:53 / /mnt/raw rw,nosuid,nodev,noatime - fuse torchfs rw,user_id=0
94 22 0:54 / /mnt/else rw,nosuid,nodev,noatime - fuse other rw,user_id=0
";

    #[test]
    fn finds_torchfs_mounts_only() {
        assert_eq!(
            torchfs_mounts(MOUNTINFO),
            vec![
                PathBuf::from("/mnt/torchfs"),
                PathBuf::from("/tmp/my mount"),
                PathBuf::from("/mnt/raw")
            ]
        );
    }

    #[test]
    fn paths_resolve_under_a_mount_or_from_the_root() {
        let mounts = torchfs_mounts(MOUNTINFO);
        let p = |s: &str| path_in_filesystem(Path::new(s), &mounts);
        assert_eq!(p("/mnt/torchfs/ds/train").unwrap(), Path::new("/ds/train"));
        assert_eq!(p("/tmp/my mount/a/./b/").unwrap(), Path::new("/a/b"));
        assert_eq!(p("/datasets/x").unwrap(), Path::new("/datasets/x"));
        assert!(p("/mnt/torchfs").is_err(), "the root");
        assert!(p("/mnt/torchfs/a/../b").is_err());
    }
}
