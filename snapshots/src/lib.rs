//! Snapshots and restore of plafond (§8 of the spec).
//!
//! A snapshot is a consistent cut of every shard — the engine takes it with
//! `Engine::cut_with_position`, between two inputs on every shard at once — written to
//! one versioned, checksummed file (see [`format`] and `docs/SNAPSHOT_FORMAT.md`). Each
//! shard's state comes with its log position: the state is exactly its logged batches
//! `0 .. position`, so a restore can replay the log written after the snapshot.
//!
//! - [`write`] writes a cut atomically (`path.tmp`, fsync, rename, fsync the directory);
//! - [`read`] reads and checks a snapshot whole: magic, version, lengths against the
//!   file size, every CRC-32C, every decoded state. A damaged file is refused with a
//!   [`SnapshotError`] that names the problem, never half-read;
//! - [`restore`] builds a data directory from a snapshot (plus the log after it) for
//!   `Engine::open`, all or nothing.
//!
//! With an operator's [`MacKey`], the `*_keyed` functions write files that carry a keyed
//! MAC (HMAC-SHA-256, format version 4) and refuse, when reading or restoring, a file
//! whose MAC is missing or is not the key's; the others work without a key.
//!
//! This crate knows shards, not engines: the engine crate wraps it as `Engine::snapshot`
//! and `Engine::restore`.
//!
//! ```
//! use plafond_shards::state::ShardState;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("cut.plafsnap");
//! let shards = vec![(ShardState::new(0, 2, 2), 0), (ShardState::new(1, 2, 2), 0)];
//! let report = plafond_snapshots::write(&path, &shards, |_| {})?;
//! assert_eq!(report.shards, 2);
//! let read = plafond_snapshots::read(&path, |_| {})?;
//! assert_eq!(read.states[1], shards[1].0);
//!
//! std::fs::write(&path, &b"PLAFSNAP"[..])?;
//! let error = plafond_snapshots::read(&path, |_| {}).unwrap_err();
//! assert!(error.to_string().contains("truncated"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod progress;
pub mod restore;
mod tables;

use std::path::{Path, PathBuf};
use std::time::Instant;

use plafond_shards::state::ShardState;

pub use error::SnapshotError;
pub use format::{Header, SectionInfo, Snapshot, FORMAT_VERSION, KEYED_FORMAT_VERSION};
pub use plafond_mac::MacKey;
pub use progress::{Progress, Terminal};
pub use restore::RestoreReport;

/// What writing a snapshot did.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotReport {
    /// The file written.
    pub path: PathBuf,
    /// Shards in it.
    pub shards: u16,
    /// Accounts in it.
    pub accounts: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// Each shard's log position in the snapshot.
    pub log_positions: Vec<u64>,
    /// The whole run; with `Engine::snapshot`, the cut too.
    pub seconds: f64,
    /// `accounts / seconds`.
    pub accounts_per_second: f64,
}

/// The subdirectory of a data directory that holds its checkpoints: snapshot files, one
/// section per shard, each at that shard's own log position.
pub const CHECKPOINT_DIR: &str = "checkpoints";
const CHECKPOINT_PREFIX: &str = "checkpoint-";
const CHECKPOINT_SUFFIX: &str = ".snap";

/// The file name of checkpoint number `generation` (names sort by generation).
pub fn checkpoint_file_name(generation: u64) -> String {
    format!("{CHECKPOINT_PREFIX}{generation:020}{CHECKPOINT_SUFFIX}")
}

/// The generation of a checkpoint file called `name`, if it is one.
pub fn generation_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?.strip_suffix(CHECKPOINT_SUFFIX)?;
    digits.parse().ok()
}

impl format::WriteOptions {
    /// Chunks of [`format::CHUNK_BYTES`], created now, written at most `bytes_per_second`.
    pub fn now(bytes_per_second: Option<u64>) -> format::WriteOptions {
        // 0 if the clock is before 1970.
        let created_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        format::WriteOptions { chunk_bytes: format::CHUNK_BYTES, created_ms, bytes_per_second }
    }
}

/// Writes `shards` — every shard's state with its log position, in shard order, taken at
/// one consistent cut — to `path` atomically. `progress` hears how far it is.
pub fn write(
    path: &Path,
    shards: &[(ShardState, u64)],
    mut progress: impl FnMut(Progress),
) -> Result<SnapshotReport, SnapshotError> {
    write_with(path, shards, format::WriteOptions::now(None), &mut progress)
}

/// [`write`] with explicit options (chunk size, creation time): for tests and tools.
pub fn write_with(
    path: &Path,
    shards: &[(ShardState, u64)],
    options: format::WriteOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<SnapshotReport, SnapshotError> {
    write_keyed(path, shards, options, None, progress)
}

/// [`write_with`]; with `key`, the file carries the key's MAC of its bytes (version 4).
pub fn write_keyed(
    path: &Path,
    shards: &[(ShardState, u64)],
    options: format::WriteOptions,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<SnapshotReport, SnapshotError> {
    let started = Instant::now();
    let written = format::write_keyed(path, shards, options, key, progress)?;
    let seconds = started.elapsed().as_secs_f64();
    let accounts = written.header.sections.iter().map(|s| s.accounts).sum();
    Ok(SnapshotReport {
        path: path.to_path_buf(),
        shards: written.header.shards,
        accounts,
        bytes: written.bytes,
        log_positions: written.header.sections.iter().map(|s| s.log_position).collect(),
        seconds,
        accounts_per_second: accounts as f64 / seconds.max(f64::EPSILON),
    })
}

/// Reads and checks the snapshot at `path` whole; see [`format::read`]. Without a key: a
/// MAC the file carries is not checked.
pub fn read(path: &Path, mut progress: impl FnMut(Progress)) -> Result<Snapshot, SnapshotError> {
    format::read(path, &mut progress)
}

/// [`read`], and with `key` the file's MAC: a file without one, or with one the key did
/// not make, is refused ([`SnapshotError::MacMissing`], [`SnapshotError::MacMismatch`]).
pub fn read_keyed(
    path: &Path,
    key: Option<&MacKey>,
    mut progress: impl FnMut(Progress),
) -> Result<Snapshot, SnapshotError> {
    format::read_keyed(path, key, &mut progress)
}

/// Restores the snapshot at `snapshot` into `target` (absent or empty), copying the log
/// written after it from `source` (the stopped engine's data directory) when given; see
/// [`restore::restore`]. [`restore_keyed`] without a key.
pub fn restore(
    snapshot: &Path,
    source: Option<&Path>,
    target: &Path,
    mut progress: impl FnMut(Progress),
) -> Result<RestoreReport, SnapshotError> {
    restore::restore(snapshot, source, target, None, &mut progress)
}

/// [`restore`]; with `key`, a snapshot without the key's MAC is refused before anything is
/// written.
pub fn restore_keyed(
    snapshot: &Path,
    source: Option<&Path>,
    target: &Path,
    key: Option<&MacKey>,
    mut progress: impl FnMut(Progress),
) -> Result<RestoreReport, SnapshotError> {
    restore::restore(snapshot, source, target, key, &mut progress)
}

/// Writes the snapshot at `source` again at `target`, under `key` (format version 4): the
/// way to bring a snapshot taken without a key to an engine that has one. `source` is read
/// and checked whole as a restore checks it (checksums, invariants, every shard's money)
/// but without a key, so only a file the operator trusts should be sealed. The states, log
/// positions, chunk size and creation time are kept.
pub fn seal(
    source: &Path,
    target: &Path,
    key: &MacKey,
    mut progress: impl FnMut(Progress),
) -> Result<SnapshotReport, SnapshotError> {
    let snapshot = format::read(source, &mut progress)?;
    for (shard, state) in snapshot.states.iter().enumerate() {
        format::check_money(state).map_err(|problem| SnapshotError::Money {
            shard: shard as plafond_shards::ids::ShardId,
            problem,
        })?;
    }
    let header = &snapshot.header;
    let options = format::WriteOptions {
        chunk_bytes: header.chunk_bytes,
        created_ms: header.created_ms,
        bytes_per_second: None,
    };
    let positions = header.sections.iter().map(|section| section.log_position);
    let shards: Vec<(ShardState, u64)> = snapshot.states.into_iter().zip(positions).collect();
    write_keyed(target, &shards, options, Some(key), &mut progress)
}
