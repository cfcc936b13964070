//! The engine's limits, each named with its unit, and how they relate to the limits of
//! the crates it joins (checked when the crate compiles). The modules that use a limit
//! re-export it under their own name where it is public (`clock::CLOCK_MOVE_DAYS_MAX`).

use plafond_shards::calendar::{TIME_MAX_MS, TIME_MIN_MS};

use crate::clock::ManualClock;

/// Checkpoint files kept: the newest, and the one a damaged newest falls back to.
pub const CHECKPOINTS_KEPT: usize = 2;

/// The most bytes a second a checkpoint file is written at: a checkpoint of 10M accounts
/// (about 400 MB) then takes some 1.6 s to write instead of one burst that the WAL's
/// fsyncs queue behind. Slower is gentler on the payments' latency but makes the newest
/// complete checkpoint older, and a restart replays all the log after it: at 64 MiB/s a
/// restart at 10M accounts after 30 s of full load took 6–7 s (docs/BENCHMARKS.md §7).
pub const CHECKPOINT_WRITE_BYTES_PER_S: u64 = 256 << 20;

/// Room a capture's buffers leave for tables that grow between the request and the
/// instant, in parts of the tables' size: a little, since a table that outgrew its buffer
/// is only slower to capture (it reallocates on the shard's thread), never wrong.
pub const CAPTURE_ROOM_PER_MILLE: usize = 10;

/// Entries of room added whatever the tables' size.
pub const CAPTURE_ROOM_ENTRIES: usize = 4_096;

/// The most one `CLOCK.SET` or `CLOCK.ADVANCE` moves the manual clock, either way: tests
/// move it by months, and a year and a bit covers an annual interest posting. Further is
/// done in steps, each one's epochs caught up.
pub const CLOCK_MOVE_DAYS_MAX: i64 = 400;

/// The earliest time the manual clock may be moved to: 2000-01-01T00:00:00Z.
pub const MANUAL_CLOCK_MIN_MS: i64 = 946_684_800_000;

/// The latest: just before 2200-01-01T00:00:00Z.
pub const MANUAL_CLOCK_MAX_MS: i64 = 7_258_118_400_000 - 1;

/// The longest jump forward of the host's clock, past the last time used, that is taken
/// without an operator: longer than any downtime a restart should absorb silently (a
/// month-end closing, a long weekend), far shorter than the years a wrong clock can jump.
pub const CLOCK_JUMP_DAYS_MAX: i64 = 40;

/// The most change-stream entries one read visits: a read holds a RocksDB iterator and
/// decodes whole batches, so it is bounded like any batch of work.
pub const STREAM_READ_ENTRIES_MAX: usize = 65_536;

/// The most decoded entries the change stream keeps for readers that follow (about 180
/// bytes each, so some 24 MiB): two batches of a full combined submission.
pub const STREAM_DECODED_ENTRIES_MAX: usize = 131_072;

/// Commands per submission while populating.
pub const POPULATE_CHUNK: u64 = 65_536;

// A read of the most entries fits what is kept decoded.
const _: () = assert!(STREAM_READ_ENTRIES_MAX <= STREAM_DECODED_ENTRIES_MAX);
const _: () = assert!(CHECKPOINTS_KEPT >= 2, "a damaged newest checkpoint falls back");
const _: () = assert!(MANUAL_CLOCK_MIN_MS < ManualClock::SERVER_START_MS);
const _: () = assert!(ManualClock::SERVER_START_MS < MANUAL_CLOCK_MAX_MS);
const _: () = assert!(TIME_MIN_MS < MANUAL_CLOCK_MIN_MS && MANUAL_CLOCK_MAX_MS < TIME_MAX_MS);
