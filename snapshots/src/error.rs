//! The crate's one error type. Every problem a snapshot file, a data directory or the
//! disk can cause ends here, with a message that says what is wrong and what to do.

use std::path::PathBuf;

use plafond_shards::ids::ShardId;
use plafond_shards::store::StoreError;

use crate::format::FORMAT_VERSION;

/// Why a snapshot could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("there is no snapshot at {path}")]
    Missing { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the snapshot {path} is empty (0 bytes): it was never written, or was truncated")]
    Empty { path: PathBuf },
    #[error("{path} is not a plafond snapshot: it does not start with the magic `PLAFSNAP`")]
    BadMagic { path: PathBuf },
    #[error(
        "the snapshot has format version {found}; this build reads version {FORMAT_VERSION} \
         only: restore it with a build that knows version {found}"
    )]
    UnsupportedVersion { found: u32 },
    #[error(
        "the snapshot is truncated: it has {found_bytes} bytes, {expected_bytes} were written \
         ({what})"
    )]
    Truncated { expected_bytes: u64, found_bytes: u64, what: &'static str },
    #[error(
        "the snapshot has {extra_bytes} unexpected bytes after its end ({expected_bytes} \
         were written): it was appended to or is corrupt"
    )]
    TrailingBytes { expected_bytes: u64, extra_bytes: u64 },
    #[error(
        "checksum mismatch in the {part} (stored {stored:#010x}, computed {computed:#010x}): \
         the snapshot is corrupt"
    )]
    Checksum { part: String, stored: u32, computed: u32 },
    #[error("the snapshot's header is corrupt: {problem}")]
    CorruptHeader { problem: String },
    #[error("the snapshot's trailer is corrupt: {problem}")]
    CorruptTrailer { problem: String },
    #[error("the state of shard {shard} in the snapshot is corrupt: {problem}")]
    CorruptShard { shard: ShardId, problem: String },
    #[error("cannot snapshot these shards: {problem}")]
    BadInput { problem: String },
    #[error(
        "the restore target {path} is not empty: restore into a new or empty directory, \
         never over a data directory"
    )]
    TargetNotEmpty { path: PathBuf },
    #[error(
        "the staging directory {path} exists: a restore was interrupted or is running; \
         remove it once no restore is running"
    )]
    StagingExists { path: PathBuf },
    #[error("the source data directory {path} cannot be used: {problem}")]
    Source { path: PathBuf, problem: String },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
}

impl SnapshotError {
    /// An I/O error while `action` (e.g. "reading") `path`.
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        SnapshotError::Io { action, path: path.to_path_buf(), source }
    }
}
