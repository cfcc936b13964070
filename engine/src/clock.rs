//! The one clock: commands are stamped with it at ingress, and nothing else reads time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use plafond_shards::calendar::{TIME_MAX_MS, TIME_MIN_MS};

/// A source of "now", in Unix milliseconds. Injectable so that tests can move time.
pub trait Clock: Send + Sync {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Told once by [`crate::Engine::open`], after replay: the latest time the engine's
    /// durable state was stamped with. A [`crate::TimeGuard`] measures jumps from it; other
    /// clocks ignore it.
    fn resume_from(&self, _committed_ms: i64) {}

    /// The guard against jumps of the host's clock, if this clock is one: the engine's
    /// statistics report what it refused, and an operator accepts a jump through it.
    fn guard(&self) -> Option<&crate::TimeGuard> {
        None
    }
}

/// A day, in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
pub use crate::limits::CLOCK_MOVE_DAYS_MAX;
pub use crate::limits::MANUAL_CLOCK_MAX_MS;
pub use crate::limits::MANUAL_CLOCK_MIN_MS;

/// Why a move of the manual clock was refused; the clock did not move.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockMoveError {
    /// The move is longer than [`CLOCK_MOVE_DAYS_MAX`].
    #[error(
        "the clock moves at most {CLOCK_MOVE_DAYS_MAX} days at a time ({} ms); move it in steps",
        CLOCK_MOVE_DAYS_MAX * DAY_MS
    )]
    TooFar,
    /// The time is outside [`MANUAL_CLOCK_MIN_MS`] ..= [`MANUAL_CLOCK_MAX_MS`].
    #[error("the manual clock stays within the years 2000 to 2199 (UTC)")]
    OutOfRange,
}

/// The system's wall clock, unguarded: [`crate::EngineConfig`]'s default clock is this one
/// behind a [`crate::TimeGuard`].
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

impl ManualClock {
    /// Sets the time, if it is at most [`CLOCK_MOVE_DAYS_MAX`] from the current one and
    /// within the years 2000 to 2199: what `CLOCK.SET` does.
    pub fn try_set(&self, now_ms: i64) -> Result<(), ClockMoveError> {
        self.try_move(|_| Some(now_ms))
    }

    /// Moves the time by `delta_ms`, within the same bounds: what `CLOCK.ADVANCE` does.
    pub fn try_advance(&self, delta_ms: i64) -> Result<(), ClockMoveError> {
        self.try_move(|now| now.checked_add(delta_ms))
    }

    fn try_move(&self, target: impl Fn(i64) -> Option<i64>) -> Result<(), ClockMoveError> {
        let mut refused = None;
        let moved = self.now_ms.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
            let checked = match target(now) {
                None => Err(ClockMoveError::OutOfRange),
                Some(to) if !(MANUAL_CLOCK_MIN_MS..=MANUAL_CLOCK_MAX_MS).contains(&to) => {
                    Err(ClockMoveError::OutOfRange)
                }
                Some(to) if to.abs_diff(now) > (CLOCK_MOVE_DAYS_MAX * DAY_MS) as u64 => {
                    Err(ClockMoveError::TooFar)
                }
                Some(to) => Ok(to),
            };
            checked.map_err(|error| refused = Some(error)).ok()
        });
        match (moved, refused) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(error)) => Err(error),
            (Err(_), None) => Err(ClockMoveError::OutOfRange),
        }
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
    fn manual_moves_are_bounded_in_length_and_range() {
        let clock = ManualClock::new(ManualClock::SERVER_START_MS);
        let start = ManualClock::SERVER_START_MS;
        assert_eq!(clock.try_advance(i64::MAX), Err(ClockMoveError::OutOfRange));
        assert_eq!(clock.try_advance(i64::MIN), Err(ClockMoveError::OutOfRange));
        assert_eq!(
            clock.try_advance(CLOCK_MOVE_DAYS_MAX * DAY_MS + 1),
            Err(ClockMoveError::TooFar)
        );
        assert_eq!(
            clock.try_set(start - CLOCK_MOVE_DAYS_MAX * DAY_MS - 1),
            Err(ClockMoveError::TooFar)
        );
        assert_eq!(clock.try_set(0), Err(ClockMoveError::OutOfRange));
        assert_eq!(clock.now_ms(), start, "a refused move moves nothing");
        assert_eq!(clock.try_advance(CLOCK_MOVE_DAYS_MAX * DAY_MS), Ok(()));
        assert_eq!(clock.try_set(start), Ok(()));
        assert_eq!(clock.try_advance(-30 * DAY_MS), Ok(()));
        assert_eq!(clock.now_ms(), start - 30 * DAY_MS);
        let near_end = ManualClock::new(MANUAL_CLOCK_MAX_MS - DAY_MS);
        assert_eq!(near_end.try_advance(2 * DAY_MS), Err(ClockMoveError::OutOfRange));
        assert_eq!(near_end.try_advance(DAY_MS), Ok(()));
    }

    #[test]
    fn the_documented_years_are_the_bounds() {
        let min: jiff::Timestamp = "2000-01-01T00:00:00Z".parse().unwrap();
        let end: jiff::Timestamp = "2200-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(MANUAL_CLOCK_MIN_MS, min.as_millisecond());
        assert_eq!(MANUAL_CLOCK_MAX_MS + 1, end.as_millisecond());
    }

    #[test]
    fn server_start_is_the_documented_instant() {
        let expected: jiff::Timestamp = "2027-01-04T12:00:00Z".parse().unwrap();
        assert_eq!(ManualClock::SERVER_START_MS, expected.as_millisecond());
    }
}
