//! RocksDB: the data directory, its metadata and the group-commit writer.
//!
//! One RocksDB instance per engine. Each shard batch is one put of its changelog value
//! (see [`crate::log`]); the writer thread gathers every batch that arrived while the
//! previous write was being made durable and writes them as one RocksDB write batch with
//! one WAL fsync (group commit). Only then are the batches' replies released and their
//! cross-shard messages sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use tokio::sync::watch;

use crate::calendar::Day;
use crate::command::{CommandId, RegionId};
use crate::health::StorageHealth;
use crate::histogram::{DurationHistogram, Log2Histogram};
use crate::idempotency::{expiry_fields, IdempotencyRecord, RecordError};
use crate::ids::ShardId;
use crate::log::{decode_batch, log_key, parse_log_key, Entry, LogError};
use crate::region::REGIONS_MAX;
use crate::watermark::{Persister, Watermark, WatermarkError, WatermarkFile};
use crate::watermark::{WATERMARK_FILE, WATERMARK_FORMAT_VERSION};

/// Key of the shard count the data directory was created with.
const META_SHARDS_KEY: &[u8] = b"M/shards";
/// Key of the data directory's format version.
const META_FORMAT_KEY: &[u8] = b"M/format";
/// Key recording that the directory keeps an acknowledged-write watermark (its value: the
/// watermark's format version), so that a missing watermark file is noticed.
const META_WATERMARK_KEY: &[u8] = b"M/watermark";

/// The value under [`META_SHARDS_KEY`]: a little-endian `u16`.
fn decode_shards(value: &[u8]) -> Result<u16, StoreError> {
    let bytes: [u8; 2] = value.try_into().map_err(|_| StoreError::Meta("shards"))?;
    Ok(u16::from_le_bytes(bytes))
}

fn epoch_key(region: RegionId) -> [u8; 4] {
    let [high, low] = region.to_be_bytes();
    [b'E', b'/', high, low]
}

/// Version of the data directory layout. Version 2 moved checkpoints out of RocksDB into
/// files and idempotency records out of the shard state into the `ids` column family.
pub const STORE_FORMAT_VERSION: u32 = 2;
/// The column family of idempotency records: key the command id's bytes, value
/// [`IdempotencyRecord::encode`].
pub const IDS_COLUMN_FAMILY: &str = "ids";
/// The column family of a replica's Raft log, hard state and applied index (written by
/// `plafond-replication` alone; empty on a single node). In the same RocksDB as the log,
/// so one WAL fsync makes a Raft entry and everything before it durable together.
pub const RAFT_COLUMN_FAMILY: &str = "raft";
/// Bloom filter bits per remembered id: nearly every command id is new, and a lookup
/// that the filters answer "absent" reads no block (about 1 % false positives at 10).
const IDS_BLOOM_BITS_PER_KEY: f64 = 10.0;
/// The ids' memtable: large enough that a flush is rare at full rate.
const IDS_WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Share of the ids' memtable given to its bloom filter, so a lookup of a new id skips
/// the memtable's skip list too.
const IDS_MEMTABLE_BLOOM_RATIO: f64 = 0.05;
/// Bytes RocksDB writes of a table file between two syncs of it.
const STORE_BYTES_PER_SYNC: u64 = 1 << 20;
pub use crate::limits::GROUP_BATCHES_MAX;
pub use crate::limits::GROUP_BYTES_MAX;
/// How often the `async` mode fsyncs the WAL: its loss window on a machine crash.
pub const ASYNC_SYNC_INTERVAL: Duration = Duration::from_millis(10);

/// How an outcome is made durable before the reply (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The reply waits for the WAL fsync (group commit). The default.
    Sync,
    /// The reply waits for the write to the OS; the WAL is fsynced every
    /// [`ASYNC_SYNC_INTERVAL`], which bounds what a machine crash can lose. A process
    /// crash loses nothing acknowledged.
    Async,
    /// Memory only, nothing on disk: for benchmarks.
    None,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Durability, String> {
        match text {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            "none" => Ok(Durability::None),
            other => Err(format!("durability `{other}` is not sync, async or none")),
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB failed (opening, reading or writing).
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A log batch could not be decoded.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The data directory was created for another shard count.
    #[error(
        "the data directory was created with {found} shards, not {wanted}: ids are routed by \
         shard count, so start with --shards {found} or use a new data directory"
    )]
    ShardCount {
        /// The shard count the data directory was created with.
        found: u16,
        /// The shard count asked for.
        wanted: u16,
    },
    /// The data directory has a layout version this build does not read.
    #[error("the data directory has format version {0}; this build reads {STORE_FORMAT_VERSION}")]
    Format(u32),
    /// Metadata or a checkpoint is missing, malformed or of another shard layout.
    #[error("the data directory's metadata is corrupt: {0}")]
    Meta(&'static str),
    /// An idempotency record on disk is malformed.
    #[error("an idempotency record is corrupt ({0}): the data directory is damaged")]
    Record(#[from] RecordError),
    /// A key of the ids column family is not a command id.
    #[error("a key of the idempotency records is not a command id: the data directory is damaged")]
    RecordKey,
    /// The write-ahead log recovered fewer writes than were acknowledged.
    #[error(
        "writes were acknowledged up to RocksDB sequence {acknowledged}, but the log recovers \
         only up to {recovered}: the write-ahead log (the NNNNNN.log files) is damaged, \
         truncated or missing, and acknowledged outcomes would be lost. Do not delete \
         anything in the data directory; restore from a snapshot plus the archived log, or \
         from a replica; or, knowingly giving those outcomes up, start anew in an empty data \
         directory"
    )]
    WalBehind {
        /// The sequence number of the latest acknowledged write (from the watermark).
        acknowledged: u64,
        /// The sequence number RocksDB recovered to.
        recovered: u64,
    },
    /// The directory keeps a watermark, but its file is gone.
    #[error(
        "{} is missing, but this data directory was created with one: without it, lost \
         acknowledged writes cannot be ruled out (was the directory copied or restored \
         incompletely?). Do not delete anything; put the file back, restore from a snapshot \
         plus the archived log or from a replica, or knowingly start anew in an empty data \
         directory",
        path.display()
    )]
    WatermarkMissing {
        /// Where the watermark file should be.
        path: PathBuf,
    },
    /// Both slots of the watermark file are damaged.
    #[error(
        "{} is damaged (neither of its two slots verifies): the storage under the data \
         directory is corrupting data, and lost acknowledged writes cannot be ruled out. Do \
         not delete anything; check the disk, then restore from a snapshot plus the archived \
         log or from a replica, or knowingly start anew in an empty data directory",
        path.display()
    )]
    WatermarkCorrupt {
        /// The watermark file.
        path: PathBuf,
    },
    /// The watermark file could not be read or written.
    #[error("{0}: check the disk and the data directory's permissions")]
    Watermark(#[from] WatermarkError),
    /// A shard's log skips batch sequence numbers.
    #[error(
        "shard {shard}'s log jumps from batch {expected} to batch {found}: batches in between \
         are missing and the data directory is corrupt. Do not delete anything; restore from \
         a snapshot plus the archived log, or from a replica"
    )]
    LogHole {
        /// The shard whose log has a hole.
        shard: ShardId,
        /// The batch sequence number that should have come next.
        expected: u64,
        /// The one that came instead.
        found: u64,
    },
    /// Replaying the log did not reproduce a logged outcome.
    #[error(
        "replaying batch {seq} of shard {shard} gave a different outcome than the log records \
         ({detail}): the data directory is corrupt or was written by another version"
    )]
    Diverged {
        /// The shard being replayed.
        shard: ShardId,
        /// The log batch's sequence number in that shard's log.
        seq: u64,
        /// The logged and the replayed outcome.
        detail: String,
    },
    /// Deleting this range of the log would leave a hole in what is retained.
    #[error(
        "cannot delete batches {from_seq} .. {to_seq} of shard {shard}'s log: the log is \
         retained from batch {start}, so only a range starting at or before it can go"
    )]
    DeleteLeavesHole {
        /// The shard whose log it is.
        shard: ShardId,
        /// The first batch asked to be deleted.
        from_seq: u64,
        /// One past the last batch asked to be deleted.
        to_seq: u64,
        /// The first batch the log retains.
        start: u64,
    },
}

/// Per region, the first business day whose idempotency records are still kept: the
/// compaction filter drops older ones. Moved forward by completed epochs
/// ([`Store::set_ids_horizon`]); `Day::MIN` keeps everything.
type IdsHorizons = [AtomicI32; REGIONS_MAX];

/// The engine's RocksDB.
pub struct Store {
    db: DB,
    ids_horizons: Arc<IdsHorizons>,
    /// Changelog bytes written since the store was opened: checkpoints are also taken by
    /// log volume.
    log_bytes: AtomicU64,
    watermark: Arc<Watermark>,
    writer_metrics: WriterMetrics,
}

/// What the group-commit writer (and the `async` mode's syncer) measure, for `/metrics`.
#[derive(Default)]
pub struct WriterMetrics {
    /// Shard batches per group commit.
    pub group_batches: Log2Histogram<GROUP_BUCKETS, 1>,
    /// Time from a group gathered to its replies released: its RocksDB write (and WAL
    /// fsync in `sync`), the durable marks, the releases.
    pub group_commit: DurationHistogram,
    /// Each wait for a WAL fsync: in `sync` the group's RocksDB write, which appends and
    /// fsyncs in one call (RocksDB times the two apart only with its statistics on, which
    /// cost every write); in `async` the syncer's fsync.
    pub wal_sync: DurationHistogram,
}

/// What [`Store::sizes`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreSizes {
    /// Live table files of the default column family: the log, epoch records, metadata.
    pub log_table_bytes: u64,
    /// Live table files of the idempotency records.
    pub ids_table_bytes: u64,
    /// RocksDB's estimate of the idempotency records on disk (an estimate: overwritten
    /// and expired records may count until compacted).
    pub ids_estimate: u64,
}

/// Buckets of [`WriterMetrics::group_batches`]: the last one, from 2^8, holds groups of
/// [`GROUP_BATCHES_MAX`].
pub const GROUP_BUCKETS: usize = 10;

const _: () = assert!(GROUP_BATCHES_MAX < 1 << GROUP_BUCKETS);

impl Store {
    /// Opens (or creates) the data directory for `shards` shards.
    pub fn open(dir: &Path, shards: u16) -> Result<Store, StoreError> {
        Store::open_with(dir, shards, true)
    }

    /// Opens a data directory to be filled by writes that bypass the write-ahead log (a
    /// restore), which RocksDB refuses while it recycles log files.
    pub fn open_for_bulk_load(dir: &Path, shards: u16) -> Result<Store, StoreError> {
        Store::open_with(dir, shards, false)
    }

    fn open_with(dir: &Path, shards: u16, recycle_wal: bool) -> Result<Store, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        // Values are whole shard batches: a large memtable flushes less often.
        options.set_write_buffer_size(128 << 20);
        options.set_max_background_jobs(2);
        // Flushes and compactions write their files out as they go, so that no fsync of
        // a large table file queues the group commit's WAL fsync behind it.
        options.set_bytes_per_sync(STORE_BYTES_PER_SYNC);
        if recycle_wal {
            // Reused WAL files are overwritten in place, so an fdatasync need not also
            // write the inode for a new file size: one I/O per group commit, not two.
            options.set_recycle_log_file_num(4);
        }
        let ids_horizons: Arc<IdsHorizons> =
            Arc::new(std::array::from_fn(|_| AtomicI32::new(Day::MIN)));
        let ids = ColumnFamilyDescriptor::new(IDS_COLUMN_FAMILY, ids_options(&ids_horizons));
        // The log's column family takes the options above (a descriptor's options replace
        // the database's for its family).
        let default =
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, options.clone());
        let raft = ColumnFamilyDescriptor::new(RAFT_COLUMN_FAMILY, Options::default());
        let db = DB::open_cf_descriptors(&options, dir, [default, ids, raft])?;
        let watermark = Arc::new(Watermark::new(check_watermark(&db, dir)?));
        let store = Store {
            db,
            ids_horizons,
            log_bytes: AtomicU64::new(0),
            watermark,
            writer_metrics: WriterMetrics::default(),
        };
        store.check_meta(shards)?;
        Ok(store)
    }

    /// The shard count `dir` was created with, or `None` if it holds no store yet. Opens
    /// the store read-only, so a running engine's directory is not disturbed.
    pub fn recorded_shards(dir: &Path) -> Result<Option<u16>, StoreError> {
        // RocksDB's marker of an existing database.
        if !dir.join("CURRENT").exists() {
            return Ok(None);
        }
        // Read-only, RocksDB opens a subset of the column families: the default one.
        let db = DB::open_for_read_only(&Options::default(), dir, false)?;
        db.get(META_SHARDS_KEY)?.map(|value| decode_shards(&value)).transpose()
    }

    fn check_meta(&self, shards: u16) -> Result<(), StoreError> {
        match self.db.get(META_FORMAT_KEY)? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put(META_FORMAT_KEY, STORE_FORMAT_VERSION.to_le_bytes());
                batch.put(META_SHARDS_KEY, shards.to_le_bytes());
                let mut sync = WriteOptions::default();
                sync.set_sync(true);
                self.db.write_opt(batch, &sync)?;
                Ok(())
            }
            Some(format) => {
                let format = u32::from_le_bytes(
                    format.as_slice().try_into().map_err(|_| StoreError::Meta("format"))?,
                );
                if format != STORE_FORMAT_VERSION {
                    return Err(StoreError::Format(format));
                }
                let found = self.db.get(META_SHARDS_KEY)?.ok_or(StoreError::Meta("shards"))?;
                let found = decode_shards(&found)?;
                if found != shards {
                    return Err(StoreError::ShardCount { found, wanted: shards });
                }
                Ok(())
            }
        }
    }

    /// Calls `visit` with every logged batch of `shard` from `from_seq` on, in order, and
    /// returns the next free batch sequence number.
    pub fn read_log(
        &self,
        shard: ShardId,
        from_seq: u64,
        mut visit: impl FnMut(u64, Vec<Entry>) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let start = log_key(shard, from_seq);
        let mut next_seq = from_seq;
        for item in self.db.iterator(IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            let Some((key_shard, seq)) = parse_log_key(&key) else {
                break;
            };
            if key_shard != shard {
                break;
            }
            if seq != next_seq {
                return Err(StoreError::LogHole { shard, expected: next_seq, found: seq });
            }
            visit(seq, decode_batch(shard, seq, &value)?)?;
            next_seq = seq + 1;
        }
        Ok(next_seq)
    }

    /// Reads the records of `ids` (`None` entries are skipped and read as `None`) in
    /// one batched lookup.
    pub fn read_records<'a>(
        &self,
        ids: impl Iterator<Item = Option<&'a CommandId>>,
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        let ids: Vec<Option<&CommandId>> = ids.collect();
        let keys: Vec<&[u8]> = ids.iter().flatten().map(|id| id.as_bytes()).collect();
        let mut records = Vec::with_capacity(ids.len());
        if keys.is_empty() {
            records.resize(ids.len(), None);
            return Ok(records);
        }
        let family = self.ids_family()?;
        let mut found = self.db.batched_multi_get_cf(family, keys, false).into_iter();
        for id in &ids {
            if id.is_none() {
                records.push(None);
                continue;
            }
            let value = found.next().ok_or(StoreError::Meta("a lookup lost a key"))??;
            let record = value
                .map(|value| IdempotencyRecord::decode(&value))
                .transpose()
                .map_err(StoreError::Record)?;
            records.push(record);
        }
        Ok(records)
    }

    /// Lets the compaction filter drop `region`'s idempotency records of business days
    /// before `first_kept_day` (never moves backwards).
    pub fn set_ids_horizon(&self, region: RegionId, first_kept_day: Day) {
        if let Some(horizon) = self.ids_horizons.get(usize::from(region)) {
            horizon.fetch_max(first_kept_day, Ordering::Relaxed);
        }
    }

    /// Calls `visit` with every idempotency record on disk (for a snapshot).
    pub fn for_each_record(
        &self,
        mut visit: impl FnMut(CommandId, IdempotencyRecord),
    ) -> Result<(), StoreError> {
        let family = self.ids_family()?;
        for item in self.db.iterator_cf(family, IteratorMode::Start) {
            let (key, value) = item?;
            let id = std::str::from_utf8(&key)
                .ok()
                .and_then(|text| CommandId::new(text).ok())
                .ok_or(StoreError::RecordKey)?;
            visit(id, IdempotencyRecord::decode(&value).map_err(StoreError::Record)?);
        }
        Ok(())
    }

    /// Writes, durably, those of `records` whose id has no record on disk yet (a restored
    /// snapshot's: a record written since is newer). Returns how many it wrote.
    pub fn restore_records(
        &self,
        records: &[(CommandId, IdempotencyRecord)],
    ) -> Result<u64, StoreError> {
        let family = self.ids_family()?;
        let mut batch = WriteBatch::default();
        let mut written = 0;
        for (id, record) in records {
            if self.db.get_cf(family, id.as_bytes())?.is_none() {
                batch.put_cf(family, id.as_bytes(), record.encode());
                written += 1;
            }
        }
        self.write(batch, true)?;
        Ok(written)
    }

    /// The first business day of `region` whose idempotency records are kept.
    pub fn ids_horizon(&self, region: RegionId) -> Day {
        self.ids_horizons.get(usize::from(region)).map_or(Day::MIN, |h| h.load(Ordering::Relaxed))
    }

    /// The column family of idempotency records.
    pub fn ids_family(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(IDS_COLUMN_FAMILY).ok_or(StoreError::Meta("no ids column family"))
    }

    /// The column family of a replica's Raft state ([`RAFT_COLUMN_FAMILY`]).
    pub fn raft_family(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(RAFT_COLUMN_FAMILY).ok_or(StoreError::Meta("no raft column family"))
    }

    /// Counts `bytes` of changelog written by a replica's apply (checkpoints are also
    /// taken by log volume).
    pub fn add_log_bytes(&self, bytes: u64) {
        self.log_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Changelog bytes written since the store was opened.
    pub fn log_bytes_written(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    /// What the writer measured since the store was opened.
    pub fn writer_metrics(&self) -> &WriterMetrics {
        &self.writer_metrics
    }

    /// RocksDB's own counts of what the store holds, read from memory (no file is
    /// touched); what is still only in the memtables and the WAL is not in the sizes.
    pub fn sizes(&self) -> StoreSizes {
        let int = |value: Result<Option<u64>, rocksdb::Error>| value.ok().flatten().unwrap_or(0);
        const TABLES: &str = "rocksdb.live-sst-files-size";
        let log_table_bytes = int(self.db.property_int_value(TABLES));
        let Ok(ids) = self.ids_family() else {
            return StoreSizes { log_table_bytes, ..StoreSizes::default() };
        };
        StoreSizes {
            log_table_bytes,
            ids_table_bytes: int(self.db.property_int_value_cf(ids, TABLES)),
            ids_estimate: int(self.db.property_int_value_cf(ids, "rocksdb.estimate-num-keys")),
        }
    }

    /// The last business day whose epoch completed in `region`.
    pub fn last_epoch(&self, region: RegionId) -> Result<Option<Day>, StoreError> {
        let Some(value) = self.db.get(epoch_key(region))? else { return Ok(None) };
        let bytes = value.as_slice().try_into().map_err(|_| StoreError::Meta("epoch record"))?;
        Ok(Some(Day::from_le_bytes(bytes)))
    }

    /// Records, durably, that `region`'s epoch for `day` completed.
    pub fn record_epoch(&self, region: RegionId, day: Day) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put(epoch_key(region), day.to_le_bytes());
        self.write(batch, true)
    }

    /// Writes `batch`, fsyncing the WAL first when `sync`.
    pub fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Fsyncs the WAL.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true)?;
        Ok(())
    }

    /// The acknowledged-write watermark.
    pub fn watermark(&self) -> &Arc<Watermark> {
        &self.watermark
    }

    /// Publishes, as acknowledged, every write RocksDB has applied so far. Only for writes
    /// already durable: after a synced write, or with the sequence read before a WAL sync.
    pub fn publish_written(&self) {
        self.watermark.publish(self.db.latest_sequence_number());
    }

    /// The underlying database, for snapshots and tools.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// The shard count the data directory was created with.
    pub fn shard_count(&self) -> Result<u16, StoreError> {
        decode_shards(&self.db.get(META_SHARDS_KEY)?.ok_or(StoreError::Meta("shards"))?)
    }

    /// Calls `visit` with the stored value of every batch of `shard` in `from_seq ..
    /// to_seq`, in order, undecoded (the archive copies them verbatim), and returns one
    /// past the last batch visited (`from_seq` if none). Stops at the first gap: the
    /// caller compares the result with `to_seq`.
    pub fn read_log_raw<E: From<StoreError>>(
        &self,
        shard: ShardId,
        from_seq: u64,
        to_seq: u64,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<u64, E> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(log_key(shard, to_seq));
        let mut iterator = self.db.raw_iterator_opt(options);
        iterator.seek(log_key(shard, from_seq));
        let mut next_seq = from_seq;
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            match parse_log_key(key) {
                Some((key_shard, seq)) if key_shard == shard && seq == next_seq => {
                    visit(seq, value)?;
                    next_seq = seq + 1;
                }
                _ => break,
            }
            iterator.next();
        }
        iterator.status().map_err(StoreError::from)?;
        Ok(next_seq)
    }

    /// The first batch of `shard`'s log still in the store: every batch before it was
    /// deleted by [`Store::delete_log_range`] (0 if none was).
    pub fn log_start(&self, shard: ShardId) -> Result<u64, StoreError> {
        let Some(value) = self.db.get(log_start_key(shard))? else { return Ok(0) };
        let bytes = value.as_slice().try_into().map_err(|_| StoreError::Meta("log start"))?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Deletes batches `from_seq .. to_seq` of `shard`'s log, durably, and records
    /// `to_seq` as its first retained batch in the same write, so a crash leaves either
    /// both or neither. Only a prefix of what is retained can go (`from_seq` at or before
    /// [`Store::log_start`]): the retained log never has a hole.
    pub fn delete_log_range(
        &self,
        shard: ShardId,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<(), StoreError> {
        let start = self.log_start(shard)?;
        if from_seq > start || to_seq < from_seq {
            return Err(StoreError::DeleteLeavesHole { shard, from_seq, to_seq, start });
        }
        if to_seq <= start {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_range(log_key(shard, from_seq), log_key(shard, to_seq));
        batch.put(log_start_key(shard), to_seq.to_le_bytes());
        self.write(batch, true)
    }
}

/// Key of the first retained batch of `shard`'s log (a little-endian `u64`).
pub fn log_start_key(shard: ShardId) -> [u8; 14] {
    let mut key = *b"M/log_start/\0\0";
    key[12..].copy_from_slice(&shard.to_be_bytes());
    key
}

/// The `ids` column family's options: bloom filters for the lookups of new ids, and a
/// compaction filter that drops records past their region's retention.
fn ids_options(horizons: &Arc<IdsHorizons>) -> Options {
    let mut options = Options::default();
    options.set_write_buffer_size(IDS_WRITE_BUFFER_BYTES);
    // Records are written once and dropped whole by retention: universal compaction
    // rewrites each far fewer times than levels would (on two cores, compaction CPU is
    // throughput; docs/BENCHMARKS.md).
    options.set_compaction_style(rocksdb::DBCompactionStyle::Universal);
    options.set_memtable_prefix_bloom_ratio(IDS_MEMTABLE_BLOOM_RATIO);
    options.set_memtable_whole_key_filtering(true);
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(IDS_BLOOM_BITS_PER_KEY, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(false);
    options.set_block_based_table_factory(&table);
    let horizons = horizons.clone();
    options.set_compaction_filter(
        "plafond-ids-retention",
        move |_level: u32, _key: &[u8], value: &[u8]| {
            match expiry_fields(value) {
                Some((region, day)) => {
                    let kept_from = horizons
                        .get(usize::from(region))
                        .map_or(Day::MIN, |h| h.load(Ordering::Relaxed));
                    if day < kept_from {
                        Decision::Remove
                    } else {
                        Decision::Keep
                    }
                }
                // Not ours to judge: kept, and refused when read.
                None => Decision::Keep,
            }
        },
    );
    options
}

/// Per shard, the first log batch not yet known durable: every batch before it is. The
/// writer moves it forward after each group commit; shards read it to forget what they
/// kept for batches in flight, checkpoints to know what they may rely on.
///
/// Beside it, per shard, the first batch a machine crash could still take away: what the
/// change stream (§13) may show, since an entry shown and then lost would be reissued
/// under the same id with other content. In `sync` it moves with the first (the group was
/// fsynced); in `async` only once the WAL syncer has fsynced the batches. It is a
/// [`watch`] channel, so readers waiting for new entries wake on it without polling.
pub struct DurableMarks {
    next_seqs: Vec<AtomicU64>,
    synced: Vec<watch::Sender<u64>>,
}

impl DurableMarks {
    /// Marks for `shards` shards, each starting at its next free batch sequence number
    /// (what recovery found on disk is durable).
    pub fn new(shards: u16) -> DurableMarks {
        DurableMarks {
            next_seqs: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            synced: (0..shards).map(|_| watch::Sender::new(0)).collect(),
        }
    }

    /// Every batch of `shard` before `next_seq` is durable.
    pub fn advance(&self, shard: ShardId, next_seq: u64) {
        if let Some(mark) = self.next_seqs.get(usize::from(shard)) {
            mark.fetch_max(next_seq, Ordering::Release);
        }
    }

    /// Every batch of `shard` before `next_seq` survives a machine crash too (fsynced).
    pub fn advance_synced(&self, shard: ShardId, next_seq: u64) {
        if let Some(mark) = self.synced.get(usize::from(shard)) {
            mark.send_if_modified(|synced| {
                let moved = next_seq > *synced;
                *synced = (*synced).max(next_seq);
                moved
            });
        }
    }

    /// The first batch of `shard` not known durable.
    pub fn next_seq(&self, shard: ShardId) -> u64 {
        self.next_seqs.get(usize::from(shard)).map_or(0, |mark| mark.load(Ordering::Acquire))
    }

    /// The first batch of `shard` a machine crash could still lose.
    pub fn synced_next_seq(&self, shard: ShardId) -> u64 {
        self.synced.get(usize::from(shard)).map_or(0, |mark| *mark.borrow())
    }

    /// A receiver that sees [`DurableMarks::synced_next_seq`] of `shard` move, or `None`
    /// for a shard there is not.
    pub fn watch_synced(&self, shard: ShardId) -> Option<watch::Receiver<u64>> {
        self.synced.get(usize::from(shard)).map(watch::Sender::subscribe)
    }

    /// Every shard's durable mark now, for the `async` syncer to publish as synced once
    /// its fsync (which covers everything written before it) returns.
    fn snapshot(&self) -> Vec<u64> {
        self.next_seqs.iter().map(|mark| mark.load(Ordering::Acquire)).collect()
    }
}

/// Reads the watermark of the store RocksDB just recovered, and refuses the store if it
/// recovered fewer writes than were acknowledged. Creates the watermark for a new
/// directory, and for one made before watermarks existed (no meta key: accepted as is).
fn check_watermark(db: &DB, dir: &Path) -> Result<WatermarkFile, StoreError> {
    let recovered = db.latest_sequence_number();
    let required = db.get(META_WATERMARK_KEY)?.is_some();
    let opened = match WatermarkFile::open(dir) {
        Ok(opened) => opened,
        // Torn while being created, before the directory recorded that it must exist:
        // nothing was acknowledged against it yet.
        Err(WatermarkError::Corrupt { .. }) if !required => None,
        Err(WatermarkError::Corrupt { path }) => return Err(StoreError::WatermarkCorrupt { path }),
        Err(error) => return Err(error.into()),
    };
    let file = match opened {
        Some((_, acknowledged)) if recovered < acknowledged => {
            return Err(StoreError::WalBehind { acknowledged, recovered });
        }
        Some((file, _)) => file,
        None if required => {
            return Err(StoreError::WatermarkMissing { path: dir.join(WATERMARK_FILE) });
        }
        None => WatermarkFile::create(dir, recovered)?,
    };
    if !required {
        // Only once the file is durable: a crash in between leaves a file and no key,
        // which the next open accepts and completes.
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.put_opt(META_WATERMARK_KEY, WATERMARK_FORMAT_VERSION.to_le_bytes(), &sync)?;
    }
    Ok(file)
}

/// A shard batch on its way to disk, and what to do once it is there.
pub struct WriteJob<R> {
    /// The shard whose batch it is.
    pub shard: ShardId,
    /// The batch's sequence number in that shard's log (part of its key); not a transfer
    /// sequence number. Unused when `value` is `None`.
    pub seq: u64,
    /// The changelog value; `None` when the batch changed nothing (reads only), which
    /// still waits its turn so that a read never overtakes an earlier write.
    pub value: Option<Vec<u8>>,
    /// Idempotency records the batch made, encoded: written in the same RocksDB write.
    pub records: Vec<(CommandId, Vec<u8>)>,
    /// What to do once the batch is durable: answer, send messages on.
    pub release: R,
}

/// What runs after a group is durable.
pub trait Release: Send + 'static {
    /// The writer calls it once the job's batch, and every batch queued before it, is
    /// written; after a failed write it drops the job instead, so nothing unwritten is
    /// acknowledged.
    fn release(self);
}

/// The group-commit writer thread.
pub struct Writer {
    handle: Option<JoinHandle<()>>,
    syncer: Option<JoinHandle<()>>,
    stop_syncer: Arc<AtomicBool>,
    persister: Persister,
    store: Arc<Store>,
    durability: Durability,
    health: Arc<StorageHealth>,
}

impl Writer {
    /// Starts the writer on `jobs`. It ends when every sender is dropped. If a write fails
    /// it records the failure in `health` and drops every job from then on: their replies
    /// report the storage failure, and nothing unwritten is acknowledged.
    pub fn start<R: Release>(
        store: Arc<Store>,
        durability: Durability,
        jobs: Receiver<WriteJob<R>>,
        health: Arc<StorageHealth>,
        marks: Arc<DurableMarks>,
    ) -> std::io::Result<Writer> {
        let sync = durability == Durability::Sync;
        let (writer_store, writer_health) = (store.clone(), health.clone());
        let handle = std::thread::Builder::new().name("plafond-writer".into()).spawn({
            let marks = marks.clone();
            move || write_loop(&writer_store, sync, &jobs, &writer_health, &marks)
        })?;
        let stop_syncer = Arc::new(AtomicBool::new(false));
        let syncer = if durability == Durability::Async {
            Some(start_syncer(store.clone(), health.clone(), stop_syncer.clone(), marks.clone())?)
        } else {
            None
        };
        let persister_health = health.clone();
        let persister = Persister::start(store.watermark.clone(), move |error| {
            persister_health.fail(error);
        })?;
        Ok(Writer {
            handle: Some(handle),
            syncer,
            stop_syncer,
            persister,
            store,
            durability,
            health,
        })
    }

    /// Waits for the writer to drain and end (after every job sender is dropped).
    pub fn join(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.stop_syncer.store(true, Ordering::Relaxed);
        if let Some(syncer) = self.syncer.take() {
            let _ = syncer.join();
        }
        self.persister.stop();
        self.persist_final_watermark();
    }

    /// On a clean close, every write made is durable (synced now in `async`), so the
    /// watermark covers all of them, epoch records and checkpoints included: after a clean
    /// close, any damage to the WAL that loses a write is refused at the next open.
    fn persist_final_watermark(&self) {
        if self.health.is_failed() {
            // What was published stays: it was durable. Nothing after the failure is.
            let _ = self.store.watermark.persist_if_moved();
            return;
        }
        let sequence = self.store.db.latest_sequence_number();
        let synced = self.durability != Durability::Async || self.store.sync_wal().is_ok();
        if synced {
            self.store.watermark.publish(sequence);
        }
        if let Err(error) = self.store.watermark.persist_if_moved() {
            self.health.fail(error);
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The `async` mode's WAL syncer: fsyncs every [`ASYNC_SYNC_INTERVAL`] and only then
/// publishes as acknowledged-and-durable the writes made before the sync, so the watermark
/// never claims more than a machine crash keeps.
fn start_syncer(
    store: Arc<Store>,
    health: Arc<StorageHealth>,
    stop: Arc<AtomicBool>,
    marks: Arc<DurableMarks>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("plafond-wal-sync".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(ASYNC_SYNC_INTERVAL);
            // Read before the fsync, both cover only what it makes durable.
            let durable = marks.snapshot();
            let written = store.db.latest_sequence_number();
            let started = Instant::now();
            if let Err(error) = store.sync_wal() {
                health.fail(error);
                return;
            }
            store.writer_metrics.wal_sync.record(started.elapsed().as_nanos() as u64);
            store.watermark.publish(written);
            for (shard, next_seq) in durable.into_iter().enumerate() {
                marks.advance_synced(shard as ShardId, next_seq);
            }
        }
    })
}

fn write_loop<R: Release>(
    store: &Store,
    sync: bool,
    jobs: &Receiver<WriteJob<R>>,
    health: &StorageHealth,
    marks: &DurableMarks,
) {
    let ids = match store.ids_family() {
        Ok(ids) => ids,
        Err(error) => {
            health.fail(error);
            return;
        }
    };
    let mut group: Vec<WriteJob<R>> = Vec::with_capacity(GROUP_BATCHES_MAX);
    // The group's records by (job, record) index, reused from group to group.
    let mut order: Vec<(usize, usize)> = Vec::new();
    while let Ok(first) = jobs.recv() {
        group.push(first);
        let mut bytes = 0;
        while group.len() < GROUP_BATCHES_MAX && bytes < GROUP_BYTES_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            bytes += job.value.as_ref().map_or(0, Vec::len);
            group.push(job);
        }
        if health.is_failed() {
            group.clear();
            continue;
        }
        let started = Instant::now();
        let metrics = &store.writer_metrics;
        metrics.group_batches.record(group.len() as u64);
        let mut batch = WriteBatch::default();
        let mut log_bytes = 0;
        for job in &group {
            if let Some(value) = &job.value {
                batch.put(log_key(job.shard, job.seq), value);
                log_bytes += value.len() as u64;
            }
        }
        // In key order, each memtable insert starts its search where the previous one
        // ended instead of at the top of the skip list. The sort is stable, so of two
        // records of one id in the group (a transfer's record made final by a later
        // batch) the later is put last and wins.
        let record_of = |(job, index): (usize, usize)| &group[job].records[index];
        order.extend(
            group.iter().enumerate().flat_map(|(job, written)| {
                (0..written.records.len()).map(move |index| (job, index))
            }),
        );
        order.sort_by(|a, b| record_of(*a).0.as_bytes().cmp(record_of(*b).0.as_bytes()));
        for at in order.drain(..) {
            let (id, record) = record_of(at);
            batch.put_cf(ids, id.as_bytes(), record);
        }
        if !batch.is_empty() {
            let writing = Instant::now();
            if let Err(error) = store.write(batch, sync) {
                health.fail(error);
                group.clear();
                continue;
            }
            if sync {
                metrics.wal_sync.record(writing.elapsed().as_nanos() as u64);
                store.publish_written();
            }
        }
        store.log_bytes.fetch_add(log_bytes, Ordering::Relaxed);
        for job in &group {
            if job.value.is_some() {
                marks.advance(job.shard, job.seq + 1);
                if sync {
                    marks.advance_synced(job.shard, job.seq + 1);
                }
            }
        }
        for job in group.drain(..) {
            job.release.release();
        }
        metrics.group_commit.record(started.elapsed().as_nanos() as u64);
    }
}

/// A sender of write jobs.
pub type JobSender<R> = Sender<WriteJob<R>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::Input;
    use crate::command::{Command, Outcome, Request};
    use crate::log::BatchEncoder;

    /// A log batch whose one entry says which batch it is.
    fn batch_value(seq: u64) -> Vec<u8> {
        let mut encoder = BatchEncoder::new();
        let pay = Input::Client(Request::new(Command::Pay { card: seq, amount_minor: 1 }));
        encoder.push(
            1_800_000_000_000 + seq as i64,
            &pay,
            Some(&Outcome::Updated),
            &Default::default(),
        );
        encoder.finish()
    }

    fn write_batches(store: &Store, seqs: std::ops::Range<u64>) {
        for seq in seqs {
            let mut batch = WriteBatch::default();
            batch.put(log_key(0, seq), batch_value(seq));
            store.write(batch, true).expect("the write succeeds");
        }
    }

    #[test]
    fn a_directory_tells_its_shard_count_and_an_empty_one_none() {
        let dir = tempfile::tempdir().expect("a temp dir");
        assert_eq!(Store::recorded_shards(dir.path()).expect("readable"), None);
        drop(Store::open(dir.path(), 3).expect("the store opens"));
        assert_eq!(Store::recorded_shards(dir.path()).expect("readable"), Some(3));
        assert!(matches!(
            Store::open(dir.path(), 2),
            Err(StoreError::ShardCount { found: 3, wanted: 2 })
        ));
    }

    struct Released(crossbeam_channel::Sender<()>);

    impl Release for Released {
        fn release(self) {
            let _ = self.0.send(());
        }
    }

    #[test]
    fn the_writer_persists_the_watermark_while_it_runs_not_only_at_the_end() {
        for durability in [Durability::Sync, Durability::Async] {
            let dir = tempfile::tempdir().expect("a temp dir");
            let store = Arc::new(Store::open(dir.path(), 1).expect("the store opens"));
            let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(4);
            let health = Arc::new(StorageHealth::default());
            let marks = Arc::new(DurableMarks::new(1));
            let writer = Writer::start(store.clone(), durability, jobs_rx, health.clone(), marks)
                .expect("the writer starts");
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            let value = Some(batch_value(0));
            let job = WriteJob {
                shard: 0,
                seq: 0,
                value,
                records: Vec::new(),
                release: Released(done_tx),
            };
            jobs_tx.send(job).expect("the writer runs");
            done_rx.recv().expect("released");
            let written = store.db().latest_sequence_number();
            // What a kill -9 now would keep: the file catches up within a few intervals.
            let deadline = std::time::Instant::now() + 200 * crate::watermark::WATERMARK_INTERVAL;
            loop {
                let persisted = WatermarkFile::open(dir.path()).expect("readable").expect("a file");
                if persisted.1 >= written {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "{durability:?}: {persisted:?}");
                std::thread::sleep(crate::watermark::WATERMARK_INTERVAL);
            }
            drop(jobs_tx);
            writer.join();
            assert!(!health.is_failed());
        }
    }

    #[test]
    fn a_hole_in_a_shards_batch_sequence_is_refused() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path(), 1).expect("the store opens");
        write_batches(&store, 0..2);
        write_batches(&store, 3..5);
        let error = store.read_log(0, 0, |_, _| Ok(())).expect_err("a hole");
        assert!(matches!(error, StoreError::LogHole { shard: 0, expected: 2, found: 3 }));
        // From a checkpoint's position the log must start right there, too.
        let error = store.read_log(0, 2, |_, _| Ok(())).expect_err("a hole");
        assert!(matches!(error, StoreError::LogHole { shard: 0, expected: 2, found: 3 }));
        assert_eq!(store.read_log(0, 3, |_, _| Ok(())).expect("contiguous"), 5);
    }

    #[test]
    fn a_directory_from_before_watermarks_is_accepted_and_gets_one() {
        let dir = tempfile::tempdir().expect("a temp dir");
        {
            // What an older build left: the metadata, no watermark key, no file.
            let mut options = Options::default();
            options.create_if_missing(true);
            let db = DB::open(&options, dir.path()).expect("RocksDB opens");
            db.put(META_FORMAT_KEY, STORE_FORMAT_VERSION.to_le_bytes()).expect("put");
            db.put(META_SHARDS_KEY, 1u16.to_le_bytes()).expect("put");
            db.put(log_key(0, 0), batch_value(0)).expect("put");
        }
        let store = Store::open(dir.path(), 1).expect("an old directory opens");
        assert!(dir.path().join(WATERMARK_FILE).exists());
        write_batches(&store, 1..3);
        drop(store);
        // From now on the watermark is required.
        std::fs::remove_file(dir.path().join(WATERMARK_FILE)).expect("removed");
        assert!(matches!(Store::open(dir.path(), 1), Err(StoreError::WatermarkMissing { .. })));
    }

    #[test]
    fn the_log_reads_back_whole_from_recycled_wal_files() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Store::open(dir.path(), 1).expect("the store opens");
        // Each flush retires the current WAL file; later files reuse retired ones, whose old
        // records lie beyond the new tail. Recovery must stop at the tail, not read on.
        let mut next = 0;
        for _ in 0..8 {
            write_batches(&store, next..next + 200);
            next += 200;
            store.db().flush().expect("the memtable flushes");
        }
        // These live only in a recycled WAL file when the store closes.
        write_batches(&store, next..next + 150);
        next += 150;
        drop(store);
        let store = Store::open(dir.path(), 1).expect("the store reopens");
        let mut seen = Vec::new();
        let next_seq = store
            .read_log(0, 0, |seq, entries| {
                assert_eq!(entries.len(), 1);
                let Input::Client(request) = &entries[0].input else { panic!("a pay") };
                assert_eq!(request.command, Command::Pay { card: seq, amount_minor: 1 });
                seen.push(seq);
                Ok(())
            })
            .expect("the log reads");
        assert_eq!(next_seq, next);
        assert_eq!(seen, (0..next).collect::<Vec<_>>());
    }
}
