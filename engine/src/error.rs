//! The engine's one error type.

use plafond_shards::region::RegionError;
use plafond_shards::reply::Stopped;
use plafond_shards::store::StoreError;

/// Why the engine could not do what was asked. A *declined* command is not an error: it is
/// an [`crate::Outcome::Declined`].
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("regions: {0}")]
    Regions(#[from] RegionError),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Stopped(#[from] Stopped),
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
    #[error("populate needs an empty engine; this one already has {0} profiles")]
    NotEmpty(u64),
    /// Boxed: snapshot errors carry paths and text, and every `Result` here would pay
    /// for their size otherwise.
    #[error("snapshot: {0}")]
    Snapshot(Box<plafond_snapshots::SnapshotError>),
    #[error("populate expected id {expected} but got {got:?}: the engine was not empty")]
    Populate { expected: u64, got: String },
}
