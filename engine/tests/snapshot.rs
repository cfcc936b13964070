//! Snapshots and restore (§8) through the embedded API: a snapshot under concurrent load
//! holds every acknowledged command and no half transfer, a restored engine answers every
//! read as the original did, the log after a snapshot is replayed, and damaged files are
//! refused whole.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plafond::internals::state::{ShardState, Totals};
use plafond::{
    AccountKind, Audit, Command, CommandId, Engine, EngineConfig, ManualClock, Outcome, Request,
};
use support::Rng;

const START_MS: i64 = ManualClock::SERVER_START_MS;

/// The ids a test works with.
#[derive(Default)]
struct World {
    profiles: Vec<u64>,
    accounts: Vec<u64>,
    cards: Vec<u64>,
}

impl World {
    /// One past the largest id, plus a few unknown ones.
    fn id_end(&self) -> u64 {
        let largest = self.accounts.iter().chain(&self.profiles).max();
        largest.map_or(0, |id| id + 8)
    }
}

/// Epochs run only when a test asks, so that a quiet engine stays quiet.
fn config(dir: &Path, shards: u16, clock: &Arc<ManualClock>) -> EngineConfig {
    EngineConfig::durable(dir).with_shards(shards).with_clock(clock.clone()).with_epoch_poll(None)
}

fn open_account(engine: &Engine, world: &mut World, profile: u64, kind: AccountKind) {
    let (account, card) = support::open_account(engine, profile, kind);
    world.accounts.push(account);
    world.cards.extend(card);
}

/// `profiles` profiles over both built-in regions, each with a checking and a savings
/// account, every third with a second checking account.
fn populate(engine: &Engine, profiles: usize) -> World {
    let mut world = World::default();
    let regions = [engine.region_id("eu-west").unwrap(), engine.region_id("us-east").unwrap()];
    for index in 0..profiles {
        let profile = support::open_profile(engine, regions[index % 2]);
        world.profiles.push(profile);
        open_account(engine, &mut world, profile, AccountKind::Checking);
        open_account(engine, &mut world, profile, AccountKind::Savings);
        if index % 3 == 0 {
            open_account(engine, &mut world, profile, AccountKind::Checking);
        }
    }
    world
}

/// A random command that moves money or changes a card.
fn random_command(world: &World, rng: &mut Rng) -> Command {
    match rng.below(10) {
        0..=3 => Command::Transfer {
            from: rng.pick(&world.accounts),
            to: rng.pick(&world.accounts),
            amount_minor: 1 + rng.below(3_000),
        },
        4..=6 => Command::Pay { card: rng.pick(&world.cards), amount_minor: 1 + rng.below(5_000) },
        7 => Command::Deposit {
            account: rng.pick(&world.accounts),
            amount_minor: 1 + rng.below(10_000),
        },
        8 => Command::SetCeiling {
            card: rng.pick(&world.cards),
            ceiling_minor: 1_000 + rng.below(400_000),
        },
        _ => match rng.below(2) {
            0 => Command::Block { card: rng.pick(&world.cards) },
            _ => Command::Unblock { card: rng.pick(&world.cards) },
        },
    }
}

/// Runs `commands` random commands with ids `TAG-N`, in submissions of 16; returns each
/// request with its acknowledged outcome.
fn activity(
    engine: &Engine,
    world: &World,
    rng: &mut Rng,
    commands: usize,
    tag: &str,
) -> Vec<(Request, Outcome)> {
    let mut acked = Vec::with_capacity(commands);
    let mut next = 0;
    while next < commands {
        let requests: Vec<Request> = (next..commands.min(next + 16))
            .map(|n| {
                let id = CommandId::new(&format!("{tag}-{n}")).unwrap();
                Request::with_id(random_command(world, rng), id)
            })
            .collect();
        next += requests.len();
        let outcomes = engine.submit(requests.clone()).unwrap().wait().unwrap();
        acked.extend(requests.into_iter().zip(outcomes));
    }
    acked
}

/// Every read of every id below `world.id_end()`, with its outcome.
fn reads(engine: &Engine, world: &World) -> Vec<(Command, Outcome)> {
    let commands: Vec<Command> = (0..world.id_end())
        .flat_map(|id| {
            [
                Command::ReadAccount { account: id },
                Command::ReadCard { card: id },
                Command::ReadProfile { profile: id },
            ]
        })
        .collect();
    let requests = commands.iter().cloned().map(Request::new).collect();
    let outcomes = engine.submit(requests).unwrap().wait().unwrap();
    commands.into_iter().zip(outcomes).collect()
}

fn assert_same_reads(original: &[(Command, Outcome)], restored: &[(Command, Outcome)]) {
    assert_eq!(original.len(), restored.len());
    for (before, after) in original.iter().zip(restored) {
        assert_eq!(before, after, "a read differs after restore");
    }
}

/// Waits until no money is in flight (every pending transfer settled); returns the audit.
fn settled_audit(engine: &Engine) -> Audit {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let audit = engine.audit().unwrap();
        assert!(audit.holds(), "conservation: {audit:?}");
        if audit.in_flight_minor == 0 {
            return audit;
        }
        assert!(Instant::now() < deadline, "transfers never settled: {audit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resubmits `acked` and checks every outcome is the original one and nothing changed.
fn assert_replays_change_nothing(engine: &Engine, world: &World, acked: &[(Request, Outcome)]) {
    let state = reads(engine, world);
    let audit = settled_audit(engine);
    let requests: Vec<Request> = acked.iter().map(|(request, _)| request.clone()).collect();
    let outcomes = engine.submit(requests).unwrap().wait().unwrap();
    for ((request, original), replayed) in acked.iter().zip(outcomes) {
        assert_eq!(original, &replayed, "{request:?} answered differently");
    }
    assert_eq!(settled_audit(engine), audit, "a replay moved money");
    assert_same_reads(&state, &reads(engine, world));
}

#[test]
fn a_snapshot_under_load_holds_every_acknowledged_command_and_no_half_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let engine = Engine::open(config(&dir.path().join("source"), 4, &clock)).unwrap();
    let world = populate(&engine, 48);
    let acked: Mutex<Vec<(Request, Outcome)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let path = dir.path().join("under-load.plafsnap");
    let (before_snapshot, report) = std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let (engine, world, acked, stop) = (&engine, &world, &acked, &stop);
            scope.spawn(move || {
                let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (thread + 1));
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    let tag = format!("load-{thread}-{round}");
                    let done = activity(engine, world, &mut rng, 16, &tag);
                    acked.lock().unwrap().extend(done);
                    round += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_millis(400));
        let before_snapshot = acked.lock().unwrap().clone();
        let report = engine.snapshot(&path).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Relaxed);
        (before_snapshot, report)
    });
    let after_snapshot = acked.lock().unwrap().len();
    assert!(before_snapshot.len() >= 200, "too little load");
    assert!(after_snapshot > before_snapshot.len(), "load stopped during the snapshot");
    assert_eq!(report.shards, 4);
    assert_eq!(report.accounts, world.accounts.len() as u64);
    assert!(engine.audit().unwrap().holds());
    drop(engine);
    // Conservation holds in the file itself, with what was in flight at the cut.
    let cut = plafond_snapshots::read(&path, |_| {}).unwrap();
    let mut totals = Totals::default();
    for state in &cut.states {
        totals.add(&state.totals);
    }
    let held = totals.balances_minor as i128 + totals.in_flight_minor();
    let owed = (totals.initial_deposits_minor + totals.deposits_minor + totals.interest_minor)
        as i128
        - totals.card_payments_minor as i128;
    assert_eq!(held, owed, "conservation in the snapshot: {totals:?}");
    let pending: usize = cut.states.iter().map(|state| state.pending.len()).sum();
    eprintln!("transfers in flight at the cut: {pending}, {} minor", totals.in_flight_minor());

    let target = dir.path().join("restored");
    let (restored, restore_report) =
        Engine::restore(&path, None, config(&target, 4, &clock)).unwrap();
    assert_eq!(restore_report.accounts, report.accounts);
    // The cut itself: conservation holds with whatever was in flight at it.
    let audit = restored.audit().unwrap();
    assert!(audit.holds(), "conservation in the restored engine: {audit:?}");
    // Transfers debited but not yet credited at the cut settle after restore.
    settled_audit(&restored);
    assert_replays_change_nothing(&restored, &world, &before_snapshot);
}

/// Compares shard states field by field, naming the first field that differs (a whole
/// state is too large to print).
fn assert_same_states(first: &[ShardState], second: &[ShardState]) {
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(second) {
        let shard = a.shard;
        assert_eq!(a.profiles, b.profiles, "shard {shard}: profiles");
        let differing = a.accounts.iter().zip(&b.accounts).position(|(x, y)| x != y);
        if let Some(index) = differing {
            panic!(
                "shard {shard}: account {index}: {:?} then {:?}",
                a.accounts[index], b.accounts[index]
            );
        }
        assert_eq!(a.accounts.len(), b.accounts.len(), "shard {shard}: accounts");
        assert_eq!(a.pending, b.pending, "shard {shard}: pending");
        assert_eq!(a.credits_seen, b.credits_seen, "shard {shard}: credits");
        assert_eq!(a.clock_ms, b.clock_ms, "shard {shard}: clock");
        assert_eq!(a.rolled_day, b.rolled_day, "shard {shard}: rolled days");
        assert_eq!(a.totals, b.totals, "shard {shard}: totals");
        assert_eq!(a.counters, b.counters, "shard {shard}: counters");
        assert!(a == b, "shard {shard}: another field");
    }
}

#[test]
fn b_a_restored_engine_answers_every_read_as_the_original_did() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let engine = Engine::open(config(&dir.path().join("source"), 3, &clock)).unwrap();
    let world = populate(&engine, 40);
    let mut rng = Rng::new(42);
    // Over several business days, so windows hold spending on more than one day.
    for day in 0..3 {
        activity(&engine, &world, &mut rng, 300, &format!("day-{day}"));
        clock.advance(86_400_000);
        engine.run_due_epochs().unwrap();
    }
    let original = reads(&engine, &world);
    let original_audit = settled_audit(&engine);
    let path = dir.path().join("quiet.plafsnap");
    let report = engine.snapshot(&path).unwrap();
    assert!(report.bytes > 0 && report.accounts_per_second > 0.0);
    let (restored, _) =
        Engine::restore(&path, None, config(&dir.path().join("restored"), 3, &clock)).unwrap();
    assert_same_reads(&original, &reads(&restored, &world));
    assert_eq!(settled_audit(&restored), original_audit);
    assert_eq!(restored.stats().unwrap().total, engine.stats().unwrap().total);
    // The last epoch is run again (a no-op) and the epoch records then agree.
    let epochs = |engine: &Engine| {
        let status = engine.epoch_status().into_iter();
        status.map(|(_, region)| region.last_day).collect::<Vec<_>>()
    };
    restored.run_due_epochs().unwrap();
    assert_eq!(epochs(&restored), epochs(&engine));
    // A snapshot of the restored engine holds exactly the same shard states.
    let again = dir.path().join("again.plafsnap");
    restored.snapshot(&again).unwrap();
    let first = plafond_snapshots::read(&path, |_| {}).unwrap();
    let second = plafond_snapshots::read(&again, |_| {}).unwrap();
    assert_same_states(&first.states, &second.states);
    assert_eq!(first.accounts(), second.accounts());
}

#[test]
fn c_restore_replays_the_log_written_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let source = dir.path().join("source");
    let engine = Engine::open(config(&source, 3, &clock)).unwrap();
    let mut world = populate(&engine, 30);
    let mut rng = Rng::new(7);
    activity(&engine, &world, &mut rng, 400, "before");
    let path = dir.path().join("mid.plafsnap");
    engine.snapshot(&path).unwrap();
    // After the snapshot: more money moves, a day passes, new profiles and accounts.
    let mut after = activity(&engine, &world, &mut rng, 400, "after");
    clock.advance(86_400_000);
    let more = populate(&engine, 6);
    world.profiles.extend(more.profiles);
    world.accounts.extend(more.accounts);
    world.cards.extend(more.cards);
    after.extend(activity(&engine, &world, &mut rng, 400, "later"));
    let final_audit = settled_audit(&engine);
    let final_reads = reads(&engine, &world);

    // Not while the engine holds its data directory.
    let refused = dir.path().join("refused");
    let Err(error) = Engine::restore(&path, Some(&source), config(&refused, 3, &clock)) else {
        panic!("restored from a data directory in use")
    };
    assert!(error.to_string().contains("stopped"), "{error}");
    assert!(!refused.exists(), "a refused restore left {refused:?}");
    drop(engine);

    // Nor from another engine's data directory, whose log does not continue the snapshot.
    let stranger = dir.path().join("stranger");
    drop(Engine::open(config(&stranger, 3, &clock)).unwrap());
    let Err(error) = Engine::restore(&path, Some(&stranger), config(&refused, 3, &clock)) else {
        panic!("restored with the log of another engine")
    };
    assert!(error.to_string().contains("not the data directory"), "{error}");
    assert!(!refused.exists(), "a refused restore left {refused:?}");

    let target = dir.path().join("restored");
    let (restored, report) =
        Engine::restore(&path, Some(&source), config(&target, 3, &clock)).unwrap();
    assert!(report.log_batches > 0, "{report:?}");
    assert_same_reads(&final_reads, &reads(&restored, &world));
    assert_eq!(settled_audit(&restored), final_audit);
    assert_replays_change_nothing(&restored, &world, &after);
    drop(restored);

    // Without the log, the restore stops at the snapshot.
    let (bare, report) =
        Engine::restore(&path, None, config(&dir.path().join("bare"), 3, &clock)).unwrap();
    assert_eq!(report.log_batches, 0);
    assert_ne!(reads(&bare, &world), final_reads);
}

/// A small snapshot and the engine config to restore it with.
fn small_snapshot(dir: &Path, clock: &Arc<ManualClock>) -> (std::path::PathBuf, Vec<u8>) {
    let engine = Engine::open(config(&dir.join("source"), 2, clock)).unwrap();
    let world = populate(&engine, 3);
    activity(&engine, &world, &mut Rng::new(3), 20, "small");
    let path = dir.join("small.plafsnap");
    engine.snapshot(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// Restores `bytes` as a snapshot into a fresh target; checks it is refused with a
/// message containing one of `expected` and that nothing was left behind.
fn assert_refused(dir: &Path, bytes: &[u8], expected: &[&str], case: &str) -> String {
    let path = dir.join("bad.plafsnap");
    std::fs::write(&path, bytes).unwrap();
    let target = dir.join("target");
    let error =
        plafond_snapshots::restore(&path, None, &target, |_| {}).expect_err(case).to_string();
    assert!(
        expected.iter().any(|word| error.contains(word)),
        "{case}: `{error}` names none of {expected:?}"
    );
    assert!(!target.exists(), "{case}: the target was created");
    assert!(!dir.join(".target.restoring").exists(), "{case}: the staging directory was left");
    error
}

#[test]
fn d_damaged_snapshots_are_refused_whole_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (good, bytes) = small_snapshot(dir.path(), &clock);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    assert_refused(&work, &[], &["empty"], "empty file");
    let missing = plafond_snapshots::restore(&work.join("nope"), None, &work.join("t"), |_| {});
    assert!(missing.unwrap_err().to_string().contains("no snapshot at"));
    assert!(!work.join("t").exists());

    let mut magic = bytes.clone();
    magic[7] = b'Q';
    assert_refused(&work, &magic, &["not a plafond snapshot"], "wrong magic");
    assert_refused(&work, b"hello, world", &["not a plafond snapshot"], "text");

    let mut version = bytes.clone();
    // The newest version read is the keyed one (a MAC after the trailer).
    let ours = plafond_snapshots::KEYED_FORMAT_VERSION;
    let newer = ours + 1;
    version[8..12].copy_from_slice(&newer.to_le_bytes());
    let error =
        assert_refused(&work, &version, &[&format!("format version {newer}")], "wrong version");
    assert!(error.contains(&format!("reads versions 2 to {ours}")), "{error}");

    let header_bytes = plafond_snapshots::format::header_bytes(2);
    let mut cuts: Vec<usize> = vec![1, 7, 8, 11, 12, 39, 40, header_bytes - 1, header_bytes];
    cuts.extend([header_bytes + 1, bytes.len() / 2, bytes.len() - 21, bytes.len() - 20]);
    cuts.extend([bytes.len() - 4, bytes.len() - 1]);
    for cut in cuts {
        let case = format!("truncated to {cut} bytes");
        assert_refused(&work, &bytes[..cut], &["truncated"], &case);
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"tail");
    assert_refused(&work, &longer, &["unexpected bytes"], "bytes appended");

    // One flipped bit at every byte: always refused, whatever field it lands in.
    let named = ["checksum", "not a plafond snapshot", "format version", "corrupt", "truncated"];
    for position in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[position] ^= 1 << (position % 8);
        assert_refused(&work, &flipped, &named, &format!("bit flipped at {position}"));
    }

    // A good snapshot is still refused over a non-empty directory, which it leaves alone.
    let occupied = work.join("occupied");
    std::fs::create_dir(&occupied).unwrap();
    std::fs::write(occupied.join("keep"), b"mine").unwrap();
    let error = plafond_snapshots::restore(&good, None, &occupied, |_| {}).unwrap_err();
    assert!(error.to_string().contains("not empty"), "{error}");
    assert_eq!(std::fs::read(occupied.join("keep")).unwrap(), b"mine");

    // And it restores into an empty one.
    let empty = work.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (restored, _) = Engine::restore(&good, None, config(&empty, 2, &clock)).unwrap();
    assert!(restored.audit().unwrap().holds());
}

/// One snapshot at a time: a second one while the first is written is refused with a
/// clear error (not queued), and the file written is readable by its owner only.
#[test]
fn a_second_snapshot_while_one_is_written_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(
        Engine::open(EngineConfig::in_memory().with_shards(2).with_epoch_poll(None)).unwrap(),
    );
    let (writing_tx, writing_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    let first = {
        let (engine, path) = (engine.clone(), dir.path().join("first.snapshot"));
        std::thread::spawn(move || {
            let mut told = false;
            engine.snapshot_with_progress(&path, |_| {
                if !told {
                    told = true;
                    let _ = writing_tx.send(());
                    let _ = finish_rx.recv();
                }
            })
        })
    };
    writing_rx.recv().unwrap();
    let second = engine.snapshot_with_progress(dir.path().join("second.snapshot"), |_| {});
    assert!(matches!(second, Err(plafond::EngineError::SnapshotInProgress)), "{second:?}");
    assert!(!dir.path().join("second.snapshot").exists());
    drop(finish_tx);
    let report = first.join().unwrap().unwrap();
    let mode = std::fs::metadata(&report.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    engine.snapshot_with_progress(dir.path().join("third.snapshot"), |_| {}).unwrap();
}

/// `snapshot` rewritten by the format's own writer (so every checksum is right) after
/// `tamper` changed its states.
fn rewritten(dir: &Path, snapshot: &Path, tamper: impl FnOnce(&mut [ShardState])) -> Vec<u8> {
    let read = plafond_snapshots::read(snapshot, |_| {}).unwrap();
    let mut states = read.states;
    tamper(&mut states);
    let positions = read.header.sections.iter().map(|section| section.log_position);
    let shards: Vec<(ShardState, u64)> = states.into_iter().zip(positions).collect();
    let path = dir.join("rewritten.plafsnap");
    let options = plafond_snapshots::format::WriteOptions {
        chunk_bytes: plafond_snapshots::format::CHUNK_BYTES,
        created_ms: START_MS,
        bytes_per_second: None,
    };
    plafond_snapshots::format::write(&path, &shards, options, &mut |_| {}).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn e_a_balance_changed_behind_valid_checksums_is_refused_by_restore() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (good, _) = small_snapshot(dir.path(), &clock);
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();

    // Rewritten untouched, it restores: the check is of the money, not of the writer.
    let untouched = rewritten(&work, &good, |_| {});
    let clean = work.join("clean.plafsnap");
    std::fs::write(&clean, &untouched).unwrap();
    let target = work.join("clean-target");
    drop(Engine::restore(&clean, None, config(&target, 2, &clock)).unwrap());

    // One balance raised by 45,000: the accounts no longer add up to the running total.
    let raised = rewritten(&work, &good, |states| {
        let state = states.iter_mut().find(|s| !s.accounts.is_empty()).unwrap();
        state.accounts[0].balance_minor += 45_000;
    });
    let error = assert_refused(&work, &raised, &["add up to"], "a balance raised");
    assert!(error.contains("running total"), "{error}");

    // The balance and its running total both raised: the flows no longer explain it.
    let both = rewritten(&work, &good, |states| {
        let state = states.iter_mut().find(|s| !s.accounts.is_empty()).unwrap();
        state.accounts[0].balance_minor += 45_000;
        state.totals.balances_minor += 45_000;
    });
    assert_refused(&work, &both, &["came in"], "a balance and its total raised");
}
