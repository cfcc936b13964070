//! The engine: ingress (validation, idempotency claims, routing), the shard threads and
//! the writer, and consistent cuts across all shards.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded};

use plafond_shards::actor::{
    self, Captured, Mail, Mailboxes, Router, ShardCell, ShardMetrics, ShardSetup, INGRESS_MAILS_MAX,
};
use plafond_shards::command::{Command, Outcome, Reason, RegionId, Request};
use plafond_shards::health::{Health, StorageHealth};
use plafond_shards::idempotency::expiry_day;
use plafond_shards::ids::{shard_of, ShardId};
use plafond_shards::outcomes::OutcomeCounters;
use plafond_shards::region::Regions;
use plafond_shards::remembered::{Claims, IdsHome};
use plafond_shards::reply::{Collector, Stopped, Ticket};
use plafond_shards::state::ShardState;
use plafond_shards::store::{Durability, DurableMarks, Store, Writer};

use plafond_batch::{BatchService, Scheduler};

use crate::checkpoint::{
    self, CheckpointPolicy, CheckpointReport, Checkpointer, CheckpointerSetup,
};
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::epochs::EngineHost;
use crate::error::EngineError;
use crate::replica::ReplicaHost;
use crate::retention::{self, LogRetention};
use plafond_mac::MacKey;
use plafond_replication::{Replica, ReplicaSetup, ReplicaStatus};

/// A running engine. Dropping it stops the shards after they have handled everything
/// submitted before.
pub struct Engine {
    shards: u16,
    durability: Durability,
    pub(crate) regions: Arc<Regions>,
    clock: Arc<dyn Clock>,
    router: Arc<Router>,
    /// Command ids in flight, across all shards (what each id remembers is on disk).
    claims: Arc<Claims>,
    /// Where idempotency records live once durable.
    pub(crate) ids: IdsHome,
    /// Declines decided at ingress (unknown regions, id conflicts), by kind and reason.
    pub(crate) ingress_declines: OutcomeCounters,
    /// Bytes of archive segments written since start (by retention, after checkpoints).
    pub(crate) archived_bytes: Arc<AtomicU64>,
    next_profile_shard: AtomicU64,
    /// Set by the writer on the first failed write: nothing is acknowledged after it.
    health: Arc<StorageHealth>,
    pub(crate) metrics: Vec<Arc<ShardMetrics>>,
    threads: Vec<JoinHandle<()>>,
    writer: Option<Writer>,
    store: Option<Arc<Store>>,
    /// How far each shard's log is durable; the change stream reads up to its synced mark.
    marks: Arc<DurableMarks>,
    /// The batches the change stream decoded last.
    pub(crate) stream_decoded: crate::stream::DecodedBatches,
    /// Cuts are taken one at a time: two interleaved would deadlock on their barriers.
    /// Taken after `capture_lock` where both are needed.
    cut_lock: Mutex<()>,
    /// One capture (checkpoint or snapshot) at a time: a shard holds one at a time.
    pub(crate) capture_lock: Arc<Mutex<()>>,
    /// Set while a snapshot is written: a second one is refused, not queued.
    pub(crate) snapshotting: std::sync::atomic::AtomicBool,
    /// What the last checkpoint did.
    pub(crate) checkpoints: Arc<Mutex<CheckpointReport>>,
    checkpointer: Option<Checkpointer>,
    checkpoint_policy: CheckpointPolicy,
    log_retention: LogRetention,
    /// The data directory of a durable engine.
    data_dir: Option<PathBuf>,
    /// The operator's key: every snapshot, checkpoint and archive segment carries its MAC.
    pub(crate) mac_key: Option<MacKey>,
    /// Each shard's state behind its lock, for submissions applied on the caller's thread.
    cells: Vec<Arc<ShardCell>>,
    pub(crate) batch: Arc<BatchService<EngineHost>>,
    scheduler: Option<Scheduler>,
    /// A replica's Raft writer, in the single node's writer's place (SPEC §14).
    replica: Option<Replica>,
    replica_status: Option<Arc<ReplicaStatus>>,
}

impl Engine {
    /// The shard count a data directory was created with (it is fixed for the directory's
    /// life), or `None` if the directory holds no engine yet.
    pub fn recorded_shards(data_dir: &std::path::Path) -> Result<Option<u16>, EngineError> {
        Ok(Store::recorded_shards(data_dir)?)
    }

    /// Opens the engine: checks the regions, opens the data directory, replays each
    /// shard's log and resends the credits of unsettled transfers.
    pub fn open(config: EngineConfig) -> Result<Engine, EngineError> {
        config.check()?;
        let today = jiff::Timestamp::from_millisecond(config.clock.now_ms())
            .map(|now| now.to_zoned(jiff::tz::TimeZone::UTC).date())
            .unwrap_or(jiff::civil::Date::constant(2027, 1, 1));
        config.regions.check_roll_times(today)?;
        let shards = config.shards;
        let data_dir = config.data_dir.clone().filter(|_| config.durability != Durability::None);
        let store = match &data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|error| EngineError::Io {
                    what: "creating the data directory",
                    error,
                })?;
                let store = Arc::new(Store::open(dir, shards)?);
                if config.replication.is_some() {
                    // A snapshot's install that a stop interrupted is completed before the
                    // checkpoint is read: it replaces the checkpoint and the changelog.
                    plafond_replication::finish_pending(&store)
                        .map_err(plafond_replication::ReplicaError::from)?;
                }
                Some(store)
            }
            None => None,
        };
        let ids = match &store {
            Some(store) => IdsHome::Disk(store.clone()),
            None => IdsHome::memory(),
        };
        let mut checkpoints: Vec<Option<Captured>> = match &data_dir {
            Some(dir) => {
                checkpoint::load_newest(dir, shards, config.regions.len(), config.mac_key.as_ref())?
                    .map_or_else(
                        || (0..shards).map(|_| None).collect(),
                        |c| c.into_iter().map(Some).collect(),
                    )
            }
            None => (0..shards).map(|_| None).collect(),
        };
        // A restored snapshot carries its records: back where every shard finds them.
        for (state, _) in checkpoints.iter_mut().flatten() {
            let records = std::mem::take(&mut state.remembered);
            let regions = &config.regions;
            ids.restore(records, |record| expiry_day(regions, record))?;
        }
        let marks = Arc::new(DurableMarks::new(shards));
        let claims = Arc::new(Claims::new(shards));
        let health = Arc::new(StorageHealth::default());
        let (mut ingress, mut internal, mut receivers) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..shards {
            let (ingress_tx, ingress_rx) = bounded(INGRESS_MAILS_MAX);
            let (internal_tx, internal_rx) = unbounded();
            ingress.push(ingress_tx);
            internal.push(internal_tx);
            receivers.push((ingress_rx, internal_rx));
        }
        let router = Arc::new(Router { ingress, internal });
        let (mut replica, mut writer, mut job_sender) = (None, None, None);
        match (&store, &config.replication) {
            (Some(store), Some(replication)) => {
                let (jobs_tx, jobs_rx) = bounded(INGRESS_MAILS_MAX);
                let host = ReplicaHost {
                    router: router.clone(),
                    shards,
                    clock: config.clock.clone(),
                    on_deposed: replication.on_deposed.clone(),
                };
                let setup = ReplicaSetup {
                    store: store.clone(),
                    cluster: replication.cluster.clone(),
                    jobs: jobs_rx,
                    health: health.clone(),
                    marks: marks.clone(),
                    host: Arc::new(host),
                };
                replica = Some(Replica::start(setup)?);
                job_sender = Some(jobs_tx);
            }
            (Some(store), None) => {
                let (jobs_tx, jobs_rx) = bounded(INGRESS_MAILS_MAX);
                let started = Writer::start(
                    store.clone(),
                    config.durability,
                    jobs_rx,
                    health.clone(),
                    marks.clone(),
                )
                .map_err(|error| EngineError::Thread { what: "writer", error })?;
                (writer, job_sender) = (Some(started), Some(jobs_tx));
            }
            (None, _) => {}
        }
        let replica_status = replica.as_ref().map(|replica| replica.status().clone());
        let regions = Arc::new(config.regions);
        let (ready_tx, ready_rx) = unbounded();
        let mut threads = Vec::new();
        let mut metrics = Vec::new();
        for (shard, (ingress_rx, internal_rx)) in receivers.into_iter().enumerate() {
            let shard_metrics = Arc::new(ShardMetrics::default());
            metrics.push(shard_metrics.clone());
            let setup = ShardSetup {
                shard: shard as ShardId,
                shards,
                regions: regions.clone(),
                durability: config.durability,
                store: store.clone(),
                checkpoint: checkpoints.get_mut(shard).and_then(Option::take),
                claims: claims.clone(),
                ids: ids.clone(),
                marks: marks.clone(),
                writer: job_sender.clone(),
                router: router.clone(),
                metrics: shard_metrics,
                replicated: replica.is_some(),
                health: health.clone(),
            };
            let mailboxes = Mailboxes { ingress: ingress_rx, internal: internal_rx };
            let ready = ready_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("plafond-shard-{shard}"))
                .spawn(move || actor::run(setup, mailboxes, ready))
                .map_err(|error| EngineError::Thread { what: "shard", error })?;
            threads.push(thread);
        }
        // Only the shard threads hold senders now: if one dies unannounced, `recv` says so.
        drop(ready_tx);
        drop(job_sender);
        let host = EngineHost {
            regions: regions.clone(),
            clock: config.clock.clone(),
            router: router.clone(),
            metrics: metrics.clone(),
            store: store.clone(),
            memory: Mutex::new(vec![None; regions.len()]),
            replica: replica_status.clone(),
        };
        let batch = Arc::new(BatchService::new(host)?);
        let mut engine = Engine {
            batch: batch.clone(),
            scheduler: None,
            shards,
            durability: config.durability,
            regions,
            clock: config.clock,
            router,
            claims,
            ids,
            ingress_declines: OutcomeCounters::default(),
            archived_bytes: Arc::new(AtomicU64::new(0)),
            next_profile_shard: AtomicU64::new(0),
            health,
            metrics,
            threads,
            writer,
            store,
            marks,
            stream_decoded: Default::default(),
            cut_lock: Mutex::new(()),
            capture_lock: Arc::new(Mutex::new(())),
            snapshotting: std::sync::atomic::AtomicBool::new(false),
            checkpoints: Arc::new(Mutex::new(CheckpointReport::default())),
            checkpointer: None,
            checkpoint_policy: config.checkpoints,
            log_retention: config.log_retention.clone(),
            data_dir: data_dir.clone(),
            mac_key: config.mac_key,
            cells: Vec::new(),
            replica,
            replica_status,
        };
        let cells = (0..shards)
            .enumerate()
            .map(|(ready, _)| ready_rx.recv().map_err(|_| EngineError::ShardDied { ready }))
            .collect::<Result<Vec<_>, _>>();
        // Before a failure drops the engine: a cell still in the channel would keep its
        // shard's job sender, and so the writer the engine joins, alive.
        drop(ready_rx);
        // A shard that fails to replay says why; the engine is dropped and stops.
        let mut cells = cells?;
        cells.sort_by_key(|(shard, _)| *shard);
        engine.cells = cells.into_iter().map(|(_, cell)| cell).collect::<Result<_, _>>()?;
        engine.adopt_ids_horizons();
        // A guarded clock measures jumps from the last time the durable state holds.
        let stamped = engine.cut(|state| state.clock_ms)?.into_iter().max();
        if let Some(committed_ms) = stamped.filter(|&ms| ms != i64::MIN) {
            engine.clock.resume_from(committed_ms);
        }
        if let (Some(dir), Some(store)) = (&engine.data_dir, &engine.store) {
            let setup = engine.checkpointer_setup(dir.clone(), store.clone());
            engine.checkpointer = Some(
                Checkpointer::start(setup)
                    .map_err(|error| EngineError::Thread { what: "checkpoint", error })?,
            );
        }
        if let Some(poll) = config.epoch_poll {
            engine.scheduler = Some(
                Scheduler::start(batch, poll)
                    .map_err(|error| EngineError::Thread { what: "epoch scheduler", error })?,
            );
        }
        Ok(engine)
    }

    /// Lets the store's compaction drop the idempotency records that the epochs already
    /// completed have put past retention.
    fn adopt_ids_horizons(&self) {
        let Some(store) = &self.store else { return };
        for (region, epochs) in self.batch.status().iter().enumerate() {
            if let Some(day) = epochs.last_day {
                crate::epochs::set_ids_horizon(store, &self.regions, region as RegionId, day);
            }
        }
    }

    /// Submits commands; the ticket resolves to their outcomes, in order, once each is
    /// decided and durable. The fast path: one call for many commands.
    ///
    /// A shard that is idle, with nothing waiting in its mailboxes, decides its share of the
    /// commands on the calling thread (under the shard's lock) rather than being woken for
    /// it: the call then takes as long as deciding them, about 0.1 µs a command. Only the
    /// durable write is waited for through the ticket.
    pub fn submit(&self, requests: Vec<Request>) -> Result<Ticket, EngineError> {
        if let Some(reason) = self.health.reason() {
            return Err(EngineError::Storage(reason.to_string()));
        }
        if let Some(refusal) = self.replica_status.as_ref().and_then(|status| status.refusal()) {
            return Err(EngineError::NotLeader(refusal));
        }
        let ts_ms = self.clock.now_ms();
        let (collector, ticket) = Collector::new(requests.len());
        let ticket = ticket.reporting(self.health.clone());
        // Room for an even share and some: a submission's commands spread about evenly,
        // and growing these vectors one doubling at a time would cost more than the slack.
        let shards = usize::from(self.shards);
        let share = requests.len().div_ceil(shards) + requests.len() / (4 * shards);
        let mut per_shard: Vec<Vec<(u32, Request)>> =
            (0..shards).map(|_| Vec::with_capacity(share)).collect();
        let mut declined = Vec::new();
        for (index, mut request) in requests.into_iter().enumerate() {
            if !request.command.amounts_are_valid() {
                // Malformed: neither deduplicated nor recorded (§6). Its shard declines
                // it, so the decline counts in the region of the account it names.
                request.command_id = None;
            }
            match self.admit(&request) {
                Ok(shard) => per_shard[usize::from(shard)].push((index as u32, request)),
                Err(reason) => {
                    let outcome = Outcome::Declined(reason);
                    self.ingress_declines.count(request.command.kind(), &outcome);
                    declined.push((index as u32, outcome));
                }
            }
        }
        if !declined.is_empty() {
            collector.fill(declined);
        }
        // This thread decides at most one shard's part itself, the largest, and only after
        // mailing the others: their threads decide in parallel with it. Deciding every
        // part here would leave the other shards' cores idle (docs/DECISIONS.md).
        let inline = (0..shards).max_by_key(|&shard| per_shard[shard].len()).unwrap_or(0);
        let inline_items = std::mem::take(&mut per_shard[inline]);
        for (shard, items) in per_shard.into_iter().enumerate() {
            if !items.is_empty() {
                let mail = Mail::Requests { ts_ms, items, collector: collector.clone() };
                self.router.ingress[shard]
                    .send(mail)
                    .map_err(|_| EngineError::Stopped(Stopped::SHUTDOWN))?;
            }
        }
        if !inline_items.is_empty() {
            let mail = Mail::Requests { ts_ms, items: inline_items, collector };
            let (ingress, internal) = (&self.router.ingress[inline], &self.router.internal[inline]);
            if let Err(mail) = self.cells[inline].try_apply(mail, ingress, internal) {
                ingress.send(mail).map_err(|_| EngineError::Stopped(Stopped::SHUTDOWN))?;
            }
        }
        Ok(ticket)
    }

    /// Runs one command and waits for its outcome. Not for async tasks: use
    /// [`Engine::submit`] and [`Ticket::outcomes`] there.
    pub fn execute(&self, request: Request) -> Result<Outcome, EngineError> {
        let mut outcomes = self.submit(vec![request])?.wait()?;
        outcomes.pop().ok_or(EngineError::Stopped(Stopped::SHUTDOWN))
    }

    /// Runs one command without an idempotency key.
    pub fn run(&self, command: Command) -> Result<Outcome, EngineError> {
        self.execute(Request::new(command))
    }

    /// Checks a request at the door and picks its shard, or declines it there.
    fn admit(&self, request: &Request) -> Result<ShardId, Reason> {
        let command = &request.command;
        // Invalid amounts go on to their shard, which declines them and counts them in the
        // region of the account they name.
        let shard = if let Command::OpenProfile { region } = *command {
            if self.regions.get(region).is_none() {
                return Err(Reason::UnknownRegion);
            }
            match &request.command_id {
                // A retry must reach the shard that remembers the first attempt.
                Some(id) => shard_of(fnv1a(id.as_bytes()), self.shards),
                None => {
                    shard_of(self.next_profile_shard.fetch_add(1, Ordering::Relaxed), self.shards)
                }
            }
        } else {
            // Every command but a profile opening has a routing id.
            shard_of(command.routing_id().unwrap_or_default(), self.shards)
        };
        if let Some(id) = request.command_id.as_ref().filter(|_| !command.is_read()) {
            // Released by the shard once the command's batch is durable (and its record
            // readable by every shard).
            self.claims.claim(id, command).map_err(|_| Reason::IdempotencyConflict)?;
        }
        Ok(shard)
    }

    /// Runs `inspect` on every shard at one consistent cut: every shard pauses between two
    /// inputs until all have been inspected, so no transfer is seen half-applied.
    pub fn cut<R, F>(&self, inspect: F) -> Result<Vec<R>, EngineError>
    where
        R: Send + 'static,
        F: Fn(&ShardState) -> R + Send + Sync + 'static,
    {
        self.cut_with_position(move |state, _| inspect(state))
    }

    /// [`Engine::cut`], also giving each shard's log position: its state is exactly its
    /// logged batches `0 .. position` (snapshots record it to replay the log after them).
    pub fn cut_with_position<R, F>(&self, inspect: F) -> Result<Vec<R>, EngineError>
    where
        R: Send + 'static,
        F: Fn(&ShardState, u64) -> R + Send + Sync + 'static,
    {
        let _one_at_a_time = self.cut_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let inspect = Arc::new(inspect);
        let barrier = Arc::new(Barrier::new(usize::from(self.shards)));
        let (results_tx, results_rx) = unbounded();
        for shard in 0..self.shards {
            let (inspect, barrier, results) =
                (inspect.clone(), barrier.clone(), results_tx.clone());
            let mail = Mail::Inspect(Box::new(move |state: &ShardState, position: u64| {
                let result = inspect(state, position);
                // Nobody moves on until every shard has been inspected.
                barrier.wait();
                let _ = results.send((shard, result));
            }));
            self.router.send_internal(shard, mail);
        }
        drop(results_tx);
        let mut results: Vec<(ShardId, R)> = results_rx.iter().collect();
        if results.len() != usize::from(self.shards) {
            return Err(EngineError::Stopped(Stopped::SHUTDOWN));
        }
        results.sort_by_key(|(shard, _)| *shard);
        Ok(results.into_iter().map(|(_, result)| result).collect())
    }

    /// The id of the region called `name`.
    pub fn region_id(&self, name: &str) -> Option<RegionId> {
        self.regions.id_of(name)
    }

    /// The engine's regions.
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// The clock that stamps commands.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How many shards there are.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// Whether the storage still takes writes. Once a write failed, nothing more is
    /// acknowledged ([`Engine::submit`] returns [`EngineError::Storage`]) until a restart,
    /// which recovers every acknowledged outcome.
    pub fn health(&self) -> Health {
        self.health.health()
    }

    /// How outcomes are made durable.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Commands waiting in each shard's ingress mailbox.
    pub fn queue_depths(&self) -> Vec<usize> {
        self.router.ingress.iter().map(|sender| sender.len()).collect()
    }

    /// Mail waiting in each shard's internal mailbox: transfer legs, epoch chunks, cuts.
    pub fn internal_depths(&self) -> Vec<usize> {
        self.router.internal.iter().map(|sender| sender.len()).collect()
    }

    /// A replica's role, term and leader (SPEC §14); `None` on a single node.
    pub fn replication(&self) -> Option<&Arc<ReplicaStatus>> {
        self.replica_status.as_ref()
    }

    /// Each shard's state digest, taken at one consistent cut: equal on every replica
    /// that applied the same batches (SPEC §14). It encodes every shard's whole state, so
    /// it pauses the shards for about as long as a checkpoint's copy would take.
    pub fn digests(&self) -> Result<Vec<u64>, EngineError> {
        self.cut(plafond_shards::digest::state_digest)
    }

    /// The RocksDB store, when durable.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// How far each shard's log is durable.
    pub(crate) fn marks(&self) -> &DurableMarks {
        &self.marks
    }

    /// Command ids submitted and not yet durable.
    pub fn ids_in_flight(&self) -> usize {
        self.claims.len()
    }

    /// Idempotency records held in memory: those of batches in flight, and with
    /// durability `none` every one within retention (the others are on disk).
    pub fn remembered_in_memory(&self) -> u64 {
        let in_flight: u64 =
            self.metrics.iter().map(|m| m.remembered_in_memory.load(Ordering::Relaxed)).sum();
        in_flight + self.ids.in_memory() as u64
    }

    /// Writes a checkpoint now (the checkpointer also takes them by time and log volume)
    /// and reports it; a durable engine only.
    pub fn checkpoint(&self) -> Result<CheckpointReport, EngineError> {
        let (Some(dir), Some(store)) = (&self.data_dir, &self.store) else {
            return Err(EngineError::Config("checkpoints need a durable engine".into()));
        };
        let mut setup = self.checkpointer_setup(dir.clone(), store.clone());
        checkpoint::checkpoint_once(&mut setup)?;
        Ok(self.checkpoint_report())
    }

    /// What the last checkpoint did.
    pub fn checkpoint_report(&self) -> CheckpointReport {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn checkpointer_setup(&self, data_dir: PathBuf, store: Arc<Store>) -> CheckpointerSetup {
        let clock = self.clock.clone();
        CheckpointerSetup {
            router: self.router.clone(),
            store: store.clone(),
            data_dir,
            policy: self.checkpoint_policy,
            capture_lock: self.capture_lock.clone(),
            report: self.checkpoints.clone(),
            metrics: self.metrics.clone(),
            now_ms: Box::new(move || clock.now_ms()),
            after: self.after_checkpoint(store),
            mac_key: self.mac_key.clone(),
        }
    }

    /// What follows each checkpoint: the log before the oldest kept one and past retention
    /// leaves the hot log, and idempotency records the epochs put past retention leave the
    /// disk.
    fn after_checkpoint(&self, store: Arc<Store>) -> Box<dyn FnMut(&std::path::Path) + Send> {
        let (shards, retention, clock) =
            (self.shards, self.log_retention.clone(), self.clock.clone());
        let key = self.mac_key.clone();
        let archived_bytes = self.archived_bytes.clone();
        let regions = self.regions.len() as RegionId;
        let mut horizons_compacted = Vec::new();
        Box::new(move |data_dir| {
            let now_ms = clock.now_ms();
            match retention::retain_log(&store, data_dir, shards, &retention, now_ms, key.as_ref())
            {
                Ok(retained) => {
                    archived_bytes.fetch_add(retained.segment_bytes, Ordering::Relaxed);
                }
                Err(error) => eprintln!(
                    "plafond: log retention failed ({error}); retried after the next checkpoint"
                ),
            }
            let horizons: Vec<_> = (0..regions).map(|region| store.ids_horizon(region)).collect();
            if horizons != horizons_compacted {
                retention::compact_ids(&store);
                horizons_compacted = horizons;
            }
        })
    }

    /// Captures every shard's state without stopping it (each at its own position, or
    /// with `consistent` all at one cut), once durable up to that position.
    pub(crate) fn capture(&self, consistent: bool) -> Result<Vec<Captured>, EngineError> {
        let _one_capture = self.capture_lock.lock().unwrap_or_else(|p| p.into_inner());
        if !consistent {
            return checkpoint::capture(&self.router, &self.metrics, false);
        }
        let _one_cut = self.cut_lock.lock().unwrap_or_else(|p| p.into_inner());
        checkpoint::capture(&self.router, &self.metrics, true)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The scheduler and the checkpointer first: an epoch or a checkpoint in progress
        // needs the shards to finish.
        drop(self.scheduler.take());
        drop(self.checkpointer.take());
        for sender in &self.router.ingress {
            let _ = sender.send(Mail::Stop);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The shards' cells hold their job senders too.
        self.cells.clear();
        // Every shard dropped its job sender: the writer drains and ends.
        if let Some(writer) = self.writer.take() {
            writer.join();
        }
        if let Some(replica) = self.replica.take() {
            replica.join();
        }
    }
}

/// FNV-1a: a stable hash for routing, identical across runs and builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
