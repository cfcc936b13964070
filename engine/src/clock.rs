//! The one clock: commands are stamped with it at ingress, and nothing else reads time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use plafond_shards::calendar::{TIME_MAX_MS, TIME_MIN_MS};

/// A source of "now", in Unix milliseconds. Injectable so that tests can move time.
pub trait Clock: Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(elapsed) => i64::try_from(elapsed.as_millis()).unwrap_or(TIME_MAX_MS),
            Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(-TIME_MIN_MS),
        }
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    /// Where the server's manual clock starts: 2027-01-04T12:00:00Z.
    pub const SERVER_START_MS: i64 = 1_799_064_000_000;

    /// A clock stopped at `now_ms`.
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock { now_ms: AtomicI64::new(now_ms.clamp(TIME_MIN_MS, TIME_MAX_MS)) }
    }

    /// Sets the time.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms.clamp(TIME_MIN_MS, TIME_MAX_MS), Ordering::SeqCst);
    }

    /// Moves the time by `delta_ms` (which may be negative: the shards never go back).
    pub fn advance(&self, delta_ms: i64) {
        let _ = self.now_ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
            Some(now.saturating_add(delta_ms).clamp(TIME_MIN_MS, TIME_MAX_MS))
        });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(ManualClock::SERVER_START_MS);
        assert_eq!(clock.now_ms(), 1_799_064_000_000);
        clock.advance(1_000);
        assert_eq!(clock.now_ms(), 1_799_064_001_000);
        clock.set(5);
        assert_eq!(clock.now_ms(), 5);
        clock.advance(i64::MAX);
        assert_eq!(clock.now_ms(), TIME_MAX_MS);
    }

    #[test]
    fn server_start_is_the_documented_instant() {
        let expected: jiff::Timestamp = "2027-01-04T12:00:00Z".parse().unwrap();
        assert_eq!(ManualClock::SERVER_START_MS, expected.as_millisecond());
    }
}
