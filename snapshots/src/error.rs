//! The crate's one error type. Every problem a snapshot file, a data directory or the
//! disk can cause ends here, with a message that says what is wrong and what to do.

use std::path::PathBuf;

use plafond_shards::check::StateError;
use plafond_shards::ids::ShardId;
use plafond_shards::store::StoreError;

use crate::format::KEYED_FORMAT_VERSION;

/// Why a snapshot could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The snapshot file does not exist.
    #[error("there is no snapshot at {path}")]
    Missing {
        /// The path asked for.
        path: PathBuf,
    },
    /// The disk refused an operation.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "fsyncing", ...).
        action: &'static str,
        /// To what.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("the snapshot {path} is empty (0 bytes): it was never written, or was truncated")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file does not start with `PLAFSNAP`.
    #[error("{path} is not a plafond snapshot: it does not start with the magic `PLAFSNAP`")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// A format version this build does not read.
    #[error(
        "the snapshot has format version {found}; this build reads versions 2 to \
         {KEYED_FORMAT_VERSION} only: restore it with a build that knows version {found}"
    )]
    UnsupportedVersion {
        /// The file's version.
        found: u32,
    },
    /// The file is shorter than its header says (or than a header).
    #[error(
        "the snapshot is truncated: it has {found_bytes} bytes, {what} needs {expected_bytes}"
    )]
    Truncated {
        /// How many bytes are needed.
        expected_bytes: u64,
        /// How many the file has.
        found_bytes: u64,
        /// What needs them ("its header", "the whole file, by its header").
        what: &'static str,
    },
    /// The file is longer than its header says.
    #[error(
        "the snapshot has {extra_bytes} unexpected bytes after its end ({expected_bytes} \
         were written): it was appended to or is corrupt"
    )]
    TrailingBytes {
        /// The length the header gives.
        expected_bytes: u64,
        /// How many more the file has.
        extra_bytes: u64,
    },
    /// A CRC-32C does not match: bytes changed after they were written.
    #[error(
        "checksum mismatch in the {part} (stored {stored:#010x}, computed {computed:#010x}): \
         the snapshot is corrupt"
    )]
    Checksum {
        /// Which part ("header", "chunk 3 of shard 1", "whole file").
        part: String,
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes read.
        computed: u32,
    },
    /// A MAC key is configured and the file carries no MAC.
    #[error(
        "the snapshot {path} carries no MAC (format version {version}) and a MAC key is \
         configured: it was written without the key, or its MAC was stripped; refused"
    )]
    MacMissing {
        /// The file.
        path: PathBuf,
        /// Its format version.
        version: u32,
    },
    /// The file's MAC is not the key's MAC of its bytes.
    #[error(
        "the MAC of the snapshot {path} does not match: it was changed after it was written \
         (checksums recomputed or not), or written with another key; refused"
    )]
    MacMismatch {
        /// The file.
        path: PathBuf,
    },
    /// A header field is out of range (its CRC matched, or was not reached yet).
    #[error("the snapshot's header is corrupt: {problem}")]
    CorruptHeader {
        /// Which field, and why.
        problem: String,
    },
    /// The trailer is not where the header says the file ends.
    #[error("the snapshot's trailer is corrupt: {problem}")]
    CorruptTrailer {
        /// What is wrong with it.
        problem: String,
    },
    /// A shard's money does not add up (§2): its checksums were recomputed over changed
    /// numbers, or the file was made by something other than an engine.
    #[error("the money of shard {shard} in the snapshot does not add up: {problem}; restore an older snapshot")]
    Money {
        /// The shard.
        shard: ShardId,
        /// How its money fails to add up.
        problem: crate::format::MoneyError,
    },
    /// A shard's state passed its checksums but does not decode to a sound state.
    #[error("the state of shard {shard} in the snapshot is corrupt: {problem}")]
    CorruptShard {
        /// The shard.
        shard: ShardId,
        /// What is wrong with its state.
        problem: String,
    },
    /// A shard's state decoded but breaks an invariant of the state (a cycle, an orphan
    /// record, a field out of range): no engine made it, so it is not loaded.
    #[error(
        "the state of shard {shard} in the snapshot is not one an engine makes ({source}): \
         the file was damaged or crafted; use another snapshot or checkpoint"
    )]
    InvalidState {
        /// The shard.
        shard: ShardId,
        /// The invariant it breaks.
        source: StateError,
    },
    /// The states given to write do not form a snapshot.
    #[error("cannot snapshot these shards: {problem}")]
    BadInput {
        /// Why not.
        problem: String,
    },
    /// Restore never writes over existing files.
    #[error(
        "the restore target {path} is not empty: restore into a new or empty directory, \
         never over a data directory"
    )]
    TargetNotEmpty {
        /// The target directory.
        path: PathBuf,
    },
    /// Another restore into the same target is running or was interrupted.
    #[error(
        "the staging directory {path} exists: a restore was interrupted or is running; \
         remove it once no restore is running"
    )]
    StagingExists {
        /// The staging directory.
        path: PathBuf,
    },
    /// The data directory to take the log after the snapshot from cannot be used.
    #[error("the source data directory {path} cannot be used: {problem}")]
    Source {
        /// The source data directory.
        path: PathBuf,
        /// Why not.
        problem: String,
    },
    /// The restored data directory could not be written.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// RocksDB failed while copying the log.
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
}

impl SnapshotError {
    /// An I/O error while `action` (e.g. "reading") `path`.
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SnapshotError::Io { action, path: path.to_path_buf(), source }
    }
}
