//! Business days: which day a timestamp belongs to in a region's zone.
//!
//! Business day D of a region runs from its roll time on local date D to its roll time on
//! local date D + 1. Days are numbered as days since 1970-01-01 of the local date, so
//! arithmetic on them is plain integer arithmetic. Converting an instant needs the time
//! zone database, so each shard keeps the span of the last day it saw per region and
//! only asks the zone again when an instant falls outside it.

use jiff::civil::Date;
use jiff::Timestamp;

use crate::command::RegionId;
use crate::region::{Region, Regions};

/// A business day: days since 1970-01-01 of its local date.
pub type Day = i32;

pub use crate::limits::TIME_MAX_MS;
pub use crate::limits::TIME_MIN_MS;

#[derive(Clone, Copy, Debug)]
struct DaySpan {
    start_ms: i64,
    end_ms: i64,
    day: Day,
}

/// A per-shard cache of each region's current business day.
#[derive(Clone, Debug)]
pub struct Calendar {
    spans: Vec<DaySpan>,
}

impl Calendar {
    /// An empty cache for `regions`.
    pub fn new(regions: &Regions) -> Calendar {
        Calendar { spans: vec![DaySpan { start_ms: 0, end_ms: 0, day: 0 }; regions.len()] }
    }

    /// The business day of `ts_ms` in `region`.
    pub fn business_day(&mut self, regions: &Regions, region: RegionId, ts_ms: i64) -> Day {
        let index = usize::from(region);
        let span = self.spans[index];
        if span.start_ms <= ts_ms && ts_ms < span.end_ms {
            return span.day;
        }
        let Some(region) = regions.get(region) else {
            return 0;
        };
        let fresh = span_of(region, ts_ms);
        self.spans[index] = fresh;
        fresh.day
    }
}

/// The business day of `ts_ms` in `region`, without a cache.
pub fn business_day_of(region: &Region, ts_ms: i64) -> Day {
    span_of(region, ts_ms).day
}

fn span_of(region: &Region, ts_ms: i64) -> DaySpan {
    let ts_ms = ts_ms.clamp(TIME_MIN_MS, TIME_MAX_MS);
    let Ok(instant) = Timestamp::from_millisecond(ts_ms) else {
        return DaySpan { start_ms: ts_ms, end_ms: ts_ms, day: 0 };
    };
    let local = region.zone.to_datetime(instant);
    let mut date = local.date();
    if local.time() < region.roll_time {
        date = date.yesterday().unwrap_or(date);
    }
    let start_ms = roll_instant_ms(region, date).unwrap_or(ts_ms);
    let end_ms = date
        .tomorrow()
        .ok()
        .and_then(|next| roll_instant_ms(region, next))
        .unwrap_or(ts_ms.saturating_add(1));
    DaySpan { start_ms, end_ms, day: day_of_date(date) }
}

/// The instant the business day of local `date` begins in `region`.
pub fn roll_instant_ms(region: &Region, date: Date) -> Option<i64> {
    let instant = region.zone.to_ambiguous_timestamp(date.to_datetime(region.roll_time));
    Some(instant.compatible().ok()?.as_millisecond())
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's `days_from_civil`).
pub fn day_of_date(date: Date) -> Day {
    days_from_civil(i32::from(date.year()), i32::from(date.month()), i32::from(date.day()))
}

/// The civil date of a day number.
pub fn date_of_day(day: Day) -> Date {
    let (year, month, dom) = civil_from_days(day);
    Date::new(year as i16, month as i8, dom as i8).unwrap_or(Date::constant(1970, 1, 1))
}

/// Days since 1970-01-01 of the civil date `year-month-day` (Howard Hinnant's
/// `days_from_civil`); `const` so the limits can name days by their dates.
pub const fn days_from_civil(year: i32, month: i32, day: i32) -> i32 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

const fn civil_from_days(days: i32) -> (i32, i32, i32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    (year_of_era + era * 400 + (month <= 2) as i32, month, day)
}

/// The half-month of a business day, counted from year 0: `year * 24 + k` with
/// `k = 2 * (month - 1) + (day >= 16)` (§5).
pub const fn half_month_of(day: Day) -> i32 {
    let (year, month, dom) = civil_from_days(day);
    year * 24 + 2 * (month - 1) + (dom >= 16) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn day_numbers_round_trip() {
        assert_eq!(day_of_date(Date::constant(1970, 1, 1)), 0);
        assert_eq!(day_of_date(Date::constant(2000, 3, 1)), 11_017);
        for day in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_900_000] {
            assert_eq!(day_of_date(date_of_day(day)), day);
        }
    }

    #[test]
    fn business_day_turns_at_the_roll_time_in_the_zone() {
        let regions = Regions::builtin();
        let paris = regions.get(0).unwrap();
        let jan4 = day_of_date(Date::constant(2027, 1, 4));
        // 04:00 Paris in winter is 03:00 UTC.
        assert_eq!(business_day_of(paris, ms("2027-01-04T02:59:59Z")), jan4 - 1);
        assert_eq!(business_day_of(paris, ms("2027-01-04T03:00:00Z")), jan4);
        // New York in winter is UTC-5: 04:00 local is 09:00 UTC.
        let new_york = regions.get(1).unwrap();
        assert_eq!(business_day_of(new_york, ms("2027-01-04T08:59:59Z")), jan4 - 1);
        assert_eq!(business_day_of(new_york, ms("2027-01-04T09:00:00Z")), jan4);
        // In summer Paris is UTC+2: 04:00 local is 02:00 UTC.
        let jul1 = day_of_date(Date::constant(2027, 7, 1));
        assert_eq!(business_day_of(paris, ms("2027-07-01T02:00:00Z")), jul1);
        assert_eq!(business_day_of(paris, ms("2027-07-01T01:59:59Z")), jul1 - 1);
    }

    #[test]
    fn cache_agrees_with_the_zone() {
        let regions = Regions::builtin();
        let mut calendar = Calendar::new(&regions);
        let start = ms("2027-03-20T00:00:00Z");
        for step in 0..2000 {
            let ts = start + step * 1_234_567;
            for region in 0..2 {
                let expected = business_day_of(regions.get(region).unwrap(), ts);
                assert_eq!(calendar.business_day(&regions, region, ts), expected);
            }
        }
    }

    #[test]
    fn half_months() {
        let day = |y, m, d| day_of_date(Date::constant(y, m, d));
        assert_eq!(half_month_of(day(2027, 1, 1)), 2027 * 24);
        assert_eq!(half_month_of(day(2027, 1, 15)), 2027 * 24);
        assert_eq!(half_month_of(day(2027, 1, 16)), 2027 * 24 + 1);
        assert_eq!(half_month_of(day(2027, 12, 31)), 2027 * 24 + 23);
    }
}
