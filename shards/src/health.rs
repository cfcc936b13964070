//! Whether the storage still takes writes: set once, by the first failed write.
//!
//! When the disk refuses a write (full, I/O error) the writer drops every job from then on,
//! so nothing unwritten is ever acknowledged. The engine does not try to resume by itself:
//! RocksDB stops accepting writes after such an error, and the outcomes decided in memory
//! since the failure were never made durable. A restart recovers what was acknowledged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::SystemTime;

/// The storage's state, as reported to callers, `PING` and `STATS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every write so far succeeded.
    Ok,
    /// A write failed: nothing more is acknowledged until a restart.
    Failed {
        /// When the first write failed.
        since: SystemTime,
        /// The storage error, in RocksDB's or the OS's words.
        reason: String,
    },
}

/// The engine's storage health, shared by the writer, the WAL syncer and the engine.
#[derive(Debug, Default)]
pub struct StorageHealth {
    /// Set after `failure`, so that a reader that sees it set finds the reason.
    failed: AtomicBool,
    failure: OnceLock<(SystemTime, String)>,
}

impl StorageHealth {
    /// Records a failed write. Only the first failure is kept and logged: later ones are
    /// usually its consequences.
    pub fn fail(&self, reason: impl std::fmt::Display) {
        let mut first = false;
        self.failure.get_or_init(|| {
            first = true;
            (SystemTime::now(), reason.to_string())
        });
        self.failed.store(true, Ordering::SeqCst);
        if first {
            if let Some((_, reason)) = self.failure.get() {
                eprintln!(
                    "plafond: storage failed: {reason}; nothing more is acknowledged; free \
                     space or fix the disk, then restart (acknowledged writes are kept)"
                );
            }
        }
    }

    /// Whether a write failed; cheap enough for every submission.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// The storage error's text, if a write failed.
    pub fn reason(&self) -> Option<&str> {
        if !self.is_failed() {
            return None;
        }
        self.failure.get().map(|(_, reason)| reason.as_str())
    }

    /// The current state.
    pub fn health(&self) -> Health {
        match self.failure.get().filter(|_| self.is_failed()) {
            None => Health::Ok,
            Some((since, reason)) => Health::Failed { since: *since, reason: reason.clone() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_is_kept() {
        let health = StorageHealth::default();
        assert_eq!(health.health(), Health::Ok);
        assert_eq!(health.reason(), None);
        health.fail("No space left on device");
        health.fail("a later consequence");
        assert!(health.is_failed());
        assert_eq!(health.reason(), Some("No space left on device"));
        assert!(
            matches!(health.health(), Health::Failed { reason, .. } if reason.contains("space"))
        );
    }
}
