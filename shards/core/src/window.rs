//! The sliding seven-day window of a card (§3).
//!
//! Seven buckets, one per business day, indexed by `day mod 7`, and the latest day the
//! window has been rolled to. Rolling to a later day zeroes the buckets of the days that
//! left the window; rolling to the same or an earlier day does nothing, so lazy rolls on
//! access and eager rolls by the batch service agree and rolling twice is a no-op.

use bincode::{Decode, Encode};

use crate::calendar::Day;

/// How many business days a window spans.
pub const WINDOW_DAYS: usize = 7;

/// Spending of the last seven business days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Window {
    day: Day,
    spent_by_day_minor: [u64; WINDOW_DAYS],
}

impl Window {
    /// An empty window whose latest day is `day`.
    pub fn new(day: Day) -> Window {
        Window { day, spent_by_day_minor: [0; WINDOW_DAYS] }
    }

    /// A window from its stored parts (the snapshot codec's fields, in the encoding order).
    pub fn from_parts(day: Day, spent_by_day_minor: [u64; WINDOW_DAYS]) -> Window {
        Window { day, spent_by_day_minor }
    }

    /// The per-day buckets as stored, indexed by day modulo [`WINDOW_DAYS`].
    pub fn spent_by_day_minor(&self) -> &[u64; WINDOW_DAYS] {
        &self.spent_by_day_minor
    }

    /// The latest day the window has been rolled to.
    pub fn day(&self) -> Day {
        self.day
    }

    /// Moves the window forward to `day`; a day not after the current one is a no-op.
    pub fn roll_to(&mut self, day: Day) {
        if day <= self.day {
            return;
        }
        let gap = i64::from(day) - i64::from(self.day);
        if gap >= WINDOW_DAYS as i64 {
            self.spent_by_day_minor = [0; WINDOW_DAYS];
        } else {
            for expired in (self.day + 1)..=day {
                self.spent_by_day_minor[bucket(expired)] = 0;
            }
        }
        self.day = day;
    }

    /// Spending in `[day - 6, day]`, where `day` is the window's latest day.
    pub fn spent_minor(&self) -> u64 {
        // Each bucket is at most a ceiling (<= 10^15), so seven of them cannot overflow.
        self.spent_by_day_minor.iter().sum()
    }

    /// Counts `amount_minor` toward the window's latest day. The caller approved it
    /// against a ceiling of at most 10^15, so the bucket cannot overflow.
    pub fn record(&mut self, amount_minor: u64) {
        debug_assert!(self.spent_minor() + amount_minor <= 7 * crate::money::AMOUNT_MAX_MINOR);
        self.spent_by_day_minor[bucket(self.day)] += amount_minor;
    }
}

fn bucket(day: Day) -> usize {
    day.rem_euclid(WINDOW_DAYS as i32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slides_over_seven_days() {
        let mut window = Window::new(100);
        window.record(10);
        window.roll_to(103);
        window.record(5);
        assert_eq!(window.spent_minor(), 15);
        window.roll_to(106);
        assert_eq!(window.spent_minor(), 15, "day 100 is still inside [100, 106]");
        window.roll_to(107);
        assert_eq!(window.spent_minor(), 5, "day 100 left the window");
        window.roll_to(110);
        assert_eq!(window.spent_minor(), 0);
    }

    #[test]
    fn rolling_backwards_or_twice_changes_nothing() {
        let mut window = Window::new(50);
        window.record(7);
        let before = window;
        window.roll_to(49);
        window.roll_to(50);
        assert_eq!(window, before);
        window.roll_to(60);
        let rolled = window;
        window.roll_to(60);
        assert_eq!(window, rolled);
        assert_eq!(window.spent_minor(), 0);
    }
}
