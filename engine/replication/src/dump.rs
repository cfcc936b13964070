//! The log file of a Raft snapshot: what a follower needs besides the leader's newest
//! checkpoint to stand exactly at the snapshot's Raft index, i.e. every shard's changelog
//! from the checkpoint's position of that shard to the end of what is committed at that
//! index, and every idempotency record (so a retry by id on the follower, once it leads,
//! answers what the old leader answered). Read from one RocksDB snapshot of the leader's
//! store, in which the applied index and the changelog were written together.
//!
//! Format (every integer little-endian), versioned and checksummed:
//!
//! `magic "PLFDUMP" | version (u8) | shards (u16) | per shard its first batch (u64)`, then
//! records `kind (u8: 1 a changelog batch, 2 an idempotency record) | key length (u16) |
//! key | value length (u32) | value`, then `0 (u8) | records (u64) | CRC-32C (u32)` of
//! every byte before the CRC.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use rocksdb::{SnapshotWithThreadMode, DB};

use plafond_shards::ids::ShardId;
use plafond_shards::log::{log_key, parse_log_key, LOG_KEY_PREFIX};
use plafond_shards::store::{log_start_key, Store};

use crate::limits::{FRAME_BYTES_MAX, SNAPSHOT_KEY_BYTES_MAX};

const MAGIC: &[u8; 7] = b"PLFDUMP";
/// The version of the log file this build writes and reads.
pub const DUMP_FORMAT_VERSION: u8 = 1;
const KIND_END: u8 = 0;
const KIND_LOG: u8 = 1;
const KIND_ID: u8 = 2;

/// Why a snapshot's log file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Reading or writing the file.
    #[error("the snapshot's log file: {0}")]
    Io(#[from] std::io::Error),
    /// RocksDB failed.
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] plafond_shards::store::StoreError),
    /// The file is not one this build reads, or is damaged.
    #[error("the snapshot's log file is damaged or foreign: {0}")]
    Corrupt(&'static str),
    /// The leader's changelog no longer holds a shard's batches from its checkpoint on.
    #[error("shard {shard}'s changelog starts at {start}, after its checkpoint's {position}")]
    Truncated {
        /// The shard.
        shard: ShardId,
        /// Its first batch kept.
        start: u64,
        /// Its checkpoint's position.
        position: u64,
    },
}

/// One record of the file.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A changelog batch: its shard, sequence number and stored value.
    Log(ShardId, u64, &'a [u8]),
    /// An idempotency record: the command id's bytes and the encoded record.
    Id(&'a [u8], &'a [u8]),
}

/// What a written file holds.
#[derive(Debug, PartialEq, Eq)]
pub struct DumpSummary {
    /// Each shard's first batch in the file (its checkpoint's position).
    pub starts: Vec<u64>,
    /// Records in the file.
    pub records: u64,
}

struct Checksummed<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Checksummed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.inner.write_all(bytes)
    }

    fn record(&mut self, kind: u8, key: &[u8], value: &[u8]) -> Result<(), DumpError> {
        let key_length = u16::try_from(key.len()).map_err(|_| DumpError::Corrupt("key"))?;
        let value_length = u32::try_from(value.len()).map_err(|_| DumpError::Corrupt("value"))?;
        self.put(&[kind])?;
        self.put(&key_length.to_le_bytes())?;
        self.put(key)?;
        self.put(&value_length.to_le_bytes())?;
        self.put(value)?;
        Ok(())
    }
}

/// Writes to `path` (fsynced) every shard's changelog from `starts` (its checkpoint's
/// positions; all zero without a checkpoint) and every idempotency record, as `view`
/// shows them.
pub fn write(
    path: &Path,
    store: &Store,
    view: &SnapshotWithThreadMode<'_, DB>,
    starts: &[u64],
) -> Result<DumpSummary, DumpError> {
    let file = File::create(path)?;
    let mut out = Checksummed { inner: BufWriter::with_capacity(1 << 20, file), crc: 0 };
    out.put(MAGIC)?;
    out.put(&[DUMP_FORMAT_VERSION])?;
    let shards = u16::try_from(starts.len()).map_err(|_| DumpError::Corrupt("shards"))?;
    out.put(&shards.to_le_bytes())?;
    for start in starts {
        out.put(&start.to_le_bytes())?;
    }
    let mut records = 0u64;
    for (shard, &position) in (0..shards).zip(starts) {
        // The changelog must still hold the batches after the checkpoint (retention keeps
        // them from the oldest kept checkpoint on; this checks rather than trusts it).
        let start = match view.get(log_start_key(shard))? {
            Some(bytes) => {
                let word: [u8; 8] =
                    bytes.as_slice().try_into().map_err(|_| DumpError::Corrupt("log start"))?;
                u64::from_le_bytes(word)
            }
            None => 0,
        };
        if start > position {
            return Err(DumpError::Truncated { shard, start, position });
        }
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(log_key(shard, u64::MAX));
        let mut iterator = view.raw_iterator_opt(options);
        iterator.seek(log_key(shard, position));
        while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
            out.record(KIND_LOG, key, value)?;
            records += 1;
            iterator.next();
        }
        iterator.status()?;
    }
    let ids = store.ids_family()?;
    let mut iterator = view.raw_iterator_cf(ids);
    iterator.seek_to_first();
    while let (Some(key), Some(value)) = (iterator.key(), iterator.value()) {
        out.record(KIND_ID, key, value)?;
        records += 1;
        iterator.next();
    }
    iterator.status()?;
    out.put(&[KIND_END])?;
    out.put(&records.to_le_bytes())?;
    let crc = out.crc;
    out.inner.write_all(&crc.to_le_bytes())?;
    let file = out.inner.into_inner().map_err(|error| error.into_error())?;
    file.sync_all()?;
    Ok(DumpSummary { starts: starts.to_vec(), records })
}

struct Verified<R> {
    inner: R,
    crc: u32,
}

impl<R: Read> Verified<R> {
    fn take(&mut self, buffer: &mut [u8]) -> Result<(), DumpError> {
        self.inner.read_exact(buffer).map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => DumpError::Corrupt("truncated"),
            _ => DumpError::Io(error),
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buffer);
        Ok(())
    }

    fn u16(&mut self) -> Result<u16, DumpError> {
        let mut word = [0u8; 2];
        self.take(&mut word)?;
        Ok(u16::from_le_bytes(word))
    }

    fn u32(&mut self) -> Result<u32, DumpError> {
        let mut word = [0u8; 4];
        self.take(&mut word)?;
        Ok(u32::from_le_bytes(word))
    }

    fn u64(&mut self) -> Result<u64, DumpError> {
        let mut word = [0u8; 8];
        self.take(&mut word)?;
        Ok(u64::from_le_bytes(word))
    }
}

/// Reads the file at `path`, calling `visit` with every record in order, and checks its
/// length, every bound and its checksum. A damaged file is refused; `visit` may then have
/// seen records of it, so whoever writes them checks the whole file first (`|_| Ok(())`).
pub fn read(
    path: &Path,
    mut visit: impl FnMut(Record<'_>) -> Result<(), DumpError>,
) -> Result<DumpSummary, DumpError> {
    let file = File::open(path)?;
    let mut input = Verified { inner: BufReader::with_capacity(1 << 20, file), crc: 0 };
    let mut magic = [0u8; 8];
    input.take(&mut magic)?;
    if &magic[..7] != MAGIC {
        return Err(DumpError::Corrupt("not a snapshot's log file"));
    }
    if magic[7] != DUMP_FORMAT_VERSION {
        return Err(DumpError::Corrupt("a format version this build does not read"));
    }
    let shards = input.u16()?;
    let starts = (0..shards).map(|_| input.u64()).collect::<Result<Vec<_>, _>>()?;
    let (mut key, mut value) = (Vec::new(), Vec::new());
    let mut records = 0u64;
    loop {
        let mut kind = [0u8; 1];
        input.take(&mut kind)?;
        if kind[0] == KIND_END {
            break;
        }
        let key_length = usize::from(input.u16()?);
        if key_length > SNAPSHOT_KEY_BYTES_MAX {
            return Err(DumpError::Corrupt("a key longer than any"));
        }
        key.resize(key_length, 0);
        input.take(&mut key)?;
        let value_length = input.u32()? as usize;
        if value_length > FRAME_BYTES_MAX {
            return Err(DumpError::Corrupt("a value longer than any"));
        }
        value.resize(value_length, 0);
        input.take(&mut value)?;
        let record = match kind[0] {
            KIND_LOG => {
                let (shard, seq) = parse_log_key(&key).ok_or(DumpError::Corrupt("a log key"))?;
                let start = starts.get(usize::from(shard)).ok_or(DumpError::Corrupt("a shard"))?;
                if key.first() != Some(&LOG_KEY_PREFIX) || seq < *start {
                    return Err(DumpError::Corrupt("a batch before its shard's start"));
                }
                Record::Log(shard, seq, &value)
            }
            KIND_ID => Record::Id(&key, &value),
            _ => return Err(DumpError::Corrupt("a record of no known kind")),
        };
        visit(record)?;
        records += 1;
    }
    if input.u64()? != records {
        return Err(DumpError::Corrupt("a record count that differs"));
    }
    let computed = input.crc;
    let mut stored = [0u8; 4];
    input.inner.read_exact(&mut stored).map_err(|_| DumpError::Corrupt("truncated"))?;
    if u32::from_le_bytes(stored) != computed {
        return Err(DumpError::Corrupt("its checksum differs"));
    }
    let mut rest = [0u8; 1];
    if input.inner.read(&mut rest)? != 0 {
        return Err(DumpError::Corrupt("bytes after its checksum"));
    }
    Ok(DumpSummary { starts, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::WriteBatch;

    fn store_with_log(dir: &Path) -> Store {
        let store = Store::open(dir, 2).expect("a store");
        let mut batch = WriteBatch::default();
        for seq in 0..5u64 {
            batch.put(log_key(0, seq), [seq as u8; 3]);
            batch.put(log_key(1, seq), [10 + seq as u8; 2]);
        }
        let ids = store.ids_family().expect("ids");
        batch.put_cf(ids, b"id-1", b"record-1");
        batch.put_cf(ids, b"id-2", b"record-2");
        store.write(batch, true).expect("written");
        store
    }

    #[test]
    fn the_log_after_each_checkpoint_position_and_every_record_round_trip() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = store_with_log(&dir.path().join("db"));
        let view = store.db().snapshot();
        // Written after the view: not in the file.
        let mut later = WriteBatch::default();
        later.put(log_key(0, 5), b"later");
        store.write(later, true).expect("written");
        let path = dir.path().join("dump");
        let summary = write(&path, &store, &view, &[3, 1]).expect("written");
        assert_eq!(summary, DumpSummary { starts: vec![3, 1], records: 2 + 4 + 2 });
        let mut seen = Vec::new();
        let read_back = read(&path, |record| {
            seen.push(match record {
                Record::Log(shard, seq, value) => format!("L{shard}/{seq}:{}", value.len()),
                Record::Id(id, record) => format!("I{}={}", id.len(), record.len()),
            });
            Ok(())
        })
        .expect("read");
        assert_eq!(read_back, summary);
        let expected = ["L0/3:3", "L0/4:3", "L1/1:2", "L1/2:2", "L1/3:2", "L1/4:2", "I4=8", "I4=8"];
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_changed_or_cut_file_is_refused_and_a_truncated_changelog_is_named() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = store_with_log(&dir.path().join("db"));
        let path = dir.path().join("dump");
        write(&path, &store, &store.db().snapshot(), &[0, 0]).expect("written");
        let bytes = std::fs::read(&path).expect("read");
        for (what, damaged) in [
            ("a flipped byte", {
                let mut b = bytes.clone();
                b[40] ^= 1;
                b
            }),
            ("cut short", bytes[..bytes.len() - 3].to_vec()),
            ("a byte more", [bytes.as_slice(), &[0]].concat()),
        ] {
            std::fs::write(&path, &damaged).expect("written");
            let refused = read(&path, |_| Ok(()));
            assert!(matches!(refused, Err(DumpError::Corrupt(_))), "{what}: {refused:?}");
        }
        store.delete_log_range(0, 0, 2).expect("deleted");
        let refused = write(&path, &store, &store.db().snapshot(), &[1, 0]);
        assert!(matches!(refused, Err(DumpError::Truncated { shard: 0, start: 2, position: 1 })));
    }
}
