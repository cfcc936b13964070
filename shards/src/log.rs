//! The changelog: what a shard writes to RocksDB for each batch (the disk format).
//!
//! Key: `b'L'`, shard (u16 big-endian), batch sequence number (u64 big-endian), so one
//! shard's batches sort in order. Value: format version (u8), entry count (u32
//! little-endian), then the entries, each bincode 2 (standard config: little-endian,
//! varints) of `{ ts: i64, input: Input, logged }`. Since version 2 `ts` is the entry's
//! time minus the previous entry's (the first entry's minus 0, wrapping): the entries of a
//! batch mostly share one time, so it takes one byte instead of nine, and an entry of a
//! payment shrinks by about a third. `logged` is a tag byte, then the outcome if its bit 0
//! is set, then what the input changed lazily ([`crate::apply::Applied::lazy`], a
//! `Rolled`) if its bit 1 is set (version 3), then the region of each lazy interest
//! posting (`Vec<Option<RegionId>>`, as many as it posted) if its bit 2 is set (version 4;
//! a `Posted`'s own encoding has no region, and a roll's input names its own): an entry
//! without lazy changes is the `Option<Outcome>` versions 1 and 2 wrote, byte for byte, so
//! logging them costs the other entries nothing. Versions 1 (`ts` absolute), 2 (no lazy
//! changes logged) and 3 (lazy postings without their regions) are still read.
//!
//! The log is the source of truth: replaying a shard's entries through
//! [`crate::apply::apply`] rebuilds its state, and each replayed outcome must equal the
//! logged one. It is also the audit trail: every state change, with its command id.

use bincode::{Decode, Encode};

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};

use crate::apply::Input;
use crate::command::{Outcome, RegionId, Rolled};
use crate::ids::ShardId;

/// Version of the value format this build writes: lazy changes logged, with the regions of
/// their interest postings.
pub const LOG_FORMAT_VERSION: u8 = 4;
/// The version before, with lazy changes logged without the regions of their postings;
/// still read.
const LOG_FORMAT_VERSION_LAZY: u8 = 3;
/// The version before, with relative times and no lazy changes logged; still read.
const LOG_FORMAT_VERSION_RELATIVE_TIMES: u8 = 2;
/// The first version, with absolute times; still read.
const LOG_FORMAT_VERSION_ABSOLUTE_TIMES: u8 = 1;
/// Bit of an entry's tag byte: an outcome follows.
const TAG_OUTCOME: u8 = 1;
/// Bit of an entry's tag byte: lazy changes follow (since version 3).
const TAG_LAZY: u8 = 2;
/// Bit of an entry's tag byte: the regions of the lazy interest postings follow (version
/// 4; set with [`TAG_LAZY`] when some interest was posted).
const TAG_REGIONS: u8 = 4;
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
    /// What it changed lazily ([`crate::apply::Applied::lazy`]; replay must reproduce it),
    /// or `None` in a batch of a version that did not log it (replay takes what it does).
    pub lazy: Option<Rolled>,
}

/// An entry as encoded: `ts` is relative since version 2, absolute in version 1.
#[derive(Encode)]
struct EntryRef<'a> {
    ts: i64,
    input: &'a Input,
    logged: LoggedRef<'a>,
}

#[derive(Decode)]
struct EncodedEntry {
    ts: i64,
    input: Input,
    logged: Logged,
}

/// An entry's outcome and lazy changes, to encode: the tag, then each that is there.
struct LoggedRef<'a> {
    outcome: Option<&'a Outcome>,
    lazy: &'a Rolled,
}

impl<'a> LoggedRef<'a> {
    /// An outcome without lazy changes.
    #[cfg(test)]
    fn plain(outcome: Option<&'a Outcome>) -> LoggedRef<'a> {
        static NOTHING: Rolled = Rolled { interest: Vec::new(), expired: Vec::new() };
        LoggedRef { outcome, lazy: &NOTHING }
    }
}

impl Encode for LoggedRef<'_> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        let lazy = !self.lazy.is_empty();
        let regions = !self.lazy.interest.is_empty();
        let tag = u8::from(self.outcome.is_some()) * TAG_OUTCOME
            + u8::from(lazy) * TAG_LAZY
            + u8::from(regions) * TAG_REGIONS;
        tag.encode(encoder)?;
        if let Some(outcome) = self.outcome {
            outcome.encode(encoder)?;
        }
        if lazy {
            self.lazy.encode(encoder)?;
        }
        if regions {
            self.lazy
                .interest
                .iter()
                .map(|posted| posted.region)
                .collect::<Vec<_>>()
                .encode(encoder)?;
        }
        Ok(())
    }
}

/// An entry's outcome and lazy changes, decoded (`lazy` is `None` without its tag bit),
/// and whether the regions of its lazy postings were logged.
struct Logged {
    outcome: Option<Outcome>,
    lazy: Option<Rolled>,
    regions: bool,
}

impl<Context> Decode<Context> for Logged {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Logged, DecodeError> {
        let tag = u8::decode(decoder)?;
        let with_regions = TAG_LAZY | TAG_REGIONS;
        if tag & !(TAG_OUTCOME | with_regions) != 0 || tag & with_regions == TAG_REGIONS {
            return Err(DecodeError::OtherString(format!("entry tag {tag} is not one written")));
        }
        let outcome = match tag & TAG_OUTCOME {
            0 => None,
            _ => Some(Outcome::decode(decoder)?),
        };
        let mut lazy = match tag & TAG_LAZY {
            0 => None,
            _ => Some(Rolled::decode(decoder)?),
        };
        let regions = tag & TAG_REGIONS != 0;
        if let (true, Some(lazy)) = (regions, &mut lazy) {
            let regions = Vec::<Option<RegionId>>::decode(decoder)?;
            if regions.len() != lazy.interest.len() {
                return Err(DecodeError::Other("a region for each lazy interest posting"));
            }
            for (posted, region) in lazy.interest.iter_mut().zip(regions) {
                posted.region = region;
            }
        }
        Ok(Logged { outcome, lazy, regions })
    }
}
bincode::impl_borrow_decode!(Logged);

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

    /// Appends an entry: the input, its outcome and what it changed lazily.
    pub fn push(&mut self, ts_ms: i64, input: &Input, outcome: Option<&Outcome>, lazy: &Rolled) {
        let logged = LoggedRef { outcome, lazy };
        let entry = EntryRef { ts: ts_ms.wrapping_sub(self.last_ts_ms), input, logged };
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
    let (relative_times, lazy_logged, regions_logged) = match bytes[0] {
        LOG_FORMAT_VERSION => (true, true, true),
        LOG_FORMAT_VERSION_LAZY => (true, true, false),
        LOG_FORMAT_VERSION_RELATIVE_TIMES => (true, false, false),
        LOG_FORMAT_VERSION_ABSOLUTE_TIMES => (false, false, false),
        other => {
            return Err(corrupt(format!(
                "format version {other} is not one this build reads \
                 ({LOG_FORMAT_VERSION_ABSOLUTE_TIMES} to {LOG_FORMAT_VERSION})"
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
        let Logged { mut outcome, lazy, regions } = entry.logged;
        let lazy = match (lazy_logged, lazy) {
            (true, lazy) => Some(lazy.unwrap_or_default()),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(corrupt(format!("entry {index}: lazy changes in version {}", bytes[0])))
            }
        };
        if regions && !regions_logged {
            return Err(corrupt(format!("entry {index}: regions in version {}", bytes[0])));
        }
        // A roll's postings are of the region its input names.
        if let (Input::Roll { region, .. }, Some(Outcome::Rolled(rolled))) =
            (&entry.input, &mut outcome)
        {
            rolled.interest.iter_mut().for_each(|posted| posted.region = Some(*region));
        }
        entries.push(Entry { ts_ms, input: entry.input, outcome, lazy });
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
                let declined = Outcome::Declined(Reason::CardBlocked);
                encoder.push(ts_ms, &pay, Some(&declined), &Rolled::default());
            } else {
                encoder.push(ts_ms, &credit, None, &Rolled::default());
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
        assert!(entries.iter().all(|entry| entry.lazy == Some(Rolled::default())));
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
            let entry = EntryRef { ts, input: &pay, logged: LoggedRef::plain(None) };
            bincode::encode_into_std_write(&entry, &mut bytes, config()).unwrap();
        }
        let entries = decode_batch(0, 0, &bytes).unwrap();
        let times: Vec<i64> = entries.iter().map(|entry| entry.ts_ms).collect();
        assert_eq!(times, [1_000, 900]);
        assert!(entries.iter().all(|entry| entry.lazy.is_none()), "not logged then");
    }

    /// A version 2 value, as the build before lazy changes wrote it: `Option<Outcome>`.
    fn version_two(entries: &[(i64, &Input, Option<&Outcome>)]) -> Vec<u8> {
        #[derive(Encode)]
        struct Version2<'a> {
            ts: i64,
            input: &'a Input,
            outcome: Option<&'a Outcome>,
        }
        let mut bytes = vec![LOG_FORMAT_VERSION_RELATIVE_TIMES];
        bytes.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        for &(ts, input, outcome) in entries {
            let entry = Version2 { ts, input, outcome };
            bincode::encode_into_std_write(&entry, &mut bytes, config()).unwrap();
        }
        bytes
    }

    #[test]
    fn lazy_changes_round_trip_and_version_two_values_read_as_before() {
        use crate::command::{ExpiredHold, Posted};
        let pay = Input::Client(Request::new(Command::Pay { card: 3, amount_minor: 50 }));
        let approved = Outcome::Approved { balance_minor: 950, spent_7d_minor: 50 };
        let lazy = Rolled {
            interest: vec![Posted {
                account: 5,
                amount_minor: 7,
                balance_minor: 1_007,
                region: Some(3),
            }],
            expired: vec![ExpiredHold { hold: 9, card: 3, released_minor: 400 }],
        };
        let mut encoder = BatchEncoder::new();
        encoder.push(10, &pay, Some(&approved), &lazy);
        encoder.push(10, &pay, None, &lazy);
        encoder.push(10, &pay, Some(&approved), &Rolled::default());
        let entries = decode_batch(0, 0, &encoder.finish()).unwrap();
        let logged: Vec<_> = entries.iter().map(|e| (e.outcome.clone(), e.lazy.clone())).collect();
        assert_eq!(
            logged,
            [
                (Some(approved.clone()), Some(lazy.clone())),
                (None, Some(lazy.clone())),
                (Some(approved.clone()), Some(Rolled::default())),
            ]
        );
        // The same entry without lazy changes is the same bytes as version 2 wrote.
        let mut encoder = BatchEncoder::new();
        encoder.push(10, &pay, Some(&approved), &Rolled::default());
        let current = encoder.finish();
        let old = version_two(&[(10, &pay, Some(&approved))]);
        assert_eq!(current[1..], old[1..]);
        let entries = decode_batch(0, 0, &old).unwrap();
        assert_eq!(
            (entries[0].outcome.as_ref(), entries[0].lazy.as_ref()),
            (Some(&approved), None)
        );
        // Version 3 wrote the lazy postings without their regions: read without them.
        let mut encoder = BatchEncoder::new();
        encoder.push(10, &pay, None, &lazy);
        let mut three = encoder.finish();
        assert_eq!(three.pop(), Some(3), "the regions (one, Some(3)) end the entry");
        assert_eq!(three.pop(), Some(1));
        assert_eq!(three.pop(), Some(1));
        let tag = three.len() - lazy_bytes(&lazy) - 1;
        assert_eq!(three[tag], TAG_LAZY | TAG_REGIONS);
        three[tag] = TAG_LAZY;
        three[0] = LOG_FORMAT_VERSION_LAZY;
        let entries = decode_batch(0, 0, &three).unwrap();
        let unplaced = Posted { region: None, ..lazy.interest[0] };
        assert_eq!(entries[0].lazy.as_ref().map(|lazy| lazy.interest[0]), Some(unplaced));
        // ... and a version 3 value with regions is refused, as regions without lazy
        // changes are.
        three[tag] = TAG_LAZY | TAG_REGIONS;
        three.extend_from_slice(&[1, 1, 3]);
        assert!(decode_batch(0, 0, &three).unwrap_err().to_string().contains("regions"));
        // A tag no build writes is refused (an entry without outcome ends with its tag);
        // so is a lazy change in a version 2 value.
        let mut encoder = BatchEncoder::new();
        encoder.push(10, &pay, None, &Rolled::default());
        let mut bad_tag = encoder.finish();
        assert_eq!(bad_tag.last(), Some(&0));
        *bad_tag.last_mut().unwrap() = 8;
        assert!(decode_batch(0, 0, &bad_tag).unwrap_err().to_string().contains("tag 8"));
        *bad_tag.last_mut().unwrap() = TAG_REGIONS;
        assert!(decode_batch(0, 0, &bad_tag).unwrap_err().to_string().contains("tag 4"));
        let mut with_lazy = BatchEncoder::new();
        let expired = vec![ExpiredHold { hold: 1, card: 3, released_minor: 2 }];
        with_lazy.push(10, &pay, None, &Rolled { interest: Vec::new(), expired });
        let mut with_lazy = with_lazy.finish();
        with_lazy[0] = LOG_FORMAT_VERSION_RELATIVE_TIMES;
        assert!(decode_batch(0, 0, &with_lazy).unwrap_err().to_string().contains("lazy"));
    }

    /// The bytes `lazy` encodes to.
    fn lazy_bytes(lazy: &Rolled) -> usize {
        bincode::encode_to_vec(lazy, config()).unwrap().len()
    }

    #[test]
    fn a_rolls_postings_are_of_its_region() {
        use crate::command::Posted;
        let roll = Input::Roll { region: 2, day: 20_000, start: 0, end: 16 };
        let posted = Posted { account: 4, amount_minor: 9, balance_minor: 1_009, region: Some(2) };
        let rolled = Outcome::Rolled(Rolled { interest: vec![posted], expired: Vec::new() });
        let mut encoder = BatchEncoder::new();
        encoder.push(10, &roll, Some(&rolled), &Rolled::default());
        let entries = decode_batch(0, 0, &encoder.finish()).unwrap();
        assert_eq!(entries[0].outcome, Some(rolled), "the region is the roll's, not encoded");
    }

    #[test]
    fn a_payment_entry_costs_no_more_than_its_fields() {
        let pay = Input::Client(Request::new(Command::Pay { card: 123_456, amount_minor: 4_999 }));
        let approved = Outcome::Approved { balance_minor: 15_001, spent_7d_minor: 4_999 };
        let mut encoder = BatchEncoder::new();
        for _ in 0..100 {
            encoder.push(1_800_000_000_000, &pay, Some(&approved), &Rolled::default());
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
