//! The shard actor: a dedicated thread that drains its mailboxes in batches, applies each
//! input to its state, logs the batch and releases the replies once it is durable.
//!
//! Two mailboxes per shard: `ingress` (client commands, bounded: a full one pushes back on
//! submitters) and `internal` (credits and settles from other shards, epoch work,
//! inspections; unbounded so that the writer and other shards never block on a busy
//! shard: it holds at most two messages per transfer in flight, and those are bounded by
//! the ingress bound). `internal` is drained first. `docs/DECISIONS.md` says why a thread
//! and a crossbeam channel rather than an actix actor.
//!
//! The state lives in a [`ShardCell`], behind a lock: the shard thread holds it while it
//! drains a batch, and a submitter that finds the shard idle and its mailboxes empty
//! applies its commands itself, under the same lock, instead of waking the thread
//! ([`ShardCell::try_apply`]). One thread at a time still decides for the shard, in
//! mailbox order; the submitter only saves the two wake-ups of a hand-off.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, Sender};

use crate::apply::{apply, prefetch, Applied, Env, Input, Reply, PREFETCH_AHEAD};
use crate::calendar::{Calendar, Day};
use crate::command::{CommandId, Kind, Outcome, Posted, RegionId, Request, Rolled};
use crate::health::StorageHealth;
use crate::histogram::{DurationHistogram, Log2Histogram};
use crate::idempotency::{self, expiry_day, retention_of, IdempotencyRecord, Verdict};
use crate::ids::{shard_of, ShardId};
use crate::limits::{ROLL_ENTRY_ACCOUNTS_MAX, ROLL_ENTRY_HOLDS_MAX};
use crate::log::{BatchEncoder, Entry};
use crate::outcomes::{OutcomeCounters, OutcomeTally};
use crate::region::Regions;
use crate::remembered::{Claims, IdsHome, RememberedIds};
use crate::reply::{Collector, Slot};
use crate::state::{CaptureBuffers, ShardState, StateCapture};
use crate::store::{Durability, DurableMarks, JobSender, Release, Store, StoreError, WriteJob};

pub use crate::limits::BATCH_COMMANDS_MAX;
pub use crate::limits::CAPTURE_SLICE_ENTRIES;
pub use crate::limits::CAPTURE_STEP_BUDGET;
pub use crate::limits::CAPTURE_STEP_ENTRIES;
pub use crate::limits::INGRESS_MAILS_MAX;

/// A shard's state captured at one instant, with its log position: the state is exactly
/// the shard's logged batches `0 .. position`.
pub type Captured = (ShardState, u64);

/// A closure run on a shard's state with its log position (see [`Mail::Inspect`]).
pub type Inspection = Box<dyn FnOnce(&ShardState, u64) + Send>;

/// Outcomes for some slots of one collector.
type Fill = (Arc<Collector>, Vec<(u32, Outcome)>);

/// What a shard receives.
pub enum Mail {
    /// Client commands, each with its slot index in `collector`.
    Requests {
        /// When the submission was stamped at ingress (Unix ms); all its commands share it.
        ts_ms: i64,
        /// The commands, each with its slot index.
        items: Vec<(u32, Request)>,
        /// Where their outcomes go.
        collector: Arc<Collector>,
    },
    /// An input from another shard or from the batch service; `done` is told when it is
    /// durable.
    Input {
        /// The sender's time stamp (Unix ms).
        ts_ms: i64,
        /// The input to apply.
        input: Input,
        /// Told once the input is durable; `None` when nobody waits.
        done: Option<Sender<()>>,
    },
    /// Runs a closure on the state between two inputs (stats, audits), with the log
    /// position the state corresponds to: the batch in progress is flushed first, so the
    /// state is exactly the log's batches `0 .. position`.
    Inspect(Inspection),
    /// Captures the state at this point (see [`crate::table`]) without stopping the shard:
    /// the copy is made in steps between later batches, and `reply` gets it once it is
    /// complete and every batch before its position is durable. With a barrier, the shard
    /// waits at it before the instant, so captures of all shards form one consistent cut.
    Capture {
        /// Met by every shard before the instant, for a consistent cut.
        barrier: Option<Arc<Barrier>>,
        /// Gets the captured state and its log position.
        reply: Sender<Captured>,
        /// Where the tables are copied to (made ahead by the requester, see
        /// [`CaptureBuffers::prefaulted`]).
        buffers: CaptureBuffers,
    },
    /// Wakes the shard to copy the next step of a capture in progress.
    CaptureStep,
    /// A replica's follower (SPEC §14): batches of this shard were committed and written to
    /// its log; replay them through `apply`, checking every outcome against the leader's.
    Follow,
    /// A replica takes the lead: replay what is committed, then start deciding (log the
    /// configured rules, resend unsettled credits) and tell `done` the shard's latest time.
    Lead {
        /// Told the latest time the shard's state was stamped with, once it decides.
        done: Sender<i64>,
    },
    /// Ends the loop once everything before it is handled.
    Stop,
}

/// Every shard's mailboxes.
pub struct Router {
    /// Per shard, the bounded mailbox of client commands.
    pub ingress: Vec<Sender<Mail>>,
    /// Per shard, the unbounded mailbox of credits, settles, epoch chunks and inspections.
    pub internal: Vec<Sender<Mail>>,
}

impl Router {
    /// Sends to a shard's internal mailbox. It is unbounded and its receiver lives as long
    /// as the router, so this only fails while the engine is being torn down.
    pub fn send_internal(&self, shard: ShardId, mail: Mail) {
        if let Some(sender) = self.internal.get(usize::from(shard)) {
            let _ = sender.send(mail);
        }
    }
}

/// Counters a shard publishes for the pretty dump and `/metrics`.
#[derive(Default)]
pub struct ShardMetrics {
    /// Client commands per batch, of the batches that held client commands (not those of
    /// transfer legs, epoch chunks or cuts alone): its sum is the commands handled, its
    /// count the batches, so commands per batch is the mean batch size a client sees.
    pub batch_commands: Log2Histogram<BATCH_BUCKETS, 1>,
    /// Of those, the batches a submitter applied on its own thread ([`ShardCell::try_apply`]).
    pub inline_batches: AtomicU64,
    /// Batch service times, of every batch (epoch chunks too), from the first mail to the
    /// flush: its sum is the time the shard spent handling batches.
    pub service: DurationHistogram,
    /// Client commands answered, by kind and outcome (retries answered from their record
    /// included; a cross-shard transfer once it settles).
    pub outcomes: OutcomeCounters,
    /// Accounts the shard holds, as of its last batch.
    pub accounts: AtomicU64,
    /// Profiles the shard holds, as of its last batch (sizes a capture's buffers).
    pub profiles: AtomicU64,
    /// Holds in the shard's hold table (open, and closed ones kept), as of its last batch:
    /// an epoch sizes its chunks by them.
    pub holds: AtomicU64,
    /// The longest single epoch chunk applied since the batch service last reset it.
    pub roll_pause_max_ns: AtomicU64,
    /// The longest single step of a capture (checkpoint or snapshot) since the last
    /// checkpoint reset it: the pause a capture adds between two batches.
    pub capture_step_max_ns: AtomicU64,
    /// The most CPU time the shard's thread spent in one capture step since the last
    /// checkpoint reset it: the step's own work, without the time the thread waited for a
    /// core (which [`ShardMetrics::capture_step_max_ns`] includes).
    pub capture_step_max_cpu_ns: AtomicU64,
    /// Idempotency records of the shard's batches in flight, as of its last batch.
    pub remembered_in_memory: AtomicU64,
}

/// Buckets of [`ShardMetrics::batch_commands`]: the last one, from 2^13, holds batches of
/// [`BATCH_COMMANDS_MAX`].
pub const BATCH_BUCKETS: usize = 15;

const _: () = assert!(BATCH_COMMANDS_MAX < 1 << BATCH_BUCKETS);

/// What a shard does once its batch is durable.
pub struct ShardRelease {
    /// Command ids claimed at the door whose records the batch wrote: readable by every
    /// shard once durable, so their claims end, before anyone hears an outcome.
    claims: Vec<CommandId>,
    claims_table: Arc<Claims>,
    fills: Vec<Fill>,
    messages: Vec<(ShardId, Mail)>,
    done: Vec<Sender<()>>,
    captures: Vec<(Sender<Captured>, Captured)>,
    router: Arc<Router>,
}

impl Release for ShardRelease {
    fn release(self) {
        for id in &self.claims {
            self.claims_table.release(id);
        }
        for (collector, outcomes) in self.fills {
            collector.fill(outcomes);
        }
        for (shard, mail) in self.messages {
            self.router.send_internal(shard, mail);
        }
        for done in self.done {
            // Whoever waits may have given up; nothing is owed to them then.
            let _ = done.send(());
        }
        for (reply, captured) in self.captures {
            let _ = reply.send(captured);
        }
    }
}

/// Everything a shard thread needs.
pub struct ShardSetup {
    /// This shard's index.
    pub shard: ShardId,
    /// How many shards the engine has.
    pub shards: u16,
    /// The engine's regions.
    pub regions: Arc<Regions>,
    /// How batches are made durable; with `None` no log is encoded.
    pub durability: Durability,
    /// The store to recover the state from; `None` starts empty.
    pub store: Option<Arc<Store>>,
    /// The checkpoint to start from (a state and its log position), replaying the log
    /// after it; `None` replays the whole log.
    pub checkpoint: Option<Captured>,
    /// Command ids in flight at the engine's door, released once their batch is durable.
    pub claims: Arc<Claims>,
    /// Where idempotency records live once durable.
    pub ids: IdsHome,
    /// How far the writer has made each shard's log durable.
    pub marks: Arc<DurableMarks>,
    /// The group-commit writer's queue; `None` releases each batch at once.
    pub writer: Option<JobSender<ShardRelease>>,
    /// Every shard's mailboxes, for cross-shard messages.
    pub router: Arc<Router>,
    /// Where the shard publishes its counters.
    pub metrics: Arc<ShardMetrics>,
    /// A replica's shard: it starts as a follower, deciding nothing and logging nothing
    /// until [`Mail::Lead`]; its batches come from the leader's log ([`Mail::Follow`]).
    pub replicated: bool,
    /// Where a follower reports a replayed outcome that differs from the leader's.
    pub health: Arc<StorageHealth>,
}

/// The receiving ends of a shard's mailboxes, which only its thread reads.
pub struct Mailboxes {
    /// Client commands.
    pub ingress: Receiver<Mail>,
    /// Internal mail, drained before `ingress`.
    pub internal: Receiver<Mail>,
}

/// What a shard thread tells the engine once it has replayed its log: the cell its state
/// lives in, or why it could not start.
pub type Ready = (ShardId, Result<Arc<ShardCell>, StoreError>);

/// Replays the shard's log, tells `ready`, then serves `mailboxes` until [`Mail::Stop`].
pub fn run(mut setup: ShardSetup, mailboxes: Mailboxes, ready: Sender<Ready>) {
    let (mut state, from_seq) = match setup.checkpoint.take() {
        Some(checkpoint) => checkpoint,
        None => (ShardState::new(setup.shard, setup.shards, setup.regions.len()), 0),
    };
    let mut calendar = Calendar::new(&setup.regions);
    let next_seq = match &setup.store {
        Some(store) => recover(store, &setup.regions, &mut state, &mut calendar, from_seq),
        None => Ok(from_seq),
    };
    let next_seq = match next_seq {
        Ok(next_seq) => next_seq,
        Err(error) => {
            let _ = ready.send((setup.shard, Err(error)));
            return;
        }
    };
    setup.metrics.accounts.store(state.accounts.len() as u64, Ordering::Relaxed);
    setup.metrics.holds.store(state.holds.len() as u64, Ordering::Relaxed);
    let shard = setup.shard;
    // What recovery read is on disk: durable (and what the change stream may show).
    setup.marks.advance(shard, next_seq);
    setup.marks.advance_synced(shard, next_seq);
    let remembered = RememberedIds::new(setup.ids.clone());
    let mut actor = Actor {
        setup,
        state,
        calendar,
        next_seq,
        parked: HashMap::new(),
        held: Vec::new(),
        remembered,
        capture: None,
    };
    // A follower decides nothing: the leader did both, in the log it follows.
    if !actor.setup.replicated {
        actor.resend_credits();
        actor.adopt_rules();
    }
    let cell = Arc::new(ShardCell { actor: Mutex::new(actor) });
    let _ = ready.send((shard, Ok(cell.clone())));
    cell.serve(&mailboxes);
}

/// A shard's state and the code that changes it, behind the lock its thread and inline
/// submitters share: the shard thread takes it for each batch it drains from its
/// mailboxes; a submitter takes it to apply its commands on its own thread when the shard
/// is idle ([`ShardCell::try_apply`]), which spares both threads a wake-up. Either way one
/// thread at a time decides, in the order the mailbox would have given.
pub struct ShardCell {
    actor: Mutex<Actor>,
}

impl ShardCell {
    fn lock(&self) -> MutexGuard<'_, Actor> {
        // Nothing in the shard panics on input; if something did, the state is as the
        // last applied input left it, and the log says what was durable.
        self.actor.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The shard thread's loop: waits for mail, then drains a batch under the lock.
    fn serve(&self, mailboxes: &Mailboxes) {
        let Mailboxes { ingress, internal } = mailboxes;
        loop {
            // Wait without taking: mail is only taken under the lock, so a submitter that
            // finds both mailboxes empty under the lock knows everything sent before it
            // has been applied.
            let mut select = Select::new_biased();
            select.recv(internal);
            select.recv(ingress);
            select.ready();
            let mut actor = self.lock();
            let next = || internal.try_recv().or_else(|_| ingress.try_recv()).ok();
            // `ready` may report a mailbox spuriously: then wait again. (It cannot report a
            // closed one: the actor holds the router, so a sender of each lives.)
            let Some(first) = next() else { continue };
            if actor.batch(first, next) {
                return;
            }
        }
    }

    /// Applies `mail` on the calling thread if the shard is idle and both its mailboxes
    /// are empty, so that it overtakes neither an earlier submission nor internal mail
    /// (which the shard's thread takes first); gives it back otherwise.
    // The mail goes back by value to be sent as it is: boxing it would allocate per
    // submission on the hot path.
    #[allow(clippy::result_large_err)]
    pub fn try_apply(
        &self,
        mail: Mail,
        ingress: &Sender<Mail>,
        internal: &Sender<Mail>,
    ) -> Result<(), Mail> {
        let Ok(mut actor) = self.actor.try_lock() else {
            return Err(mail);
        };
        if !ingress.is_empty() || !internal.is_empty() {
            return Err(mail);
        }
        actor.batch(mail, || None);
        actor.setup.metrics.inline_batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Replays the shard's log from `from_seq` (the position of the checkpoint `state` was
/// loaded from, or 0 for an empty state) and returns the next free batch sequence number.
fn recover(
    store: &Store,
    regions: &Regions,
    state: &mut ShardState,
    calendar: &mut Calendar,
    from_seq: u64,
) -> Result<u64, StoreError> {
    let shard = state.shard;
    let next_seq = store.read_log(shard, from_seq, |seq, entries| {
        replay_batch(state, regions, calendar, seq, &entries)
    })?;
    Ok(next_seq.max(from_seq))
}

/// Applies logged batch `seq` of `state`'s shard again, entry by entry with its logged
/// time, as recovery and the auditor's replay of an archive do. Refuses (and leaves the
/// state part-way) when a replayed outcome is not the logged one: the log is then not
/// the history of this state. No idempotency lookup: the log only holds first uses of
/// command ids (a retry is answered from its record and not logged).
pub fn replay_batch(
    state: &mut ShardState,
    regions: &Regions,
    calendar: &mut Calendar,
    seq: u64,
    entries: &[Entry],
) -> Result<(), StoreError> {
    for entry in entries {
        let mut env = Env::new(regions, &mut *calendar);
        let applied = apply(state, &mut env, entry.ts_ms, &entry.input);
        if !applied.changed || !replayed_as_logged(entry, &applied) {
            let detail = format!(
                "logged {:?} and {:?}, replayed {:?} and {:?}",
                entry.outcome, entry.lazy, applied.reply, applied.lazy
            );
            return Err(StoreError::Diverged { shard: state.shard, seq, detail });
        }
    }
    Ok(())
}

/// Whether a replayed outcome and lazy changes are the logged ones. A roll logged by a
/// build before rolls recorded what they changed has no outcome, an entry of a build
/// before lazy changes were logged has none of them, and a lazy posting of a build before
/// their regions were logged has no region: what it replays to is what it did.
fn replayed_as_logged(entry: &Entry, replayed: &Applied) -> bool {
    let unrecorded_roll = matches!(entry.input, Input::Roll { .. }) && entry.outcome.is_none();
    let outcome = unrecorded_roll || replayed.logged_outcome() == entry.outcome.as_ref();
    let lazy = |logged: &Rolled| {
        let posted = |(logged, replayed): (&Posted, &Posted)| {
            logged.region.is_none_or(|_| logged.region == replayed.region)
                && Posted { region: None, ..*logged } == Posted { region: None, ..*replayed }
        };
        logged.expired == replayed.lazy.expired
            && logged.interest.len() == replayed.lazy.interest.len()
            && logged.interest.iter().zip(&replayed.lazy.interest).all(posted)
    };
    outcome && entry.lazy.as_ref().is_none_or(lazy)
}

/// CPU time the calling thread has used, in nanoseconds (0 where it cannot be read).
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `clock_gettime` writes one `timespec` through the pointer, which points to
    // a live, writable local; on failure it writes nothing and returns -1, and we read 0.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return 0;
    }
    (now.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(now.tv_nsec as u64)
}

/// A capture in progress on a shard.
struct CaptureInProgress {
    capture: StateCapture,
    position: u64,
    reply: Sender<Captured>,
}

struct Actor {
    setup: ShardSetup,
    state: ShardState,
    calendar: Calendar,
    next_seq: u64,
    /// Replies waiting for an outgoing transfer to settle, by its sequence number.
    parked: HashMap<u64, Vec<Slot>>,
    /// Transfer legs from other shards (credits, settles) that came while this replica's
    /// shard still followed, applied in arrival order once it takes the lead: a shard that
    /// took the lead first resends its unsettled credits at once, possibly before this
    /// shard was even told to lead, and a credit dropped here would be owed for ever (and
    /// answered as seen, without its money, once a later credit from the same shard
    /// passed it: `credits_seen` is a high-water mark). At most one resent credit per
    /// transfer the other shards had in flight when they took the lead: those are the only
    /// legs a follower's shard can be sent, and nothing is sent to it after its lead.
    held: Vec<(i64, Input, Option<Sender<()>>)>,
    /// Where command ids are looked up, and the records of batches in flight.
    remembered: RememberedIds,
    /// A checkpoint's or a snapshot's copy of the state, in progress.
    capture: Option<CaptureInProgress>,
}

/// One batch being built.
#[derive(Default)]
struct Batch {
    encoder: BatchEncoder,
    fills: Vec<Fill>,
    messages: Vec<(ShardId, Mail)>,
    done: Vec<Sender<()>>,
    /// Idempotency records made, encoded for the writer.
    records: Vec<(CommandId, Vec<u8>)>,
    /// Command ids of commands decided for the first time (see [`ShardRelease`]).
    claims: Vec<CommandId>,
    captures: Vec<(Sender<Captured>, Captured)>,
    commands: usize,
    stop: bool,
}

impl Actor {
    /// Credits whose settle never made it to disk: sent again. The target answers a credit
    /// it has seen with the same settle, so this is exactly-once.
    fn resend_credits(&self) {
        let setup = &self.setup;
        for (&seq, pending) in &self.state.pending {
            let input = Input::Credit {
                origin: setup.shard,
                seq,
                to: pending.to,
                amount_minor: pending.amount_minor,
            };
            let mail = Mail::Input { ts_ms: pending.ts_ms, input, done: None };
            setup.router.send_internal(shard_of(pending.to, setup.shards), mail);
        }
    }

    /// A follower's replay of the batches committed since the last one: the same
    /// `apply`, every outcome checked against the one the leader logged.
    fn follow(&mut self) {
        let Some(store) = self.setup.store.clone() else { return };
        let (regions, shard) = (self.setup.regions.clone(), self.setup.shard);
        match recover(&store, &regions, &mut self.state, &mut self.calendar, self.next_seq) {
            Ok(next_seq) => self.next_seq = next_seq,
            Err(error) => {
                // A replica that cannot reproduce the leader's outcomes must not lead: it
                // acknowledges nothing from here on, and says why.
                eprintln!("plafond: shard {shard}: following the leader's log: {error}");
                self.setup.health.fail(format!("shard {shard} diverged from the leader: {error}"));
            }
        }
    }

    /// Takes the lead: everything committed is replayed, then this shard decides, first the
    /// transfer legs other shards sent it while it still followed.
    fn lead(&mut self, done: Sender<i64>) {
        self.follow();
        self.setup.replicated = false;
        if !self.held.is_empty() {
            // Rare (another shard's thread must win the race with the host's loop), and
            // what an operator reading a failover's log should know happened.
            eprintln!(
                "plafond: shard {}: applies {} transfer legs sent before it took the lead",
                self.setup.shard,
                self.held.len()
            );
            let mut batch = Batch::default();
            for (ts_ms, input, done) in std::mem::take(&mut self.held) {
                self.handle(Mail::Input { ts_ms, input, done }, &mut batch);
            }
            self.flush(batch);
        }
        self.resend_credits();
        self.adopt_rules();
        let _ = done.send(self.state.clock_ms);
    }

    /// Logs the configured rules (and hold expiry, §12) of every region whose rules changed
    /// since the log was written (or were never set), so they apply from here on, and on
    /// every replay.
    fn adopt_rules(&mut self) {
        let mut batch = Batch::default();
        let regions = self.setup.regions.clone();
        for (index, region) in regions.iter().enumerate() {
            let region_id = index as RegionId;
            if self.state.rules_of(region_id) != Some(&region.rules) {
                let input = Input::SetRules { region: region_id, rules: region.rules.clone() };
                self.apply_one(self.state.clock_ms, &input, &mut batch);
            }
            let days = region.hold_expiry_days;
            if self.state.holds.expiry_days_of(region_id) != days {
                let input = Input::SetHoldExpiry { region: region_id, days };
                self.apply_one(self.state.clock_ms, &input, &mut batch);
            }
        }
        self.flush(batch);
    }

    /// Handles `first` and whatever `next` gives, up to [`BATCH_COMMANDS_MAX`] commands,
    /// as one batch; true if it held [`Mail::Stop`].
    fn batch(&mut self, first: Mail, mut next: impl FnMut() -> Option<Mail>) -> bool {
        let started = Instant::now();
        self.forget_durable();
        let mut batch = Batch::default();
        self.handle(first, &mut batch);
        while !batch.stop && batch.commands < BATCH_COMMANDS_MAX {
            let Some(mail) = next() else { break };
            self.handle(mail, &mut batch);
        }
        let stop = batch.stop;
        let metrics = self.setup.metrics.clone();
        if batch.commands > 0 {
            metrics.batch_commands.record(batch.commands as u64);
        }
        self.flush(batch);
        self.capture_step();
        metrics.accounts.store(self.state.accounts.len() as u64, Ordering::Relaxed);
        metrics.profiles.store(self.state.profiles.len() as u64, Ordering::Relaxed);
        metrics.holds.store(self.state.holds.len() as u64, Ordering::Relaxed);
        metrics.remembered_in_memory.store(self.remembered.unwritten() as u64, Ordering::Relaxed);
        metrics.service.record(started.elapsed().as_nanos() as u64);
        stop
    }

    /// Forgets the records of batches the writer has made durable (they are on disk).
    fn forget_durable(&mut self) {
        let durable = match self.setup.durability {
            Durability::None => return,
            Durability::Sync | Durability::Async => self.setup.marks.next_seq(self.setup.shard),
        };
        let regions = &self.setup.regions;
        self.remembered.durable_before(durable, |record| expiry_day(regions, record));
    }

    /// Applies an epoch's chunk of `region` to `day`, cut where what one roll logs would
    /// pass its bounds ([`Outcome::Rolled`]): rolling the parts in turn is rolling the
    /// whole, account by account.
    fn roll(
        &mut self,
        ts_ms: i64,
        region: RegionId,
        day: Day,
        range: (u32, u32),
        batch: &mut Batch,
    ) {
        let started = Instant::now();
        let (start, end) = range;
        let mut from = start;
        loop {
            let to = end.min(from.saturating_add(ROLL_ENTRY_ACCOUNTS_MAX));
            let to = self.state.holds.open_holds_cut(from, to, ROLL_ENTRY_HOLDS_MAX);
            // An empty chunk (an empty shard's) still rolls the region's day.
            let to = to.max(from);
            if from > start {
                // A part per batch, so that a batch's value stays within an archive
                // record whatever the chunk's holds.
                self.flush(std::mem::take(batch));
            }
            self.apply_one(ts_ms, &Input::Roll { region, day, start: from, end: to }, batch);
            from = to;
            if from >= end {
                break;
            }
        }
        self.expire_remembered();
        // An epoch chunk is the longest thing a shard does between two commands: the
        // pause the batch service causes.
        let pause_ns = started.elapsed().as_nanos() as u64;
        self.setup.metrics.roll_pause_max_ns.fetch_max(pause_ns, Ordering::Relaxed);
    }

    fn handle(&mut self, mail: Mail, batch: &mut Batch) {
        match mail {
            // Another shard of this node took the lead before this one: its leg is owed, and
            // is applied once this shard leads too.
            Mail::Input {
                ts_ms,
                input: input @ (Input::Credit { .. } | Input::Settle { .. }),
                done,
            } if self.setup.replicated => {
                self.held.push((ts_ms, input, done));
            }
            // A follower decides nothing (its node refuses clients, its batch service does not
            // run): dropped, the mail's collector and waiter hear that nothing was decided.
            Mail::Requests { .. } | Mail::Input { .. } if self.setup.replicated => {}
            Mail::Requests { ts_ms, items, collector } => {
                self.handle_requests(ts_ms, items, collector, batch);
            }
            Mail::Input { ts_ms, input: Input::Roll { region, day, start, end }, done } => {
                self.roll(ts_ms, region, day, (start, end), batch);
                // Told on release, so only once durable.
                batch.done.extend(done);
            }
            Mail::Input { ts_ms, input, done } => {
                let reply = self.apply_one(ts_ms, &input, batch);
                if let Reply::Settled { seq, outcome } = reply {
                    for slot in self.parked.remove(&seq).unwrap_or_default() {
                        self.setup.metrics.outcomes.count(Kind::Transfer, &outcome);
                        batch.fills.push((slot.collector, vec![(slot.index, outcome.clone())]));
                    }
                }
                // Told on release, so only once durable.
                batch.done.extend(done);
            }
            Mail::Inspect(inspect) => {
                self.flush(std::mem::take(batch));
                inspect(&self.state, self.next_seq);
            }
            Mail::Capture { barrier, reply, buffers } => {
                self.flush(std::mem::take(batch));
                if let Some(barrier) = barrier {
                    barrier.wait();
                }
                // A capture still in progress is dropped: its requester hears nothing.
                let capture = self.state.begin_capture_into(buffers);
                self.capture = Some(CaptureInProgress { capture, position: self.next_seq, reply });
            }
            Mail::CaptureStep => {}
            Mail::Follow => {
                self.flush(std::mem::take(batch));
                self.follow();
            }
            Mail::Lead { done } => {
                self.flush(std::mem::take(batch));
                self.lead(done);
            }
            Mail::Stop => batch.stop = true,
        }
    }

    fn handle_requests(
        &mut self,
        ts_ms: i64,
        items: Vec<(u32, Request)>,
        collector: Arc<Collector>,
        batch: &mut Batch,
    ) {
        batch.commands += items.len();
        let ids: Vec<Option<&CommandId>> = items.iter().map(|(_, r)| keyed_id(r)).collect();
        let prefetched = match self.remembered.prefetch(&ids) {
            Ok(prefetched) => prefetched,
            Err(error) => {
                // No command with an id can be decided safely: they are left unanswered
                // (their outcome is unknown to the client, who retries with the same id).
                eprintln!("plafond: shard {}: reading command ids: {error}", self.setup.shard);
                Vec::new()
            }
        };
        let mut outcomes = Vec::with_capacity(items.len());
        let mut items = items.into_iter();
        for (_, ahead) in items.as_slice().iter().take(PREFETCH_AHEAD) {
            prefetch(&self.state, ahead);
        }
        let mut position = 0;
        let mut tally = OutcomeTally::default();
        while let Some((index, request)) = items.next() {
            // Nearly every command misses the cache: start the miss of a later one.
            if let Some((_, ahead)) = items.as_slice().get(PREFETCH_AHEAD - 1) {
                prefetch(&self.state, ahead);
            }
            let found = prefetched.get(position);
            position += 1;
            let kind = request.command.kind();
            let reply =
                match keyed_id(&request).map(|id| (id, self.verdict(ts_ms, &request, found))) {
                    Some((id, Some(Verdict::New))) => {
                        // Its claim at the door ends once its record is durable.
                        batch.claims.push(id.clone());
                        self.apply_request(ts_ms, request, batch)
                    }
                    Some((id, verdict)) => {
                        // No record is made: the one it found (durable, or held by the claim of
                        // its own first use) answers any other use from now on.
                        self.setup.claims.release(id);
                        match verdict {
                            Some(Verdict::Retry(reply)) => reply,
                            Some(Verdict::Conflict) => Reply::Now(idempotency::CONFLICT),
                            Some(Verdict::New) | None => Reply::Nothing,
                        }
                    }
                    None => self.apply_request(ts_ms, request, batch),
                };
            match reply {
                Reply::Now(outcome) => {
                    tally.count(kind, &outcome);
                    outcomes.push((index, outcome));
                }
                Reply::Parked { seq } => {
                    let slot = Slot { collector: collector.clone(), index };
                    self.parked.entry(seq).or_default().push(slot);
                }
                Reply::Nothing | Reply::Settled { .. } | Reply::Recorded(_) => {}
            }
        }
        self.setup.metrics.outcomes.add(&tally);
        batch.fills.push((collector, outcomes));
    }

    /// What a command with an id gets from its record (§6), or `None` when that cannot be
    /// known (its lookup failed, or the record is inconsistent with the state).
    fn verdict(
        &mut self,
        ts_ms: i64,
        request: &Request,
        prefetched: Option<&Option<IdempotencyRecord>>,
    ) -> Option<Verdict> {
        let id = keyed_id(request)?;
        let record = match prefetched {
            Some(found) => self.remembered.get(id, found.as_ref()),
            // The lookup failed: only a record of a batch in flight can answer.
            None => Some(self.remembered.get(id, None)?),
        };
        let Some(record) = record else {
            return Some(Verdict::New);
        };
        let regions = &self.setup.regions;
        let now_ms = self.state.clock_ms.max(ts_ms);
        let today = self.calendar.business_day(regions, record.region, now_ms);
        let retention_days = retention_of(regions, record.region);
        let verdict = idempotency::check(Some(record), &request.command, today, retention_days);
        if let Verdict::Retry(Reply::Parked { seq }) = verdict {
            // A pending record always has its transfer in the state; if not, the disk
            // and the state disagree, and no answer is safe.
            if !self.state.pending.contains_key(&seq) {
                let shard = self.setup.shard;
                eprintln!(
                    "plafond: shard {shard}: command id {} waits on no transfer",
                    id.as_str()
                );
                return None;
            }
        }
        Some(verdict)
    }

    fn apply_request(&mut self, ts_ms: i64, request: Request, batch: &mut Batch) -> Reply {
        self.apply_one(ts_ms, &Input::Client(request), batch)
    }

    fn apply_one(&mut self, ts_ms: i64, input: &Input, batch: &mut Batch) -> Reply {
        let mut env = Env::new(&self.setup.regions, &mut self.calendar);
        let applied = apply(&mut self.state, &mut env, ts_ms, input);
        // Durability `none` writes no log: encoding it would be thrown away.
        if applied.changed && self.setup.durability != Durability::None {
            batch.encoder.push(ts_ms, input, applied.logged_outcome(), &applied.lazy);
        }
        if let Some((shard, input)) = applied.message {
            let mail = Mail::Input { ts_ms: self.state.clock_ms, input, done: None };
            batch.messages.push((shard, mail));
        }
        if let Some((id, mut record)) = applied.remember {
            record.batch_seq = self.next_seq;
            if self.setup.durability != Durability::None {
                batch.records.push((id.clone(), record.encode()));
            }
            self.remembered.remember(self.next_seq, id, record);
        }
        applied.reply
    }

    /// Drops records past retention kept in memory (durability `none`; on disk the
    /// compaction filter does it), a bounded number per epoch chunk.
    fn expire_remembered(&mut self) {
        let regions = &self.setup.regions;
        let rolled = &self.state.rolled_day;
        let today_of =
            |region: RegionId| rolled.get(usize::from(region)).copied().unwrap_or(Day::MIN);
        self.remembered.expire(today_of, |record| expiry_day(regions, record));
    }

    /// Copies the next step of a capture in progress; once complete, hands it over as
    /// soon as every batch before its position is durable (with an empty batch, released
    /// in order after them).
    fn capture_step(&mut self) {
        let Some(mut progress) = self.capture.take() else { return };
        let started = Instant::now();
        let cpu_started_ns = thread_cpu_ns();
        let mut complete = false;
        for _ in 0..CAPTURE_STEP_ENTRIES / CAPTURE_SLICE_ENTRIES {
            complete = self.state.capture_step(CAPTURE_SLICE_ENTRIES);
            if complete || started.elapsed() >= CAPTURE_STEP_BUDGET {
                break;
            }
        }
        let pause_ns = started.elapsed().as_nanos() as u64;
        self.setup.metrics.capture_step_max_ns.fetch_max(pause_ns, Ordering::Relaxed);
        let cpu_ns = thread_cpu_ns().saturating_sub(cpu_started_ns);
        self.setup.metrics.capture_step_max_cpu_ns.fetch_max(cpu_ns, Ordering::Relaxed);
        if !complete {
            self.capture = Some(progress);
            // Keep going when no command comes: the shard wakes up for the next step.
            self.setup.router.send_internal(self.setup.shard, Mail::CaptureStep);
            return;
        }
        match self.state.finish_capture(progress.capture) {
            Ok(state) => {
                let captured = (state, progress.position);
                let batch =
                    Batch { captures: vec![(progress.reply, captured)], ..Batch::default() };
                self.flush(batch);
            }
            Err(capture) => {
                progress.capture = capture;
                self.capture = Some(progress);
            }
        }
    }

    fn flush(&mut self, batch: Batch) {
        // The check run on every state read from a file, paired before every write: in a
        // debug build, a state that breaks an invariant is this build's bug, stopped
        // before it is logged (linear in the state, so not in release builds).
        #[cfg(debug_assertions)]
        if let Err(error) = self.state.check() {
            panic!("shard {} broke an invariant of its state: {error}", self.setup.shard);
        }
        let release = ShardRelease {
            claims: batch.claims,
            claims_table: self.setup.claims.clone(),
            fills: batch.fills,
            messages: batch.messages,
            done: batch.done,
            captures: batch.captures,
            router: self.setup.router.clone(),
        };
        let (Some(writer), Durability::Sync | Durability::Async) =
            (&self.setup.writer, self.setup.durability)
        else {
            // Nothing to wait for: what the batch remembered is as durable as it gets, and
            // in the table every shard reads before anyone hears an outcome.
            let regions = &self.setup.regions;
            self.remembered.durable_before(u64::MAX, |record| expiry_day(regions, record));
            release.release();
            return;
        };
        let value = (!batch.encoder.is_empty()).then(|| batch.encoder.finish());
        let seq = self.next_seq;
        if value.is_some() {
            self.next_seq += 1;
        }
        let job = WriteJob { shard: self.setup.shard, seq, value, records: batch.records, release };
        // If the writer is gone the engine is stopping: dropping the release drops the
        // collectors, and their tickets report that the engine stopped.
        let _ = writer.send(job);
    }
}

/// A request's command id, if it is one that is remembered (reads ignore theirs).
fn keyed_id(request: &Request) -> Option<&CommandId> {
    request.command_id.as_ref().filter(|_| !request.command.is_read())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    #[test]
    fn a_lazy_posting_logged_without_its_region_replays_to_any_region_and_one_with_to_its_own() {
        let input = Input::Client(Request::new(Command::Deposit { account: 5, amount_minor: 1 }));
        let posted = Posted { account: 5, amount_minor: 7, balance_minor: 1_008, region: Some(3) };
        let replayed = Applied {
            reply: Reply::Now(Outcome::Done { balance_minor: 1_008 }),
            changed: true,
            message: None,
            remember: None,
            lazy: Rolled { interest: vec![posted], expired: Vec::new() },
        };
        let logged = |region, amount_minor| Entry {
            ts_ms: 0,
            input: input.clone(),
            outcome: replayed.logged_outcome().cloned(),
            lazy: Some(Rolled {
                interest: vec![Posted { region, amount_minor, ..posted }],
                expired: Vec::new(),
            }),
        };
        assert!(replayed_as_logged(&logged(Some(3), 7), &replayed));
        assert!(replayed_as_logged(&logged(None, 7), &replayed), "a version 3 posting");
        assert!(!replayed_as_logged(&logged(Some(4), 7), &replayed), "another region");
        assert!(!replayed_as_logged(&logged(None, 8), &replayed), "another amount");
        let nothing = Entry { lazy: Some(Rolled::default()), ..logged(None, 7) };
        assert!(!replayed_as_logged(&nothing, &replayed), "a posting not logged");
    }
}
