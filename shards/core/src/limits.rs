//! Every limit of the core, each named with its unit, and how they relate (checked when
//! the crate compiles). The modules that use a limit re-export it under their own name
//! (`money::AMOUNT_MAX_MINOR`, ...), so there is one definition and the old paths stay.
//! The runtime's limits, and those relating the runtime to the core, are in
//! `plafond_shards::limits`.

use crate::calendar::{days_from_civil, half_month_of, Day};
use crate::command::Reason;
use crate::state::NO_ACCOUNT;

/// The largest amount a single command may carry (10^15 minor units).
pub const AMOUNT_MAX_MINOR: u64 = 1_000_000_000_000_000;

/// The longest `command_id`, in bytes.
pub const COMMAND_ID_BYTES_MAX: usize = 64;

/// The most shards an engine may have.
pub const SHARDS_MAX: u16 = 256;

/// The most regions an engine may have.
pub const REGIONS_MAX: usize = 64;

/// The highest annual savings rate a region may have, in basis points (1,000 %).
pub const SAVINGS_RATE_BP_MAX: u32 = 100_000;

/// The fewest business days a region may remember command ids.
pub const RETENTION_DAYS_MIN: u16 = 1;
/// The most business days a region may remember command ids.
pub const RETENTION_DAYS_MAX: u16 = 400;

/// The largest encoded idempotency record a reader accepts, in bytes, against corrupt
/// lengths.
pub const RECORD_BYTES_MAX: usize = 4096;

/// The most accounts (and profiles) one shard may hold: local indices are `u32`, and
/// [`NO_ACCOUNT`] is kept free as the end of a profile's list. An open beyond it is
/// declined (`Reason::ShardFull`). This crate's own unit tests set it to 8, so that a
/// full table is a test of a few entries rather than of 4 billion.
#[cfg(not(test))]
pub const SHARD_ENTRIES_MAX: usize = (NO_ACCOUNT - 1) as usize;
/// See above: the limit in this crate's unit tests.
#[cfg(test)]
pub const SHARD_ENTRIES_MAX: usize = 8;

/// The most open holds (§12) one account may have: an authorization beyond it is declined
/// `TOO_MANY_HOLDS`. A card issuer's cardholder has a handful open at a time (a hotel, a
/// car rental, fuel); 32 leaves room for a busy card, and bounds what every command on the
/// account walks to apply its due expiries. This crate's unit tests set it to 3.
#[cfg(not(test))]
pub const HOLDS_PER_ACCOUNT_MAX: usize = 32;
/// See above: the limit in this crate's unit tests.
#[cfg(test)]
pub const HOLDS_PER_ACCOUNT_MAX: usize = 3;

/// The most holds (open, and closed ones still remembered) one shard's hold table keeps:
/// an authorization beyond it is declined `SHARD_FULL`, like an open on a full shard. An
/// open hold costs about 310 bytes resident in the table and its indices (measured by the
/// `rss` bench, `docs/BENCHMARKS.md` §3), so this is about 1.2 GB a shard at most. This
/// crate's unit tests set it to 6.
#[cfg(not(test))]
pub const HOLDS_PER_SHARD_MAX: usize = 4_000_000;
/// See above: the limit in this crate's unit tests.
#[cfg(test)]
pub const HOLDS_PER_SHARD_MAX: usize = 6;

/// A region's `hold_expiry_days` when its configuration does not say (§12).
pub const HOLD_EXPIRY_DAYS_DEFAULT: u16 = 7;
/// The fewest business days a region may keep a hold open.
pub const HOLD_EXPIRY_DAYS_MIN: u16 = 1;
/// The most business days a region may keep a hold open (card networks allow up to 31
/// days for hotels and car rentals).
pub const HOLD_EXPIRY_DAYS_MAX: u16 = 45;

/// Business days a closed or expired hold is remembered after its expiry day, so that a
/// late capture or void gets `HOLD_CLOSED` or `HOLD_EXPIRED` (and `HOLD` reads it) rather
/// than `UNKNOWN_HOLD`; from the roll of `expires_day + HOLD_KEPT_DAYS` on it is unknown.
pub const HOLD_KEPT_DAYS: i32 = 7;

/// The most pieces (amounts by the business day they were authorized on) a hold keeps:
/// one per day of the card window, and one for everything authorized before it (whose
/// day no longer matters: it left the window with its room).
pub const HOLD_PIECES_MAX: usize = crate::window::WINDOW_DAYS + 1;

/// Earliest and latest instants the engine accepts (years 1900 and 9000): clocks outside
/// are clamped at ingress so that no date arithmetic can fail.
pub const TIME_MIN_MS: i64 = -2_208_988_800_000;
/// The latest of the two: 9000-01-01T00:00Z, in Unix milliseconds.
pub const TIME_MAX_MS: i64 = 221_845_392_000_000;

/// The earliest business day an instant in `TIME_MIN_MS ..= TIME_MAX_MS` can fall on in
/// any zone and at any roll time (a day before 1900-01-01 for the zone's offset, one
/// more for a roll late in the day): a state holding an earlier day (a window's, a
/// savings account's half-month) was not made by this engine.
pub const DAY_MIN: Day = days_from_civil(1899, 12, 30);
/// The latest such day: 9000-01-01 plus a day for a zone east of UTC.
pub const DAY_MAX: Day = days_from_civil(9000, 1, 2);
/// The half-month (`year * 24 + k`, §5) of [`DAY_MIN`]: a savings account's half-month
/// is never earlier, so the first touch of an account walks at most the half-months
/// between it and [`HALF_MONTH_MAX`] (about 170,000), never 2^31.
pub const HALF_MONTH_MIN: i32 = half_month_of(DAY_MIN);
/// The half-month of [`DAY_MAX`].
pub const HALF_MONTH_MAX: i32 = half_month_of(DAY_MAX);

const _: () = assert!(SHARD_ENTRIES_MAX < NO_ACCOUNT as usize, "the sentinel is no index");
const _: () = assert!(REGIONS_MAX < u16::MAX as usize, "region ids are u16, plus one more");
const _: () = assert!(RETENTION_DAYS_MIN >= 1 && RETENTION_DAYS_MIN <= RETENTION_DAYS_MAX);
// A window holds seven days of spending, each at most a ceiling (an amount).
const _: () = assert!(AMOUNT_MAX_MINOR.checked_mul(7).is_some());
const _: () = assert!(TIME_MIN_MS < TIME_MAX_MS && DAY_MIN < DAY_MAX);
const _: () = assert!(HALF_MONTH_MIN < HALF_MONTH_MAX && HALF_MONTH_MAX - HALF_MONTH_MIN < 200_000);
// Every instant the engine accepts has its day within the days a state may hold.
const _: () = assert!(TIME_MIN_MS / 86_400_000 > DAY_MIN as i64);
const _: () = assert!(TIME_MAX_MS / 86_400_000 < DAY_MAX as i64);
const _: () = assert!(HOLDS_PER_ACCOUNT_MAX <= HOLDS_PER_SHARD_MAX);
const _: () = assert!(HOLDS_PER_ACCOUNT_MAX <= u16::MAX as usize, "open holds count in a u16");
const _: () =
    assert!(HOLD_EXPIRY_DAYS_MIN >= 1 && HOLD_EXPIRY_DAYS_MIN <= HOLD_EXPIRY_DAYS_DEFAULT);
const _: () = assert!(HOLD_EXPIRY_DAYS_DEFAULT <= HOLD_EXPIRY_DAYS_MAX);
// A hold's last day, and the day it is forgotten, stay within the days a state may hold.
const _: () = assert!(HOLD_KEPT_DAYS >= 1 && (HOLD_EXPIRY_DAYS_MAX as i32) + HOLD_KEPT_DAYS < 1000);
// The counters count a prefix of the reasons (`Reason::COUNTED`).
const _: () = assert!(Reason::COUNTED <= Reason::ALL.len());
