//! The batch service's limits, each named with its unit, and how they relate to the
//! shards' (checked when the crate compiles). Re-exported at the crate's root.

use plafond_shards::apply::SHARD_ENTRIES_MAX;
use plafond_shards::limits::EXPIRE_RECORDS_PER_CALL_MAX;

/// Accounts one epoch chunk covers: about a millisecond of work on a shard.
pub const ROLL_CHUNK_ACCOUNTS: u32 = 16_384;

/// Holds one epoch chunk covers on average: a chunk of a shard with holds covers fewer
/// accounts, so that its expiries too fit about a millisecond. Measured (`expiry_bench`):
/// a chunk of 16,384 accounts of which one in five had a hold to expire paused its shard
/// 12.6–14 ms (about 4 µs an expiry, on the persistent maps of the hold table).
pub const ROLL_CHUNK_HOLDS: u64 = 256;

/// The fewest accounts a chunk covers, however dense the holds: an epoch over 10M
/// accounts stays some thousands of chunks.
pub const ROLL_CHUNK_ACCOUNTS_MIN: u32 = 1_024;

const _: () =
    assert!(ROLL_CHUNK_ACCOUNTS_MIN >= 1 && ROLL_CHUNK_ACCOUNTS_MIN <= ROLL_CHUNK_ACCOUNTS);
const _: () = assert!(ROLL_CHUNK_HOLDS >= 1);

/// The share of wall time an epoch keeps its chunks in flight; it rests the remainder.
/// Measured: at 100 % an epoch over 10M accounts took a third of each shard's time for
/// 160 ms and added several ms to the p99 of a load at half the maximum rate.
pub const EPOCH_DUTY_PERCENT: u32 = 25;

const _: () = assert!(EPOCH_DUTY_PERCENT >= 1 && EPOCH_DUTY_PERCENT <= 100);
// A chunk's range of local indices is u32 and within a shard.
const _: () = assert!(ROLL_CHUNK_ACCOUNTS as usize <= SHARD_ENTRIES_MAX);
// Each chunk also expires remembered ids: at most a chunk's worth per call, so the
// expiry pauses a shard no longer than the roll.
const _: () = assert!(EXPIRE_RECORDS_PER_CALL_MAX <= ROLL_CHUNK_ACCOUNTS as usize);
