//! Targets: the filesystems workloads run against (torchfs, the local disk,
//! GlusterFS, JuiceFS, the FUSE ceiling: torchfs's own mount over a null
//! backend). Each is brought up here, gives the workloads a directory, can
//! (where it makes sense) lose storage nodes for a degraded read, and is
//! torn down at the end. A target that cannot start
//! is reported with the reason and the run goes on without it.

pub mod gluster;
pub mod juicefs;
pub mod local;
pub mod nullfs;
pub mod torchfs;
pub mod torchfs_client;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::model::{TargetInfo, TargetKind};

pub trait Target {
    fn name(&self) -> &str;
    fn kind(&self) -> TargetKind;
    /// The directory workloads create their files under (exists, empty at
    /// the start of the run).
    fn root(&self) -> &Path;
    fn info(&self) -> TargetInfo;
    /// Reads return made-up bytes and writes are dropped (the FUSE ceiling):
    /// content checks are skipped.
    fn synthetic_data(&self) -> bool {
        false
    }
    /// Storage nodes (or bricks) that can be killed for a degraded read.
    fn nodes_killable(&self) -> usize {
        0
    }
    /// Kills `n` storage nodes; says which.
    fn kill_nodes(&mut self, n: usize) -> Result<String> {
        bail!("{} cannot lose {n} storage nodes", self.name())
    }
    /// Empties the target's own caches, beyond the kernel's (torchfs and
    /// GlusterFS restart their clients); called before every cold phase,
    /// before the kernel's caches are dropped. Some(text) is a note for the
    /// report (e.g. that it could not be done).
    fn drop_caches(&mut self) -> Result<Option<String>> {
        Ok(None)
    }
    /// A second client of the same filesystem, for workloads that need
    /// another client to change files (as another machine would): the
    /// directory there that is [`Target::root`] here. Started on first use
    /// and torn down with the target; None where there is no such thing (a
    /// local directory: every process shares one kernel).
    fn second_client_root(&mut self) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// The directory that is [`Target::root`] here, through a read-only
    /// mount of the same filesystem (torchfs `--read-only`: no round trip
    /// per open); started on first use, torn down with the target. None
    /// where there is no such mount.
    fn read_only_root(&mut self) -> Result<Option<PathBuf>> {
        Ok(None)
    }
    /// Errors if the target has died under the run (its processes exited).
    fn check(&mut self) -> Result<()> {
        Ok(())
    }
    /// Stops what setup started and removes what it created.
    fn teardown(&mut self) -> Result<()>;
}

/// A target's entry in the results when it could not be set up.
pub fn unavailable(name: &str, kind: TargetKind, path: &Path, why: &str) -> TargetInfo {
    TargetInfo {
        name: name.into(),
        kind,
        path: path.display().to_string(),
        status: format!("unavailable: {why}"),
        details: Default::default(),
    }
}

/// Writes a peer's setup scripts (compiled into the binary, so the harness
/// works from any directory) into `dir`/scripts; returns that directory.
pub fn write_scripts(dir: &Path, scripts: &[(&str, &str)]) -> Result<PathBuf> {
    let out = dir.join("scripts");
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    for (name, text) in scripts {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(out)
}

/// Runs a script with bash and a deadline; stdout and stderr are captured.
pub fn run_script(script: &Path, args: &[&OsStr], timeout: Duration) -> Result<Output> {
    let mut child = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", script.display()))?;
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} took over {} s", script.display(), timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(child.wait_with_output()?)
}

/// One line of /proc/self/mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

pub fn mounts() -> Result<Vec<Mount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Parses mountinfo (proc(5)): mount point is field 5; after the "-"
/// separator come the type and the source. Octal escapes (\040) undone.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(fields.get(4)?)),
                fs_type: fields.get(dash + 1)?.to_string(),
                source: unescape(fields.get(dash + 2)?),
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let oct = &bytes[i + 1..i + 4];
            if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount at exactly `path`, if any.
pub fn mount_at(path: &Path) -> Option<Mount> {
    let canonical = path.canonicalize().ok()?;
    mounts()
        .ok()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == canonical)
}

/// Waits for a mount of a type starting with `fs_type_prefix` at `path`;
/// `alive` is polled meanwhile and its error ends the wait.
pub fn wait_for_mount(
    path: &Path,
    fs_type_prefix: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Mount> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(m) = mount_at(path) {
            if m.fs_type.starts_with(fs_type_prefix) {
                return Ok(m);
            }
        }
        alive()?;
        if Instant::now() > deadline {
            bail!(
                "no {fs_type_prefix} mount at {} after {} s",
                path.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lazily unmounts whatever is mounted at or below `dir` (deepest first):
/// leftovers of an earlier run that died, so the work directory can be
/// emptied. Returns what it unmounted.
pub fn unmount_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(canonical) = dir.canonicalize() else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(&canonical))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    for p in &found {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(p)
            .status();
    }
    found
}

/// Empties `dir` (creating it if needed); refuses if anything is still
/// mounted below it, so a live filesystem is never deleted through.
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        if let Ok(canonical) = dir.canonicalize() {
            if canonical == Path::new("/") {
                bail!("refusing to empty /");
            }
            let busy: Vec<PathBuf> = mounts()?
                .into_iter()
                .map(|m| m.mount_point)
                .filter(|p| p.starts_with(&canonical))
                .collect();
            if !busy.is_empty() {
                bail!(
                    "{} has mounts below it ({}): unmount them first",
                    dir.display(),
                    busy.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("empty {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}

/// Pids of the processes whose argv (split at NULs) `matches`.
pub fn find_pids(matches: impl Fn(&[&[u8]]) -> bool) -> Vec<libc::pid_t> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if matches(&argv) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether `argv` has `flag` immediately followed by `value`.
pub fn has_arg(argv: &[&[u8]], flag: &str, value: &[u8]) -> bool {
    argv.windows(2)
        .any(|w| w[0] == flag.as_bytes() && w[1] == value)
}

/// Last lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines_max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(lines_max)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 0:52 / /tmp/torchfs-perf/nullfs\\040mnt rw,nosuid master:7 shared:9 - fuse.torchfs-null null rw,user_id=0
garbage line
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/"));
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].source, "/dev/vda");
        assert_eq!(
            m[1].mount_point,
            PathBuf::from("/tmp/torchfs-perf/nullfs mnt")
        );
        assert_eq!(m[1].fs_type, "fuse.torchfs-null");
    }

    #[test]
    fn argv_flags_match_exactly() {
        let argv: Vec<&[u8]> = vec![
            b"torchfs",
            b"storage",
            b"--node-id",
            b"1",
            b"--data-dir",
            b"/d/storage-1",
        ];
        assert!(has_arg(&argv, "--node-id", b"1"));
        assert!(!has_arg(&argv, "--node-id", b"11"));
        assert!(has_arg(&argv, "--data-dir", b"/d/storage-1"));
        assert!(!has_arg(&argv, "--data-dir", b"/d/storage-10"));
        // This process is found by its own argv[0].
        let me = std::fs::read("/proc/self/cmdline").unwrap();
        let arg0 = me.split(|b| *b == 0).next().unwrap().to_vec();
        assert!(find_pids(|a| a.first() == Some(&arg0.as_slice()))
            .contains(&(std::process::id() as libc::pid_t)));
    }

    #[test]
    fn fresh_dir_empties_and_creates() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("a/b");
        fresh_dir(&d).unwrap();
        std::fs::write(d.join("x"), b"1").unwrap();
        fresh_dir(&d).unwrap();
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 0);
    }
}
