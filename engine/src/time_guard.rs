//! A guard between the host's clock and the engine: a jump forward of more than
//! [`CLOCK_JUMP_DAYS_MAX`] past the last time the engine used is refused until an operator
//! accepts it.
//!
//! An NTP step, a wrong RTC after a battery change or a typo in `date -s` would otherwise
//! run years of epochs at once (windows rolled, holds expired, interest posted for years
//! that did not happen). While a jump is refused, time goes on from where it was at the
//! pace of the machine's monotonic clock, so payments, windows and epochs carry on as if
//! the step had not happened; the refusal is logged on stderr and reported
//! ([`TimeGuard::refused`], and in [`crate::Stats::clock_guard`]) until [`TimeGuard::accept`]
//! takes the host's time, or the host's clock comes back within the bound by itself.
//! Backward steps need no guard: the shards never go back in time.
//!
//! The engine's default clock ([`crate::EngineConfig::in_memory`]) is the system clock
//! behind this guard; [`crate::EngineConfig::with_host_clock`] guards another host clock,
//! and [`crate::EngineConfig::with_clock`] takes a clock as it is (a manual clock, or the
//! bare [`crate::SystemClock`] to opt out).

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::clock::{Clock, DAY_MS};

pub use crate::limits::CLOCK_JUMP_DAYS_MAX;

/// Before the first reading and [`Clock::resume_from`]: nothing to measure a jump from.
const NO_TIME_YET: i64 = i64::MIN;

/// A jump of the host's clock that the guard refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockJump {
    /// What the host's clock says, in Unix ms (at the last reading).
    pub host_ms: i64,
    /// The time the engine goes by instead.
    pub guarded_ms: i64,
    /// How far ahead the host's clock is: `host_ms - guarded_ms`.
    pub ahead_ms: i64,
}

/// What the guard has refused, for the engine's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockGuardReport {
    /// Jumps refused since the guard was made: each time the host's clock went further
    /// ahead than the bound while no jump was refused.
    pub jumps_refused: u64,
    /// The jump refused now, if any: [`ClockJump::ahead_ms`] says by how much.
    pub refused: Option<ClockJump>,
}

struct Refusal {
    /// The guarded time when the jump was first seen; time goes on from it.
    held_from_ms: i64,
    since: Instant,
    host_ms: i64,
}

impl Refusal {
    fn guarded_ms(&self) -> i64 {
        let elapsed_ms = i64::try_from(self.since.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.held_from_ms.saturating_add(elapsed_ms)
    }

    fn jump(&self) -> ClockJump {
        let guarded_ms = self.guarded_ms();
        ClockJump { host_ms: self.host_ms, guarded_ms, ahead_ms: self.host_ms - guarded_ms }
    }
}

/// A [`Clock`] that refuses forward jumps of another (the host's) beyond a bound.
pub struct TimeGuard {
    host: Arc<dyn Clock>,
    jump_ms_max: i64,
    /// The latest time handed out, or the engine's last committed one at open.
    last_ms: AtomicI64,
    /// Whether a jump is refused now: the common path reads only this and `last_ms`.
    refusing: AtomicBool,
    /// Jumps refused since the guard was made.
    jumps_refused: AtomicU64,
    /// Held briefly by readings while a jump is refused, never across anything else.
    refusal: Mutex<Option<Refusal>>,
}

impl TimeGuard {
    /// Guards `host` with the bound [`CLOCK_JUMP_DAYS_MAX`].
    pub fn new(host: Arc<dyn Clock>) -> TimeGuard {
        TimeGuard::with_jump_max_ms(host, CLOCK_JUMP_DAYS_MAX * DAY_MS)
    }

    /// Guards `host`, refusing jumps forward longer than `jump_ms_max`.
    pub fn with_jump_max_ms(host: Arc<dyn Clock>, jump_ms_max: i64) -> TimeGuard {
        TimeGuard {
            host,
            jump_ms_max: jump_ms_max.max(0),
            last_ms: AtomicI64::new(NO_TIME_YET),
            refusing: AtomicBool::new(false),
            jumps_refused: AtomicU64::new(0),
            refusal: Mutex::new(None),
        }
    }

    fn refusal(&self) -> MutexGuard<'_, Option<Refusal>> {
        self.refusal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The jump refused now, if any.
    pub fn refused(&self) -> Option<ClockJump> {
        self.refusal().as_ref().map(Refusal::jump)
    }

    /// How many jumps were refused, and the one refused now.
    pub fn report(&self) -> ClockGuardReport {
        let refusal = self.refusal();
        let refused = refusal.as_ref().map(Refusal::jump);
        ClockGuardReport { jumps_refused: self.jumps_refused.load(Ordering::SeqCst), refused }
    }

    /// An operator accepts the host's time: the engine goes by it from now on (and runs
    /// the epochs it implies). Returns the jump accepted, or `None` if none was refused.
    pub fn accept(&self) -> Option<ClockJump> {
        let mut refusal = self.refusal();
        let refused = refusal.take()?;
        let host_ms = self.host.now_ms();
        self.last_ms.fetch_max(host_ms, Ordering::SeqCst);
        self.refusing.store(false, Ordering::SeqCst);
        let jump = refused.jump();
        eprintln!(
            "plafond: clock jump accepted by the operator: time moves {} ms forward to the host's",
            host_ms.saturating_sub(jump.guarded_ms)
        );
        Some(ClockJump { host_ms, ..jump })
    }

    fn within_bound(&self, host_ms: i64, from_ms: i64) -> bool {
        from_ms == NO_TIME_YET || host_ms <= from_ms.saturating_add(self.jump_ms_max)
    }

    /// The slow path: a jump is refused, or was just seen.
    fn guarded(&self, host_ms: i64) -> i64 {
        let mut refusal = self.refusal();
        let last_ms = self.last_ms.load(Ordering::SeqCst);
        let refused = match refusal.as_mut() {
            Some(refused) => refused,
            None if self.within_bound(host_ms, last_ms) => {
                // Another reading accepted the host's time meanwhile.
                self.last_ms.fetch_max(host_ms, Ordering::SeqCst);
                return host_ms;
            }
            None => {
                eprintln!(
                    "plafond: the host clock jumped {} ms forward past the last time used \
                     ({last_ms} ms, bound {} ms): refused; time goes on from there until an \
                     operator accepts the jump (CLOCK.ACCEPT; embedded: TimeGuard::accept)",
                    host_ms.saturating_sub(last_ms),
                    self.jump_ms_max
                );
                self.jumps_refused.fetch_add(1, Ordering::SeqCst);
                refusal.insert(Refusal { held_from_ms: last_ms, since: Instant::now(), host_ms })
            }
        };
        refused.host_ms = host_ms;
        let guarded_ms = refused.guarded_ms();
        if self.within_bound(host_ms, guarded_ms) {
            // The host's clock came back (NTP stepped it again): nothing left to accept.
            eprintln!("plafond: the host clock is back within the bound; the refused jump is void");
            *refusal = None;
            self.refusing.store(false, Ordering::SeqCst);
            self.last_ms.fetch_max(host_ms, Ordering::SeqCst);
            return host_ms;
        }
        self.refusing.store(true, Ordering::SeqCst);
        self.last_ms.fetch_max(guarded_ms, Ordering::SeqCst);
        guarded_ms
    }
}

impl Clock for TimeGuard {
    fn now_ms(&self) -> i64 {
        let host_ms = self.host.now_ms();
        if !self.refusing.load(Ordering::SeqCst) {
            let last_ms = self.last_ms.load(Ordering::SeqCst);
            if self.within_bound(host_ms, last_ms) {
                // A store at most once a millisecond: every submission reads the clock.
                if host_ms > last_ms {
                    self.last_ms.fetch_max(host_ms, Ordering::SeqCst);
                }
                return host_ms;
            }
        }
        self.guarded(host_ms)
    }

    /// Jumps are measured from the engine's last committed time, so a restart after a
    /// clock jump (or after months down) is refused like a jump while running.
    fn resume_from(&self, committed_ms: i64) {
        let _refusal = self.refusal();
        self.last_ms.store(committed_ms, Ordering::SeqCst);
    }

    fn guard(&self) -> Option<&TimeGuard> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const START_MS: i64 = ManualClock::SERVER_START_MS;

    fn guarded() -> (Arc<ManualClock>, TimeGuard) {
        let host = Arc::new(ManualClock::new(START_MS));
        let guard = TimeGuard::new(host.clone());
        assert_eq!(guard.now_ms(), START_MS);
        (host, guard)
    }

    #[test]
    fn steps_within_the_bound_pass() {
        let (host, guard) = guarded();
        host.advance(CLOCK_JUMP_DAYS_MAX * DAY_MS);
        assert_eq!(guard.now_ms(), host.now_ms());
        host.advance(-400 * DAY_MS);
        assert_eq!(guard.now_ms(), host.now_ms(), "backward steps are the shards' business");
        assert_eq!(guard.refused(), None);
        assert_eq!(guard.accept(), None, "nothing to accept");
    }

    #[test]
    fn a_jump_beyond_the_bound_is_refused_until_accepted() {
        let (host, guard) = guarded();
        host.advance(10 * 365 * DAY_MS);
        let now = guard.now_ms();
        assert!((START_MS..START_MS + DAY_MS).contains(&now), "time goes on from before: {now}");
        let refused = guard.refused().expect("reported");
        assert_eq!(refused.host_ms, host.now_ms());
        assert!(refused.ahead_ms > 3649 * DAY_MS, "{refused:?}");
        // Still refused at the next readings, and time never goes back.
        assert!(guard.now_ms() >= now);
        assert!(guard.refused().is_some());
        let accepted = guard.accept().expect("a jump to accept");
        assert_eq!(accepted.host_ms, host.now_ms());
        assert_eq!(guard.now_ms(), host.now_ms());
        assert_eq!(guard.refused(), None);
    }

    #[test]
    fn a_host_clock_that_comes_back_voids_the_refusal() {
        let (host, guard) = guarded();
        host.advance(100 * DAY_MS);
        assert!(guard.now_ms() < START_MS + DAY_MS);
        host.advance(-100 * DAY_MS);
        assert_eq!(guard.now_ms(), START_MS);
        assert_eq!(guard.refused(), None);
    }

    #[test]
    fn a_restart_measures_from_the_committed_time() {
        let host = Arc::new(ManualClock::new(START_MS + 60 * DAY_MS));
        let guard = TimeGuard::new(host.clone());
        // The engine reads the clock while opening, then says where its state is.
        let _ = guard.now_ms();
        guard.resume_from(START_MS);
        let now = guard.now_ms();
        assert!(now < START_MS + DAY_MS, "two months past the last commit is a jump: {now}");
        assert!(guard.refused().is_some());
    }
}
