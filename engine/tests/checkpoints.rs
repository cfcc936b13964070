//! §7 "running for months": checkpoints taken while payments go on, restart from the
//! newest one with only the log after it replayed, and a damaged newest one falling back
//! to the previous.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plafond::internals::state::ShardState;
use plafond::{
    AccountKind, CheckpointPolicy, Command, Engine, EngineConfig, EngineError, ManualClock, Outcome,
};
use support::{watchdog, Rng};

const SHARDS: u16 = 3;

fn config(dir: &Path, policy: CheckpointPolicy) -> EngineConfig {
    EngineConfig::durable(dir)
        .with_shards(SHARDS)
        .with_clock(Arc::new(ManualClock::new(ManualClock::SERVER_START_MS)))
        .with_epoch_poll(None)
        .with_checkpoints(policy)
}

/// Checkpoints only when asked.
fn on_request() -> CheckpointPolicy {
    CheckpointPolicy { interval: Duration::from_secs(3600), log_bytes: u64::MAX }
}

/// `count` checking accounts (ids spread over the shards).
fn open_accounts(engine: &Engine, count: usize) -> Vec<u64> {
    let open = || {
        let profile = support::open_profile(engine, 0);
        support::open_account(engine, profile, AccountKind::Checking).0
    };
    (0..count).map(|_| open()).collect()
}

/// Payments, deposits and cross-shard transfers among `accounts`.
fn traffic(engine: &Engine, accounts: &[u64], rng: &mut Rng, commands: usize) {
    let requests = (0..commands).map(|_| {
        let (a, b) = (rng.pick(accounts), rng.pick(accounts));
        let command = match rng.below(3) {
            0 => Command::Pay { card: a, amount_minor: rng.between(1, 3_000) },
            1 => Command::Deposit { account: a, amount_minor: rng.between(1, 3_000) },
            _ => Command::Transfer { from: a, to: b, amount_minor: rng.between(1, 3_000) },
        };
        plafond::Request::new(command)
    });
    engine.submit(requests.collect()).unwrap().wait().unwrap();
}

fn states(engine: &Engine) -> Vec<ShardState> {
    engine.cut(|state| state.clone()).unwrap()
}

fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|path| path.extension().is_some_and(|ext| ext == "snap"));
    files.sort();
    files
}

#[test]
fn a_restart_from_a_checkpoint_taken_under_load_equals_the_state_before() {
    let _watchdog = watchdog("checkpoint under load", Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(config(dir.path(), on_request())).unwrap());
    let accounts = open_accounts(&engine, 60);
    let mut rng = Rng::new(7);
    traffic(&engine, &accounts, &mut rng, 2_000);
    // Checkpoints while another thread keeps paying, depositing and transferring.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (engine, accounts, stop) = (engine.clone(), accounts.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(11);
            while !stop.load(Ordering::Relaxed) {
                traffic(&engine, &accounts, &mut rng, 64);
            }
        })
    };
    for _ in 0..3 {
        let report = engine.checkpoint().unwrap();
        assert!(report.path.is_some() && report.bytes > 0);
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    traffic(&engine, &accounts, &mut rng, 500);
    let before = states(&engine);
    let audit = engine.audit().unwrap();
    assert!(audit.holds());
    let report = engine.checkpoint_report();
    assert_eq!(report.written, 3);
    drop(Arc::into_inner(engine).expect("the load thread is done"));
    assert_eq!(checkpoint_files(dir.path()).len(), plafond::CHECKPOINTS_KEPT, "older ones go");
    let engine = Engine::open(config(dir.path(), on_request())).unwrap();
    let after = states(&engine);
    assert_eq!(after, before, "the checkpoint plus the log after it is the state");
    for &account in &accounts {
        let read = engine.run(Command::ReadAccount { account }).unwrap();
        let Outcome::Account(view) = read else { panic!("{read:?}") };
        let shard = (account % u64::from(SHARDS)) as usize;
        let local = (account / u64::from(SHARDS)) as usize;
        assert_eq!(view.balance_minor, before[shard].accounts[local].balance_minor);
    }
    assert_eq!(engine.audit().unwrap(), audit);
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_and_two_damaged_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let before;
    {
        let engine = Engine::open(config(dir.path(), on_request())).unwrap();
        let accounts = open_accounts(&engine, 12);
        let mut rng = Rng::new(3);
        traffic(&engine, &accounts, &mut rng, 300);
        engine.checkpoint().unwrap();
        traffic(&engine, &accounts, &mut rng, 300);
        engine.checkpoint().unwrap();
        traffic(&engine, &accounts, &mut rng, 300);
        before = states(&engine);
    }
    let files = checkpoint_files(dir.path());
    assert_eq!(files.len(), 2);
    let flip = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(path, bytes).unwrap();
    };
    flip(&files[1]);
    {
        let engine = Engine::open(config(dir.path(), on_request())).unwrap();
        assert_eq!(states(&engine), before, "the previous checkpoint and more of the log");
    }
    flip(&files[0]);
    let refused = Engine::open(config(dir.path(), on_request())).err().expect("refused");
    assert!(matches!(refused, EngineError::NoCheckpoint { .. }), "{refused}");
    assert!(refused.to_string().contains("snapshot"), "says what to do: {refused}");
}

#[test]
fn the_checkpointer_takes_checkpoints_by_log_volume() {
    let _watchdog = watchdog("checkpoints by volume", Duration::from_secs(60));
    let dir = tempfile::tempdir().unwrap();
    let policy = CheckpointPolicy { interval: Duration::from_secs(3600), log_bytes: 16 << 10 };
    let engine = Engine::open(config(dir.path(), policy)).unwrap();
    let accounts = open_accounts(&engine, 30);
    let mut rng = Rng::new(5);
    let mut rounds = 0;
    while engine.checkpoint_report().written < 2 {
        traffic(&engine, &accounts, &mut rng, 200);
        std::thread::sleep(Duration::from_millis(20));
        rounds += 1;
        assert!(rounds < 2_000, "no checkpoint after {rounds} rounds of traffic");
    }
    let report = engine.checkpoint_report();
    assert_eq!(report.positions.len(), usize::from(SHARDS));
    assert!(report.positions.iter().all(|&position| position > 0), "{report:?}");
}

#[test]
fn the_log_past_retention_and_before_the_kept_checkpoints_moves_to_the_archive() {
    for archive in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let archive_dir = dir.path().join("cold");
        let retention = plafond::LogRetention {
            days: 1,
            archive: match archive {
                true => plafond::Archive::Dir(archive_dir.clone()),
                false => plafond::Archive::Delete,
            },
        };
        let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
        let config = config(dir.path(), on_request())
            .with_clock(clock.clone())
            .with_log_retention(retention);
        let engine = Engine::open(config.clone()).unwrap();
        let accounts = open_accounts(&engine, 30);
        let mut rng = Rng::new(9);
        traffic(&engine, &accounts, &mut rng, 3_000);
        engine.checkpoint().unwrap();
        let store = engine.store().unwrap().clone();
        assert!((0..SHARDS).all(|shard| store.log_start(shard).unwrap() == 0), "one checkpoint");
        clock.advance(3 * 86_400_000);
        traffic(&engine, &accounts, &mut rng, 3_000);
        engine.checkpoint().unwrap();
        // The oldest kept checkpoint is the first one, and everything before it is three
        // days old: all but its last batch leave the hot log.
        let kept = engine.checkpoint_report();
        let starts: Vec<u64> = (0..SHARDS).map(|shard| store.log_start(shard).unwrap()).collect();
        assert!(starts.iter().all(|&start| start > 0), "moved out: {starts:?}");
        let before = states(&engine);
        drop(store);
        drop(engine);
        if archive {
            let info = plafond::internals::archive::verify_archive(&archive_dir).unwrap();
            assert!(!info.per_shard.is_empty(), "{info:?}");
        } else {
            assert!(!archive_dir.exists(), "--archive none writes no archive");
        }
        let engine = Engine::open(config).unwrap();
        assert_eq!(states(&engine), before, "the checkpoint and the hot log still rebuild it");
        assert!(kept.positions.iter().zip(&starts).all(|(position, start)| start <= position));
    }
}
