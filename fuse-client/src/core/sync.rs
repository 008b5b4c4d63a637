//! The one rule for the core's std mutexes.

use std::sync::Mutex;

/// Locks a std mutex, ignoring poisoning: the guarded maps stay consistent
/// across panics because every update is a single insert or remove.
pub(crate) fn lock<X>(m: &Mutex<X>) -> std::sync::MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
