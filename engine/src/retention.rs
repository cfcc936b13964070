//! Log retention (§7): after each checkpoint, the hot log's batches that are both older
//! than `--log-retention-days` and before the oldest kept checkpoint move to the archive
//! (`docs/ARCHIVE_FORMAT.md`) or are deleted, so the data directory's size is bounded by
//! the retention and the rate, not by history.

use std::path::{Path, PathBuf};

use plafond_mac::MacKey;
use plafond_shards::archive;
use plafond_shards::ids::ShardId;
use plafond_shards::log::{decode_batch, log_key};
use plafond_shards::store::{Store, StoreError, IDS_COLUMN_FAMILY};

use crate::checkpoint::oldest_kept_positions;

/// Days of log the data directory keeps hot unless configured otherwise.
pub const LOG_RETENTION_DAYS_DEFAULT: u32 = 7;
/// The archive's subdirectory of the data directory, by default.
pub const ARCHIVE_DIR_DEFAULT: &str = "archive";
const DAY_MS: i64 = 86_400_000;

/// Where batches past retention go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Archive {
    /// `<data-dir>/archive` (the default).
    InDataDir,
    /// This directory.
    Dir(PathBuf),
    /// Nowhere: they are deleted (`--archive none`).
    Delete,
}

/// How much log is kept hot, and where the rest goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRetention {
    /// Days of log kept in the data directory at least (engine clock, ingress stamps).
    pub days: u32,
    /// Where older batches go.
    pub archive: Archive,
}

impl Default for LogRetention {
    fn default() -> LogRetention {
        LogRetention { days: LOG_RETENTION_DAYS_DEFAULT, archive: Archive::InDataDir }
    }
}

impl LogRetention {
    /// The archive directory for `data_dir`, or `None` when batches are deleted.
    pub fn archive_dir(&self, data_dir: &Path) -> Option<PathBuf> {
        match &self.archive {
            Archive::InDataDir => Some(data_dir.join(ARCHIVE_DIR_DEFAULT)),
            Archive::Dir(dir) => Some(dir.clone()),
            Archive::Delete => None,
        }
    }
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Batches moved out of the hot log (archived or deleted).
    pub batches: u64,
    /// Segment files written.
    pub segments: u64,
    /// Bytes of the segment files written.
    pub segment_bytes: u64,
}

/// Moves every shard's batches older than retention and before the oldest kept checkpoint
/// out of the hot log. Nothing happens while fewer checkpoints than are kept exist.
/// With `key`, every segment written carries its MAC.
pub(crate) fn retain_log(
    store: &Store,
    data_dir: &Path,
    shards: u16,
    retention: &LogRetention,
    now_ms: i64,
    key: Option<&MacKey>,
) -> Result<Retained, String> {
    let Some(keep_from) = oldest_kept_positions(data_dir).map_err(|e| e.to_string())? else {
        return Ok(Retained::default());
    };
    let horizon_ms = now_ms.saturating_sub(i64::from(retention.days).saturating_mul(DAY_MS));
    let archive_dir = retention.archive_dir(data_dir);
    let mut retained = Retained::default();
    for shard in 0..shards {
        let start = store.log_start(shard).map_err(|e| e.to_string())?;
        let limit = keep_from.get(usize::from(shard)).copied().unwrap_or(0);
        let end = last_old_batch(store, shard, start, limit, horizon_ms)?;
        if end <= start {
            continue;
        }
        if let Some(dir) = &archive_dir {
            let segments = archive::archive_range_keyed(store, shard, start, end, dir, key)
                .map_err(|e| e.to_string())?;
            retained.segments += segments.len() as u64;
            retained.segment_bytes +=
                segments.iter().map(|segment| segment.file_bytes).sum::<u64>();
        }
        store.delete_log_range(shard, start, end).map_err(|e| e.to_string())?;
        // The range's files are reclaimed by compacting it away now, not some day.
        store.db().compact_range(Some(log_key(shard, start)), Some(log_key(shard, end)));
        retained.batches += end - start;
    }
    Ok(retained)
}

/// One past the last batch of `shard` in `start .. limit` that lies wholly before
/// `horizon_ms`: its successor starts before the horizon too (stamps never go back within
/// a shard, so the batches' first stamps are sorted and a binary search finds it).
fn last_old_batch(
    store: &Store,
    shard: ShardId,
    start: u64,
    limit: u64,
    horizon_ms: i64,
) -> Result<u64, String> {
    let (mut low, mut high) = (start, limit);
    while low < high {
        let middle = low + (high - low) / 2;
        match first_stamp(store, shard, middle).map_err(|e| e.to_string())? {
            Some(stamp) if stamp < horizon_ms => low = middle + 1,
            _ => high = middle,
        }
    }
    // `low` is the first batch starting at or after the horizon; the one before it may
    // hold entries after the horizon, so it stays too.
    Ok(low.saturating_sub(1).max(start))
}

/// The stamp of the first entry of batch `seq` of `shard`, if it is in the log.
fn first_stamp(store: &Store, shard: ShardId, seq: u64) -> Result<Option<i64>, StoreError> {
    let mut stamp = None;
    store.read_log_raw(shard, seq, seq + 1, |seq, bytes| {
        stamp = decode_batch(shard, seq, bytes)?.first().map(|entry| entry.ts_ms);
        Ok::<(), StoreError>(())
    })?;
    Ok(stamp)
}

/// Compacts the idempotency records, so that those the epochs put past retention leave
/// the disk (the compaction filter drops them as it rewrites the files).
pub(crate) fn compact_ids(store: &Store) {
    if let Some(family) = store.db().cf_handle(IDS_COLUMN_FAMILY) {
        store.db().compact_range_cf(family, None::<&[u8]>, None::<&[u8]>);
    }
}
