//! The replica's writer: the group-commit writer of a single node (`plafond_shards::store`)
//! turned into a Raft node. It is one thread that owns raft-rs's `RawNode` and drives it:
//! on the leader it gathers the shards' batches into one group, proposes the group as one
//! entry, appends it (one WAL fsync) while the followers append it, and once a majority
//! has it applies it (the changelog keys and the idempotency records, one RocksDB write)
//! and releases the replies. On a follower it applies committed entries the same way and
//! hands each shard its new batches, which the shard replays through `apply`, checking
//! every outcome (`Mail::Follow`). A follower sent a snapshot (it was further behind than
//! the leader's log) installs it here and restarts (`crate::install`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Select};
use raft::prelude::{Entry, EntryType, Message, MessageType};
use raft::{Config, RawNode, SnapshotStatus, StateRole};
use rocksdb::WriteBatch;

use plafond_shards::health::StorageHealth;
use plafond_shards::ids::ShardId;
use plafond_shards::log::log_key;
use plafond_shards::store::{DurableMarks, Release, Store, WriteJob};
use plafond_shards::store::{GROUP_BATCHES_MAX, GROUP_BYTES_MAX};
use plafond_shards::watermark::Persister;

use crate::cluster::Cluster;
use crate::disk::{self, DiskError, RaftDisk};
use crate::group::{self, carries_data, GroupError};
use crate::install::{self, InstallError};
use crate::limits::{
    LogBounds, APPENDS_IN_FLIGHT_MAX, APPEND_BYTES_MAX, CAMPAIGN_TICKS_END, CAMPAIGN_TICKS_MIN,
    COMPACT_EVERY_ENTRIES, ELECTION_TICKS, HEARTBEAT_TICKS, INBOX_MESSAGES_MAX,
    PROPOSALS_IN_FLIGHT_MAX, TICK,
};
use crate::snapshot::Snapshots;
use crate::status::{ReplicaStatus, Role};
use crate::transport::Transport;

/// What the replica asks of the node it runs in.
pub trait Host: Send + Sync + 'static {
    /// Batches of `shard` were committed and written to its changelog: replay them.
    fn follow(&self, shard: ShardId);
    /// This node leads and has applied every committed entry: bring every shard to the
    /// end of its log and start deciding (rules, unsettled credits, the clock). Returns
    /// when the shards are ready for clients.
    fn lead(&self);
    /// This node led and lost its lead: its shards may hold batches that never committed,
    /// so it must rebuild from its checkpoint and the committed log (restart).
    fn deposed(&self);
    /// This node was sent a snapshot and installed it (or failed to, its old state
    /// whole): its shards must be rebuilt from the checkpoint and changelog on disk
    /// (restart), after which it follows the leader's log from the snapshot on (or is
    /// offered one again).
    fn restart(&self);
}

/// Why the replica could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The Raft state on disk.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// raft-rs refused its configuration or state.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// A replicated entry does not decode.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A thread or a socket could not be started.
    #[error("cannot start the replica ({what}): {error}")]
    Io {
        /// What failed.
        what: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// A snapshot's install a stop interrupted could not be completed.
    #[error(transparent)]
    Install(#[from] InstallError),
}

/// Everything the replica needs.
pub struct ReplicaSetup<R> {
    /// The engine's store: the Raft state lives beside the changelog.
    pub store: Arc<Store>,
    /// The members.
    pub cluster: Cluster,
    /// The shards' batches, as the single node's writer takes them.
    pub jobs: Receiver<WriteJob<R>>,
    /// Set on the first failed write: nothing is acknowledged after it.
    pub health: Arc<StorageHealth>,
    /// How far each shard's log is durable (here: committed and written).
    pub marks: Arc<DurableMarks>,
    /// The node around the replica.
    pub host: Arc<dyn Host>,
}

/// A running replica: its writer thread and what it publishes.
pub struct Replica {
    status: Arc<ReplicaStatus>,
    handle: Option<JoinHandle<()>>,
    persister: Persister,
}

impl Replica {
    /// Opens the Raft state, binds the Raft port and starts the writer thread. It ends
    /// when every sender of `jobs` is dropped.
    pub fn start<R: Release>(setup: ReplicaSetup<R>) -> Result<Replica, ReplicaError> {
        let status = Arc::new(ReplicaStatus::new(setup.cluster.clone()));
        let (disk, applied) = RaftDisk::open(setup.store.clone(), &setup.cluster.voters())?;
        let snapshots = Arc::new(Snapshots::new(setup.store.clone()));
        let disk = disk.with_snapshots(snapshots.clone());
        let installed = disk::installs(&setup.store)?;
        status.set_snapshots(installed, 0);
        let config = Config {
            id: setup.cluster.node_id,
            election_tick: ELECTION_TICKS,
            min_election_tick: CAMPAIGN_TICKS_MIN,
            max_election_tick: CAMPAIGN_TICKS_END,
            heartbeat_tick: HEARTBEAT_TICKS,
            applied,
            max_size_per_msg: APPEND_BYTES_MAX,
            max_inflight_msgs: APPENDS_IN_FLIGHT_MAX,
            // A leader that cannot hear a majority steps down (and so acknowledges nothing
            // more); a node back from a partition does not depose a working leader.
            check_quorum: true,
            pre_vote: true,
            ..Config::default()
        };
        config.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&config, disk.clone(), &logger)?;
        let (inbox_tx, inbox) = bounded(INBOX_MESSAGES_MAX);
        let transport = Transport::start(&setup.cluster, inbox_tx, snapshots.clone())
            .map_err(|error| ReplicaError::Io { what: "the Raft port", error })?;
        let persister_health = setup.health.clone();
        let persister = Persister::start(setup.store.watermark().clone(), move |error| {
            persister_health.fail(error);
        })
        .map_err(|error| ReplicaError::Io { what: "the watermark thread", error })?;
        let mut driver = Driver {
            raw,
            disk,
            transport,
            inbox,
            jobs: setup.jobs,
            store: setup.store,
            health: setup.health,
            marks: setup.marks,
            host: setup.host,
            status: status.clone(),
            pending: VecDeque::new(),
            applied,
            compacted_at: applied,
            was_leader: false,
            lead_index: None,
            promoted: false,
            leader_heard: Instant::now(),
            campaigns: 0,
            won_at: None,
            snapshots,
            bounds: LogBounds::from_env(),
            installed,
            stopped: false,
        };
        status.set_progress(applied, applied);
        let handle = std::thread::Builder::new()
            .name("plafond-raft".into())
            .spawn(move || driver.run())
            .map_err(|error| ReplicaError::Io { what: "the writer thread", error })?;
        Ok(Replica { status, handle: Some(handle), persister })
    }

    /// What the replica publishes: role, term, leader.
    pub fn status(&self) -> &Arc<ReplicaStatus> {
        &self.status
    }

    /// Waits for the writer to end (after every job sender is dropped).
    pub fn join(mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
        self.persister.stop();
    }
}

/// When the tick after the one due at `due` (and run at `now`) is due: one [`TICK`] after
/// `due`, so that the time the loop takes to come round does not stretch every tick (under
/// load the lease and the election timeouts would drift to seconds more than they say).
/// A tick more than one late (the process was paused, SIGSTOP) is not caught up with a
/// burst: the next comes a whole tick from now, as raft-rs counts time in ticks it saw.
fn next_tick_after(due: Instant, now: Instant) -> Instant {
    let next = due + TICK;
    if next > now {
        next
    } else {
        now + TICK
    }
}

/// A group proposed by this leader, waiting for its commit.
struct Proposal<R> {
    index: u64,
    term: u64,
    jobs: Vec<WriteJob<R>>,
    proposed: Instant,
}

struct Driver<R> {
    raw: RawNode<RaftDisk>,
    disk: RaftDisk,
    transport: Transport,
    inbox: Receiver<Message>,
    jobs: Receiver<WriteJob<R>>,
    store: Arc<Store>,
    health: Arc<StorageHealth>,
    marks: Arc<DurableMarks>,
    host: Arc<dyn Host>,
    status: Arc<ReplicaStatus>,
    pending: VecDeque<Proposal<R>>,
    applied: u64,
    compacted_at: u64,
    was_leader: bool,
    /// The index of the empty entry this node appended on winning its term: once it is
    /// applied, every entry committed before the term is applied too.
    lead_index: Option<u64>,
    /// Whether this node's shards were told to lead (they may then hold batches that are
    /// not committed yet).
    promoted: bool,
    /// When this node last heard the leader it knew (or started): how long a failover's
    /// election took, as this node saw it, is measured from here.
    leader_heard: Instant,
    /// Times this node stood (each stand starts with a pre-vote) since then.
    campaigns: u32,
    /// When this node won its term, until its shards serve.
    won_at: Option<Instant>,
    /// The snapshots this node makes for followers when it leads.
    snapshots: Arc<Snapshots>,
    bounds: LogBounds,
    /// Snapshots installed over this replica's life.
    installed: u64,
    /// Set once this node restarts (a snapshot came): the writer takes nothing more.
    stopped: bool,
}

impl<R: Release> Driver<R> {
    fn run(&mut self) {
        let (inbox, jobs) = (self.inbox.clone(), self.jobs.clone());
        let mut next_tick = Instant::now() + TICK;
        loop {
            let mut select = Select::new_biased();
            let from_peers = select.recv(&inbox);
            // Past the bound, the shards wait (their queue to the writer is bounded).
            let taking = self.pending.len() < PROPOSALS_IN_FLIGHT_MAX;
            let from_shards = taking.then(|| select.recv(&jobs));
            let timeout = next_tick.saturating_duration_since(Instant::now());
            match select.select_timeout(timeout) {
                Ok(operation) if operation.index() == from_peers => {
                    if let Ok(message) = operation.recv(&inbox) {
                        self.step(message);
                        for message in inbox.try_iter().take(INBOX_MESSAGES_MAX) {
                            self.step(message);
                        }
                    }
                }
                Ok(operation) if Some(operation.index()) == from_shards => {
                    match operation.recv(&jobs) {
                        Ok(job) => self.take_jobs(job, &jobs),
                        // Every shard is gone: the engine stops.
                        Err(_) => return,
                    }
                }
                Ok(_) | Err(_) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                next_tick = next_tick_after(next_tick, now);
                self.report_snapshots();
            }
            if let Err(error) = self.on_ready() {
                eprintln!("plafond: replica {}: {error}", self.status.cluster().node_id);
                // Nothing more is acknowledged: the other replicas go on without this one.
                self.health.fail(error);
                self.pending.clear();
                return;
            }
            if self.stopped {
                return;
            }
        }
    }

    /// Steps a peer's message into raft-rs; one it refuses (a stale or foreign one) is
    /// dropped.
    fn step(&mut self, mut message: Message) {
        if message.get_msg_type() == MessageType::MsgHeartbeat {
            // A leader that remembers this node further along than its log holds (its data
            // directory was emptied, a new machine under the same member id) sends a commit
            // index past it, which raft-rs takes for a broken invariant and panics on. The
            // commit is capped at what this node holds (never a change for a node whose log
            // is whole: the leader sends at most what it matched); the replies then tell the
            // leader where it stands, and it sends a snapshot.
            message.commit = message.commit.min(self.raw.raft.raft_log.last_index());
        }
        if message.from == self.raw.raft.leader_id && message.from != raft::INVALID_ID {
            self.leader_heard = Instant::now();
        }
        let _ = self.raw.step(message);
    }

    /// Tells raft-rs which followers finished pulling their snapshot (it then sends them
    /// the log after it) and which went silent (it offers them one again).
    fn report_snapshots(&mut self) {
        for (peer, status) in self.snapshots.take_reports() {
            let finished = status == SnapshotStatus::Finish;
            eprintln!(
                "plafond: raft: follower {peer} {} its snapshot",
                if finished { "pulled" } else { "stopped pulling" }
            );
            self.raw.report_snapshot(peer, status);
        }
        self.status.set_snapshots(self.installed, self.snapshots.sent());
    }

    /// Gathers a group from `first` and what else is queued, like the single node's
    /// writer, and proposes it (leader) or lets it through (follower).
    fn take_jobs(&mut self, first: WriteJob<R>, jobs: &Receiver<WriteJob<R>>) {
        let mut group = Vec::with_capacity(GROUP_BATCHES_MAX);
        let mut bytes = first.value.as_ref().map_or(0, Vec::len);
        group.push(first);
        while group.len() < GROUP_BATCHES_MAX && bytes < GROUP_BYTES_MAX {
            let Ok(job) = jobs.try_recv() else { break };
            bytes += job.value.as_ref().map_or(0, Vec::len);
            group.push(job);
        }
        if self.health.is_failed() || self.status.deposed() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            // A follower's shards log nothing: what comes is an inspection or a capture,
            // whose state is what the follower applied, all of it on disk already. A batch
            // that logged something can only be a deposed leader's: never acknowledged.
            for job in group.into_iter().filter(|job| !carries_data(job)) {
                job.release.release();
            }
            return;
        }
        // Reads and captures go through the log too: their state may hold batches of
        // this leader not committed yet, and a deposed leader must not answer them.
        let data = group::encode(&group);
        if self.raw.propose(Vec::new(), data).is_err() {
            // The shards moved past batches that will never be in the log: the node must
            // rebuild, as a deposed leader does.
            if self.promoted {
                self.status.set_deposed();
                self.pending.clear();
                self.host.deposed();
            }
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        let term = self.raw.raft.term;
        self.pending.push_back(Proposal { index, term, jobs: group, proposed: Instant::now() });
    }

    fn on_ready(&mut self) -> Result<(), ReplicaError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if let Some(soft) = ready.ss() {
            self.role_changed(soft.raft_state, soft.leader_id);
        }
        // The leader sends its appends before its own fsync: the followers' and its own
        // then overlap.
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install(ready.snapshot());
            return Ok(());
        }
        self.apply(ready.take_committed_entries())?;
        if !ready.entries().is_empty() || ready.hs().is_some() {
            let sync = ready.must_sync() || !ready.entries().is_empty();
            let started = Instant::now();
            self.disk.append(ready.entries(), ready.hs(), sync)?;
            if sync {
                let metrics = self.store.writer_metrics();
                metrics.wal_sync.record(started.elapsed().as_nanos() as u64);
                self.store.publish_written();
            }
        }
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.disk.set_commit(commit)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.status.set_term(self.raw.raft.term);
        self.status.set_progress(self.applied, self.raw.raft.raft_log.committed);
        self.promote_once_caught_up();
        Ok(())
    }

    fn send(&self, messages: Vec<Message>) {
        for message in messages {
            self.transport.send(message);
        }
    }

    fn role_changed(&mut self, state: StateRole, leader: u64) {
        let role = match state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let previous_leader = self.status.view().leader_id;
        self.status.set_role(role, leader);
        let node = self.status.cluster().node_id;
        eprintln!(
            "plafond: replica {node}: {} in term {}, leader {leader}",
            role.as_str(),
            self.raw.raft.term
        );
        if role == Role::Leader {
            self.was_leader = true;
            self.lead_index = Some(self.raw.raft.raft_log.last_index());
            self.won_at = Some(Instant::now());
            eprintln!(
                "plafond: replica {node}: elected in term {}, {} ms after it last heard a leader \
                 (or started), standing {} times",
                self.raw.raft.term,
                self.leader_heard.elapsed().as_millis(),
                self.campaigns
            );
            self.campaigns = 0;
            return;
        }
        if state == StateRole::PreCandidate {
            self.campaigns += 1;
        }
        if leader != raft::INVALID_ID && previous_leader != Some(leader) {
            eprintln!(
                "plafond: replica {node}: follows {leader} in term {}, {} ms after it last heard \
                 a leader (or started), standing {} times",
                self.raw.raft.term,
                self.leader_heard.elapsed().as_millis(),
                self.campaigns
            );
            self.leader_heard = Instant::now();
            self.campaigns = 0;
        }
        if self.was_leader {
            self.was_leader = false;
            self.lead_index = None;
            if self.promoted {
                // Its proposals still waiting may never commit: none is acknowledged, and
                // the shards, which applied them, must be rebuilt.
                self.status.set_deposed();
                self.pending.clear();
                self.host.deposed();
            }
        }
    }

    /// Installs the snapshot the leader sent (this follower is further behind than its
    /// log), then restarts the node, whether the install succeeded or not: its shards are
    /// rebuilt from what is on disk, and raft-rs starts from the snapshot's index, or (if
    /// the install failed) is offered a snapshot again. Nothing of this node was ever
    /// acknowledged from a state it replaces: it is a follower.
    fn install(&mut self, snapshot: &raft::prelude::Snapshot) {
        let leader = self.raw.raft.leader_id;
        let index = snapshot.get_metadata().index;
        let node = self.status.cluster().node_id;
        eprintln!(
            "plafond: replica {node}: installing the snapshot at index {index} from {leader}"
        );
        let started = Instant::now();
        match install::install(&self.store, self.status.cluster(), leader, snapshot) {
            Ok(()) => eprintln!(
                "plafond: replica {node}: snapshot at index {index} installed in {:.2} s; restarting",
                started.elapsed().as_secs_f64()
            ),
            Err(error) => eprintln!(
                "plafond: replica {node}: the snapshot at index {index} could not be installed \
                 ({error}); restarting to be offered one again"
            ),
        }
        self.stopped = true;
        self.status.set_deposed();
        self.pending.clear();
        self.host.restart();
    }

    /// Once the new leader has applied everything committed before its term, its shards
    /// take over (on their own thread: they send this writer batches meanwhile).
    fn promote_once_caught_up(&mut self) {
        let Some(lead_index) = self.lead_index else { return };
        if self.promoted || self.applied < lead_index || self.raw.raft.state != StateRole::Leader {
            return;
        }
        self.promoted = true;
        let (host, status) = (self.host.clone(), self.status.clone());
        let (node, term) = (status.cluster().node_id, self.raw.raft.term);
        let won = self.won_at.take().unwrap_or_else(Instant::now);
        let caught_up_ms = won.elapsed().as_millis();
        let spawned = std::thread::Builder::new().name("plafond-promote".into()).spawn(move || {
            let started = Instant::now();
            host.lead();
            status.set_serving(true);
            // The failover's phases after the election, for whoever reads the log: the
            // term's first entry committed and applied, then the shards' take-over.
            eprintln!(
                "plafond: replica {node}: leading since term {term} after {} ms (caught up \
                 {caught_up_ms} ms after the election, shards took {} ms)",
                won.elapsed().as_millis(),
                started.elapsed().as_millis()
            );
        });
        if spawned.is_err() {
            eprintln!("plafond: cannot start the thread that takes the lead; stepping aside");
            self.status.set_deposed();
            self.host.deposed();
        }
    }

    /// Writes committed entries to the changelog and the idempotency records (one RocksDB
    /// write with the applied index), then releases this leader's replies or hands the
    /// shards their new batches.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        let Some(last) = entries.last().map(|entry| entry.index) else { return Ok(()) };
        // First which entries are this leader's own proposals and which are decoded, then
        // one write of all of them.
        let mut released = Vec::new();
        let mut decoded = Vec::new();
        for entry in &entries {
            // Proposals of this node that an entry of another leader replaced are dropped
            // unacknowledged (their clients retry by command id).
            while self.pending.front().is_some_and(|p| {
                p.index < entry.index || (p.index == entry.index && p.term != entry.term)
            }) {
                self.pending.pop_front();
            }
            if entry.get_entry_type() != EntryType::EntryNormal || entry.data.is_empty() {
                continue;
            }
            let own = self.pending.front().is_some_and(|p| p.index == entry.index);
            match (own, self.pending.pop_front()) {
                (true, Some(proposal)) => released.push(proposal),
                (false, Some(proposal)) => {
                    self.pending.push_front(proposal);
                    decoded.extend(group::decode(&entry.data)?);
                }
                (_, None) => decoded.extend(group::decode(&entry.data)?),
            }
        }
        let ids = self.store.ids_family().map_err(DiskError::from)?;
        let mut batch = WriteBatch::default();
        let mut log_bytes = 0u64;
        let mut records: Vec<(&[u8], &[u8])> = Vec::new();
        for job in released.iter().flat_map(|proposal| &proposal.jobs) {
            if let Some(value) = &job.value {
                batch.put(log_key(job.shard, job.seq), value);
                log_bytes += value.len() as u64;
            }
            records.extend(job.records.iter().map(|(id, r)| (id.as_bytes(), r.as_slice())));
        }
        let mut followed: Vec<(ShardId, u64)> = Vec::new();
        for written in &decoded {
            if !written.value.is_empty() {
                batch.put(log_key(written.shard, written.seq), &written.value);
                log_bytes += written.value.len() as u64;
                followed.push((written.shard, written.seq));
            }
            records.extend(written.records.iter().map(|(id, r)| (id.as_bytes(), r.as_slice())));
        }
        // In key order, as the single node's writer puts them (each memtable insert starts
        // where the previous ended); stable, so of two records of one id the later wins.
        records.sort_by(|a, b| a.0.cmp(b.0));
        for (id, record) in records {
            batch.put_cf(ids, id, record);
        }
        self.disk.put_applied(&mut batch, last)?;
        // Not fsynced: every entry applied here is in the Raft log, fsynced on a majority;
        // after a crash the replica applies again what this write lost.
        self.store.write(batch, false).map_err(DiskError::from)?;
        self.store.add_log_bytes(log_bytes);
        self.applied = last;
        let metrics = self.store.writer_metrics();
        for proposal in released {
            metrics.group_batches.record(proposal.jobs.len() as u64);
            for job in proposal.jobs.iter().filter(|job| job.value.is_some()) {
                self.marks.advance(job.shard, job.seq + 1);
                self.marks.advance_synced(job.shard, job.seq + 1);
            }
            for job in proposal.jobs {
                job.release.release();
            }
            metrics.group_commit.record(proposal.proposed.elapsed().as_nanos() as u64);
        }
        let mut shards: Vec<ShardId> = Vec::new();
        for (shard, seq) in followed {
            self.marks.advance(shard, seq + 1);
            self.marks.advance_synced(shard, seq + 1);
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
        for shard in shards {
            self.host.follow(shard);
        }
        self.compact()
    }

    /// Drops applied entries of the Raft log that no follower still needs (the changelog
    /// holds their batches), keeping `bounds.kept` and at most `bounds.max`
    /// ([`crate::limits::LOG_ENTRIES_KEPT`], [`crate::limits::LOG_ENTRIES_MAX`]): a
    /// follower further behind is sent a snapshot, and the log after the snapshot is kept
    /// (within the bound) while a follower pulls it.
    fn compact(&mut self) -> Result<(), ReplicaError> {
        if self.applied < self.compacted_at + COMPACT_EVERY_ENTRIES {
            return Ok(());
        }
        self.compacted_at = self.applied;
        let mut first = self.applied.saturating_sub(self.bounds.kept);
        if self.raw.raft.state == StateRole::Leader {
            let me = self.status.cluster().node_id;
            let needed = self.raw.raft.prs().iter().filter(|(id, _)| **id != me);
            let behind = needed.map(|(_, progress)| progress.matched + 1).min();
            let pulling = self.snapshots.needed_from();
            if let Some(needed) = behind.into_iter().chain(pulling).min() {
                first = first.min(needed).max(self.applied.saturating_sub(self.bounds.max));
            }
        }
        if first > self.disk.first_kept() {
            self.disk.compact(first)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ticks_keep_their_period_when_the_loop_is_late_and_never_burst() {
        let due = Instant::now();
        // Run 30 ms late: the next is still one tick after the due time, not after now.
        let late = due + Duration::from_millis(30);
        assert_eq!(next_tick_after(due, late), due + TICK);
        // Run three ticks late (a pause): one tick from now, not three ticks at once.
        let paused = due + 3 * TICK;
        assert_eq!(next_tick_after(due, paused), paused + TICK);
    }
}
