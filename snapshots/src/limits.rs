//! What a snapshot or checkpoint reader accepts and a writer uses, each named with its
//! unit, and how they relate, checked when the crate compiles. The modules re-export the
//! ones they use under their old paths (`format::CHUNK_BYTES_MAX`, ...); the layout's
//! fixed sizes (magic, header and trailer bytes) stay beside the layout in `format`.

/// Payload bytes per chunk this build writes: large enough that the per-chunk CRC costs
/// nothing, small enough that progress moves and a flipped bit is located to 1 MiB.
pub const CHUNK_BYTES: u32 = 1 << 20;
/// The smallest chunk a reader accepts (tests write small chunks to cover many of them).
pub const CHUNK_BYTES_MIN: u32 = 16;
/// The largest chunk a reader accepts.
pub const CHUNK_BYTES_MAX: u32 = 64 << 20;
/// The most regions a snapshot may name.
pub const REGIONS_MAX: u16 = 4096;
/// The largest encoded shard state a reader accepts (1 TiB), whatever the file size.
pub const STATE_BYTES_MAX: u64 = 1 << 40;
/// Bounds what decoding may allocate: bincode counts the in-memory size of what it
/// decodes against a limit, and no value of `ShardState` takes more than 16 times its
/// encoded size in memory (the worst case is a `u128` of zero: one byte, sixteen in
/// memory). So a corrupt length can never make decoding allocate more than this many
/// times the section's bytes, which the file size already bounds.
pub const DECODED_BYTES_PER_ENCODED_BYTE_MAX: usize = 16;
/// Bytes written between two fsyncs of a snapshot or checkpoint file being written.
pub const SYNC_EVERY_BYTES: u64 = 8 << 20;
/// Buffer of the file reader and writer.
pub const IO_BUFFER_BYTES: usize = 1 << 20;

/// Entries per table block this build writes: blocks of about 2.5 MB of accounts, so two
/// cores share a table of 10M accounts in 153 blocks evenly, and the index costs 8 bytes
/// per 65,536 entries.
pub const BLOCK_ENTRIES: u32 = 1 << 16;
/// The largest table block a reader accepts, in entries.
pub const BLOCK_ENTRIES_MAX: u32 = 1 << 24;

/// Log bytes copied per RocksDB write while restoring the log after a snapshot.
pub const COPY_BATCH_BYTES_MAX: usize = 16 << 20;
/// Idempotency records copied per write while restoring a source's records.
pub const COPY_RECORDS_PER_WRITE: usize = 65_536;

// What this build writes, it reads.
const _: () = assert!(CHUNK_BYTES_MIN <= CHUNK_BYTES && CHUNK_BYTES <= CHUNK_BYTES_MAX);
const _: () = assert!(BLOCK_ENTRIES <= BLOCK_ENTRIES_MAX);
// Every region an engine can have fits a snapshot.
const _: () = assert!(plafond_shards::region::REGIONS_MAX <= REGIONS_MAX as usize);
// A reader's buffer takes a whole chunk of the size this build writes in one read.
const _: () = assert!(CHUNK_BYTES as usize <= IO_BUFFER_BYTES);
