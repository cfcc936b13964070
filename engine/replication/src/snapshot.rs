//! Raft snapshots: the leader's side. A follower further behind than the Raft log the
//! leader keeps (or a new, empty one) is sent a snapshot instead of entries (SPEC §14:
//! "checkpoints are the consensus log's snapshots").
//!
//! A snapshot here is two files, made once and offered to every follower that needs one
//! while it is fresh: the leader's newest checkpoint (a hard link to it, so the
//! checkpointer's clean-up cannot take it away), and the log file ([`crate::dump`]): every
//! shard's changelog from that checkpoint's position of the shard to the end of what is
//! committed at the snapshot's Raft index, with every idempotency record, all read from one
//! RocksDB snapshot in which the applied index was written with the changelog. Its Raft
//! metadata is that applied index, its term and the members; its data only describes the
//! files (names, sizes, CRC-32C): the bytes go over the leader's Raft port in bounded
//! chunks that the follower pulls ([`crate::pull`]), never inside a Raft message.
//!
//! raft-rs asks [`Snapshots::offer`] from the writer thread: the first ask starts the
//! making on a thread of its own and answers "temporarily unavailable" (raft-rs asks again
//! at the next heartbeat), so the writer never waits for a snapshot to be made.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use raft::prelude::{ConfState, Snapshot};
use raft::SnapshotStatus;

use plafond_shards::store::Store;
use plafond_snapshots::{generation_of, CHECKPOINT_DIR};

use crate::disk::{self, DiskError};
use crate::dump::{self, DumpError};
use crate::limits::{
    SNAPSHOT_CHUNK_BYTES, SNAPSHOT_FILES_MAX, SNAPSHOT_FILE_BYTES_MAX, SNAPSHOT_IDLE_TIMEOUT,
    SNAPSHOT_REUSE_AGE,
};

/// Where the leader makes its snapshots, under the data directory.
pub const SNAPSHOT_OUT_DIR: &str = "raft-snapshot-out";
/// The name of a snapshot's log file.
pub const DUMP_FILE: &str = "log.dump";
/// The version of a snapshot's descriptor (the data of its Raft message).
pub const DESCRIPTOR_VERSION: u8 = 1;
/// After a failed making, the next one waits at least this long.
const PREPARE_RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Why a snapshot could not be made or described.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of it.
    #[error("snapshot file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// Its log file.
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// The Raft state on disk.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The checkpoint's header.
    #[error("the checkpoint to send: {0}")]
    Checkpoint(String),
    /// Nothing is applied yet: a follower needs no snapshot of nothing.
    #[error("nothing is applied yet")]
    NothingApplied,
    /// A descriptor received does not decode, or names files this build never writes.
    #[error("a snapshot descriptor is malformed: {0}")]
    Descriptor(&'static str),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |error| SnapshotError::Io { path: path.to_path_buf(), error }
}

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Its name: a checkpoint's file name, or [`DUMP_FILE`].
    pub name: String,
    /// Its length.
    pub bytes: u64,
    /// The CRC-32C of its bytes.
    pub crc: u32,
}

/// The data of a snapshot's Raft message: which snapshot, and its files.
///
/// `version (u8) | id (u64 LE) | files (u8)`, then per file `name length (u8) | name |
/// bytes (u64 LE) | crc (u32 LE)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// The leader's number for it (what a pull names).
    pub id: u64,
    /// Its files, the checkpoint (if the leader has one) first.
    pub files: Vec<SnapshotFile>,
}

impl Descriptor {
    /// Its bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![DESCRIPTOR_VERSION];
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.push(self.files.len() as u8);
        for file in &self.files {
            bytes.push(file.name.len() as u8);
            bytes.extend_from_slice(file.name.as_bytes());
            bytes.extend_from_slice(&file.bytes.to_le_bytes());
            bytes.extend_from_slice(&file.crc.to_le_bytes());
        }
        bytes
    }

    /// Reads one, refusing file names that are not a checkpoint's or [`DUMP_FILE`] (the
    /// follower writes files of these names), sizes past [`SNAPSHOT_FILE_BYTES_MAX`] and
    /// more than [`SNAPSHOT_FILES_MAX`] files.
    pub fn decode(bytes: &[u8]) -> Result<Descriptor, SnapshotError> {
        let mut cursor = Cursor { bytes };
        if cursor.take(1)? != [DESCRIPTOR_VERSION] {
            return Err(SnapshotError::Descriptor("a version this build does not read"));
        }
        let id = cursor.u64()?;
        let count = usize::from(cursor.take(1)?[0]);
        if count == 0 || count > SNAPSHOT_FILES_MAX {
            return Err(SnapshotError::Descriptor("a number of files no snapshot has"));
        }
        let mut files = Vec::with_capacity(count);
        for _ in 0..count {
            let length = usize::from(cursor.take(1)?[0]);
            let name = std::str::from_utf8(cursor.take(length)?)
                .map_err(|_| SnapshotError::Descriptor("a file name"))?
                .to_owned();
            let is_checkpoint = generation_of(&name).is_some() && !name.contains('/');
            if name != DUMP_FILE && !is_checkpoint {
                return Err(SnapshotError::Descriptor("a file name"));
            }
            let size = cursor.u64()?;
            if size > SNAPSHOT_FILE_BYTES_MAX {
                return Err(SnapshotError::Descriptor("a file larger than any snapshot's"));
            }
            let mut crc = [0u8; 4];
            crc.copy_from_slice(cursor.take(4)?);
            files.push(SnapshotFile { name, bytes: size, crc: u32::from_le_bytes(crc) });
        }
        if files.last().map(|file| file.name.as_str()) != Some(DUMP_FILE) {
            return Err(SnapshotError::Descriptor("no log file last"));
        }
        if !cursor.bytes.is_empty() {
            return Err(SnapshotError::Descriptor("bytes after its last file"));
        }
        Ok(Descriptor { id, files })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], SnapshotError> {
        if self.bytes.len() < count {
            return Err(SnapshotError::Descriptor("truncated"));
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }
}

/// A snapshot made, on the leader's disk.
#[derive(Debug)]
pub struct Prepared {
    /// What its Raft message carries.
    pub descriptor: Descriptor,
    /// The Raft index it stands at.
    pub index: u64,
    /// That entry's term.
    pub term: u64,
    /// The members.
    pub conf: ConfState,
    dir: PathBuf,
    made: Instant,
}

impl Prepared {
    /// Its Raft snapshot.
    pub fn raft_snapshot(&self) -> Snapshot {
        let mut snapshot =
            Snapshot { data: self.descriptor.encode().into(), ..Snapshot::default() };
        let metadata = snapshot.mut_metadata();
        metadata.index = self.index;
        metadata.term = self.term;
        metadata.set_conf_state(self.conf.clone());
        snapshot
    }
}

/// A follower offered a snapshot and not done pulling it.
struct Transfer {
    peer: u64,
    id: u64,
    last_pull: Instant,
}

#[derive(Default)]
struct Offers {
    ready: Option<Arc<Prepared>>,
    preparing: bool,
    failed_at: Option<Instant>,
    next_id: u64,
    transfers: Vec<Transfer>,
    /// Transfers ended (a follower pulled every byte, or went silent), for raft-rs.
    reports: Vec<(u64, SnapshotStatus)>,
}

/// The leader's snapshots: the one made, the followers pulling it.
pub struct Snapshots {
    store: Arc<Store>,
    out_dir: PathBuf,
    offers: Mutex<Offers>,
    sent: AtomicU64,
}

impl Snapshots {
    /// The snapshots of `store`'s replica; what an earlier run left is removed.
    pub fn new(store: Arc<Store>) -> Snapshots {
        let out_dir = store.db().path().join(SNAPSHOT_OUT_DIR);
        let _ = std::fs::remove_dir_all(&out_dir);
        Snapshots { store, out_dir, offers: Mutex::new(Offers::default()), sent: AtomicU64::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, Offers> {
        // Nothing panics while holding it.
        self.offers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Snapshots offered to followers since the start.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The snapshot for follower `to`, if one is made that stands at `request_index` or
    /// later and whose next entry the log still holds (`first_kept`); otherwise starts
    /// making one (unless one is being made) and answers `None`.
    pub fn offer(
        self: &Arc<Self>,
        request_index: u64,
        to: u64,
        first_kept: u64,
    ) -> Option<Snapshot> {
        let mut offers = self.lock();
        let fits = |ready: &&Arc<Prepared>| {
            ready.index >= request_index
                && ready.index + 1 >= first_kept
                && ready.made.elapsed() < SNAPSHOT_REUSE_AGE
        };
        if let Some(ready) = offers.ready.as_ref().filter(fits).cloned() {
            offers.transfers.retain(|transfer| transfer.peer != to);
            offers.transfers.push(Transfer {
                peer: to,
                id: ready.descriptor.id,
                last_pull: Instant::now(),
            });
            self.sent.fetch_add(1, Ordering::Relaxed);
            return Some(ready.raft_snapshot());
        }
        let resting = offers.failed_at.is_some_and(|at| at.elapsed() < PREPARE_RETRY_INTERVAL);
        if offers.preparing || resting {
            return None;
        }
        offers.preparing = true;
        offers.next_id += 1;
        let (id, source) = (offers.next_id, self.clone());
        let spawned =
            std::thread::Builder::new().name("plafond-raft-snapshot".into()).spawn(move || {
                source.finish_preparing(id, prepare(&source.store, &source.out_dir, id))
            });
        if spawned.is_err() {
            offers.preparing = false;
            offers.failed_at = Some(Instant::now());
            eprintln!("plafond: raft: cannot start the thread that makes a snapshot");
        }
        None
    }

    fn finish_preparing(&self, id: u64, made: Result<Prepared, SnapshotError>) {
        let mut offers = self.lock();
        offers.preparing = false;
        match made {
            Ok(prepared) => {
                let bytes: u64 = prepared.descriptor.files.iter().map(|f| f.bytes).sum();
                eprintln!(
                    "plafond: raft: snapshot {id} made at index {} ({bytes} bytes)",
                    prepared.index
                );
                offers.failed_at = None;
                if let Some(old) = offers.ready.replace(Arc::new(prepared)) {
                    let _ = std::fs::remove_dir_all(&old.dir);
                }
            }
            Err(error) => {
                eprintln!("plafond: raft: making snapshot {id} failed ({error}); retrying");
                offers.failed_at = Some(Instant::now());
                let _ = std::fs::remove_dir_all(self.out_dir.join(dir_name(id)));
            }
        }
    }

    /// The path and length of file `file` of snapshot `id`, if it is the one offered.
    pub fn file(&self, id: u64, file: usize) -> Option<(PathBuf, u64)> {
        let offers = self.lock();
        let ready = offers.ready.as_ref().filter(|ready| ready.descriptor.id == id)?;
        let entry = ready.descriptor.files.get(file)?;
        Some((ready.dir.join(&entry.name), entry.bytes))
    }

    /// Follower `peer` pulled a chunk of snapshot `id`; `finished` when it was the last.
    pub fn pulled(&self, peer: u64, id: u64, finished: bool) {
        let mut offers = self.lock();
        let Some(at) = offers.transfers.iter().position(|t| t.peer == peer && t.id == id) else {
            return;
        };
        if finished {
            offers.transfers.remove(at);
            offers.reports.push((peer, SnapshotStatus::Finish));
        } else {
            offers.transfers[at].last_pull = Instant::now();
        }
    }

    /// Transfers that ended since the last call: finished ones, and those whose follower
    /// pulled nothing for [`SNAPSHOT_IDLE_TIMEOUT`] (failed; raft-rs offers again). A
    /// snapshot no longer offered (older than [`SNAPSHOT_REUSE_AGE`]) and no longer
    /// pulled is removed, so that its hard link does not keep an old checkpoint's disk.
    pub fn take_reports(&self) -> Vec<(u64, SnapshotStatus)> {
        self.take_reports_at(Instant::now())
    }

    /// [`Snapshots::take_reports`] as of `now` (tests pass a later instant rather than
    /// wait out the timeouts).
    pub(crate) fn take_reports_at(&self, now: Instant) -> Vec<(u64, SnapshotStatus)> {
        let mut offers = self.lock();
        let Offers { transfers, reports, ready, .. } = &mut *offers;
        transfers.retain(|transfer| {
            let silent = now.saturating_duration_since(transfer.last_pull) >= SNAPSHOT_IDLE_TIMEOUT;
            if silent {
                reports.push((transfer.peer, SnapshotStatus::Failure));
            }
            !silent
        });
        let stale = ready.as_ref().is_some_and(|ready| {
            now.saturating_duration_since(ready.made) >= SNAPSHOT_REUSE_AGE
                && !transfers.iter().any(|transfer| transfer.id == ready.descriptor.id)
        });
        if let Some(old) = ready.take_if(|_| stale) {
            let _ = std::fs::remove_dir_all(&old.dir);
        }
        std::mem::take(reports)
    }

    /// While a follower pulls a snapshot, the first entry it will need after it: the log
    /// is kept from there (within its bounds), so that it can follow once installed.
    pub fn needed_from(&self) -> Option<u64> {
        let offers = self.lock();
        let ready = offers.ready.as_ref()?;
        let pulling = offers.transfers.iter().any(|t| t.id == ready.descriptor.id);
        pulling.then_some(ready.index + 1)
    }
}

fn dir_name(id: u64) -> String {
    format!("{id:020}")
}

/// The newest checkpoint file of `data_dir`, if any.
fn newest_checkpoint(data_dir: &Path) -> Result<Option<(String, PathBuf)>, SnapshotError> {
    let dir = data_dir.join(CHECKPOINT_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(SnapshotError::Io { path: dir, error }),
    };
    let mut newest: Option<(u64, String)> = None;
    for entry in entries {
        let entry = entry.map_err(io(&dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if let Some(generation) = generation_of(&name) {
            if newest.as_ref().is_none_or(|(newest, _)| generation > *newest) {
                newest = Some((generation, name));
            }
        }
    }
    Ok(newest.map(|(_, name)| (name.clone(), dir.join(name))))
}

/// Makes snapshot `id` of `store` in `out_dir`.
fn prepare(store: &Store, out_dir: &Path, id: u64) -> Result<Prepared, SnapshotError> {
    let started = Instant::now();
    let dir = out_dir.join(dir_name(id));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let shards = store.shard_count().map_err(DiskError::from)?;
    let mut starts = vec![0u64; usize::from(shards)];
    let mut names = Vec::new();
    // The checkpoint first, then the view of the store: every batch before a checkpoint's
    // positions was durable when it was captured, so the view holds the log after them.
    if let Some((name, path)) = newest_checkpoint(store.db().path())? {
        let linked = dir.join(&name);
        // Checkpoints are renamed into place whole and never written again.
        std::fs::hard_link(&path, &linked).map_err(io(&linked))?;
        let header = plafond_snapshots::format::read_header_of(&linked)
            .map_err(|error| SnapshotError::Checkpoint(error.to_string()))?;
        if header.sections.len() != starts.len() {
            return Err(SnapshotError::Checkpoint("a shard count that differs".into()));
        }
        starts = header.sections.iter().map(|section| section.log_position).collect();
        names.push(name);
    }
    let view = store.db().snapshot();
    let (index, term, conf) =
        disk::applied_point(store, &view)?.ok_or(SnapshotError::NothingApplied)?;
    let dump_path = dir.join(DUMP_FILE);
    dump::write(&dump_path, store, &view, &starts)?;
    drop(view);
    names.push(DUMP_FILE.to_owned());
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let (bytes, crc) = checksum(&path)?;
        files.push(SnapshotFile { name, bytes, crc });
    }
    eprintln!(
        "plafond: raft: snapshot at index {index} (term {term}) made in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Prepared {
        descriptor: Descriptor { id, files },
        index,
        term,
        conf,
        dir,
        made: Instant::now(),
    })
}

/// The length and CRC-32C of the file at `path`.
pub fn checksum(path: &Path) -> Result<(u64, u32), SnapshotError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES as usize];
    let (mut offset, mut crc) = (0u64, 0u32);
    loop {
        let read = file.read_at(&mut buffer, offset).map_err(io(path))?;
        if read == 0 {
            return Ok((offset, crc));
        }
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        offset += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_round_trips_and_foreign_names_or_sizes_are_refused() {
        let descriptor = Descriptor {
            id: 7,
            files: vec![
                SnapshotFile {
                    name: plafond_snapshots::checkpoint_file_name(3),
                    bytes: 1 << 30,
                    crc: 0xdead_beef,
                },
                SnapshotFile { name: DUMP_FILE.into(), bytes: 12, crc: 1 },
            ],
        };
        let bytes = descriptor.encode();
        assert_eq!(Descriptor::decode(&bytes).expect("decodes"), descriptor);
        for cut in 0..bytes.len() {
            assert!(Descriptor::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Descriptor::decode(&[bytes.as_slice(), &[0]].concat()).is_err());
        let mut escaping = descriptor.clone();
        escaping.files[1].name = "../../etc/passwd".into();
        assert!(Descriptor::decode(&escaping.encode()).is_err());
        let mut huge = descriptor.clone();
        huge.files[1].bytes = SNAPSHOT_FILE_BYTES_MAX + 1;
        assert!(Descriptor::decode(&huge.encode()).is_err());
        let mut three = descriptor;
        three.files.insert(0, three.files[1].clone());
        assert!(Descriptor::decode(&three.encode()).is_err());
    }
}
