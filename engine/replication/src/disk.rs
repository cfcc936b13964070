//! The Raft log, hard state and applied index of a replica, in the `raft` column family of
//! the engine's own RocksDB (so one WAL fsync makes an entry durable with everything
//! before it), behind raft-rs's [`Storage`] trait.
//!
//! Keys: `E` + index (u64 big-endian) → the entry (protobuf); `H` → the hard state; `C` →
//! the configuration; `F` → the first index kept and the term of the one before it (both
//! u64 little-endian); `A` → the last index applied to the changelog (u64 little-endian),
//! written in the same RocksDB write as what it applied; `I` → a snapshot being installed
//! (its index and term, u64 little-endian, and its configuration), present from the moment
//! its files are on disk until the install is complete; `S` → how many snapshots this
//! replica installed (u64 little-endian). Only the entries' terms live in memory (8 bytes
//! an entry); entries are read back from RocksDB when a follower needs them.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use rocksdb::{Direction, IteratorMode, SnapshotWithThreadMode, WriteBatch, DB};

use plafond_shards::store::{Store, StoreError};

use crate::snapshot::Snapshots;

const ENTRY_PREFIX: u8 = b'E';
const HARD_STATE_KEY: &[u8] = b"H";
const CONF_STATE_KEY: &[u8] = b"C";
const FIRST_KEY: &[u8] = b"F";
const APPLIED_KEY: &[u8] = b"A";
const INSTALLING_KEY: &[u8] = b"I";
const INSTALLS_KEY: &[u8] = b"S";

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Why the Raft state on disk could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// RocksDB failed.
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A record of the Raft state does not decode.
    #[error("the Raft state on disk is corrupt ({0}): the data directory is damaged")]
    Corrupt(&'static str),
    /// The entries kept are not contiguous.
    #[error("the Raft log on disk has a hole at index {0}: the data directory is damaged")]
    Hole(u64),
}

struct Kept {
    hard: HardState,
    conf: ConfState,
    /// The first index whose entry is kept.
    first: u64,
    /// The term of the entry before `first` (kept for matching, SPEC of raft's `term`).
    before_term: u64,
    /// The term of each kept entry, from `first` on.
    terms: VecDeque<u64>,
}

impl Kept {
    fn last(&self) -> u64 {
        self.first + self.terms.len() as u64 - 1
    }
}

/// The Raft state of one replica.
#[derive(Clone)]
pub struct RaftDisk {
    store: Arc<Store>,
    kept: Arc<RwLock<Kept>>,
    snapshots: Option<Arc<Snapshots>>,
}

/// A snapshot being installed: where the replica will stand once it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Installing {
    /// The snapshot's Raft index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The members.
    pub conf: ConfState,
}

impl RaftDisk {
    /// Opens the Raft state in `store`, a new one with `voters` as its members if there is
    /// none yet, and returns it with the last index applied to the changelog.
    pub fn open(store: Arc<Store>, voters: &[u64]) -> Result<(RaftDisk, u64), DiskError> {
        let family = store.raft_family()?;
        let db = store.db();
        let hard = hard_state(db.get_cf(family, HARD_STATE_KEY)?)?;
        let conf = match db.get_cf(family, CONF_STATE_KEY)? {
            Some(bytes) => conf_state(&bytes)?,
            None => {
                let conf = ConfState::from((voters.to_vec(), vec![]));
                let bytes = conf.write_to_bytes().map_err(|_| DiskError::Corrupt("members"))?;
                let mut batch = WriteBatch::default();
                batch.put_cf(family, CONF_STATE_KEY, bytes);
                store.write(batch, true)?;
                conf
            }
        };
        let (first, before_term) = match db.get_cf(family, FIRST_KEY)? {
            Some(bytes) => first_position(&bytes)?,
            None => (1, 0),
        };
        let mut terms = VecDeque::new();
        let start = entry_key(first);
        for item in db.iterator_cf(family, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            if key.first() != Some(&ENTRY_PREFIX) || key.len() != 9 {
                break;
            }
            let index = u64::from_be_bytes(key[1..].try_into().map_err(|_| DiskError::Hole(0))?);
            if index != first + terms.len() as u64 {
                return Err(DiskError::Hole(first + terms.len() as u64));
            }
            let entry = Entry::parse_from_bytes(&value).map_err(|_| DiskError::Corrupt("entry"))?;
            terms.push_back(entry.term);
        }
        let applied = match db.get_cf(family, APPLIED_KEY)? {
            Some(bytes) => applied_index(&bytes)?,
            None => 0,
        };
        // Both are written unsynced, the commit first: a crash keeps the applied index at or
        // below it. Were it above, applying again is harmless (the same keys, the same
        // values; shards replay from their own position), which raft-rs insists on.
        let applied = applied.min(hard.commit);
        let kept = Kept { hard, conf, first, before_term, terms };
        let disk = RaftDisk { store, kept: Arc::new(RwLock::new(kept)), snapshots: None };
        Ok((disk, applied))
    }

    /// The same state, answering raft-rs's asks for a snapshot from `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Arc<Snapshots>) -> RaftDisk {
        self.snapshots = Some(snapshots);
        self
    }

    fn read(&self) -> RwLockReadGuard<'_, Kept> {
        // Nothing panics while holding it; if something did, the terms are whole.
        self.kept.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Kept> {
        self.kept.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends `entries` (replacing any kept from the first one's index on) and records
    /// `hard`, in one RocksDB write, fsynced when `sync`.
    pub fn append(
        &self,
        entries: &[Entry],
        hard: Option<&HardState>,
        sync: bool,
    ) -> Result<(), DiskError> {
        let family = self.store.raft_family()?;
        let mut batch = WriteBatch::default();
        let mut kept = self.write();
        if let Some(first) = entries.first() {
            if first.index < kept.first {
                return Err(DiskError::Hole(first.index));
            }
            if first.index <= kept.last() {
                batch.delete_range_cf(family, entry_key(first.index), entry_key(u64::MAX));
            }
            for entry in entries {
                let bytes = entry.write_to_bytes().map_err(|_| DiskError::Corrupt("entry"))?;
                batch.put_cf(family, entry_key(entry.index), bytes);
            }
        }
        if let Some(hard) = hard {
            let bytes = hard.write_to_bytes().map_err(|_| DiskError::Corrupt("hard state"))?;
            batch.put_cf(family, HARD_STATE_KEY, bytes);
        }
        self.store.write(batch, sync)?;
        if let Some(first) = entries.first() {
            let keep = (first.index - kept.first) as usize;
            kept.terms.truncate(keep);
            kept.terms.extend(entries.iter().map(|entry| entry.term));
        }
        if let Some(hard) = hard {
            kept.hard = hard.clone();
        }
        Ok(())
    }

    /// Records the commit index (not fsynced: a lost one is learnt again from the leader).
    pub fn set_commit(&self, commit: u64) -> Result<(), DiskError> {
        let mut kept = self.write();
        kept.hard.commit = commit;
        let bytes = kept.hard.write_to_bytes().map_err(|_| DiskError::Corrupt("hard state"))?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.store.raft_family()?, HARD_STATE_KEY, bytes);
        self.store.write(batch, false)?;
        Ok(())
    }

    /// Adds to `batch` that everything up to `index` is applied.
    pub fn put_applied(&self, batch: &mut WriteBatch, index: u64) -> Result<(), DiskError> {
        batch.put_cf(self.store.raft_family()?, APPLIED_KEY, index.to_le_bytes());
        Ok(())
    }

    /// Drops the entries before `first` (never past the last one kept).
    pub fn compact(&self, first: u64) -> Result<(), DiskError> {
        let mut kept = self.write();
        let first = first.min(kept.last());
        if first <= kept.first {
            return Ok(());
        }
        let dropped = (first - kept.first) as usize;
        let before_term = kept.terms[dropped - 1];
        let family = self.store.raft_family()?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(family, entry_key(kept.first), entry_key(first));
        batch.put_cf(family, FIRST_KEY, first_position_bytes(first, before_term));
        self.store.write(batch, false)?;
        kept.terms.drain(..dropped);
        kept.first = first;
        kept.before_term = before_term;
        Ok(())
    }

    /// The first index kept.
    pub fn first_kept(&self) -> u64 {
        self.read().first
    }
}

/// The last index applied in `view` of `store`, with its term and the members: where a
/// snapshot of that view stands. `None` while nothing is applied.
pub fn applied_point(
    store: &Store,
    view: &SnapshotWithThreadMode<'_, DB>,
) -> Result<Option<(u64, u64, ConfState)>, DiskError> {
    let family = store.raft_family()?;
    let index = match view.get_cf(family, APPLIED_KEY)? {
        Some(bytes) => applied_index(&bytes)?,
        None => return Ok(None),
    };
    if index == 0 {
        return Ok(None);
    }
    let term = match view.get_cf(family, entry_key(index))? {
        Some(bytes) => {
            Entry::parse_from_bytes(&bytes).map_err(|_| DiskError::Corrupt("entry"))?.term
        }
        None => match view.get_cf(family, FIRST_KEY)?.as_deref().map(first_position) {
            // Compacted up to it: the term before the first kept entry is kept.
            Some(Ok((first, before_term))) if first == index + 1 => before_term,
            _ => return Err(DiskError::Hole(index)),
        },
    };
    let conf = match view.get_cf(family, CONF_STATE_KEY)? {
        Some(bytes) => conf_state(&bytes)?,
        None => return Err(DiskError::Corrupt("members")),
    };
    Ok(Some((index, term, conf)))
}

/// Records, fsynced, that a snapshot whose files are on disk is being installed.
pub fn put_installing(store: &Store, installing: &Installing) -> Result<(), DiskError> {
    let mut value = Vec::new();
    value.extend_from_slice(&installing.index.to_le_bytes());
    value.extend_from_slice(&installing.term.to_le_bytes());
    value.extend(installing.conf.write_to_bytes().map_err(|_| DiskError::Corrupt("members"))?);
    let mut batch = WriteBatch::default();
    batch.put_cf(store.raft_family()?, INSTALLING_KEY, value);
    store.write(batch, true)?;
    Ok(())
}

/// The snapshot being installed, if an install was interrupted.
pub fn installing(store: &Store) -> Result<Option<Installing>, DiskError> {
    let Some(value) = store.db().get_cf(store.raft_family()?, INSTALLING_KEY)? else {
        return Ok(None);
    };
    if value.len() < 16 {
        return Err(DiskError::Corrupt("snapshot being installed"));
    }
    let conf = conf_state(&value[16..])?;
    Ok(Some(Installing { index: u64_at(&value, 0), term: u64_at(&value, 8), conf }))
}

/// How many snapshots this replica installed.
pub fn installs(store: &Store) -> Result<u64, DiskError> {
    match store.db().get_cf(store.raft_family()?, INSTALLS_KEY)? {
        Some(bytes) if bytes.len() == 8 => Ok(u64_at(&bytes, 0)),
        Some(_) => Err(DiskError::Corrupt("snapshots installed")),
        None => Ok(0),
    }
}

/// Makes the Raft state stand at the installed snapshot, in one fsynced write: no entry
/// kept, the first one expected after the snapshot's index, that index applied and
/// committed (the term and vote stay, or move to the snapshot's term), the snapshot's
/// members, one more install counted and the install's record gone.
pub fn stand_at_snapshot(store: &Store, installing: &Installing) -> Result<(), DiskError> {
    let family = store.raft_family()?;
    let mut hard = hard_state(store.db().get_cf(family, HARD_STATE_KEY)?)?;
    if installing.term > hard.term {
        hard.term = installing.term;
        hard.vote = 0;
    }
    hard.commit = installing.index;
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(family, entry_key(0), entry_key(u64::MAX));
    batch.delete_cf(family, entry_key(u64::MAX));
    batch.put_cf(family, FIRST_KEY, first_position_bytes(installing.index + 1, installing.term));
    batch.put_cf(family, APPLIED_KEY, installing.index.to_le_bytes());
    let hard = hard.write_to_bytes().map_err(|_| DiskError::Corrupt("hard state"))?;
    batch.put_cf(family, HARD_STATE_KEY, hard);
    let conf = installing.conf.write_to_bytes().map_err(|_| DiskError::Corrupt("members"))?;
    batch.put_cf(family, CONF_STATE_KEY, conf);
    batch.put_cf(family, INSTALLS_KEY, (installs(store)? + 1).to_le_bytes());
    batch.delete_cf(family, INSTALLING_KEY);
    store.write(batch, true)?;
    Ok(())
}

/// The hard state stored as `bytes`; the default (term 0, no vote) when none is.
fn hard_state(bytes: Option<Vec<u8>>) -> Result<HardState, DiskError> {
    match bytes {
        Some(bytes) => {
            HardState::parse_from_bytes(&bytes).map_err(|_| DiskError::Corrupt("hard state"))
        }
        None => Ok(HardState::default()),
    }
}

/// The members stored as `bytes`.
fn conf_state(bytes: &[u8]) -> Result<ConfState, DiskError> {
    ConfState::parse_from_bytes(bytes).map_err(|_| DiskError::Corrupt("members"))
}

/// `F`'s value: the first index kept and the term of the entry before it.
fn first_position_bytes(first: u64, before_term: u64) -> [u8; 16] {
    let mut position = [0u8; 16];
    position[..8].copy_from_slice(&first.to_le_bytes());
    position[8..].copy_from_slice(&before_term.to_le_bytes());
    position
}

/// The first index kept and the term before it, from `F`'s value.
fn first_position(bytes: &[u8]) -> Result<(u64, u64), DiskError> {
    match bytes.len() {
        16 => Ok((u64_at(bytes, 0), u64_at(bytes, 8))),
        _ => Err(DiskError::Corrupt("first index")),
    }
}

/// The last index applied, from `A`'s value.
fn applied_index(bytes: &[u8]) -> Result<u64, DiskError> {
    match bytes.len() {
        8 => Ok(u64_at(bytes, 0)),
        _ => Err(DiskError::Corrupt("applied index")),
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn store_error(error: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(error.to_string().into()))
}

impl Storage for RaftDisk {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let kept = self.read();
        Ok(RaftState::new(kept.hard.clone(), kept.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let (first, last) = {
            let kept = self.read();
            (kept.first, kept.last())
        };
        if low < first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > last + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let family = self.store.raft_family().map_err(store_error)?;
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(entry_key(high));
        let mut iterator = self.store.db().raw_iterator_cf_opt(family, options);
        iterator.seek(entry_key(low));
        let mut entries = Vec::new();
        let mut size = 0u64;
        while let Some(value) = iterator.value() {
            let entry = Entry::parse_from_bytes(value).map_err(store_error)?;
            size += value.len() as u64;
            // At least one entry, whatever its size (raft-rs's contract).
            if !entries.is_empty() && size > max_size {
                break;
            }
            if entry.index != low + entries.len() as u64 {
                return Err(store_error(DiskError::Hole(low + entries.len() as u64)));
            }
            entries.push(entry);
            iterator.next();
        }
        iterator.status().map_err(store_error)?;
        if entries.is_empty() && low < high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        let kept = self.read();
        if index + 1 == kept.first {
            return Ok(kept.before_term);
        }
        if index < kept.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        kept.terms
            .get((index - kept.first) as usize)
            .copied()
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.read().first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.read().last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // raft-rs takes any other error for a fatal one: "temporarily unavailable" (while
        // one is made) is the only refusal, and it asks again at the next heartbeat.
        let first_kept = self.first_kept();
        self.snapshots
            .as_ref()
            .and_then(|snapshots| snapshots.offer(request_index, to, first_kept))
            .ok_or(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 3].into(), ..Entry::default() }
    }

    #[test]
    fn the_log_survives_a_reopen_and_keeps_its_terms_across_truncation_and_compaction() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = Arc::new(Store::open(dir.path(), 1).expect("the store opens"));
        let (disk, applied) = RaftDisk::open(store.clone(), &[1, 2, 3]).expect("opens");
        assert_eq!(applied, 0);
        assert_eq!((disk.first_index().unwrap(), disk.last_index().unwrap()), (1, 0));
        let state = disk.initial_state().expect("a state");
        assert_eq!(state.conf_state.voters, [1, 2, 3]);
        let entries: Vec<Entry> = (1..=10).map(|index| entry(index, 1)).collect();
        let hard = HardState { term: 1, vote: 2, commit: 4, ..HardState::default() };
        disk.append(&entries, Some(&hard), true).expect("appended");
        // A new leader's entries replace the tail from index 8 on.
        disk.append(&[entry(8, 2), entry(9, 2)], None, true).expect("replaced");
        assert_eq!(disk.last_index().unwrap(), 9);
        assert_eq!(disk.term(8).unwrap(), 2);
        assert_eq!(disk.term(7).unwrap(), 1);
        let context = GetEntriesContext::empty(false);
        let read = disk.entries(6, 10, None, context).expect("read");
        assert_eq!(
            read.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            [(6, 1), (7, 1), (8, 2), (9, 2)]
        );
        let one = disk.entries(6, 10, Some(0), GetEntriesContext::empty(false)).expect("read");
        assert_eq!(one.len(), 1, "at least one entry, whatever the size limit");
        let mut batch = WriteBatch::default();
        disk.put_applied(&mut batch, 4).expect("put");
        store.write(batch, true).expect("written");
        disk.compact(4).expect("compacted");
        assert!(matches!(disk.term(2), Err(raft::Error::Store(StorageError::Compacted))));
        assert_eq!(disk.term(3).unwrap(), 1, "the term before the first kept entry is kept");
        drop(disk);
        let (disk, applied) = RaftDisk::open(store, &[1, 2, 3]).expect("reopens");
        assert_eq!(applied, 4);
        assert_eq!((disk.first_index().unwrap(), disk.last_index().unwrap()), (4, 9));
        assert_eq!(disk.term(9).unwrap(), 2);
        assert_eq!(disk.initial_state().unwrap().hard_state.vote, 2);
    }
}
