//! §7 under `kill -9`: a child process runs a durable engine (sync, and async, which is
//! documented to lose nothing acknowledged on a process crash) under load and is killed
//! with SIGKILL at random instants; after each kill the parent reopens the data
//! directory and checks that every acknowledged outcome survived, that nothing was
//! applied twice, that conservation holds and that no cross-shard transfer stays half
//! applied.
//!
//! The child is this test binary itself, re-executed to run the ignored test
//! [`crash_child`] with [`CHILD_DIR_ENV`] set. Each child worker appends to its own
//! journal file: an intent line per command before submitting a batch, and an ack line
//! per outcome once the batch's ticket resolves. A plain `write` is enough: SIGKILL
//! loses the process, not the page cache. The parent retries every command that was
//! intended but not acknowledged (as a client would after a crash), so every command's
//! outcome is known and a reference model gives every account's exact balance.
//!
//! The load holds money too (SPEC §12): authorizations, final captures of the holds a
//! worker was told of, and refunds, so kills find holds open, and every hold, capture and
//! refund acknowledged must survive them (the audit's `held`, `captures` and `refunds`).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plafond::{
    AccountKind, Audit, CheckpointPolicy, Command, CommandId, Durability, Engine, EngineConfig,
    ManualClock, Opening, Outcome, Request, AMOUNT_MAX_MINOR,
};
use support::{watchdog, Rng};

/// Set (to the data directory) only in the child process.
const CHILD_DIR_ENV: &str = "PLAFOND_CRASH_CHILD";
/// Which iteration the child is: its command ids are unique per iteration.
const CHILD_ITERATION_ENV: &str = "PLAFOND_CRASH_ITERATION";
/// The child's RNG seed.
const CHILD_SEED_ENV: &str = "PLAFOND_CRASH_SEED";
/// Overrides the parent's seed, to replay a failing run.
const SEED_ENV: &str = "PLAFOND_CRASH_TEST_SEED";

/// How many times the child is killed, with sync durability (the default, §7) and with
/// async (documented to lose nothing acknowledged on a process crash).
const KILLS_SYNC: u64 = 24;
const KILLS_ASYNC: u64 = 8;
const SHARDS: u16 = 3;
const PROFILES: usize = 3;
/// Checking accounts per profile (each with its card), plus one savings account.
const CHECKING_PER_PROFILE: usize = 3;
const WORKERS: u64 = 4;
/// The most commands a child worker submits in one ticket.
const WORKER_BATCH_MAX: u64 = 12;
/// One kill in this many comes at a random instant after the spawn, which may fall in
/// the child's recovery (replay, resent credits); the others come at a random instant
/// after the child reported its engine open, so they hit it under load. The kill before
/// a kill from the spawn is not checked (nor its transfers settled) until after it, so
/// that the next child recovers from a crash under load, and may crash while doing so.
const KILLS_FROM_SPAWN_EVERY: u64 = 4;
/// A kill from the spawn comes this long after it.
const KILL_DELAY_MS_MIN: u64 = 5;
const KILL_DELAY_MS_MAX: u64 = 100;
/// One kill in this many (among those under load) waits until the child has written a
/// checkpoint of its own, so that every run has children that load a checkpoint written
/// by a child that had loaded one, whatever the machine's load (the checkpointer runs at
/// nice 19: on a busy machine a child killed at a random instant may never write one).
const KILL_AFTER_CHECKPOINT_AT: u64 = 1;
/// How long a child may take to write its checkpoint.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(30);
/// A kill under load comes this long after the child's engine is open.
const LOAD_DELAY_MS_MIN: u64 = 20;
const LOAD_DELAY_MS_MAX: u64 = 300;
/// How long a child may take to open its engine.
const CHILD_OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A child never killed stops by itself after this and fails the test.
const CHILD_LIFETIME_MAX: Duration = Duration::from_secs(60);
/// How long recovery may take to settle the transfers it finds unsettled.
const QUIESCENCE_TIMEOUT: Duration = Duration::from_secs(20);
/// The whole test fails rather than hang past this.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How many retried commands the parent submits per ticket.
const RETRY_BATCH_MAX: usize = 256;
/// Every command is stamped with this one instant: no business day changes, no
/// interest, so balances move only by the commands.
const NOW_MS: i64 = ManualClock::SERVER_START_MS;

/// Where the data directory records the durability it is tested with, for the child.
fn durability_path(dir: &Path) -> PathBuf {
    dir.join("durability.txt")
}

/// Checkpoints far more often than by default, so that kills land during checkpoints too
/// (a capture in progress, a file half written, an old one being removed) and restarts
/// load them.
const CHECKPOINTS: CheckpointPolicy =
    CheckpointPolicy { interval: Duration::from_millis(150), log_bytes: 32 << 10 };

fn config(dir: &Path) -> EngineConfig {
    let durability = std::fs::read_to_string(durability_path(dir)).unwrap();
    EngineConfig::durable(dir)
        .with_durability(durability.parse().unwrap())
        .with_shards(SHARDS)
        .with_clock(Arc::new(ManualClock::new(NOW_MS)))
        .with_checkpoints(CHECKPOINTS)
}

/// The accounts the load runs on, created once by the parent.
#[derive(Clone, Debug)]
struct Population {
    /// Every account, with whether it is a checking account (its id is its card's id).
    accounts: Vec<(u64, bool)>,
}

impl Population {
    fn path(dir: &Path) -> PathBuf {
        dir.join("population.txt")
    }

    fn create(dir: &Path, durability: Durability) -> Population {
        let name = match durability {
            Durability::Sync => "sync",
            Durability::Async => "async",
            Durability::None => panic!("a crash test needs a data directory"),
        };
        std::fs::write(durability_path(dir), name).unwrap();
        let engine = Engine::open(config(dir)).expect("open a fresh data directory");
        let region = engine.region_id("eu-west").expect("a built-in region");
        let mut accounts = Vec::new();
        for _ in 0..PROFILES {
            // Profiles without a command id go to the shards in turn: one per shard.
            let Outcome::ProfileOpened { profile } =
                engine.run(Command::OpenProfile { region }).unwrap()
            else {
                panic!("a profile opens in a built-in region")
            };
            for index in 0..=CHECKING_PER_PROFILE {
                let checking = index < CHECKING_PER_PROFILE;
                let kind = if checking { AccountKind::Checking } else { AccountKind::Savings };
                // A ceiling that never interferes: the load is about money, not windows.
                let opening = Opening { deposit_minor: 100_000, ceiling_minor: AMOUNT_MAX_MINOR };
                let open = Command::OpenAccount { profile, kind, opening: Some(opening) };
                let Outcome::AccountOpened { account, .. } = engine.run(open).unwrap() else {
                    panic!("an account opens in a known profile")
                };
                accounts.push((account, checking));
            }
        }
        let shards: std::collections::BTreeSet<u64> =
            accounts.iter().map(|(account, _)| account % u64::from(SHARDS)).collect();
        assert_eq!(shards.len(), usize::from(SHARDS), "accounts on every shard");
        let text: String =
            accounts.iter().map(|(account, checking)| format!("{account} {checking}\n")).collect();
        std::fs::write(Population::path(dir), text).unwrap();
        Population { accounts }
    }

    fn load(dir: &Path) -> Population {
        let text = std::fs::read_to_string(Population::path(dir)).unwrap();
        let accounts = text
            .lines()
            .map(|line| {
                let (account, checking) = line.split_once(' ').unwrap();
                (account.parse().unwrap(), checking.parse().unwrap())
            })
            .collect();
        Population { accounts }
    }

    fn cards(&self) -> Vec<u64> {
        self.accounts
            .iter()
            .filter(|(_, checking)| *checking)
            .map(|(account, _)| *account)
            .collect()
    }

    fn ids(&self) -> Vec<u64> {
        self.accounts.iter().map(|(account, _)| *account).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The journal: what the child meant to do and what it was told.

/// Created by the child once its engine is open.
fn ready_path(dir: &Path, iteration: u64) -> PathBuf {
    dir.join(format!("ready-{iteration}"))
}

fn journal_path(dir: &Path, iteration: u64, worker: u64) -> PathBuf {
    dir.join(format!("journal-i{iteration}-w{worker}.txt"))
}

fn encode_command(command: &Command) -> String {
    match *command {
        Command::Pay { card, amount_minor } => format!("P {card} 0 {amount_minor}"),
        Command::Transfer { from, to, amount_minor } => format!("T {from} {to} {amount_minor}"),
        Command::Deposit { account, amount_minor } => format!("D {account} 0 {amount_minor}"),
        Command::Authorize { card, amount_minor } => format!("A {card} 0 {amount_minor}"),
        Command::CaptureFinal { hold, amount_minor } => format!("C {hold} 0 {amount_minor}"),
        Command::Refund { card, amount_minor } => format!("R {card} 0 {amount_minor}"),
        ref other => panic!("the load does not send {other:?}"),
    }
}

fn decode_command(fields: &[&str]) -> Command {
    let [kind, first, second, amount] = fields else {
        panic!("a command has four fields: {fields:?}")
    };
    let (first, second, amount_minor): (u64, u64, u64) =
        (first.parse().unwrap(), second.parse().unwrap(), amount.parse().unwrap());
    match *kind {
        "P" => Command::Pay { card: first, amount_minor },
        "T" => Command::Transfer { from: first, to: second, amount_minor },
        "D" => Command::Deposit { account: first, amount_minor },
        "A" => Command::Authorize { card: first, amount_minor },
        "C" => Command::CaptureFinal { hold: first, amount_minor },
        "R" => Command::Refund { card: first, amount_minor },
        other => panic!("unknown command kind {other}"),
    }
}

/// One iteration's journal, as the parent reads it back.
#[derive(Default)]
struct Journal {
    /// Every command the child wrote down before submitting, in order.
    intents: Vec<(String, Command)>,
    /// The outcome the child was given, as `{:?}`, by command id.
    acks: HashMap<String, String>,
}

impl Journal {
    /// The journals of `iterations`.
    fn read(dir: &Path, iterations: std::ops::RangeInclusive<u64>) -> Journal {
        let mut journal = Journal::default();
        let files = iterations.flat_map(|iteration| (0..WORKERS).map(move |w| (iteration, w)));
        for (iteration, worker) in files {
            let Ok(bytes) = std::fs::read(journal_path(dir, iteration, worker)) else {
                continue; // Killed before the worker created its file.
            };
            let text = String::from_utf8(bytes).expect("the journal is ASCII");
            // The child may die in the middle of a line: only whole lines count.
            let whole = match text.rfind('\n') {
                Some(end) => &text[..=end],
                None => "",
            };
            for line in whole.lines() {
                let (tag, rest) = line.split_once(' ').expect("a tagged line");
                let (id, rest) = rest.split_once(' ').expect("a command id");
                match tag {
                    "I" => {
                        let fields: Vec<&str> = rest.split(' ').collect();
                        journal.intents.push((id.to_owned(), decode_command(&fields)));
                    }
                    "A" => {
                        let first = journal.acks.insert(id.to_owned(), rest.to_owned());
                        assert!(first.is_none(), "{id} acknowledged twice");
                    }
                    other => panic!("unknown journal tag {other}"),
                }
            }
        }
        let intended: std::collections::HashSet<&str> =
            journal.intents.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(intended.len(), journal.intents.len(), "command ids are unique");
        for id in journal.acks.keys() {
            assert!(intended.contains(id.as_str()), "{id} acked but not intended");
        }
        journal
    }
}

// ---------------------------------------------------------------------------------------
// The child.

/// Runs only in the child process (see the module docs); a no-op otherwise.
#[test]
#[ignore = "the crash test's child process; run by `crash_under_load_*`"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let iteration: u64 = std::env::var(CHILD_ITERATION_ENV).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let population = Population::load(&dir);
    let engine = Arc::new(Engine::open(config(&dir)).expect("the child reopens the engine"));
    File::create(ready_path(&dir, iteration)).unwrap();
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (engine, population, dir) = (engine.clone(), population.clone(), dir.clone());
            let seed = seed ^ (worker + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            std::thread::spawn(move || {
                child_worker(&engine, &population, &dir, iteration, worker, seed, started)
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a child worker panicked");
    }
    panic!("the child was not killed within {CHILD_LIFETIME_MAX:?}");
}

fn child_worker(
    engine: &Engine,
    population: &Population,
    dir: &Path,
    iteration: u64,
    worker: u64,
    seed: u64,
    started: Instant,
) {
    let mut rng = Rng::new(seed);
    let (cards, accounts) = (population.cards(), population.ids());
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(journal_path(dir, iteration, worker))
        .unwrap();
    let mut next = 0u64;
    // Holds this worker was told of and has not captured yet: (hold, amount).
    let mut open_holds: Vec<(u64, u64)> = Vec::new();
    while started.elapsed() < CHILD_LIFETIME_MAX {
        let size = rng.between(1, WORKER_BATCH_MAX);
        let mut requests = Vec::new();
        let mut intents = String::new();
        for _ in 0..size {
            let id = format!("i{iteration}-w{worker}-{next}");
            next += 1;
            let command = random_command(&mut rng, &cards, &accounts, &mut open_holds);
            intents.push_str(&format!("I {id} {}\n", encode_command(&command)));
            requests.push(Request::with_id(command, CommandId::new(&id).unwrap()));
        }
        // Written down before submitting: whatever the engine applies is in the journal.
        journal.write_all(intents.as_bytes()).unwrap();
        let ids: Vec<CommandId> =
            requests.iter().map(|request| request.command_id.clone().unwrap()).collect();
        let requests_sent: Vec<Command> = requests.iter().map(|r| r.command.clone()).collect();
        let outcomes = engine.submit(requests).unwrap().wait().unwrap();
        assert_eq!(outcomes.len(), ids.len());
        for (request, outcome) in requests_sent.iter().zip(&outcomes) {
            if let (Command::Authorize { amount_minor, .. }, Outcome::Authorized { hold, .. }) =
                (request, outcome)
            {
                open_holds.push((*hold, *amount_minor));
            }
        }
        let acks: String = ids
            .iter()
            .zip(&outcomes)
            .map(|(id, outcome)| format!("A {} {outcome:?}\n", id.as_str()))
            .collect();
        journal.write_all(acks.as_bytes()).unwrap();
    }
}

fn random_command(
    rng: &mut Rng,
    cards: &[u64],
    accounts: &[u64],
    open_holds: &mut Vec<(u64, u64)>,
) -> Command {
    match rng.between(0, 12) {
        0..=2 => Command::Pay { card: rng.pick(cards), amount_minor: rng.between(1, 3_000) },
        3 => Command::Authorize { card: rng.pick(cards), amount_minor: rng.between(1, 3_000) },
        4 if !open_holds.is_empty() => {
            let (hold, amount_minor) = open_holds.swap_remove(0);
            Command::CaptureFinal { hold, amount_minor }
        }
        5 => Command::Refund { card: rng.pick(cards), amount_minor: rng.between(1, 500) },
        4..=9 => {
            let from = rng.pick(accounts);
            let mut to = rng.pick(accounts);
            while to == from {
                to = rng.pick(accounts);
            }
            Command::Transfer { from, to, amount_minor: rng.between(1, 20_000) }
        }
        _ => Command::Deposit { account: rng.pick(accounts), amount_minor: rng.between(1, 6_000) },
    }
}

// ---------------------------------------------------------------------------------------
// The parent.

/// What the money must be, from every command's known outcome. Balances are signed:
/// the journal gives each worker's order, not the engine's, so a replay of the model may
/// dip below zero on the way; only the totals at the end must match.
struct Model {
    balances: BTreeMap<u64, i128>,
    initial_deposits_minor: u128,
    deposits_minor: u128,
    card_payments_minor: u128,
    /// Holds approved and not captured: hold id to (card, amount).
    holds: HashMap<u64, (u64, u64)>,
    captures_minor: u128,
    refunds_minor: u128,
}

impl Model {
    fn new(population: &Population) -> Model {
        let balances: BTreeMap<u64, i128> =
            population.ids().into_iter().map(|account| (account, 100_000)).collect();
        Model {
            initial_deposits_minor: 100_000 * balances.len() as u128,
            balances,
            deposits_minor: 0,
            card_payments_minor: 0,
            holds: HashMap::new(),
            captures_minor: 0,
            refunds_minor: 0,
        }
    }

    /// Applies a command whose outcome is known.
    fn apply(&mut self, id: &str, command: &Command, outcome: &Outcome) {
        let mut add = |account: u64, delta_minor: i128| {
            *self.balances.get_mut(&account).expect("a known account") += delta_minor;
        };
        match (command, outcome) {
            (_, Outcome::Declined(_)) => {}
            (Command::Pay { card, amount_minor }, Outcome::Approved { .. }) => {
                add(*card, -i128::from(*amount_minor));
                self.card_payments_minor += u128::from(*amount_minor);
            }
            (Command::Transfer { from, to, amount_minor }, Outcome::Done { .. }) => {
                add(*from, -i128::from(*amount_minor));
                add(*to, i128::from(*amount_minor));
            }
            (Command::Deposit { account, amount_minor }, Outcome::Done { .. }) => {
                add(*account, i128::from(*amount_minor));
                self.deposits_minor += u128::from(*amount_minor);
            }
            (Command::Authorize { card, amount_minor }, Outcome::Authorized { hold, .. }) => {
                let first = self.holds.insert(*hold, (*card, *amount_minor));
                assert!(first.is_none(), "{id}: hold {hold} placed twice");
            }
            (Command::CaptureFinal { hold, amount_minor }, Outcome::Captured { .. }) => {
                let (card, held_minor) = self.holds.remove(hold).expect("a hold placed before");
                assert_eq!(held_minor, *amount_minor, "{id}: captured what it held");
                add(card, -i128::from(*amount_minor));
                self.captures_minor += u128::from(*amount_minor);
            }
            (Command::Refund { card, amount_minor }, Outcome::Done { .. }) => {
                add(*card, i128::from(*amount_minor));
                self.refunds_minor += u128::from(*amount_minor);
            }
            (command, outcome) => panic!("{id}: {command:?} cannot end as {outcome:?}"),
        }
    }

    /// The balances the engine must show; none may be negative.
    fn expected_balances(&self) -> BTreeMap<u64, u64> {
        self.balances
            .iter()
            .map(|(&account, &balance)| {
                let balance = u64::try_from(balance)
                    .unwrap_or_else(|_| panic!("account {account} would be at {balance}"));
                (account, balance)
            })
            .collect()
    }

    fn expected_audit(&self) -> Audit {
        let balances_minor = self.balances.values().sum::<i128>();
        Audit {
            balances_minor: u128::try_from(balances_minor).expect("no negative total"),
            in_flight_minor: 0,
            initial_deposits_minor: self.initial_deposits_minor,
            deposits_minor: self.deposits_minor,
            interest_minor: 0,
            card_payments_minor: self.card_payments_minor,
            refunds_minor: self.refunds_minor,
            captures_minor: self.captures_minor,
            held_minor: self.holds.values().map(|&(_, amount)| u128::from(amount)).sum(),
        }
    }
}

fn balances(engine: &Engine, population: &Population) -> BTreeMap<u64, u64> {
    population
        .ids()
        .into_iter()
        .map(|account| match engine.run(Command::ReadAccount { account }).unwrap() {
            Outcome::Account(view) => (account, view.balance_minor),
            other => panic!("reading account {account}: {other:?}"),
        })
        .collect()
}

/// Polls the audit until recovery has settled every transfer it found unsettled. Every
/// audit on the way must hold.
fn quiescent_audit(engine: &Engine) -> Audit {
    let deadline = Instant::now() + QUIESCENCE_TIMEOUT;
    loop {
        let audit = engine.audit().unwrap();
        assert!(audit.holds(), "conservation broken: {audit:?}");
        assert!(audit.in_flight_minor >= 0, "negative in flight: {audit:?}");
        if audit.in_flight_minor == 0 {
            return audit;
        }
        assert!(
            Instant::now() < deadline,
            "transfers still half-applied after {QUIESCENCE_TIMEOUT:?}: {audit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Submits `commands` with their ids, in tickets of at most [`RETRY_BATCH_MAX`].
fn resubmit(engine: &Engine, commands: &[(String, Command)]) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(commands.len());
    for chunk in commands.chunks(RETRY_BATCH_MAX) {
        let requests = chunk
            .iter()
            .map(|(id, command)| Request::with_id(command.clone(), CommandId::new(id).unwrap()))
            .collect();
        outcomes.extend(engine.submit(requests).unwrap().wait().unwrap());
    }
    assert_eq!(outcomes.len(), commands.len());
    outcomes
}

/// What the kills left behind, over the whole run.
#[derive(Default)]
struct Tally {
    acked: usize,
    retried: usize,
    /// Kills that left at least one acknowledged outcome: the child was under load.
    kills_under_load: u64,
    /// Kills before the child's engine was open: in its replay or recovery.
    kills_in_recovery: u64,
}

/// Reopens after a kill and checks §7; brings the model up to date.
fn verify_after_kills(
    dir: &Path,
    iterations: std::ops::RangeInclusive<u64>,
    population: &Population,
    model: &mut Model,
    acked: &mut Vec<(String, Command, String)>,
    tally: &mut Tally,
) {
    let iteration = *iterations.end();
    let engine = Engine::open(config(dir))
        .unwrap_or_else(|error| panic!("reopening after kill {iteration}: {error}"));
    let audit_before = quiescent_audit(&engine);
    let balances_before = balances(&engine, population);
    let journal = Journal::read(dir, iterations.clone());

    // (a) and (b): every acknowledged outcome is there, and replaying it applies nothing.
    let acked_now: Vec<(String, Command)> =
        journal.intents.iter().filter(|(id, _)| journal.acks.contains_key(id)).cloned().collect();
    let replayed = resubmit(&engine, &acked_now);
    for ((id, command), outcome) in acked_now.iter().zip(&replayed) {
        let told = &journal.acks[id];
        assert_eq!(&format!("{outcome:?}"), told, "kill {iteration}: {id} changed");
        acked.push((id.clone(), command.clone(), told.clone()));
    }
    assert_eq!(balances(&engine, population), balances_before, "a replay moved money");
    assert_eq!(engine.audit().unwrap(), audit_before, "a replay moved money");

    // Every command not acknowledged is retried, as a client would: applied now if it
    // was lost, answered from memory if it was not. Then every outcome is known.
    let unacked: Vec<(String, Command)> =
        journal.intents.iter().filter(|(id, _)| !journal.acks.contains_key(id)).cloned().collect();
    let retried = resubmit(&engine, &unacked);
    let outcomes: HashMap<&str, &Outcome> = acked_now
        .iter()
        .zip(&replayed)
        .chain(unacked.iter().zip(&retried))
        .map(|((id, _), outcome)| (id.as_str(), outcome))
        .collect();
    for (id, command) in &journal.intents {
        model.apply(id, command, outcomes[id.as_str()]);
    }

    // (c) and (d): the engine's money is exactly the model's, with nothing in flight.
    let audit = quiescent_audit(&engine);
    assert_eq!(balances(&engine, population), model.expected_balances(), "kill {iteration}");
    assert_eq!(audit, model.expected_audit(), "kill {iteration}");
    tally.acked += acked_now.len();
    tally.retried += unacked.len();
    println!(
        "kills {iterations:?}: {} acked, {} retried, balances {}, held {} in {} open holds, \
         captured {}",
        acked_now.len(),
        unacked.len(),
        audit.balances_minor,
        audit.held_minor,
        model.holds.len(),
        audit.captures_minor
    );
}

fn spawn_child(dir: &Path, iteration: u64, seed: u64) -> std::process::Child {
    let stderr = File::create(dir.join(format!("child-{iteration}.stderr"))).unwrap();
    Process::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ITERATION_ENV, iteration.to_string())
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("re-execute the test binary as the child")
}

/// Fails the test, with the child's stderr, if the child ended before being killed.
/// The generation of the newest checkpoint file in `dir`, if any.
fn newest_checkpoint(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir.join("checkpoints")).ok()?;
    entries
        .filter_map(|entry| {
            entry.ok()?.file_name().to_str().and_then(plafond_snapshots::generation_of)
        })
        .max()
}

fn assert_alive(dir: &Path, iteration: u64, child: &mut std::process::Child) {
    if let Some(status) = child.try_wait().unwrap() {
        let stderr_path = dir.join(format!("child-{iteration}.stderr"));
        let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
        panic!("child {iteration} ended by itself ({status}) before the kill:\n{stderr}");
    }
}

#[test]
fn crash_under_load_sync() {
    crash_under_load(Durability::Sync, KILLS_SYNC);
}

#[test]
fn crash_under_load_async() {
    crash_under_load(Durability::Async, KILLS_ASYNC);
}

fn crash_under_load(durability: Durability, kills: u64) {
    let _watchdog = watchdog("crash_under_load", TEST_TIMEOUT);
    let seed =
        std::env::var(SEED_ENV).ok().and_then(|text| text.parse().ok()).unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            nanos as u64 ^ u64::from(std::process::id())
        });
    println!("crash test {durability:?} seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let population = Population::create(dir, durability);
    let mut model = Model::new(&population);
    let mut acked = Vec::new();
    let mut tally = Tally::default();
    let mut unchecked_from = 0;
    for iteration in 0..kills {
        let spawned = Instant::now();
        let mut child = spawn_child(dir, iteration, rng.next_u64());
        if iteration % KILLS_FROM_SPAWN_EVERY == KILLS_FROM_SPAWN_EVERY - 1 {
            let delay = rng.between(KILL_DELAY_MS_MIN, KILL_DELAY_MS_MAX);
            std::thread::sleep(Duration::from_millis(delay).saturating_sub(spawned.elapsed()));
        } else {
            while !ready_path(dir, iteration).exists() {
                assert_alive(dir, iteration, &mut child);
                assert!(spawned.elapsed() < CHILD_OPEN_TIMEOUT, "child {iteration} never opened");
                std::thread::sleep(Duration::from_millis(1));
            }
            if iteration % KILLS_FROM_SPAWN_EVERY == KILL_AFTER_CHECKPOINT_AT {
                let before = newest_checkpoint(dir);
                let opened = Instant::now();
                while newest_checkpoint(dir) <= before {
                    assert_alive(dir, iteration, &mut child);
                    assert!(
                        opened.elapsed() < CHECKPOINT_TIMEOUT,
                        "child {iteration} wrote no checkpoint in {CHECKPOINT_TIMEOUT:?}"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let delay = rng.between(LOAD_DELAY_MS_MIN, LOAD_DELAY_MS_MAX);
            std::thread::sleep(Duration::from_millis(delay));
        }
        assert_alive(dir, iteration, &mut child);
        // SIGKILL on Unix: no destructor, no flush, no clean shutdown.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "child {iteration} was killed");
        if !ready_path(dir, iteration).exists() {
            tally.kills_in_recovery += 1;
        }
        if !Journal::read(dir, iteration..=iteration).acks.is_empty() {
            tally.kills_under_load += 1;
        }
        if iteration % KILLS_FROM_SPAWN_EVERY == KILLS_FROM_SPAWN_EVERY - 2 {
            continue; // Checked with the next one: its child recovers from this kill.
        }
        let iterations = unchecked_from..=iteration;
        verify_after_kills(dir, iterations, &population, &mut model, &mut acked, &mut tally);
        unchecked_from = iteration + 1;
    }

    // After every kill: each outcome ever acknowledged is still the one returned.
    let engine = Engine::open(config(dir)).unwrap();
    let audit = quiescent_audit(&engine);
    let commands: Vec<(String, Command)> =
        acked.iter().map(|(id, command, _)| (id.clone(), command.clone())).collect();
    for ((id, _, told), outcome) in acked.iter().zip(resubmit(&engine, &commands)) {
        assert_eq!(&format!("{outcome:?}"), told, "{id} changed after later kills");
    }
    assert_eq!(engine.audit().unwrap(), audit);
    assert_eq!(audit, model.expected_audit());
    assert_eq!(balances(&engine, &population), model.expected_balances());
    println!(
        "{durability:?}: {kills} kills, {} under load, {} while the child was recovering; \
         {} outcomes acked and replayed, {} retried",
        tally.kills_under_load, tally.kills_in_recovery, tally.acked, tally.retried
    );
    // Checkpoints were taken (and so loaded, and killed in) across the runs: their file
    // names count up from generation 0. At least a second one (generation 1): written by a
    // child that had loaded the first (the kills after a checkpoint make sure of it).
    let newest = newest_checkpoint(dir);
    println!("{durability:?}: newest checkpoint generation {newest:?}");
    assert!(newest.is_some_and(|generation| generation >= 1), "checkpoints: {newest:?}");
    let leftovers = std::fs::read_dir(dir.join("checkpoints")).unwrap().count();
    assert!(
        leftovers <= plafond::CHECKPOINTS_KEPT + 1,
        "{leftovers} files: half-written ones stay"
    );
    // The test means nothing if the kills never hit a loaded engine.
    assert!(
        tally.kills_under_load * 2 >= kills,
        "only {} of {kills} kills hit a loaded child",
        tally.kills_under_load
    );
}
