//! Restore: a snapshot (plus, optionally, the log written after it) into a new data
//! directory that `Engine::open` then starts from.
//!
//! All or nothing: the snapshot is read and checked whole before anything is written,
//! the data directory is built in a staging directory beside the target and renamed into
//! place only once complete, so an interrupted or failed restore never leaves a target
//! that an engine would open.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use plafond_shards::calendar::Day;
use plafond_shards::ids::ShardId;
use plafond_shards::log::{log_key, parse_log_key};
use plafond_shards::store::Store;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use plafond_mac::MacKey;

use crate::error::SnapshotError;
use crate::format::{self, Checked};
use crate::progress::Progress;

use crate::limits::{COPY_BATCH_BYTES_MAX, COPY_RECORDS_PER_WRITE};

/// What a restore did.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreReport {
    /// The data directory built.
    pub target: PathBuf,
    /// Shards restored: the engine must be opened with as many.
    pub shards: u16,
    /// Regions of the snapshot: the engine must be configured with as many.
    pub regions: u16,
    /// Accounts restored.
    pub accounts: u64,
    /// Log batches copied from the source data directory (written after the snapshot).
    pub log_batches: u64,
    /// Bytes of the snapshot file.
    pub snapshot_bytes: u64,
    /// The whole run; with `Engine::restore`, opening the engine too.
    pub seconds: f64,
    /// Of `seconds`, opening the restored engine (0 when only the directory was built).
    pub open_seconds: f64,
    /// `accounts / seconds`.
    pub accounts_per_second: f64,
}

/// Checks that `target` is absent or an empty directory.
fn check_target(target: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(SnapshotError::TargetNotEmpty { path: target.to_path_buf() }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(SnapshotError::io("listing the target", target, error)),
    }
}

/// The staging directory beside `target`: `.NAME.restoring`.
pub fn staging_path(target: &Path) -> Result<PathBuf, SnapshotError> {
    let name = target.file_name().ok_or_else(|| SnapshotError::BadInput {
        problem: format!("the target {} has no directory name", target.display()),
    })?;
    let mut staging = std::ffi::OsString::from(".");
    staging.push(name);
    staging.push(".restoring");
    Ok(target.with_file_name(staging))
}

/// Opens the source data directory, refusing one that does not exist (opening would
/// create it) or that an engine holds.
fn open_source(source: &Path, shards: u16) -> Result<Store, SnapshotError> {
    let problem = |problem: String| SnapshotError::Source { path: source.to_path_buf(), problem };
    if !source.join("CURRENT").is_file() {
        return Err(problem("it is not a data directory (no RocksDB CURRENT file)".into()));
    }
    Store::open(source, shards).map_err(|error| {
        problem(format!("{error} (the engine that uses it must be stopped before restoring)"))
    })
}

/// Restores `snapshot` into `target` (absent or empty), with the log written after the
/// snapshot copied from `source` (the data directory of the engine that took it, which
/// must be stopped) when given. Then `Engine::open` on `target` with the snapshot's
/// shard count and the same regions gives the engine back. With `key`, the snapshot must
/// carry the key's MAC (checked before anything is written).
pub fn restore(
    snapshot: &Path,
    source: Option<&Path>,
    target: &Path,
    key: Option<&MacKey>,
    progress: &mut dyn FnMut(Progress),
) -> Result<RestoreReport, SnapshotError> {
    let started = Instant::now();
    check_target(target)?;
    let staging = staging_path(target)?;
    if staging.exists() {
        return Err(SnapshotError::StagingExists { path: staging });
    }
    let snapshot_bytes = std::fs::metadata(snapshot).map_or(0, |m| m.len());
    let read = format::read_checked(snapshot, key, progress)?;
    let shards = read.header.shards;
    let source =
        source.map(|dir| open_source(dir, shards).map(|store| (dir, store))).transpose()?;
    std::fs::create_dir_all(&staging)
        .map_err(|error| SnapshotError::io("creating", &staging, error))?;
    let built = build(&staging, snapshot, &read, source.as_ref(), progress);
    // Close the source before anything else can fail or the caller reopens it.
    drop(source);
    let log_batches = built.and_then(|log_batches| {
        move_into_place(&staging, target)?;
        Ok(log_batches)
    });
    let log_batches = match log_batches {
        Ok(log_batches) => log_batches,
        Err(error) => {
            // Best effort: the staging directory is ours and incomplete.
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let accounts = read.header.sections.iter().map(|s| s.accounts).sum();
    Ok(RestoreReport {
        target: target.to_path_buf(),
        shards,
        regions: read.header.regions,
        accounts,
        log_batches,
        snapshot_bytes,
        seconds,
        open_seconds: 0.0,
        accounts_per_second: accounts as f64 / seconds.max(f64::EPSILON),
    })
}

/// Writes every shard's checkpoint and the source's later log into `staging`; returns
/// how many log batches were copied.
fn build(
    staging: &Path,
    snapshot_path: &Path,
    snapshot: &Checked,
    source: Option<&(&Path, Store)>,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64, SnapshotError> {
    let store = Store::open_for_bulk_load(staging, snapshot.header.shards)?;
    // The snapshot, checked whole, is the new directory's first checkpoint as it is: a
    // checkpoint is a snapshot file whose shards need not be at one cut.
    let checkpoints = staging.join(crate::CHECKPOINT_DIR);
    std::fs::create_dir_all(&checkpoints)
        .map_err(|error| SnapshotError::io("creating", &checkpoints, error))?;
    let checkpoint = checkpoints.join(crate::checkpoint_file_name(0));
    std::fs::copy(snapshot_path, &checkpoint)
        .map_err(|error| SnapshotError::io("copying the snapshot to", &checkpoint, error))?;
    File::open(&checkpoint)
        .and_then(|file| file.sync_all())
        .map_err(|error| SnapshotError::io("fsyncing", &checkpoint, error))?;
    format::sync_parent(&checkpoint)?;
    let accounts = snapshot.header.sections.iter().map(|s| s.accounts).sum();
    progress(Progress { phase: "checkpoint", done: accounts, total: accounts, unit: "accounts" });
    record_epochs(&store, snapshot, source.map(|(_, source)| source))?;
    let mut log_batches = 0;
    if let Some((_, source)) = source {
        // The log after the snapshot comes with the records of its command ids.
        copy_records(source, &store)?;
    }
    if let Some((path, source)) = source {
        for (shard, section) in snapshot.header.sections.iter().enumerate() {
            let shard = shard as ShardId;
            log_batches += copy_log(path, source, &store, shard, section.log_position)?;
            progress(Progress {
                phase: "copy log",
                done: u64::from(shard) + 1,
                total: u64::from(snapshot.header.shards),
                unit: "shards",
            });
        }
    }
    // Into table files, fsynced: the log copy skipped the write-ahead log.
    store.db().flush()?;
    let accounts = snapshot.header.sections.iter().map(|s| s.accounts).sum();
    progress(Progress { phase: "flush", done: accounts, total: accounts, unit: "accounts" });
    Ok(log_batches)
}

/// Records each region's last completed epoch, which the batch service keeps beside the
/// log rather than in the shards. With the source's log, the source's records hold: their
/// rolls are in the log copied. Otherwise they are derived from the shards: an epoch rolls
/// every shard (`rolled_day` is raised at its first chunk on each) and is recorded only
/// once all are done, so if every shard has started day D, epoch D - 1 completed. D itself
/// may have been cut halfway; the restored engine runs it again, which is a no-op where it
/// was already applied (§3, §4).
fn record_epochs(
    store: &Store,
    snapshot: &Checked,
    source: Option<&Store>,
) -> Result<(), SnapshotError> {
    for region in 0..snapshot.header.regions {
        let started = snapshot
            .rolled_days
            .iter()
            .map(|rolled_day| rolled_day.get(usize::from(region)).copied())
            .min()
            .flatten()
            .filter(|&day| day > Day::MIN);
        let from_source = match source {
            Some(source) => source.last_epoch(region)?,
            None => None,
        };
        let completed = from_source.or(started.map(|day| day - 1));
        if let Some(day) = completed {
            store.record_epoch(region, day)?;
        }
    }
    Ok(())
}

/// Copies `shard`'s log batches `position ..` from `source` to `target`, as raw keys and
/// values (they are replayed, and so checked, when the engine opens).
fn copy_log(
    path: &Path,
    source: &Store,
    target: &Store,
    shard: ShardId,
    position: u64,
) -> Result<u64, SnapshotError> {
    let problem = |problem: String| SnapshotError::Source { path: path.to_path_buf(), problem };
    // The snapshot holds batches `0 .. position`: a directory whose log does not reach
    // `position - 1` cannot be the one the snapshot was taken from, or lost its end.
    if let Some(last) = position.checked_sub(1) {
        if source.db().get(log_key(shard, last))?.is_none() {
            return Err(problem(format!(
                "shard {shard} has no log batch {last}, the last one in the snapshot: it is \
                 not the data directory the snapshot was taken from"
            )));
        }
    }
    let start = log_key(shard, position);
    let mut batch = WriteBatch::default();
    let (mut next_seq, mut copied) = (position, 0);
    for item in source.db().iterator(IteratorMode::From(&start, Direction::Forward)) {
        let (key, value) = item?;
        match parse_log_key(&key) {
            Some((key_shard, seq)) if key_shard == shard => {
                if seq != next_seq {
                    return Err(problem(format!(
                        "shard {shard}'s log jumps from batch {next_seq} to {seq}"
                    )));
                }
                batch.put(&key, &value);
                next_seq += 1;
                copied += 1;
            }
            _ => break,
        }
        if batch.size_in_bytes() >= COPY_BATCH_BYTES_MAX {
            target.write(std::mem::take(&mut batch), false)?;
        }
    }
    if !batch.is_empty() {
        target.write(batch, false)?;
    }
    Ok(copied)
}

/// Copies every idempotency record of `source` into `target` (those of the commands of
/// the log copied after the snapshot; older ones the snapshot carries too).
fn copy_records(source: &Store, target: &Store) -> Result<(), SnapshotError> {
    let mut chunk = Vec::with_capacity(COPY_RECORDS_PER_WRITE);
    let mut failed = None;
    source.for_each_record(|id, record| {
        chunk.push((id, record));
        if chunk.len() == COPY_RECORDS_PER_WRITE && failed.is_none() {
            failed = target.restore_records(&std::mem::take(&mut chunk)).err();
        }
    })?;
    if let Some(error) = failed {
        return Err(error.into());
    }
    target.restore_records(&chunk)?;
    Ok(())
}

/// Renames the complete `staging` directory to `target` (replacing an empty one).
fn move_into_place(staging: &Path, target: &Path) -> Result<(), SnapshotError> {
    if target.exists() {
        // Checked empty at the start; `remove_dir` refuses if something appeared since.
        std::fs::remove_dir(target)
            .map_err(|error| SnapshotError::io("replacing the empty target", target, error))?;
    }
    std::fs::rename(staging, target)
        .map_err(|error| SnapshotError::io("moving the restored directory to", target, error))?;
    format::sync_parent(target)
}
