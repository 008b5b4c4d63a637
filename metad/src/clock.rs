//! The leader's wall clock, the one time in metad that can jump.
//!
//! Leases, liveness, read leases and the repair service measure with
//! `Instant` (monotonic: an NTP step or an operator's `date -s` does not
//! move it). The wall clock stamps commands (`Command::now_ns`): file times
//! and client-session expiry (`state::sessions`, which never lets it run
//! backward). Those are what a clock jump can touch, so this is where
//! jumps are injected.
//!
//! With the `testing` feature, `TORCHFS_CLOCK_FILE=PATH` names a file
//! holding an offset in seconds (signed; absent or empty: 0) that is added
//! to the system clock; it is read again at most every
//! `OFFSET_REREAD_MS` (100 ms), so a test jumps every voter's clock at once by
//! writing one file. A malformed offset is logged and read as 0. Without
//! the feature the variable is ignored, with a warning.

use std::time::{SystemTime, UNIX_EPOCH};

/// The environment variable naming the clock-offset file.
pub const CLOCK_FILE_ENV: &str = "TORCHFS_CLOCK_FILE";

/// Nanoseconds since the Unix epoch by the wall clock (plus the injected
/// offset, feature `testing`); 0 before the epoch, saturating far after.
pub(crate) fn now_ns() -> i64 {
    let system_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    system_ns.saturating_add(offset_ns())
}

/// Logs whether clock jumps are injected; called once at start.
pub(crate) fn announce() {
    #[cfg(feature = "testing")]
    if let Some(path) = jumps::path() {
        tracing::warn!(
            "clock jump injection on: offset read from {} ({CLOCK_FILE_ENV})",
            path.display()
        );
    }
    #[cfg(not(feature = "testing"))]
    if std::env::var_os(CLOCK_FILE_ENV).is_some() {
        tracing::warn!(
            "{CLOCK_FILE_ENV} ignored: this build has no fault injection (feature `testing`)"
        );
    }
}

#[cfg(not(feature = "testing"))]
fn offset_ns() -> i64 {
    0
}

#[cfg(feature = "testing")]
fn offset_ns() -> i64 {
    jumps::offset_ns()
}

#[cfg(feature = "testing")]
mod jumps {
    use std::path::PathBuf;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use super::CLOCK_FILE_ENV;

    /// How often the offset file is read again (milliseconds).
    pub(super) const OFFSET_REREAD_MS: u64 = 100;

    /// The offset last read, and when.
    static LAST: Mutex<Option<(Instant, i64)>> = Mutex::new(None);

    pub(super) fn path() -> Option<&'static PathBuf> {
        static PATH: OnceLock<Option<PathBuf>> = OnceLock::new();
        PATH.get_or_init(|| std::env::var_os(CLOCK_FILE_ENV).map(PathBuf::from))
            .as_ref()
    }

    pub(super) fn offset_ns() -> i64 {
        let Some(path) = path() else { return 0 };
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((read_at, offset_ns)) = *last {
            if now.duration_since(read_at) < Duration::from_millis(OFFSET_REREAD_MS) {
                return offset_ns;
            }
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let offset_ns = match parse_offset_s(&text) {
            Ok(s) => s.saturating_mul(1_000_000_000),
            Err(()) => {
                tracing::warn!(
                    "{}: clock offset {text:?} is not whole seconds; 0 used",
                    path.display()
                );
                0
            }
        };
        let before = last.map_or(0, |(_, ns)| ns);
        if offset_ns != before {
            tracing::warn!(
                "clock jumps by {:+} s (injected; offset now {:+} s)",
                (offset_ns - before) / 1_000_000_000,
                offset_ns / 1_000_000_000
            );
        }
        *last = Some((now, offset_ns));
        offset_ns
    }

    /// `"+900"`, `"-30"`, `"0"`, or nothing (0).
    pub(super) fn parse_offset_s(text: &str) -> Result<i64, ()> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(0);
        }
        text.parse().map_err(|_| ())
    }

    #[cfg(test)]
    mod tests {
        use super::parse_offset_s;

        #[test]
        fn offsets_are_signed_whole_seconds() {
            assert_eq!(parse_offset_s(""), Ok(0));
            assert_eq!(parse_offset_s("+900\n"), Ok(900));
            assert_eq!(parse_offset_s("-30"), Ok(-30));
            assert_eq!(parse_offset_s("1.5"), Err(()));
            assert_eq!(parse_offset_s("soon"), Err(()));
        }
    }
}
