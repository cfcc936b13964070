//! The runtime's limits, each named with its unit, and how they relate to each other and
//! to the core's (`plafond_core::limits`), checked when the crate compiles. The modules
//! that use a limit re-export it under their own name (`actor::BATCH_COMMANDS_MAX`, ...).
//! The archive's segment limits stay beside its layout (`archive`), which they size.

use std::time::Duration;

use crate::archive::VALUE_BYTES_MAX;
use crate::command::COMMAND_ID_BYTES_MAX;
use crate::ids::SHARDS_MAX;

/// The most client commands one shard batch takes.
pub const BATCH_COMMANDS_MAX: usize = 8192;

/// The most submissions waiting in one shard's ingress mailbox.
pub const INGRESS_MAILS_MAX: usize = 4096;

/// The most entries of each table a capture copies between two batches: about a quarter
/// of a millisecond of copying on a quiet core.
pub const CAPTURE_STEP_ENTRIES: usize = 16_384;

/// Entries of each table copied between two looks at the clock within a step.
pub const CAPTURE_SLICE_ENTRIES: usize = 2_048;

/// A step stops at the first slice that ends after this much time: under load, copying
/// the entries written since the capture began (and a core shared with other threads)
/// made steps of 16,384 entries take 2-7 ms at 10M accounts; the budget keeps a step
/// well inside the 2 ms a checkpoint may pause a shard (§7), whatever the entries cost.
pub const CAPTURE_STEP_BUDGET: Duration = Duration::from_micros(400);

/// The largest entry a decoder will accept, against corrupt length fields.
pub const ENTRY_BYTES_MAX: usize = 1 << 20;

/// The most expired records the in-memory store drops per call of
/// [`crate::remembered::RememberedIds::expire`]: an epoch chunk's worth, so expiry never pauses a shard long.
pub const EXPIRE_RECORDS_PER_CALL_MAX: usize = 16_384;

/// The most accounts one logged roll covers: a shard cuts an epoch's chunk into rolls of
/// at most this many, so that the interest one roll logs stays bounded.
pub const ROLL_ENTRY_ACCOUNTS_MAX: u32 = 16_384;

/// The most open holds of the accounts one logged roll covers (it may expire them all).
pub const ROLL_ENTRY_HOLDS_MAX: usize = 16_384;

/// The most shard batches one group commit takes.
pub const GROUP_BATCHES_MAX: usize = 256;

/// The most bytes one group commit takes, so one fsync never waits on a huge write.
pub const GROUP_BYTES_MAX: usize = 32 << 20;

const _: () = assert!(CAPTURE_SLICE_ENTRIES <= CAPTURE_STEP_ENTRIES);
const _: () = assert!(CAPTURE_STEP_ENTRIES.is_multiple_of(CAPTURE_SLICE_ENTRIES));
// One group commit can take the pending batch of every shard (one RocksDB write, one
// fsync for all of them).
const _: () = assert!(GROUP_BATCHES_MAX >= SHARDS_MAX as usize);
// Any entry a decoder accepts fits one group write and one archive record.
const _: () = assert!(ENTRY_BYTES_MAX <= GROUP_BYTES_MAX && ENTRY_BYTES_MAX <= VALUE_BYTES_MAX);
// What a roll logs at most (an interest and an expiry per account or hold, each decoded
// into 24 bytes, which the decoder's limit counts) is an entry the decoder accepts; and an
// account's holds fit one roll, so that a cut always moves on.
const _: () = assert!(
    ROLL_ENTRY_ACCOUNTS_MAX as usize * std::mem::size_of::<crate::command::Posted>()
        + ROLL_ENTRY_HOLDS_MAX * std::mem::size_of::<crate::command::ExpiredHold>()
        + 4096
        <= ENTRY_BYTES_MAX
);
const _: () = assert!(crate::holds::HOLDS_PER_ACCOUNT_MAX <= ROLL_ENTRY_HOLDS_MAX);
// What a command logs lazily (the interest of the two accounts a transfer touches, the
// expiry of every hold of the account it spends from) is less than a roll may log.
const _: () = assert!(2 <= ROLL_ENTRY_ACCOUNTS_MAX);
// An entry holds a command with its id.
const _: () = assert!(COMMAND_ID_BYTES_MAX < ENTRY_BYTES_MAX);
