//! The changelog: what a shard writes to RocksDB for each batch (the disk format).
//!
//! Key: `b'L'`, shard (u16 big-endian), batch sequence number (u64 big-endian), so one
//! shard's batches sort in order. Value: format version (u8), entry count (u32
//! little-endian), then the entries, each bincode 2 (standard config: little-endian,
//! varints) of `{ ts: i64, input: Input, outcome: Option<Outcome> }`. In version 2 `ts` is
//! the entry's time minus the previous entry's (the first entry's minus 0, wrapping): the
//! entries of a batch mostly share one time, so it takes one byte instead of nine, and an
//! entry of a payment shrinks by about a third. Version 1 (`ts` absolute) is still read.
//!
//! The log is the source of truth: replaying a shard's entries through
//! [`crate::apply::apply`] rebuilds its state, and each replayed outcome must equal the
//! logged one. It is also the audit trail: every state change, with its command id.

use bincode::{Decode, Encode};

use crate::apply::Input;
use crate::command::Outcome;
use crate::ids::ShardId;

/// Version of the value format this build writes.
pub const LOG_FORMAT_VERSION: u8 = 2;
/// The earlier version, with absolute times; still read.
const LOG_FORMAT_VERSION_ABSOLUTE_TIMES: u8 = 1;
/// Prefix byte of log keys.
pub const LOG_KEY_PREFIX: u8 = b'L';
/// Bytes of a log key.
pub const LOG_KEY_BYTES: usize = 11;
pub use crate::limits::ENTRY_BYTES_MAX;
const HEADER_BYTES: usize = 5;

type Config = bincode::config::Configuration;

fn config() -> Config {
    bincode::config::standard()
}

/// One logged input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The time the input was stamped with (Unix ms), given to `apply` again on replay.
    pub ts_ms: i64,
    /// The input applied.
    pub input: Input,
    /// Its outcome ([`crate::apply::Applied::logged_outcome`]); replay must reproduce it.
    pub outcome: Option<Outcome>,
}

/// An entry as encoded: `ts` is relative in version 2, absolute in version 1.
#[derive(Encode)]
struct EntryRef<'a> {
    ts: i64,
    input: &'a Input,
    outcome: Option<&'a Outcome>,
}

#[derive(Decode)]
struct EncodedEntry {
    ts: i64,
    input: Input,
    outcome: Option<Outcome>,
}

/// Why a log value could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A batch value is malformed: the data directory is damaged.
    #[error("log batch {seq} of shard {shard}: {problem}")]
    Corrupt {
        /// The shard whose log it is.
        shard: ShardId,
        /// The batch's sequence number in that shard's log.
        seq: u64,
        /// What is wrong with it.
        problem: String,
    },
}

/// The key of batch `seq` of `shard`.
pub fn log_key(shard: ShardId, seq: u64) -> [u8; LOG_KEY_BYTES] {
    let mut key = [0u8; LOG_KEY_BYTES];
    key[0] = LOG_KEY_PREFIX;
    key[1..3].copy_from_slice(&shard.to_be_bytes());
    key[3..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The shard and sequence number of a log key.
pub fn parse_log_key(key: &[u8]) -> Option<(ShardId, u64)> {
    if key.len() != LOG_KEY_BYTES || key[0] != LOG_KEY_PREFIX {
        return None;
    }
    let shard = ShardId::from_be_bytes([key[1], key[2]]);
    let seq = u64::from_be_bytes(key[3..].try_into().ok()?);
    Some((shard, seq))
}

/// Builds one batch value.
pub struct BatchEncoder {
    bytes: Vec<u8>,
    count: u32,
    /// The time of the last entry pushed (0 before the first).
    last_ts_ms: i64,
}

impl Default for BatchEncoder {
    fn default() -> BatchEncoder {
        BatchEncoder::new()
    }
}

impl BatchEncoder {
    /// An empty batch.
    pub fn new() -> BatchEncoder {
        let mut bytes = Vec::with_capacity(4096);
        bytes.push(LOG_FORMAT_VERSION);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        BatchEncoder { bytes, count: 0, last_ts_ms: 0 }
    }

    /// Appends an entry.
    pub fn push(&mut self, ts_ms: i64, input: &Input, outcome: Option<&Outcome>) {
        let entry = EntryRef { ts: ts_ms.wrapping_sub(self.last_ts_ms), input, outcome };
        self.last_ts_ms = ts_ms;
        // Writing into a Vec cannot fail.
        let _ = bincode::encode_into_std_write(&entry, &mut self.bytes, config());
        self.count += 1;
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished value.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[1..HEADER_BYTES].copy_from_slice(&self.count.to_le_bytes());
        self.bytes
    }
}

/// How many entries a batch value says it holds, read from its header alone, or `None` if
/// the value is shorter than a header.
pub fn entry_count(bytes: &[u8]) -> Option<u32> {
    let count = bytes.get(1..HEADER_BYTES)?;
    Some(u32::from_le_bytes([count[0], count[1], count[2], count[3]]))
}

/// Decodes a batch value, refusing anything malformed.
pub fn decode_batch(shard: ShardId, seq: u64, bytes: &[u8]) -> Result<Vec<Entry>, LogError> {
    let corrupt = |problem: String| LogError::Corrupt { shard, seq, problem };
    if bytes.len() < HEADER_BYTES {
        return Err(corrupt(format!("{} bytes is shorter than the header", bytes.len())));
    }
    let relative_times = match bytes[0] {
        LOG_FORMAT_VERSION => true,
        LOG_FORMAT_VERSION_ABSOLUTE_TIMES => false,
        other => {
            return Err(corrupt(format!(
                "format version {other} is not one this build reads \
                 ({LOG_FORMAT_VERSION_ABSOLUTE_TIMES} or {LOG_FORMAT_VERSION})"
            )))
        }
    };
    let count = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let mut entries = Vec::with_capacity(count.min(bytes.len()));
    let mut offset = HEADER_BYTES;
    let limited = config().with_limit::<ENTRY_BYTES_MAX>();
    let mut last_ts_ms = 0i64;
    for index in 0..count {
        let (entry, used): (EncodedEntry, usize) =
            bincode::decode_from_slice(&bytes[offset..], limited)
                .map_err(|e| corrupt(format!("entry {index}: {e}")))?;
        let ts_ms = if relative_times { last_ts_ms.wrapping_add(entry.ts) } else { entry.ts };
        last_ts_ms = ts_ms;
        entries.push(Entry { ts_ms, input: entry.input, outcome: entry.outcome });
        offset += used;
    }
    if offset != bytes.len() {
        return Err(corrupt(format!("{} bytes after the last entry", bytes.len() - offset)));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandId, Reason, Request};

    #[test]
    fn batches_round_trip_and_corruption_is_refused() {
        let pay = Input::Client(Request::with_id(
            Command::Pay { card: 7, amount_minor: 100 },
            CommandId::new("abc").unwrap(),
        ));
        let credit = Input::Credit { origin: 1, seq: 9, to: 4, amount_minor: 3 };
        let mut encoder = BatchEncoder::new();
        let times = [1_800_000_000_000, 1_800_000_000_000, -5, i64::MAX, i64::MIN, 10];
        for (index, ts_ms) in times.into_iter().enumerate() {
            if index % 2 == 0 {
                encoder.push(ts_ms, &pay, Some(&Outcome::Declined(Reason::CardBlocked)));
            } else {
                encoder.push(ts_ms, &credit, None);
            }
        }
        let bytes = encoder.finish();
        let entries = decode_batch(0, 0, &bytes).unwrap();
        assert_eq!(entries.len(), times.len());
        assert_eq!(entry_count(&bytes), Some(times.len() as u32));
        assert_eq!(entry_count(&bytes[..3]), None);
        assert_eq!(entries[0].input, pay);
        assert_eq!(entries[0].outcome, Some(Outcome::Declined(Reason::CardBlocked)));
        assert_eq!(entries[1].input, credit);
        let decoded_times: Vec<i64> = entries.iter().map(|entry| entry.ts_ms).collect();
        assert_eq!(decoded_times, times, "times survive any difference, even wrapping ones");
        assert!(decode_batch(0, 0, &bytes[..bytes.len() - 1]).is_err());
        let mut versioned = bytes.clone();
        versioned[0] = 99;
        assert!(decode_batch(0, 0, &versioned).unwrap_err().to_string().contains("version"));
        let mut longer = bytes;
        longer.push(0);
        assert!(decode_batch(0, 0, &longer).is_err());
    }

    #[test]
    fn version_one_values_with_absolute_times_are_still_read() {
        let pay = Input::Client(Request::new(Command::Pay { card: 3, amount_minor: 50 }));
        let mut bytes = vec![LOG_FORMAT_VERSION_ABSOLUTE_TIMES];
        bytes.extend_from_slice(&2u32.to_le_bytes());
        for ts in [1_000, 900] {
            let entry = EntryRef { ts, input: &pay, outcome: None };
            bincode::encode_into_std_write(&entry, &mut bytes, config()).unwrap();
        }
        let entries = decode_batch(0, 0, &bytes).unwrap();
        let times: Vec<i64> = entries.iter().map(|entry| entry.ts_ms).collect();
        assert_eq!(times, [1_000, 900]);
    }

    #[test]
    fn a_payment_entry_costs_no_more_than_its_fields() {
        let pay = Input::Client(Request::new(Command::Pay { card: 123_456, amount_minor: 4_999 }));
        let approved = Outcome::Approved { balance_minor: 15_001, spent_7d_minor: 4_999 };
        let mut encoder = BatchEncoder::new();
        for _ in 0..100 {
            encoder.push(1_800_000_000_000, &pay, Some(&approved));
        }
        let bytes = encoder.finish();
        // Per entry: time 1, input and command tags 2, card 5, amount 3, no id 1, outcome
        // option and tag 2, balance 3, spent 3 = 20 bytes; with absolute times it was 28.
        assert!(bytes.len() <= HEADER_BYTES + 9 + 100 * 20, "{} bytes", bytes.len());
    }

    #[test]
    fn keys_sort_by_shard_then_sequence() {
        assert!(log_key(0, u64::MAX) < log_key(1, 0));
        assert!(log_key(1, 255) < log_key(1, 256));
        assert_eq!(parse_log_key(&log_key(3, 42)), Some((3, 42)));
        assert_eq!(parse_log_key(b"nope"), None);
    }
}
