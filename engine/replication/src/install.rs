//! Raft snapshots: the follower's side. Sent a snapshot, the follower pulls its files into
//! `<data-dir>/raft-snapshot-in/` ([`crate::pull`]), checks them whole, records that it
//! installs it, and then replaces its changelog and idempotency records with the
//! snapshot's, its checkpoints with the snapshot's checkpoint, and its Raft state with one
//! that stands at the snapshot's index. It then restarts in place, as a deposed leader
//! does, and so rebuilds its shards from that checkpoint and changelog, exactly as after a
//! `kill -9`: at the snapshot's index, the log after it coming from the leader.
//!
//! Crash-safe: before the record of the install (fsynced), the old state is whole and the
//! staged files are garbage; after it, every step can be done again, and a restart does
//! the rest ([`finish_pending`]) before the engine reads its checkpoint. The record goes in
//! the same fsynced write as the new Raft state, last.

use std::path::{Path, PathBuf};

use raft::prelude::Snapshot;
use rocksdb::WriteBatch;

use plafond_shards::log::LOG_KEY_PREFIX;
use plafond_shards::store::{log_start_key, Store};
use plafond_snapshots::{generation_of, CHECKPOINT_DIR};

use crate::cluster::Cluster;
use crate::disk::{self, DiskError, Installing};
use crate::dump::{self, DumpError, Record};
use crate::limits::{INSTALL_BATCH_BYTES, SNAPSHOT_KEY_BYTES_MAX};
use crate::pull::{self, PullError};
use crate::snapshot::{Descriptor, SnapshotError, DUMP_FILE};

/// Where a follower puts a snapshot's files, under its data directory.
pub const SNAPSHOT_IN_DIR: &str = "raft-snapshot-in";

/// Why a snapshot could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Its descriptor.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Pulling its files.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Its log file.
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// The Raft state on disk.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The leader that sent it is not a member.
    #[error("a snapshot came from {0}, which is not a member")]
    NotAMember(u64),
    /// Its shape is not this node's.
    #[error("the snapshot has {snapshot} shards; this node has {node}")]
    Shape {
        /// The snapshot's shards.
        snapshot: usize,
        /// This node's.
        node: u16,
    },
    /// A file or directory here.
    #[error("installing a snapshot ({path}): {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |error| InstallError::Io { path: path.to_path_buf(), error }
}

/// Pulls `snapshot` from `leader` and installs it in `store` (see the module's doc). On
/// success the caller restarts the node; on failure the old state is whole.
pub fn install(
    store: &Store,
    cluster: &Cluster,
    leader: u64,
    snapshot: &Snapshot,
) -> Result<(), InstallError> {
    let descriptor = Descriptor::decode(snapshot.get_data())?;
    let member = cluster.member(leader).ok_or(InstallError::NotAMember(leader))?;
    let staging = store.db().path().join(SNAPSHOT_IN_DIR);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    pull::fetch(cluster.me().host, cluster.node_id, member.raft_addr(), &descriptor, &staging)?;
    // The whole log file, every bound and its checksum, before anything is replaced.
    let summary = dump::read(&staging.join(DUMP_FILE), |_| Ok(()))?;
    let shards = store.shard_count().map_err(DiskError::from)?;
    if summary.starts.len() != usize::from(shards) {
        return Err(InstallError::Shape { snapshot: summary.starts.len(), node: shards });
    }
    let metadata = snapshot.get_metadata();
    let installing = Installing {
        index: metadata.index,
        term: metadata.term,
        conf: metadata.get_conf_state().clone(),
    };
    disk::put_installing(store, &installing)?;
    finish(store, &installing)
}

/// Completes an install a crash interrupted, if any (before the engine reads its
/// checkpoint); whether there was one.
pub fn finish_pending(store: &Store) -> Result<bool, InstallError> {
    let Some(installing) = disk::installing(store)? else {
        // Files staged by an install that never got as far as its record: garbage.
        let _ = std::fs::remove_dir_all(store.db().path().join(SNAPSHOT_IN_DIR));
        return Ok(false);
    };
    eprintln!(
        "plafond: raft: completing the install of the snapshot at index {} that a stop interrupted",
        installing.index
    );
    finish(store, &installing)?;
    Ok(true)
}

/// The install's steps from its record on; each can be done again.
fn finish(store: &Store, installing: &Installing) -> Result<(), InstallError> {
    let data_dir = store.db().path().to_path_buf();
    let staging = data_dir.join(SNAPSHOT_IN_DIR);
    let ids = store.ids_family().map_err(DiskError::from)?;
    // The changelog and the records: replaced by the snapshot's.
    let mut batch = WriteBatch::default();
    batch.delete_range(&[LOG_KEY_PREFIX][..], &[LOG_KEY_PREFIX + 1][..]);
    batch.delete_range_cf(ids, &[][..], &[0xFF; SNAPSHOT_KEY_BYTES_MAX + 1][..]);
    store.write(batch, false).map_err(DiskError::from)?;
    let mut batch = WriteBatch::default();
    let summary = dump::read(&staging.join(DUMP_FILE), |record| {
        match record {
            Record::Log(shard, seq, value) => {
                batch.put(plafond_shards::log::log_key(shard, seq), value);
            }
            Record::Id(id, value) => batch.put_cf(ids, id, value),
        }
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            store.write(std::mem::take(&mut batch), false)?;
        }
        Ok(())
    })?;
    for (shard, start) in (0u16..).zip(&summary.starts) {
        batch.put(log_start_key(shard), start.to_le_bytes());
    }
    store.write(batch, false).map_err(DiskError::from)?;
    replace_checkpoints(&data_dir, &staging)?;
    // Last, fsynced (and with it every write above, in the same WAL).
    disk::stand_at_snapshot(store, installing)?;
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!("plafond: raft: installed the snapshot at index {}", installing.index);
    Ok(())
}

/// Removes every checkpoint of `data_dir` and links the staged one (if the snapshot has
/// one) in their place: the engine loads the newest, which must be the snapshot's.
fn replace_checkpoints(data_dir: &Path, staging: &Path) -> Result<(), InstallError> {
    let dir = data_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let path = entry.map_err(io(&dir))?.path();
        std::fs::remove_file(&path).map_err(io(&path))?;
    }
    for entry in std::fs::read_dir(staging).map_err(io(staging))? {
        let entry = entry.map_err(io(staging))?;
        let name = entry.file_name();
        if name.to_str().and_then(generation_of).is_some() {
            let target = dir.join(&name);
            std::fs::hard_link(entry.path(), &target).map_err(io(&target))?;
        }
    }
    std::fs::File::open(&dir).and_then(|opened| opened.sync_all()).map_err(io(&dir))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crossbeam_channel::Receiver;
    use raft::prelude::{Entry, HardState, Message};
    use raft::{SnapshotStatus, Storage};

    use plafond_shards::log::log_key;
    use plafond_shards::state::ShardState;

    use super::*;
    use crate::disk::RaftDisk;
    use crate::snapshot::Snapshots;
    use crate::transport::Transport;

    /// A batch value large enough that the log file takes several chunks.
    const BIG_VALUE_BYTES: usize = 64 << 10;
    const BIG_BATCHES: u64 = 100;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").expect("a port").local_addr().expect("bound").port()
    }

    fn members() -> String {
        let (a, b, c, d) = (free_port(), free_port(), free_port(), free_port());
        format!("1=127.0.0.1:{a}:{b},2=127.0.0.1:{c}:{d}")
    }

    /// A leader's store: shard 0's log of large batches, shard 1's of small ones, two
    /// records, a checkpoint at positions (2, 1), and Raft entries 1-5 of term 2 applied.
    fn leader_store(dir: &Path) -> Arc<Store> {
        let store = Arc::new(Store::open(dir, 2).expect("a store"));
        let mut batch = WriteBatch::default();
        for seq in 0..BIG_BATCHES {
            batch.put(log_key(0, seq), vec![seq as u8; BIG_VALUE_BYTES]);
        }
        for seq in 0..4u64 {
            batch.put(log_key(1, seq), [seq as u8; 5]);
        }
        let ids = store.ids_family().expect("ids");
        batch.put_cf(ids, b"pay-1", b"outcome-1");
        batch.put_cf(ids, b"pay-2", b"outcome-2");
        store.write(batch, true).expect("written");
        let checkpoints = dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&checkpoints).expect("a dir");
        let states: Vec<_> = (0..2).map(|shard| ShardState::new(shard, 2, 1)).collect();
        let captured = [(states[0].clone(), 2), (states[1].clone(), 1)];
        let path = checkpoints.join(plafond_snapshots::checkpoint_file_name(0));
        plafond_snapshots::write(&path, &captured, |_| {}).expect("a checkpoint");
        let (disk, _) = RaftDisk::open(store.clone(), &[1, 2]).expect("raft state");
        let entries: Vec<Entry> =
            (1..=5).map(|index| Entry { index, term: 2, ..Entry::default() }).collect();
        let hard = HardState { term: 2, vote: 1, commit: 5, ..HardState::default() };
        disk.append(&entries, Some(&hard), true).expect("appended");
        let mut batch = WriteBatch::default();
        disk.put_applied(&mut batch, 5).expect("put");
        store.write(batch, true).expect("written");
        store
    }

    /// A follower's store with a history of its own: a log, a record, and a checkpoint of
    /// a later generation than the leader's.
    fn follower_store(dir: &Path) -> Arc<Store> {
        let store = Arc::new(Store::open(dir, 2).expect("a store"));
        let mut batch = WriteBatch::default();
        batch.put(log_key(0, 0), b"old");
        batch.put_cf(store.ids_family().expect("ids"), b"old-id", b"old");
        store.write(batch, true).expect("written");
        let checkpoints = dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&checkpoints).expect("a dir");
        std::fs::write(checkpoints.join(plafond_snapshots::checkpoint_file_name(9)), b"old")
            .expect("written");
        store
    }

    /// Member 1 serving `leader`'s snapshots on its Raft port: the members' text, its
    /// snapshots, and its transport with the inbox it delivers to (the caller keeps both).
    fn serving(leader: &Arc<Store>) -> (String, Arc<Snapshots>, (Transport, Receiver<Message>)) {
        let text = members();
        let snapshots = Arc::new(Snapshots::new(leader.clone()));
        let (inbox, received) = crossbeam_channel::bounded(16);
        let leader_cluster = Cluster::parse(1, &text).expect("a cluster");
        let transport = Transport::start(&leader_cluster, inbox, snapshots.clone()).expect("up");
        (text, snapshots, (transport, received))
    }

    fn offered(snapshots: &Arc<Snapshots>) -> Snapshot {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(snapshot) = snapshots.offer(0, 2, 1) {
                return snapshot;
            }
            assert!(Instant::now() < deadline, "no snapshot made");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_of(store: &Store, shard: u16) -> Vec<(u64, Vec<u8>)> {
        let mut log = Vec::new();
        let start = store.log_start(shard).expect("a start");
        let mut visit = |seq, value: &[u8]| -> Result<(), plafond_shards::store::StoreError> {
            log.push((seq, value.to_vec()));
            Ok(())
        };
        store.read_log_raw(shard, start, u64::MAX, &mut visit).expect("read");
        log
    }

    fn checkpoint_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(CHECKPOINT_DIR))
            .expect("a dir")
            .map(|entry| entry.expect("an entry").file_name().into_string().expect("UTF-8"))
            .collect();
        names.sort();
        names
    }

    /// What a follower that installed the leader's snapshot holds.
    fn assert_installed(leader: &Store, follower: &Store, follower_dir: &Path) {
        let leader_log = log_of(leader, 0);
        assert_eq!(log_of(follower, 0), leader_log[2..].to_vec(), "shard 0 from its position");
        assert_eq!(log_of(follower, 1), log_of(leader, 1)[1..].to_vec(), "shard 1 from its own");
        assert_eq!((follower.log_start(0).unwrap(), follower.log_start(1).unwrap()), (2, 1));
        let ids = follower.ids_family().expect("ids");
        assert_eq!(
            follower.db().get_cf(ids, b"pay-2").unwrap().as_deref(),
            Some(&b"outcome-2"[..])
        );
        assert_eq!(follower.db().get_cf(ids, b"old-id").unwrap(), None, "its own records go");
        assert_eq!(checkpoint_names(follower_dir), [plafond_snapshots::checkpoint_file_name(0)]);
        assert!(!follower_dir.join(SNAPSHOT_IN_DIR).exists(), "the staged files are removed");
        assert_eq!(disk::installing(follower).unwrap(), None);
        assert_eq!(disk::installs(follower).unwrap(), 1);
    }

    #[test]
    fn a_follower_pulls_the_leaders_snapshot_in_chunks_and_stands_at_its_index() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (leader_dir, follower_dir) = (dir.path().join("leader"), dir.path().join("follower"));
        let leader = leader_store(&leader_dir);
        let (text, snapshots, _serving) = serving(&leader);
        assert!(snapshots.offer(0, 2, 1).is_none(), "the first ask starts making one");
        let snapshot = offered(&snapshots);
        let metadata = snapshot.get_metadata();
        assert_eq!((metadata.index, metadata.term), (5, 2));
        assert_eq!(metadata.get_conf_state().voters, [1, 2]);
        let descriptor = Descriptor::decode(snapshot.get_data()).expect("a descriptor");
        let log_file_bytes = descriptor.files[1].bytes;
        let chunk = u64::from(crate::limits::SNAPSHOT_CHUNK_BYTES);
        assert!(log_file_bytes > chunk, "the log file takes several chunks: {log_file_bytes}");

        let follower = follower_store(&follower_dir);
        let follower_cluster = Cluster::parse(2, &text).expect("a cluster");
        install(&follower, &follower_cluster, 1, &snapshot).expect("installed");
        assert_installed(&leader, &follower, &follower_dir);
        assert_eq!(snapshots.take_reports(), [(2, SnapshotStatus::Finish)]);

        // Raft starts again at the snapshot's index, the next entry expected from the leader.
        let (disk, applied) = RaftDisk::open(follower.clone(), &[1, 2]).expect("opens");
        assert_eq!(applied, 5);
        assert_eq!((disk.first_index().unwrap(), disk.last_index().unwrap()), (6, 5));
        assert_eq!(disk.term(5).unwrap(), 2);
        assert_eq!(disk.initial_state().unwrap().hard_state.commit, 5);
    }

    #[test]
    fn a_damaged_transfer_is_refused_with_the_old_state_whole_and_an_interrupted_install_completes()
    {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (leader_dir, follower_dir) = (dir.path().join("leader"), dir.path().join("follower"));
        let leader = leader_store(&leader_dir);
        let (text, snapshots, _serving) = serving(&leader);
        let snapshot = offered(&snapshots);
        let descriptor = Descriptor::decode(snapshot.get_data()).expect("a descriptor");
        let follower = follower_store(&follower_dir);
        let follower_cluster = Cluster::parse(2, &text).expect("a cluster");

        // A byte of the leader's log file changes after its checksum was taken (a bad disk):
        // the follower refuses what it pulled, and nothing of its own state changed.
        let (log_file, _) = snapshots.file(descriptor.id, 1).expect("offered");
        let mut bytes = std::fs::read(&log_file).expect("read");
        bytes[BIG_VALUE_BYTES * 3] ^= 0x40;
        std::fs::write(&log_file, &bytes).expect("written");
        let refused = install(&follower, &follower_cluster, 1, &snapshot);
        assert!(matches!(refused, Err(InstallError::Pull(PullError::Mismatch(_)))), "{refused:?}");
        assert_eq!(follower.db().get(log_key(0, 0)).unwrap().as_deref(), Some(&b"old"[..]));
        assert_eq!(disk::installing(&follower).unwrap(), None);
        assert_eq!(checkpoint_names(&follower_dir), [plafond_snapshots::checkpoint_file_name(9)]);
        // Staged files without the install's record are garbage at the next start.
        assert!(!finish_pending(&follower).expect("nothing pending"));
        assert!(!follower_dir.join(SNAPSHOT_IN_DIR).exists());

        // Repaired, pulled, recorded, then the process dies before the first replacement:
        // the next start completes the install before anything reads the checkpoint.
        bytes[BIG_VALUE_BYTES * 3] ^= 0x40;
        std::fs::write(&log_file, &bytes).expect("written");
        let staging = follower_dir.join(SNAPSHOT_IN_DIR);
        std::fs::create_dir_all(&staging).expect("a dir");
        let leader_addr = Cluster::parse(1, &text).expect("a cluster").me().raft_addr();
        pull::fetch(follower_cluster.me().host, 2, leader_addr, &descriptor, &staging)
            .expect("pulled");
        let metadata = snapshot.get_metadata();
        let installing = Installing { index: 5, term: 2, conf: metadata.get_conf_state().clone() };
        disk::put_installing(&follower, &installing).expect("recorded");
        drop(follower);
        let follower = Arc::new(Store::open(&follower_dir, 2).expect("reopens"));
        assert!(finish_pending(&follower).expect("completed"));
        assert_installed(&leader, &follower, &follower_dir);
        // Done again (a crash right after), it changes nothing.
        assert!(!finish_pending(&follower).expect("nothing pending"));
        assert_installed(&leader, &follower, &follower_dir);
    }

    /// A follower that stops pulling (it died, or its link did) is reported failed once
    /// it has been silent for the idle timeout, and not before: raft-rs then offers a
    /// snapshot again, and the leader no longer keeps its log for that follower. A
    /// snapshot nobody pulls is removed once too old to be offered.
    #[test]
    fn a_follower_silent_for_the_idle_timeout_is_reported_failed_and_its_log_let_go() {
        use crate::limits::{SNAPSHOT_IDLE_TIMEOUT, SNAPSHOT_REUSE_AGE};
        let dir = tempfile::tempdir().expect("a temp dir");
        let leader = leader_store(&dir.path().join("leader"));
        let (_text, snapshots, _serving) = serving(&leader);
        let snapshot = offered(&snapshots);
        let offered_at = Instant::now();
        let id = Descriptor::decode(snapshot.get_data()).expect("a descriptor").id;
        let index = snapshot.get_metadata().index;
        assert_eq!(snapshots.needed_from(), Some(index + 1), "the log is kept while it pulls");
        assert_eq!(snapshots.take_reports_at(offered_at + SNAPSHOT_IDLE_TIMEOUT / 2), []);

        // A chunk pulled restarts the silence: at a moment past the offer's timeout but
        // within the pull's, the transfer goes on.
        std::thread::sleep(Duration::from_millis(5));
        let before_pull = Instant::now();
        snapshots.pulled(2, id, false);
        let after_pull = Instant::now();
        let within = before_pull + SNAPSHOT_IDLE_TIMEOUT - Duration::from_millis(1);
        assert!(within >= offered_at + SNAPSHOT_IDLE_TIMEOUT, "past the offer's timeout");
        assert_eq!(snapshots.take_reports_at(within), []);
        assert_eq!(snapshots.needed_from(), Some(index + 1));

        // Silent for the whole timeout since its last chunk: failed, reported once.
        let silent = after_pull + SNAPSHOT_IDLE_TIMEOUT;
        assert_eq!(snapshots.take_reports_at(silent), [(2, SnapshotStatus::Failure)]);
        assert_eq!(snapshots.take_reports_at(silent), []);
        assert_eq!(snapshots.needed_from(), None, "no log kept for a transfer that ended");
        // A chunk asked after that is not counted: the transfer is over.
        snapshots.pulled(2, id, true);
        assert_eq!(snapshots.take_reports(), []);

        // Offered again while fresh, the same snapshot; nobody pulls it, and once older
        // than the reuse age it is removed with its files.
        let again = snapshots.offer(0, 2, 1).expect("the made snapshot is offered again");
        assert_eq!(Descriptor::decode(again.get_data()).expect("a descriptor").id, id);
        let (log_file, _) = snapshots.file(id, 1).expect("offered");
        let old = Instant::now() + SNAPSHOT_REUSE_AGE;
        assert_eq!(snapshots.take_reports_at(old), [(2, SnapshotStatus::Failure)]);
        assert_eq!(snapshots.file(id, 1), None, "no longer offered");
        assert!(!log_file.exists(), "its files are removed");
    }
}
