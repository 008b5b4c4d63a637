//! Facts about the machine and the software a run used (for the results
//! file), and UTC timestamps without a date-time dependency.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::model::Machine;

pub fn machine(work_dir: &Path) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_bytes = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    Machine {
        hostname: hostname(),
        cpu_model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes,
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        os,
        work_dir_fs: fs_of(work_dir).unwrap_or_else(|| "unknown".into()),
    }
}

pub fn hostname() -> String {
    let name = read_trimmed("/proc/sys/kernel/hostname");
    if name.is_empty() {
        "unknown-host".into()
    } else {
        name
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// "ext4 on /dev/vda (/)": the mount that holds `path`.
pub fn fs_of(path: &Path) -> Option<String> {
    let canonical = path.canonicalize().ok()?;
    let mounts = crate::targets::mounts().ok()?;
    mounts
        .into_iter()
        .filter(|m| canonical.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| {
            format!(
                "{} on {} ({})",
                m.fs_type,
                m.source,
                m.mount_point.display()
            )
        })
}

/// First line of `cmd --version`-style output, or "not installed".
pub fn tool_version(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() {
                out.stderr
            } else {
                out.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(_) => "not installed".into(),
    }
}

/// Versions of everything whose speed the figures depend on.
pub fn versions(torchfs_bin: Option<&Path>) -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert("torchfs-perf".into(), env!("CARGO_PKG_VERSION").to_string());
    if let Some(bin) = torchfs_bin {
        v.insert(
            "torchfs".into(),
            tool_version(&bin.display().to_string(), &["--version"]),
        );
    }
    // The checkout the binaries were (presumably) built from.
    let git = tool_version("git", &["describe", "--always", "--dirty"]);
    if !git.is_empty() && !git.starts_with("fatal") && git != "not installed" {
        v.insert("git".into(), git);
    }
    v.insert("fuser".into(), "0.18".into());
    v.insert(
        "build profile".into(),
        if cfg!(debug_assertions) {
            "debug".into()
        } else {
            "release".into()
        },
    );
    v.insert("rustc".into(), tool_version("rustc", &["--version"]));
    v.insert("fio".into(), tool_version("fio", &["--version"]));
    v.insert(
        "glusterfs".into(),
        tool_version("glusterfs", &["--version"]),
    );
    v
}

/// Seconds since the epoch, as a UTC "YYYY-MM-DDTHH:MM:SSZ".
pub fn rfc3339_utc(epoch_s: u64) -> String {
    let (y, m, d) = civil_from_days((epoch_s / 86_400) as i64);
    let rem = epoch_s % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

pub fn now_epoch_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Howard Hinnant's days-to-civil: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_timestamps() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_795_000_000), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
