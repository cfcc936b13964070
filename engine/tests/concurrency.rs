//! Concurrency (§2, §7): simultaneous payments on one account approve exactly what the
//! balance allows; audits taken while transfers cross shards always balance; reads of
//! one account are linearizable with its writes; one submitter's commands are decided in
//! the order submitted, whether its submitter or the shard's thread decides them. Each
//! runs on in-memory and durable (sync) engines.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use plafond::{
    AccountKind, Command, CommandId, Durability, Engine, EngineConfig, ManualClock, Outcome,
    Reason, Request, AMOUNT_MAX_MINOR,
};
use support::{watchdog, Rng};

/// Every command is stamped with one instant: no window or interest changes mid-test.
const NOW_MS: i64 = ManualClock::SERVER_START_MS;
/// Each case fails rather than hang past this.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// What the built-in regions credit at opening.
const INITIAL_DEPOSIT_MINOR: u64 = 100_000;

/// An engine and the data directory it must outlive.
struct Harness {
    engine: Engine,
    _dir: Option<tempfile::TempDir>,
}

fn harness(shards: u16, durability: Durability) -> Harness {
    let clock = Arc::new(ManualClock::new(NOW_MS));
    let (config, dir) = match durability {
        Durability::None => (EngineConfig::in_memory(), None),
        Durability::Sync | Durability::Async => {
            let dir = tempfile::tempdir().unwrap();
            let config = EngineConfig::durable(dir.path()).with_durability(durability);
            (config, Some(dir))
        }
    };
    let engine = Engine::open(config.with_shards(shards).with_clock(clock)).unwrap();
    Harness { engine, _dir: dir }
}

/// Opens a profile (on the next shard in turn) with `checking` checking accounts.
fn open_profile(engine: &Engine, checking: usize) -> Vec<u64> {
    let region = engine.region_id("eu-west").unwrap();
    let Outcome::ProfileOpened { profile } = engine.run(Command::OpenProfile { region }).unwrap()
    else {
        panic!("a profile opens in a built-in region")
    };
    (0..checking)
        .map(|_| {
            let open = Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None };
            match engine.run(open).unwrap() {
                Outcome::AccountOpened { account, card: Some(card) } => {
                    assert_eq!(account, card, "a card has its account's id");
                    account
                }
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect()
}

fn balance(engine: &Engine, account: u64) -> u64 {
    match engine.run(Command::ReadAccount { account }).unwrap() {
        Outcome::Account(view) => view.balance_minor,
        other => panic!("unexpected {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// (a) N simultaneous payments on one account.

const PAY_THREADS: usize = 8;
const PAYS_PER_THREAD: usize = 50;
const PAY_AMOUNT_MINOR: u64 = 700;

/// How one paying thread submits: alone or in small tickets, with or without ids.
fn pay_requests(thread: usize, card: u64) -> Vec<Vec<Request>> {
    let per_ticket = if thread.is_multiple_of(2) { 1 } else { 5 };
    let requests: Vec<Request> = (0..PAYS_PER_THREAD)
        .map(|n| {
            let command = Command::Pay { card, amount_minor: PAY_AMOUNT_MINOR };
            if thread % 4 < 2 {
                Request::with_id(command, CommandId::new(&format!("p{thread}-{n}")).unwrap())
            } else {
                Request::new(command)
            }
        })
        .collect();
    requests.chunks(per_ticket).map(<[Request]>::to_vec).collect()
}

fn payments_approve_exactly_what_the_balance_allows(shards: u16, durability: Durability) {
    let _watchdog = watchdog("simultaneous payments", TEST_TIMEOUT);
    let harness = harness(shards, durability);
    let engine = Arc::new(harness.engine);
    let card = open_profile(&engine, 1)[0];
    // A ceiling that cannot interfere: only the funds decide.
    let ceiling = Command::SetCeiling { card, ceiling_minor: AMOUNT_MAX_MINOR };
    assert_eq!(engine.run(ceiling).unwrap(), Outcome::Updated);
    let start = Arc::new(Barrier::new(PAY_THREADS));
    let threads: Vec<_> = (0..PAY_THREADS)
        .map(|thread| {
            let (engine, start) = (engine.clone(), start.clone());
            std::thread::spawn(move || {
                let tickets = pay_requests(thread, card);
                start.wait();
                let mut outcomes = Vec::new();
                for requests in tickets {
                    outcomes.extend(engine.submit(requests).unwrap().wait().unwrap());
                }
                outcomes
            })
        })
        .collect();
    let outcomes: Vec<Outcome> =
        threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
    assert_eq!(outcomes.len(), PAY_THREADS * PAYS_PER_THREAD);

    let allowed = INITIAL_DEPOSIT_MINOR / PAY_AMOUNT_MINOR;
    let mut balances_after = Vec::new();
    let mut spent_after = Vec::new();
    for outcome in &outcomes {
        match *outcome {
            Outcome::Approved { balance_minor, spent_7d_minor } => {
                balances_after.push(balance_minor);
                spent_after.push(spent_7d_minor);
            }
            Outcome::Declined(Reason::InsufficientFunds) => {}
            ref other => panic!("a payment ended as {other:?}"),
        }
    }
    let label = format!("{shards} shards, {durability:?}");
    assert_eq!(balances_after.len() as u64, allowed, "{label}: approvals");
    // Linearizable: each approval saw the one before it, so the balances they report are
    // exactly the steps down from the opening deposit, each once.
    balances_after.sort_unstable();
    spent_after.sort_unstable();
    let steps: Vec<u64> = (1..=allowed).map(|k| k * PAY_AMOUNT_MINOR).collect();
    let expected_balances: Vec<u64> =
        steps.iter().rev().map(|paid| INITIAL_DEPOSIT_MINOR - paid).collect();
    assert_eq!(balances_after, expected_balances, "{label}");
    assert_eq!(spent_after, steps, "{label}");

    let paid_minor = allowed * PAY_AMOUNT_MINOR;
    assert_eq!(balance(&engine, card), INITIAL_DEPOSIT_MINOR - paid_minor);
    let Outcome::Card(view) = engine.run(Command::ReadCard { card }).unwrap() else {
        panic!("the card exists")
    };
    assert_eq!(view.spent_7d_minor, paid_minor, "declines never count");
    let audit = engine.audit().unwrap();
    assert!(audit.holds(), "{label}: {audit:?}");
    assert_eq!(audit.card_payments_minor, u128::from(paid_minor));
    assert_eq!(audit.in_flight_minor, 0);
    let stats = engine.stats().unwrap();
    assert_eq!(stats.total.counters.payments_approved, allowed);
    let declined = (PAY_THREADS * PAYS_PER_THREAD) as u64 - allowed;
    assert_eq!(stats.total.counters.declined[Reason::InsufficientFunds.index()], declined);
}

#[test]
fn simultaneous_payments_one_shard_in_memory() {
    payments_approve_exactly_what_the_balance_allows(1, Durability::None);
}

#[test]
fn simultaneous_payments_four_shards_in_memory() {
    payments_approve_exactly_what_the_balance_allows(4, Durability::None);
}

#[test]
fn simultaneous_payments_one_shard_durable() {
    payments_approve_exactly_what_the_balance_allows(1, Durability::Sync);
}

#[test]
fn simultaneous_payments_four_shards_durable() {
    payments_approve_exactly_what_the_balance_allows(4, Durability::Sync);
}

// ---------------------------------------------------------------------------------------
// (b) Audits during a ring of cross-shard transfers.

const RING_PROFILES: usize = 8;
const RING_ACCOUNTS_PER_PROFILE: usize = 2;
const RING_THREADS: usize = 4;
/// The auditor takes this many audits while the transfers run.
const RING_AUDITS: usize = 200;
/// Each thread makes at least this many transfers, and at most the max.
const RING_TRANSFERS_MIN: usize = 100;
const RING_TRANSFERS_MAX: usize = 20_000;
const RING_AMOUNT_MINOR_MAX: u64 = 5_000;

/// One ring thread: transfers around the ring until the auditor is done; returns the
/// money each account gained or lost, from the outcomes.
fn ring_worker(
    engine: &Engine,
    ring: &[u64],
    thread: usize,
    auditor_done: &AtomicBool,
) -> BTreeMap<u64, i128> {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (thread as u64 + 1));
    let mut deltas = BTreeMap::new();
    let mut n = 0;
    while n < RING_TRANSFERS_MAX && (n < RING_TRANSFERS_MIN || !auditor_done.load(Ordering::SeqCst))
    {
        let position = (thread * ring.len() / RING_THREADS + n) % ring.len();
        let (from, to) = (ring[position], ring[(position + 1) % ring.len()]);
        let amount_minor = 1 + rng.next_u64() % RING_AMOUNT_MINOR_MAX;
        let command = Command::Transfer { from, to, amount_minor };
        let request = match n % 2 {
            0 => Request::new(command),
            _ => Request::with_id(command, CommandId::new(&format!("r{thread}-{n}")).unwrap()),
        };
        match engine.execute(request).unwrap() {
            Outcome::Done { .. } => {
                *deltas.entry(from).or_insert(0) -= i128::from(amount_minor);
                *deltas.entry(to).or_insert(0) += i128::from(amount_minor);
            }
            Outcome::Declined(Reason::InsufficientFunds) => {}
            other => panic!("a ring transfer ended as {other:?}"),
        }
        n += 1;
    }
    deltas
}

fn audits_hold_during_cross_shard_transfers(shards: u16, durability: Durability) {
    let _watchdog = watchdog("audits during transfers", TEST_TIMEOUT);
    let harness = harness(shards, durability);
    let engine = Arc::new(harness.engine);
    let ring: Vec<u64> =
        (0..RING_PROFILES).flat_map(|_| open_profile(&engine, RING_ACCOUNTS_PER_PROFILE)).collect();
    let total_minor = u128::from(INITIAL_DEPOSIT_MINOR) * ring.len() as u128;
    let auditor_done = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..RING_THREADS)
        .map(|thread| {
            let (engine, ring, done) = (engine.clone(), ring.clone(), auditor_done.clone());
            std::thread::spawn(move || ring_worker(&engine, &ring, thread, &done))
        })
        .collect();
    let mut audits_in_flight = 0;
    for _ in 0..RING_AUDITS {
        let audit = engine.audit().unwrap();
        assert!(audit.holds(), "an audit mid-transfer: {audit:?}");
        assert!(audit.in_flight_minor >= 0, "{audit:?}");
        // No money comes in or goes out: every cut holds exactly the opening deposits.
        assert_eq!(audit.present_minor(), total_minor as i128, "{audit:?}");
        assert_eq!(audit.card_payments_minor + audit.deposits_minor, 0);
        if audit.in_flight_minor > 0 {
            audits_in_flight += 1;
        }
    }
    auditor_done.store(true, Ordering::SeqCst);
    let mut expected: BTreeMap<u64, i128> =
        ring.iter().map(|&account| (account, i128::from(INITIAL_DEPOSIT_MINOR))).collect();
    for worker in workers {
        for (account, delta) in worker.join().unwrap() {
            *expected.get_mut(&account).unwrap() += delta;
        }
    }
    // Every transfer was answered, so every one has settled: nothing is in flight.
    let audit = engine.audit().unwrap();
    assert!(audit.holds(), "{audit:?}");
    assert_eq!(audit.in_flight_minor, 0, "{audit:?}");
    assert_eq!(audit.balances_minor, total_minor);
    let actual: BTreeMap<u64, i128> =
        ring.iter().map(|&account| (account, i128::from(balance(&engine, account)))).collect();
    assert_eq!(actual, expected, "each balance is its opening plus its transfers");
    assert_eq!(actual.values().sum::<i128>(), total_minor as i128);
    let label = format!("{shards} shards, {durability:?}");
    println!("{label}: {audits_in_flight}/{RING_AUDITS} audits saw money in flight");
}

#[test]
fn audits_hold_during_cross_shard_transfers_in_memory() {
    audits_hold_during_cross_shard_transfers(4, Durability::None);
}

#[test]
fn audits_hold_during_cross_shard_transfers_durable() {
    audits_hold_during_cross_shard_transfers(3, Durability::Sync);
}

// ---------------------------------------------------------------------------------------
// (c) Per-account linearizability: reads never go back, and see every acked write.

const READERS: usize = 2;

fn reads_follow_deposits(durability: Durability, deposits: u64) {
    let _watchdog = watchdog("reads during deposits", TEST_TIMEOUT);
    let harness = harness(2, durability);
    let engine = Arc::new(harness.engine);
    let account = open_profile(&engine, 1)[0];
    // The balance the depositor was last told: any read begun later must see it.
    let acked = Arc::new(AtomicU64::new(INITIAL_DEPOSIT_MINOR));
    let done = Arc::new(AtomicBool::new(false));
    // The deposits start only once every reader is reading: on a busy machine a reader
    // thread can otherwise first run after the last deposit and check nothing.
    let reading = Arc::new(Barrier::new(READERS + 1));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (engine, acked, done) = (engine.clone(), acked.clone(), done.clone());
            let reading = reading.clone();
            std::thread::spawn(move || {
                let mut last = 0;
                let mut read = || {
                    let floor = acked.load(Ordering::SeqCst);
                    let seen = balance(&engine, account);
                    assert!(seen >= last, "a read went back from {last} to {seen}");
                    assert!(seen >= floor, "a read saw {seen} after {floor} was acked");
                    assert!(seen <= INITIAL_DEPOSIT_MINOR + deposits);
                    last = seen;
                };
                read();
                reading.wait();
                while !done.load(Ordering::SeqCst) {
                    read();
                }
            })
        })
        .collect();
    reading.wait();
    for k in 1..=deposits {
        let deposit = Command::Deposit { account, amount_minor: 1 };
        let expected = INITIAL_DEPOSIT_MINOR + k;
        assert_eq!(engine.run(deposit).unwrap(), Outcome::Done { balance_minor: expected });
        acked.store(expected, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(balance(&engine, account), INITIAL_DEPOSIT_MINOR + deposits);
    assert!(engine.audit().unwrap().holds());
}

#[test]
fn reads_never_go_back_in_memory() {
    reads_follow_deposits(Durability::None, 5_000);
}

#[test]
fn reads_never_go_back_durable() {
    reads_follow_deposits(Durability::Sync, 1_000);
}

// ---------------------------------------------------------------------------------------
// (d) A submitter's commands are decided in submission order, whichever thread decides:
// the submitter itself when the shard is idle, the shard's thread when it is busy.

/// Commands the busy thread submits at a time, so the shard's lock is often taken.
const BUSY_BATCH: usize = 4_096;
/// Rounds after which the test gives up waiting for both deciders to have decided.
const MAX_ROUNDS: u64 = 100;

fn submissions_stay_in_order(durability: Durability, per_round: u64) {
    let _watchdog = watchdog("submissions in order", TEST_TIMEOUT);
    let harness = harness(1, durability);
    let engine = Arc::new(harness.engine);
    let accounts = open_profile(&engine, 2);
    let (account, busy_account) = (accounts[0], accounts[1]);
    let done = Arc::new(AtomicBool::new(false));
    // Another submitter keeps the shard busy with large submissions of reads; the test
    // goes on once its first submission is answered, so the two overlap from the start.
    let busy_started = Arc::new(Barrier::new(2));
    let busy = {
        let (engine, done, busy_started) = (engine.clone(), done.clone(), busy_started.clone());
        std::thread::spawn(move || {
            let reads =
                vec![Request::new(Command::ReadAccount { account: busy_account }); BUSY_BATCH];
            engine.submit(reads.clone()).unwrap().wait().unwrap();
            busy_started.wait();
            while !done.load(Ordering::SeqCst) {
                engine.submit(reads.clone()).unwrap().wait().unwrap();
            }
        })
    };
    busy_started.wait();
    // Deposit, then read, without waiting in between: each read must see exactly the
    // deposits submitted before it. Rounds go on until both the submitters and the
    // shard's thread have decided batches, which timing alone does not promise.
    let mut submitted = 0;
    for round in 1..=MAX_ROUNDS {
        let tickets: Vec<_> = (0..per_round)
            .map(|_| {
                let deposit = Command::Deposit { account, amount_minor: 1 };
                let read = Command::ReadAccount { account };
                engine.submit(vec![Request::new(deposit), Request::new(read)]).unwrap()
            })
            .collect();
        for ticket in tickets {
            submitted += 1;
            let expected = INITIAL_DEPOSIT_MINOR + submitted;
            match ticket.wait().unwrap().as_slice() {
                [Outcome::Done { balance_minor }, Outcome::Account(view)] => {
                    assert_eq!(*balance_minor, expected, "deposit of submission {submitted}");
                    assert_eq!(view.balance_minor, expected, "read of submission {submitted}");
                }
                other => panic!("submission {submitted}: {other:?}"),
            }
        }
        let shard = engine.stats().unwrap().shards[0].clone();
        if shard.inline_batches > 0 && shard.batches > shard.inline_batches {
            println!("{durability:?}: both deciders decided after {round} rounds: {shard:?}");
            break;
        }
        assert!(round < MAX_ROUNDS, "one decider decided everything: {shard:?}");
    }
    done.store(true, Ordering::SeqCst);
    busy.join().unwrap();
    assert!(engine.audit().unwrap().holds());
}

#[test]
fn submissions_stay_in_order_in_memory() {
    submissions_stay_in_order(Durability::None, 20_000);
}

#[test]
fn submissions_stay_in_order_durable() {
    submissions_stay_in_order(Durability::Sync, 5_000);
}

/// Submissions of this test: enough that a shard's thread is seen taking its part.
const SPANNING_ROUNDS: usize = 200;

/// A submission that spans two idle shards is decided on two threads at once: the
/// submitter decides one part itself and mails the other to its shard's thread, never
/// both itself one after the other (that left the second core idle, docs/DECISIONS.md).
#[test]
fn a_submission_spanning_idle_shards_is_decided_on_two_threads() {
    let _watchdog = watchdog("spanning submissions", TEST_TIMEOUT);
    let harness = harness(2, Durability::None);
    let engine = harness.engine;
    let mut on_shard: [Option<u64>; 2] = [None, None];
    while on_shard.iter().any(Option::is_none) {
        let account = open_profile(&engine, 1)[0];
        on_shard[(account % 2) as usize].get_or_insert(account);
    }
    let accounts: Vec<u64> = on_shard.into_iter().flatten().collect();
    let reads: Vec<Request> = (0..64)
        .map(|index| Request::new(Command::ReadAccount { account: accounts[index % 2] }))
        .collect();
    let inline_total =
        |engine: &Engine| engine.stats().unwrap().shards.iter().map(|s| s.inline_batches).sum();
    let mut mailed = 0;
    for round in 0..SPANNING_ROUNDS {
        let before: u64 = inline_total(&engine);
        let outcomes = engine.submit(reads.clone()).unwrap().wait().unwrap();
        assert_eq!(outcomes.len(), reads.len());
        let inline = inline_total(&engine) - before;
        assert!(inline <= 1, "round {round}: the submitter decided {inline} shards' parts");
        mailed += 2 - inline;
    }
    assert!(mailed >= SPANNING_ROUNDS as u64, "{mailed} parts went to shards' threads");
}
