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

    /// What the window counts of business day `day`: 0 for a day outside
    /// `[self.day() - 6, self.day()]`.
    pub fn spent_on_minor(&self, day: Day) -> u64 {
        if self.holds_day(day) {
            self.spent_by_day_minor[bucket(day)]
        } else {
            0
        }
    }

    /// Whether business day `day` is inside the window.
    pub fn holds_day(&self, day: Day) -> bool {
        day <= self.day && i64::from(self.day) - i64::from(day) < WINDOW_DAYS as i64
    }

    /// Gives back `amount_minor` counted on business day `day` (a hold's amount released,
    /// §12): only if `day` is still inside the window; a day that left it gave its room
    /// back already. Returns what was given back.
    pub fn release(&mut self, day: Day, amount_minor: u64) -> u64 {
        if !self.holds_day(day) {
            return 0;
        }
        let spent = &mut self.spent_by_day_minor[bucket(day)];
        // Whatever is released was recorded on that day and not released before.
        debug_assert!(*spent >= amount_minor, "released more than day {day} counted");
        let given_minor = amount_minor.min(*spent);
        *spent -= given_minor;
        given_minor
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
    fn a_release_gives_room_back_only_for_a_day_inside_the_window() {
        let mut window = Window::new(100);
        window.record(40);
        window.roll_to(103);
        window.record(25);
        assert_eq!(window.release(103, 10), 10);
        assert_eq!(window.spent_on_minor(103), 15);
        assert_eq!(window.release(100, 5), 5, "day 100 is inside [97, 103]");
        window.roll_to(107);
        assert_eq!(window.release(100, 5), 0, "day 100 left the window with its room");
        assert_eq!(window.release(108, 5), 0, "a day after the window holds nothing");
        assert_eq!(window.spent_minor(), 15);
        assert_eq!(window.spent_on_minor(100), 0);
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
