//! Idempotency records (§6): what a command id remembers, and what a retry gets.
//!
//! A record is made by [`crate::apply::apply`] when a command with an id is decided, and
//! written to disk in the same RocksDB write as the log batch that holds the command
//! (`crate::store`), so the two are durable together. The shard looks a command id up
//! *before* applying it ([`check`]); the log only ever holds the first use of an id (a
//! retry changes nothing and is not logged), so replaying the log never needs a record.
//!
//! A record lives for the retention of its region (`idempotency_retention_days`): made on
//! business day D, it answers retries up to business day `D + retention - 1`, and from the
//! region's roll to business day `D + retention` on the id counts as new. That is exactly
//! when the epoch of that day drops it (§4 step 3); a lookup applies the same rule, so it
//! never depends on when the compaction actually ran.

use bincode::{Decode, Encode};

use crate::apply::Reply;
use crate::calendar::{business_day_of, Day};
use crate::command::{Command, Outcome, Reason, RegionId};
use crate::ids::{global_of, ShardId};
use crate::region::Regions;
use crate::state::{PendingTransfer, ShardState};

pub use crate::limits::RETENTION_DAYS_MAX;
pub use crate::limits::RETENTION_DAYS_MIN;
/// Business days a region remembers command ids unless configured otherwise.
pub const RETENTION_DAYS_DEFAULT: u16 = 30;
/// Version of the encoded record (the first byte of its value on disk).
pub const RECORD_FORMAT_VERSION: u8 = 1;
pub use crate::limits::RECORD_BYTES_MAX;
/// Bytes before the bincode body of an encoded record: version, region, day.
const RECORD_HEADER_BYTES: usize = 7;

/// The region and business day of an encoded record, read without decoding it.
pub fn expiry_fields(bytes: &[u8]) -> Option<(RegionId, Day)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    if header[0] != RECORD_FORMAT_VERSION {
        return None;
    }
    let region = RegionId::from_le_bytes([header[1], header[2]]);
    let day = Day::from_le_bytes([header[3], header[4], header[5], header[6]]);
    Some((region, day))
}

/// What an idempotency record remembers.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Remembered {
    /// The outcome, answered again to every retry.
    Final(Outcome),
    /// A cross-shard transfer, not settled yet.
    Pending {
        /// Its transfer sequence number (a key of the shard's pending transfers); a retry
        /// parks on it.
        seq: u64,
    },
}

/// A command id's record: the command it was first used with and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct IdempotencyRecord {
    /// The command first used with the id; another one with the same id is an
    /// [`Reason::IdempotencyConflict`].
    pub command: Command,
    /// Its outcome, or the transfer it is waiting on.
    pub remembered: Remembered,
    /// The region whose retention applies: the command's account's (a transfer's source).
    pub region: RegionId,
    /// The command's business day in that region.
    pub day: Day,
    /// The shard that decided it.
    pub shard: ShardId,
    /// The shard's log batch that wrote this version of the record (set by the shard when
    /// it is written): a snapshot at log position P holds the versions of batches before P.
    pub batch_seq: u64,
}

impl IdempotencyRecord {
    /// The record of the cross-shard transfer `pending` of `state`, remembering
    /// `remembered`: pending while it is in flight, final once it settles. Its day is the
    /// debit's: retention counts from the command, not from its settle.
    pub fn of_transfer(
        state: &ShardState,
        regions: &Regions,
        pending: &PendingTransfer,
        remembered: Remembered,
    ) -> IdempotencyRecord {
        let from = global_of(u64::from(pending.from_local), state.shard, state.shards);
        let region = state.accounts.get(pending.from_local as usize).map_or(0, |a| a.region);
        IdempotencyRecord {
            command: Command::Transfer {
                from: from.unwrap_or(u64::MAX),
                to: pending.to,
                amount_minor: pending.amount_minor,
            },
            remembered,
            region,
            day: regions.get(region).map_or(0, |r| business_day_of(r, pending.ts_ms)),
            shard: state.shard,
            batch_seq: 0,
        }
    }
}

/// What a command with an id gets, given what its id remembers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The id is not remembered (or no longer): decide the command.
    New,
    /// A retry of the same command: answer as the first time, apply nothing.
    Retry(Reply),
    /// The id was first used with another command.
    Conflict,
}

impl IdempotencyRecord {
    /// Whether the record is past retention on business day `today` of its region.
    pub fn expired(&self, today: Day, retention_days: u16) -> bool {
        i64::from(today) >= i64::from(self.day) + i64::from(retention_days)
    }

    /// The record's bytes on disk: the format version (u8), its region (u16 little-endian)
    /// and business day (i32 little-endian) — all the compaction filter reads to drop an
    /// expired record ([`expiry_fields`]) — then the record in bincode 2 (standard config).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64);
        bytes.push(RECORD_FORMAT_VERSION);
        bytes.extend_from_slice(&self.region.to_le_bytes());
        bytes.extend_from_slice(&self.day.to_le_bytes());
        // Writing into a Vec cannot fail.
        let _ = bincode::encode_into_std_write(self, &mut bytes, bincode::config::standard());
        bytes
    }

    /// Reads a record's bytes, refusing anything malformed.
    pub fn decode(bytes: &[u8]) -> Result<IdempotencyRecord, RecordError> {
        if expiry_fields(bytes).is_none() {
            return Err(RecordError::Version { bytes: bytes.len() });
        }
        let body = &bytes[RECORD_HEADER_BYTES..];
        let config = bincode::config::standard().with_limit::<RECORD_BYTES_MAX>();
        let (record, used) = bincode::decode_from_slice(body, config)?;
        if used != body.len() {
            return Err(RecordError::TrailingBytes { extra: body.len() - used });
        }
        let record: IdempotencyRecord = record;
        if expiry_fields(bytes) != Some((record.region, record.day)) {
            return Err(RecordError::HeaderMismatch);
        }
        Ok(record)
    }
}

/// Why the bytes of an idempotency record are not one.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Too short for a header, or of another format version.
    #[error("an idempotency record of {bytes} bytes is not of format {RECORD_FORMAT_VERSION}")]
    Version {
        /// The length found.
        bytes: usize,
    },
    /// The body does not decode.
    #[error("its body does not decode: {0}")]
    Body(#[from] bincode::error::DecodeError),
    /// Bytes after the body.
    #[error("{extra} bytes after an idempotency record")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// The header's region and day are not the body's.
    #[error("an idempotency record's header disagrees with its body")]
    HeaderMismatch,
}

/// What `command` gets when its id remembers `record` (looked up before applying it), on
/// business day `today` of the record's region, which keeps ids `retention_days`.
pub fn check(
    record: Option<&IdempotencyRecord>,
    command: &Command,
    today: Day,
    retention_days: u16,
) -> Verdict {
    let Some(record) = record.filter(|record| !record.expired(today, retention_days)) else {
        return Verdict::New;
    };
    if record.command != *command {
        return Verdict::Conflict;
    }
    match &record.remembered {
        Remembered::Final(outcome) => Verdict::Retry(Reply::Now(outcome.clone())),
        Remembered::Pending { seq } => Verdict::Retry(Reply::Parked { seq: *seq }),
    }
}

/// Business days `region` remembers command ids.
pub fn retention_of(regions: &Regions, region: RegionId) -> u16 {
    regions.get(region).map_or(RETENTION_DAYS_DEFAULT, |r| r.idempotency_retention_days)
}

/// The first business day on which `record` is past retention.
pub fn expiry_day(regions: &Regions, record: &IdempotencyRecord) -> Day {
    record.day.saturating_add(i32::from(retention_of(regions, record.region)))
}

/// The outcome of a command refused for reusing an id.
pub const CONFLICT: Outcome = Outcome::Declined(Reason::IdempotencyConflict);

#[cfg(test)]
mod tests {
    use super::*;

    fn record(day: Day) -> IdempotencyRecord {
        IdempotencyRecord {
            command: Command::Pay { card: 3, amount_minor: 10 },
            remembered: Remembered::Final(Outcome::Updated),
            region: 0,
            day,
            shard: 0,
            batch_seq: 7,
        }
    }

    #[test]
    fn a_record_answers_through_its_last_business_day_and_not_after() {
        let pay = Command::Pay { card: 3, amount_minor: 10 };
        let made = record(100);
        let retry = Verdict::Retry(Reply::Now(Outcome::Updated));
        assert_eq!(check(Some(&made), &pay, 100, 30), retry);
        assert_eq!(check(Some(&made), &pay, 129, 30), retry, "day D + 29 is the last");
        assert_eq!(check(Some(&made), &pay, 130, 30), Verdict::New, "day D + 30 is past");
        assert_eq!(check(Some(&made), &pay, 100, 1), retry);
        assert_eq!(check(Some(&made), &pay, 101, 1), Verdict::New);
        let other = Command::Pay { card: 3, amount_minor: 11 };
        assert_eq!(check(Some(&made), &other, 129, 30), Verdict::Conflict);
        assert_eq!(check(Some(&made), &other, 130, 30), Verdict::New);
        assert_eq!(check(None, &pay, 100, 30), Verdict::New);
        assert!(!record(Day::MAX).expired(Day::MAX, RETENTION_DAYS_MAX), "no overflow");
    }

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let made = record(-5);
        let bytes = made.encode();
        assert_eq!(IdempotencyRecord::decode(&bytes).ok(), Some(made));
        assert!(IdempotencyRecord::decode(&[]).is_err());
        assert!(IdempotencyRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(IdempotencyRecord::decode(&longer).is_err());
        let mut versioned = bytes;
        versioned[0] = 9;
        let error = IdempotencyRecord::decode(&versioned).unwrap_err();
        assert!(error.to_string().contains("format"), "{error}");
        assert_eq!(expiry_fields(&record(-5).encode()), Some((0, -5)));
    }
}
