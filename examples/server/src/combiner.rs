//! Combines the engine submissions of many connections into one.
//!
//! Every engine submission has fixed costs: a collector, a message to each shard that has
//! commands in it (and a thread wake-up if that shard was idle), a write job, a wake-up of
//! whoever awaits it. One connection's pipeline is a few dozen commands at most, and
//! without pipelining it is one, so per-connection submissions pay these costs often.
//!
//! Here the first connection to submit starts a flush task, which yields once to the
//! runtime: every other connection that has requests ready appends theirs meanwhile. The
//! task then sends everything gathered as one submission and hands each connection its
//! share of the outcomes. Connections that come while it awaits the engine gather for the
//! next flush task, so submissions overlap. The flush is a task of its own, not part of
//! the first connection's future, so a connection that stops polling (its client does
//! not read) cannot hold up the others. Gatherings reach the engine in the order they
//! were taken, and one submission carries at most [`COMBINED_REQUESTS_MAX`] requests, in
//! whole batches: a connection's own commands stay in order, even with several of its
//! batches in flight; commands of different connections were never ordered.
//!
//! Who goes first when the engine is busy: a batch from a client that keeps up with its
//! replies (a terminal, a payment gateway sending requests as they come, `redis-benchmark
//! -P 64`: below the per-connection floor of queued commands, nothing more waiting in its
//! input) goes in the *fresh* lane; a batch from a client ahead of its replies goes in the
//! *backlogged* lane (the connection decides which, `Connection::lane`). Every submission
//! takes the fresh lane first and never mixes the two (the sparse-flow rule of FQ-CoDel),
//! and the engine holds at most [`ENGINE_COMMANDS_IN_FLIGHT_MAX`] commands at a time, so
//! that what waits, waits here, where a fresh batch can pass it. Without the lanes, 500 clients that pipeline without reading kept 64k commands queued in the
//! shards' mailboxes, and a well-behaved client's p50 was 1.9 s (issue 15). A
//! connection's batches stay in order: it sends a fresh batch only while no batch of its
//! own waits in the backlogged lane, and a submission takes backlogged batches only once
//! it has taken every fresh one.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};

use plafond::{Engine, Outcome, Request};

pub use crate::limits::{
    BACKLOGGED_COMMANDS_IN_ENGINE_MAX, COMBINED_REQUESTS_MAX, ENGINE_COMMANDS_IN_FLIGHT_MAX,
};

/// One connection's share of a combined submission's outcomes.
pub struct Outcomes {
    all: Arc<Vec<Outcome>>,
    range: Range<usize>,
}

impl Outcomes {
    /// The connection's outcomes, in the order it submitted the requests.
    pub fn as_slice(&self) -> &[Outcome] {
        self.all.get(self.range.clone()).unwrap_or_default()
    }
}

/// What a connection gets back: its outcomes, or why the engine gave none.
pub type Answer = Result<Outcomes, String>;

/// One connection waiting in a gathering.
struct Part {
    range: Range<usize>,
    answer: oneshot::Sender<Answer>,
}

/// Which lane a batch waits in; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Its client keeps up with its replies.
    Fresh,
    /// Its client is ahead of its replies.
    Backlogged,
}

/// Batches waiting in one lane, in arrival order.
#[derive(Default)]
struct Queue {
    requests: Vec<Request>,
    parts: Vec<Part>,
}

impl Queue {
    /// The whole parts from the front whose requests fit `room` (at least one), with their
    /// requests; the rest stays, in order.
    fn take(&mut self, room: usize) -> (Vec<Request>, Vec<Part>) {
        let fitting = self
            .parts
            .iter()
            .position(|part| part.range.end > room)
            .map_or(self.parts.len(), |index| index.max(1));
        if fitting == self.parts.len() {
            // The next gathering will likely be as large: spare it the regrowing.
            let capacity = self.requests.len();
            let requests = std::mem::replace(&mut self.requests, Vec::with_capacity(capacity));
            return (requests, std::mem::take(&mut self.parts));
        }
        // Some parts stay, so `fitting` is at least one and within them.
        let taken_requests = self.parts[fitting - 1].range.end;
        let rest_parts = self.parts.split_off(fitting);
        let rest_requests = self.requests.split_off(taken_requests);
        let parts = std::mem::replace(&mut self.parts, rest_parts);
        let requests = std::mem::replace(&mut self.requests, rest_requests);
        for part in &mut self.parts {
            part.range = part.range.start - taken_requests..part.range.end - taken_requests;
        }
        (requests, parts)
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }
}

/// The requests gathered for the next submission.
#[derive(Default)]
struct Gathering {
    fresh: Queue,
    backlogged: Queue,
    /// Whether a flush task will take this gathering: later connections only append.
    flushing: bool,
}

impl Gathering {
    /// Whole parts, the fresh lane's first, that fit `room` (at least one of a lane with
    /// room at all), or `None` if nothing waiting has room; `flushing` stays set if some
    /// are left for another flush.
    fn take(&mut self, room: Room) -> Option<(Vec<Request>, Vec<Part>)> {
        let (mut requests, mut parts) = match room.fresh {
            0 => (Vec::new(), Vec::new()),
            fresh => self.fresh.take(fresh),
        };
        // Backlogged batches only in a submission without fresh ones: while clients that
        // keep up with their replies have work, they get the engine (shared with what is
        // already in it), not what a fixed split would leave them.
        if parts.is_empty() && room.backlogged > 0 {
            (requests, parts) = self.backlogged.take(room.backlogged);
        }
        if parts.is_empty() && !(self.fresh.is_empty() && self.backlogged.is_empty()) {
            return None;
        }
        self.flushing = !(self.fresh.is_empty() && self.backlogged.is_empty());
        Some((requests, parts))
    }
}

/// How many more commands of each lane the engine may be handed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Room {
    fresh: usize,
    backlogged: usize,
}

impl Room {
    /// The room left with `in_engine` commands handed and not answered: backlogged
    /// batches leave [`ENGINE_COMMANDS_IN_FLIGHT_MAX`] `-`
    /// [`BACKLOGGED_COMMANDS_IN_ENGINE_MAX`] to fresh ones, so a fresh batch goes to the
    /// engine at once, into the next group commit, not after the one in progress.
    fn left(in_engine: usize) -> Room {
        let fresh = ENGINE_COMMANDS_IN_FLIGHT_MAX.saturating_sub(in_engine);
        let backlogged = BACKLOGGED_COMMANDS_IN_ENGINE_MAX.saturating_sub(in_engine);
        Room {
            fresh: fresh.min(COMBINED_REQUESTS_MAX),
            backlogged: backlogged.min(COMBINED_REQUESTS_MAX),
        }
    }
}

/// What one look at the gathering did.
enum HandOver {
    /// Batches wait, and none has room in the engine.
    NoRoom,
    /// Nothing to hand over (every batch was abandoned, or another flush took them).
    Nothing,
    /// Handed to the engine: its ticket, the parts to answer, and how many commands.
    Handed {
        submitted: Result<plafond::Ticket, plafond::EngineError>,
        parts: Vec<Part>,
        handed: usize,
    },
}

/// A connection's answer to come; resolves once the engine has decided every request.
pub struct Pending {
    answered: oneshot::Receiver<Answer>,
}

impl Pending {
    /// The answer if it is there already.
    pub fn try_answer(&mut self) -> Option<Answer> {
        match self.answered.try_recv() {
            Ok(answer) => Some(answer),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => {
                Some(Err("the submission was dropped".into()))
            }
        }
    }

    /// Waits for the answer. Cancel-safe: dropping this future loses nothing but the wait.
    pub async fn answer(&mut self) -> Answer {
        (&mut self.answered).await.unwrap_or_else(|_| Err("the submission was dropped".into()))
    }
}

/// The server's one combiner; see the module documentation.
pub struct Combiner {
    engine: Arc<Engine>,
    gathering: Mutex<Gathering>,
    /// Held from taking a gathering until it is handed to the engine, so that gatherings
    /// reach the engine in the order they were taken: a connection with two batches in
    /// flight must not have the later one applied first.
    handing_over: Mutex<()>,
    /// Commands handed to the engine and not yet answered.
    in_engine: AtomicUsize,
    /// Told when an answer brings `in_engine` down; the one flush waiting for room waits on it.
    room_made: Notify,
    submissions: AtomicU64,
    requests: AtomicU64,
}

impl Combiner {
    /// A combiner in front of `engine`.
    pub fn new(engine: Arc<Engine>) -> Arc<Combiner> {
        Arc::new(Combiner {
            engine,
            gathering: Mutex::default(),
            handing_over: Mutex::default(),
            in_engine: AtomicUsize::new(0),
            room_made: Notify::new(),
            submissions: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        })
    }

    /// Queues `requests` for the next submission in `lane` (leaving the vector empty, its
    /// capacity kept). Must be called from within a tokio runtime, which runs the flush.
    pub fn submit(self: &Arc<Self>, requests: &mut Vec<Request>, lane: Lane) -> Pending {
        let (answer, answered) = oneshot::channel();
        let starts_flush = {
            let mut gathering = lock(&self.gathering);
            let queue = match lane {
                Lane::Fresh => &mut gathering.fresh,
                Lane::Backlogged => &mut gathering.backlogged,
            };
            let start = queue.requests.len();
            queue.requests.append(requests);
            let range = start..queue.requests.len();
            queue.parts.push(Part { range, answer });
            !std::mem::replace(&mut gathering.flushing, true)
        };
        if starts_flush {
            self.start_flush();
        } else if lane == Lane::Fresh {
            // The flush of this gathering may be waiting for room for backlogged batches
            // only; there may be room for this one.
            self.room_made.notify_one();
        }
        Pending { answered }
    }

    /// A plain function, so that `flush` starting the next flush is not a future that
    /// contains itself.
    fn start_flush(self: &Arc<Self>) {
        tokio::spawn(self.clone().flush());
    }

    async fn flush(self: Arc<Self>) {
        // Every connection the runtime has ready runs before this task resumes.
        tokio::task::yield_now().await;
        // Then it waits for room in the engine (gathering meanwhile): only one flush task
        // waits at a time, the one of the gathering not yet taken.
        let (submitted, parts, handed) = loop {
            match self.hand_over() {
                HandOver::NoRoom => self.room_made.notified().await,
                HandOver::Nothing => return,
                HandOver::Handed { submitted, parts, handed } => break (submitted, parts, handed),
            }
        };
        let outcomes = match submitted {
            Ok(ticket) => ticket.outcomes().await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        self.in_engine.fetch_sub(handed, Ordering::AcqRel);
        // A stored permit if no flush waits yet: the next one to check finds room at once.
        self.room_made.notify_one();
        answer_all(outcomes, parts);
    }

    /// Takes what has room from the gathering and hands it to the engine, in the order
    /// gatherings are taken.
    fn hand_over(self: &Arc<Self>) -> HandOver {
        let _order = lock(&self.handing_over);
        let (requests, parts, more) = {
            let mut gathering = lock(&self.gathering);
            let room = Room::left(self.in_engine.load(Ordering::Acquire));
            let Some((requests, parts)) = gathering.take(room) else {
                return HandOver::NoRoom;
            };
            (requests, parts, gathering.flushing)
        };
        let (requests, parts) = without_abandoned(requests, parts);
        if more {
            // More than one submission's worth was gathered: the rest goes next.
            self.start_flush();
        }
        if parts.is_empty() {
            return HandOver::Nothing;
        }
        let handed = requests.len();
        self.in_engine.fetch_add(handed, Ordering::AcqRel);
        self.submissions.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(handed as u64, Ordering::Relaxed);
        // `submit` only blocks when a shard's bounded mailbox is full: that is the
        // engine's back-pressure, and it reaches the clients through TCP.
        HandOver::Handed { submitted: self.engine.submit(requests), parts, handed }
    }

    /// Engine submissions made so far, and the requests they carried.
    pub fn counts(&self) -> (u64, u64) {
        (self.submissions.load(Ordering::Relaxed), self.requests.load(Ordering::Relaxed))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The locks are held only to move vectors and to hand them over; a panic there leaves
    // nothing half-done that a later submission could misread.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops the parts whose connection went away before they reached the engine: their
/// client will never read the outcomes, and running them would only delay everyone else
/// (1,000 clients that disconnected once kept the engine busy for 118 s, issue 15).
fn without_abandoned(requests: Vec<Request>, parts: Vec<Part>) -> (Vec<Request>, Vec<Part>) {
    if !parts.iter().any(|part| part.answer.is_closed()) {
        return (requests, parts);
    }
    let mut requests: Vec<Option<Request>> = requests.into_iter().map(Some).collect();
    let mut kept_requests = Vec::with_capacity(requests.len());
    let mut kept_parts = Vec::with_capacity(parts.len());
    for part in parts.into_iter().filter(|part| !part.answer.is_closed()) {
        let start = kept_requests.len();
        let taken = requests.get_mut(part.range.clone()).unwrap_or_default();
        kept_requests.extend(taken.iter_mut().filter_map(Option::take));
        kept_parts.push(Part { range: start..kept_requests.len(), answer: part.answer });
    }
    (kept_requests, kept_parts)
}

fn answer_all(outcomes: Result<Vec<Outcome>, String>, parts: Vec<Part>) {
    match outcomes {
        Ok(outcomes) => {
            let all = Arc::new(outcomes);
            for part in parts {
                let share = Outcomes { all: all.clone(), range: part.range };
                // A connection that went away no longer needs its answer.
                let _ = part.answer.send(Ok(share));
            }
        }
        Err(error) => {
            for part in parts {
                let _ = part.answer.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plafond::{AccountKind, Command, EngineConfig};

    fn open_cards(engine: &Engine, cards: usize) -> Vec<u64> {
        let region = engine.region_id("eu-west").expect("a built-in region");
        let Ok(Outcome::ProfileOpened { profile }) = engine.run(Command::OpenProfile { region })
        else {
            panic!("profile opens");
        };
        (0..cards)
            .map(|_| {
                let kind = AccountKind::Checking;
                let command = Command::OpenAccount { profile, kind, opening: None };
                match engine.run(command) {
                    Ok(Outcome::AccountOpened { card: Some(card), .. }) => card,
                    other => panic!("account opens: {other:?}"),
                }
            })
            .collect()
    }

    #[test]
    fn each_connection_gets_its_own_outcomes_in_order_and_submissions_combine() {
        let engine = Arc::new(Engine::open(EngineConfig::in_memory()).expect("engine opens"));
        let cards = open_cards(&engine, 8);
        for &card in &cards {
            let deposit = Command::Deposit { account: card, amount_minor: 1_000_000 };
            assert!(matches!(engine.run(deposit), Ok(Outcome::Done { .. })));
        }
        // The opening deposit of the region, plus ours.
        let Ok(Outcome::Account(view)) = engine.run(Command::ReadAccount { account: cards[0] })
        else {
            panic!("the account reads");
        };
        let start = view.balance_minor;
        let combiner = Combiner::new(engine.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("a runtime");
        const ROUNDS: u64 = 50;
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for (connection, &card) in cards.iter().enumerate() {
                let combiner = combiner.clone();
                tasks.push(tokio::spawn(async move {
                    let mut requests = Vec::new();
                    for round in 0..ROUNDS {
                        // Pays of 1, 2, 3 minor units: each balance tells its pays apart.
                        for amount_minor in 1..=3 {
                            requests.push(Request::new(Command::Pay { card, amount_minor }));
                        }
                        requests.push(Request::new(Command::ReadAccount { account: card }));
                        let answer = combiner.submit(&mut requests, Lane::Fresh).answer().await;
                        assert!(requests.is_empty(), "the requests were taken");
                        let outcomes = answer.expect("the engine answers");
                        let balance_after = start - 6 * (round + 1);
                        let balances: Vec<u64> = outcomes
                            .as_slice()
                            .iter()
                            .map(|outcome| match outcome {
                                Outcome::Approved { balance_minor, .. } => *balance_minor,
                                Outcome::Account(view) => view.balance_minor,
                                other => panic!("connection {connection}: {other:?}"),
                            })
                            .collect();
                        let expected =
                            [balance_after + 5, balance_after + 3, balance_after, balance_after];
                        assert_eq!(balances, expected, "connection {connection}, round {round}");
                    }
                }));
            }
            for task in tasks {
                task.await.expect("no connection panics");
            }
        });
        let (submissions, requests) = combiner.counts();
        assert_eq!(requests, 8 * ROUNDS * 4);
        assert!(submissions <= 8 * ROUNDS, "never more submissions than calls");
    }

    #[test]
    fn connections_ready_together_share_one_submission() {
        let engine = Arc::new(Engine::open(EngineConfig::in_memory()).expect("engine opens"));
        let combiner = Combiner::new(engine);
        // One thread: the flush task's yield lets every other ready connection append first.
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        runtime.block_on(async {
            let tasks: Vec<_> = (0..8u64)
                .map(|account| {
                    let combiner = combiner.clone();
                    tokio::spawn(async move {
                        let mut requests = vec![Request::new(Command::ReadAccount { account })];
                        combiner.submit(&mut requests, Lane::Fresh).answer().await
                    })
                })
                .collect();
            for task in tasks {
                let answer = task.await.expect("no task panics").expect("the engine answers");
                assert!(matches!(answer.as_slice(), [Outcome::Declined(_)]));
            }
        });
        assert_eq!(combiner.counts(), (1, 8));
    }

    #[test]
    fn a_connection_that_never_awaits_holds_up_no_one() {
        let engine = Arc::new(Engine::open(EngineConfig::in_memory()).expect("engine opens"));
        let combiner = Combiner::new(engine);
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a runtime");
        runtime.block_on(async {
            // The first submitter starts the flush, then never polls its answer (its client
            // stopped reading); the second must be answered all the same.
            let mut first = vec![Request::new(Command::ReadAccount { account: 1 })];
            let _never_awaited = combiner.submit(&mut first, Lane::Fresh);
            let mut second = vec![Request::new(Command::ReadAccount { account: 2 })];
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                combiner.submit(&mut second, Lane::Fresh).answer(),
            )
            .await
            .expect("answered without the first connection's help")
            .expect("the engine answers");
            assert_eq!(answer.as_slice().len(), 1);
        });
    }

    #[test]
    fn the_requests_of_a_connection_gone_before_the_flush_never_run() {
        let engine = Arc::new(Engine::open(EngineConfig::in_memory()).expect("engine opens"));
        let cards = open_cards(&engine, 1);
        let card = cards[0];
        let read = || Request::new(Command::ReadAccount { account: card });
        let Ok(Outcome::Account(before)) = engine.execute(read()) else { panic!("reads") };
        let combiner = Combiner::new(engine.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        runtime.block_on(async {
            // Both gather before the flush task runs; the first connection then goes away.
            let mut gone = vec![Request::new(Command::Pay { card, amount_minor: 7 })];
            drop(combiner.submit(&mut gone, Lane::Fresh));
            let mut staying = vec![read()];
            let answer = combiner.submit(&mut staying, Lane::Fresh).answer().await.expect("answered");
            assert!(
                matches!(answer.as_slice(), [Outcome::Account(view)] if view.balance_minor == before.balance_minor),
                "the abandoned pay did not run: {:?}",
                answer.as_slice()
            );
        });
        assert_eq!(combiner.counts(), (1, 1));
    }

    /// A gathering with `batches` appended in order: (lane, first account, requests).
    fn gathering_of(batches: &[(Lane, u64, usize)]) -> Gathering {
        let mut gathering = Gathering::default();
        for &(lane, first, count) in batches {
            let queue = match lane {
                Lane::Fresh => &mut gathering.fresh,
                Lane::Backlogged => &mut gathering.backlogged,
            };
            let start = queue.requests.len();
            let accounts = first..first + count as u64;
            queue
                .requests
                .extend(accounts.map(|account| Request::new(Command::ReadAccount { account })));
            let (answer, _) = oneshot::channel();
            queue.parts.push(Part { range: start..queue.requests.len(), answer });
        }
        gathering.flushing = true;
        gathering
    }

    /// The accounts a taken submission reads, part by part.
    fn accounts(requests: &[Request], parts: &[Part]) -> Vec<Vec<u64>> {
        let account = |request: &Request| match request.command {
            Command::ReadAccount { account } => account,
            _ => unreachable!("only reads are gathered here"),
        };
        parts
            .iter()
            .map(|part| requests[part.range.clone()].iter().map(account).collect())
            .collect()
    }

    #[test]
    fn fresh_batches_pass_backlogged_ones_and_each_lane_keeps_its_order() {
        use Lane::{Backlogged, Fresh};
        let mut gathering = gathering_of(&[
            (Backlogged, 100, 3),
            (Fresh, 200, 2),
            (Backlogged, 110, 2),
            (Fresh, 210, 1),
        ]);
        // The fresh ones first, alone.
        let (requests, parts) = gathering.take(Room { fresh: 5, backlogged: 5 }).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![200, 201], vec![210]]);
        assert!(gathering.flushing, "the backlogged ones wait for the next flush");
        // Then the backlogged ones, in their order.
        let (requests, parts) = gathering.take(Room { fresh: 100, backlogged: 100 }).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![100, 101, 102], vec![110, 111]]);
        assert!(!gathering.flushing);
    }

    #[test]
    fn a_take_fills_its_room_with_whole_batches_and_takes_at_least_one() {
        use Lane::{Backlogged, Fresh};
        let mut gathering = gathering_of(&[(Fresh, 0, 4), (Fresh, 10, 4), (Backlogged, 20, 1)]);
        // A first batch larger than the room goes alone; a fresh batch left over keeps
        // the backlogged one out.
        let (requests, parts) = gathering.take(Room { fresh: 3, backlogged: 3 }).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![0, 1, 2, 3]]);
        let (requests, parts) = gathering.take(Room { fresh: 4, backlogged: 4 }).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![10, 11, 12, 13]]);
        let (requests, parts) = gathering.take(Room { fresh: 4, backlogged: 4 }).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![20]]);
        assert!(!gathering.flushing);
    }

    #[test]
    fn backlogged_batches_leave_room_in_the_engine_for_fresh_ones() {
        use Lane::{Backlogged, Fresh};
        let busy = Room::left(BACKLOGGED_COMMANDS_IN_ENGINE_MAX);
        assert_eq!(busy.backlogged, 0);
        assert_eq!(busy.fresh, ENGINE_COMMANDS_IN_FLIGHT_MAX - BACKLOGGED_COMMANDS_IN_ENGINE_MAX);
        // Only backlogged batches wait, and they have no room: nothing is taken.
        let mut gathering = gathering_of(&[(Backlogged, 0, 1)]);
        assert!(gathering.take(busy).is_none());
        assert!(gathering.flushing, "the gathering still waits for its flush");
        // A fresh batch arrives: it goes at once, the backlogged one still waits.
        let mut gathering = gathering_of(&[(Backlogged, 0, 1), (Fresh, 10, 2)]);
        let (requests, parts) = gathering.take(busy).expect("room for the fresh one");
        assert_eq!(accounts(&requests, &parts), vec![vec![10, 11]]);
        // And with room for both, a submission with fresh batches takes no backlogged one.
        let mut both = gathering_of(&[(Backlogged, 0, 1), (Fresh, 10, 2)]);
        let (requests, parts) = both.take(Room::left(0)).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![10, 11]]);
        let (requests, parts) = both.take(Room::left(0)).expect("room");
        assert_eq!(accounts(&requests, &parts), vec![vec![0]]);
        // With the engine full, nothing goes.
        assert!(gathering.take(Room::left(ENGINE_COMMANDS_IN_FLIGHT_MAX)).is_none());
        let (requests, parts) = gathering.take(Room::left(0)).expect("room again");
        assert_eq!(accounts(&requests, &parts), vec![vec![0]]);
    }

    #[test]
    fn the_engine_never_holds_more_than_its_share_of_commands_at_once() {
        let engine = Arc::new(Engine::open(EngineConfig::in_memory()).expect("engine opens"));
        let combiner = Combiner::new(engine);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        // Batches of a quarter of the room each, twelve of them: three rooms' worth.
        let batch = ENGINE_COMMANDS_IN_FLIGHT_MAX / 4;
        runtime.block_on(async {
            let tasks: Vec<_> = (0..12u64)
                .map(|account| {
                    let combiner = combiner.clone();
                    tokio::spawn(async move {
                        let mut requests: Vec<Request> = (0..batch)
                            .map(|_| Request::new(Command::ReadAccount { account }))
                            .collect();
                        combiner.submit(&mut requests, Lane::Backlogged).answer().await
                    })
                })
                .collect();
            for task in tasks {
                let answer = task.await.expect("no task panics").expect("the engine answers");
                assert_eq!(answer.as_slice().len(), batch);
            }
        });
        // Gathered together, they went out a room at a time: at least three submissions.
        let (submissions, requests) = combiner.counts();
        assert_eq!(requests, 12 * batch as u64);
        assert!(submissions >= 3, "{submissions} submissions for three rooms' worth");
        assert_eq!(
            combiner.in_engine.load(Ordering::Acquire),
            0,
            "every answer gave its room back"
        );
    }

    #[test]
    fn a_gathering_over_the_cap_goes_out_in_several_submissions_of_whole_batches() {
        let engine = Arc::new(Engine::open(EngineConfig::in_memory()).expect("engine opens"));
        let combiner = Combiner::new(engine);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
        let batch = COMBINED_REQUESTS_MAX * 5 / 8;
        runtime.block_on(async {
            let tasks: Vec<_> = (0..3u64)
                .map(|connection| {
                    let combiner = combiner.clone();
                    tokio::spawn(async move {
                        let account = connection;
                        let mut requests: Vec<Request> = (0..batch)
                            .map(|_| Request::new(Command::ReadAccount { account }))
                            .collect();
                        combiner.submit(&mut requests, Lane::Fresh).answer().await
                    })
                })
                .collect();
            for task in tasks {
                let answer = task.await.expect("no task panics").expect("the engine answers");
                assert_eq!(answer.as_slice().len(), batch, "each connection gets all its own");
            }
        });
        // Two batches exceed the cap: each went alone, whole.
        assert_eq!(combiner.counts(), (3, 3 * batch as u64));
    }
}
