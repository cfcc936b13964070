//! The engine's one error type.

use plafond_shards::region::RegionError;
use plafond_shards::reply::Stopped;
use plafond_shards::store::StoreError;

/// Why the engine could not do what was asked. A *declined* command is not an error: it is
/// an [`crate::Outcome::Declined`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The data directory could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The region table was refused.
    #[error(transparent)]
    Regions(#[from] RegionError),
    /// The configuration does not fit what was asked (what is wrong, in words).
    #[error("configuration: {0}")]
    Config(String),
    /// A replica that does not lead decides nothing: `READONLY leader HOST:PORT`, or
    /// `CLUSTERDOWN no leader` during an election (SPEC §14).
    #[error("{0}")]
    NotLeader(String),
    /// The replica could not start.
    #[error(transparent)]
    Replica(#[from] plafond_replication::ReplicaError),
    /// The engine stopped, or was stopping, before answering.
    #[error(transparent)]
    Stopped(Stopped),
    /// The storage refused a write (disk full, I/O error): nothing more is acknowledged.
    #[error(
        "storage failed: {0}; nothing more is acknowledged: free space or fix the disk, then \
         restart (every acknowledged outcome is kept)"
    )]
    Storage(String),
    /// A thread could not be started (the system is out of threads or memory).
    #[error("cannot start the {what} thread: {error}; raise the process's limits or free memory")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// What the system said.
        error: std::io::Error,
    },
    /// A shard's thread ended before it was ready (it panicked while loading its state).
    #[error(
        "a shard's thread stopped while starting, after {ready} shards were ready (its panic \
         message is above); the engine is not open"
    )]
    ShardDied {
        /// How many shards had reported ready.
        ready: usize,
    },
    /// The batch service could not start or run an epoch.
    #[error(transparent)]
    Batch(#[from] plafond_batch::BatchError),
    /// A file or directory of the data directory could not be read or written.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the system said.
        error: std::io::Error,
    },
    /// A checkpoint could not be written or read (the previous one stays in force).
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// Checkpoints exist but none reads back whole: the log before them may be archived,
    /// so the state cannot be rebuilt from the log alone.
    #[error(
        "no checkpoint in {dir} reads back whole (each one's problem is logged above): restore \
         the data directory from a snapshot (plus the archive), or move the damaged files \
         away if the whole log is still in the data directory"
    )]
    NoCheckpoint {
        /// The checkpoint directory.
        dir: std::path::PathBuf,
    },
    /// Populating was asked of an engine that already has this many profiles.
    #[error("populate needs an empty engine; this one already has {0} profiles")]
    NotEmpty(u64),
    /// Boxed: snapshot errors carry paths and text, and every `Result` here would pay
    /// for their size otherwise.
    #[error("snapshot: {0}")]
    Snapshot(Box<plafond_snapshots::SnapshotError>),
    /// Another snapshot is being written: one at a time, so that clients cannot pile
    /// copies of the whole engine onto the disk and the shards' capture steps.
    #[error("a snapshot is already being written; try again once it is done")]
    SnapshotInProgress,
    /// A change-stream read started before the first batch retention kept.
    #[error("TRIMMED {first}")]
    StreamTrimmed {
        /// The shard whose stream it is.
        shard: plafond_shards::ids::ShardId,
        /// The id of the first entry retained.
        first: crate::stream::StreamId,
    },
    /// A change stream of a shard there is not.
    #[error("no stream of shard {shard}: the streams are changes:0 .. changes:{}", shards - 1)]
    NoSuchStream {
        /// The shard asked for.
        shard: plafond_shards::ids::ShardId,
        /// How many shards there are.
        shards: u16,
    },
    /// Populating did not get the dense ids it relies on (card ids `0 .. N`).
    #[error("populate expected id {expected} but got {got:?}: the engine was not empty")]
    Populate {
        /// The id the next profile or account should have had.
        expected: u64,
        /// The outcome received instead, as debug text.
        got: String,
    },
}

/// Why a checkpoint could not be written, verified or read. A failed write leaves the
/// previous checkpoints in force and is retried at the next one; a checkpoint that cannot
/// be read is passed over for the one before it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The checkpoint directory or a file in it could not be listed, created or written.
    #[error("{what} {path}: {error}; check the disk and the directory's permissions")]
    Io {
        /// What was being done.
        what: &'static str,
        /// To what.
        path: std::path::PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The shards could not be captured (the engine is stopping, or a shard died).
    #[error("capturing the shards: {0}")]
    Capture(Box<EngineError>),
    /// The file could not be written or read as a snapshot (its checksums, its MAC, its
    /// format). Boxed for the same reason as [`EngineError::Snapshot`].
    #[error(transparent)]
    Snapshot(#[from] Box<plafond_snapshots::SnapshotError>),
    /// The file is a sound snapshot of another engine.
    #[error(
        "it has {shards} shards and {regions} regions, the engine {engine_shards} and \
         {engine_regions}: it belongs to another data directory"
    )]
    Shape {
        /// The file's shard count.
        shards: u16,
        /// The file's region count.
        regions: u16,
        /// The engine's shard count.
        engine_shards: u16,
        /// The engine's region count.
        engine_regions: usize,
    },
    /// A shard's money does not add up (§2).
    #[error("shard {shard}: {problem}")]
    Money {
        /// The shard.
        shard: u16,
        /// How.
        problem: plafond_snapshots::format::MoneyError,
    },
    /// The file read back whole but holds other states than were captured.
    #[error("it reads back different from what was captured")]
    ReadBackDiffers,
    /// The file just written did not read back as written: it was removed.
    #[error("checkpoint {path} failed verification: {problem}")]
    Verification {
        /// The file (removed).
        path: std::path::PathBuf,
        /// What its read-back found.
        problem: Box<CheckpointError>,
    },
}

impl From<Stopped> for EngineError {
    /// A ticket dropped by a failed write says so as [`EngineError::Storage`].
    fn from(stopped: Stopped) -> EngineError {
        match stopped.storage_reason() {
            Some(reason) => EngineError::Storage(reason.to_string()),
            None => EngineError::Stopped(stopped),
        }
    }
}
