//! The operator's MAC key through the engine (issue 15): with a key, snapshots,
//! checkpoints and archive segments carry its HMAC-SHA-256; a restore, a checkpoint load,
//! an archive verification or replay refuses a file whose MAC is missing, another key's,
//! or left as it was while the content changed behind recomputed checksums, naming the
//! file and leaving nothing behind.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use plafond::internals::archive::{self, ArchiveError, ReplayLimit};
use plafond::internals::state::ShardState;
use plafond::{
    AccountKind, CheckpointPolicy, Command, Engine, EngineConfig, EngineError, MacKey, ManualClock,
    Outcome, SnapshotError,
};
use plafond_snapshots::format::WriteOptions;

const SHARDS: u16 = 2;
const DAY_MS: i64 = 86_400_000;
const MAC_BYTES: usize = 32;

fn key(byte: u8) -> MacKey {
    MacKey::from_bytes(&[byte; 32]).unwrap()
}

fn config(dir: &Path, key: Option<MacKey>) -> EngineConfig {
    let config = EngineConfig::durable(dir)
        .with_shards(SHARDS)
        .with_clock(Arc::new(ManualClock::new(ManualClock::SERVER_START_MS)))
        .with_epoch_poll(None)
        .with_checkpoints(CheckpointPolicy {
            interval: Duration::from_secs(3600),
            log_bytes: u64::MAX,
        });
    match key {
        Some(key) => config.with_mac_key(key),
        None => config,
    }
}

/// Four checking accounts with some payments; returns the cards.
fn busy(engine: &Engine) -> Vec<u64> {
    let cards: Vec<u64> = (0..4)
        .map(|_| {
            let profile = support::open_profile(engine, 0);
            let (account, card) = support::open_account(engine, profile, AccountKind::Checking);
            card.unwrap_or_else(|| panic!("checking account {account} has a card"))
        })
        .collect();
    for (index, &card) in cards.iter().enumerate() {
        engine.run(Command::Pay { card, amount_minor: 100 * (index as u64 + 1) }).unwrap();
    }
    cards
}

fn balance(engine: &Engine, account: u64) -> u64 {
    match engine.run(Command::ReadAccount { account }).unwrap() {
        Outcome::Account(view) => view.balance_minor,
        other => panic!("{other:?}"),
    }
}

fn version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

/// A snapshot of a busy engine opened with `key`.
fn snapshot(work: &Path, name: &str, key: Option<MacKey>) -> PathBuf {
    let engine = Engine::open(config(&work.join(format!("{name}-data")), key)).unwrap();
    busy(&engine);
    let path = work.join(name);
    engine.snapshot_with_progress(&path, |_| {}).unwrap();
    path
}

/// What a refused restore must leave: no target, no staging directory.
fn assert_nothing_left(target: &Path) {
    assert!(!target.exists(), "{} was left behind", target.display());
    let staging = plafond_snapshots::restore::staging_path(target).unwrap();
    assert!(!staging.exists(), "{} was left behind", staging.display());
}

fn restore_error(snapshot: &Path, target: &Path, key: Option<MacKey>) -> SnapshotError {
    match Engine::restore(snapshot, None, config(target, key)) {
        Err(EngineError::Snapshot(error)) => *error,
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("{} restored", snapshot.display()),
    }
}

#[test]
fn a_keyed_snapshot_restores_with_its_key_and_no_other() {
    let work = tempfile::tempdir().unwrap();
    let keyed = snapshot(work.path(), "keyed.plafsnap", Some(key(1)));
    assert_eq!(version(&keyed), plafond_snapshots::KEYED_FORMAT_VERSION);

    let target = work.path().join("other-key");
    let error = restore_error(&keyed, &target, Some(key(2)));
    assert!(matches!(&error, SnapshotError::MacMismatch { path } if path == &keyed), "{error}");
    assert_nothing_left(&target);

    let plain = snapshot(work.path(), "plain.plafsnap", None);
    assert_eq!(version(&plain), plafond_snapshots::FORMAT_VERSION, "no key: as before");
    let target = work.path().join("no-mac");
    let error = restore_error(&plain, &target, Some(key(1)));
    assert!(matches!(&error, SnapshotError::MacMissing { path, .. } if path == &plain), "{error}");
    assert!(error.to_string().contains("plain.plafsnap"), "names the file: {error}");
    assert_nothing_left(&target);

    let (restored, _) =
        Engine::restore(&keyed, None, config(&work.path().join("good"), Some(key(1)))).unwrap();
    assert!(restored.audit().unwrap().holds());
    assert_eq!(restored.stats().unwrap().total.counters.payments_approved, 4);
}

/// `snapshot` with `tamper` applied to its states, every checksum recomputed (written with
/// another key), and the original file's MAC put back: what someone who can write the
/// file but has no key can make.
fn forged(snapshot: &Path, tamper: impl FnOnce(&mut [ShardState])) -> PathBuf {
    let original = std::fs::read(snapshot).unwrap();
    let read = plafond_snapshots::read(snapshot, |_| {}).unwrap();
    let mut states = read.states;
    tamper(&mut states);
    let positions = read.header.sections.iter().map(|section| section.log_position);
    let shards: Vec<(ShardState, u64)> = states.into_iter().zip(positions).collect();
    let path = snapshot.with_file_name("forged.plafsnap");
    let options = WriteOptions::now(None);
    let other = key(0xee);
    plafond_snapshots::write_keyed(&path, &shards, options, Some(&other), &mut |_| {}).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let mac_at = bytes.len() - MAC_BYTES;
    bytes[mac_at..].copy_from_slice(&original[original.len() - MAC_BYTES..]);
    std::fs::write(&path, &bytes).unwrap();
    path
}

#[test]
fn a_balance_raised_behind_recomputed_checksums_is_refused_by_the_mac() {
    let work = tempfile::tempdir().unwrap();
    let keyed = snapshot(work.path(), "keyed.plafsnap", Some(key(1)));
    let raise = |states: &mut [ShardState]| states[1].accounts[0].balance_minor += 45_000;

    // The balance alone: the MAC refuses it (without a key, the money check would).
    let forged_balance = forged(&keyed, raise);
    let target = work.path().join("balance");
    let error = restore_error(&forged_balance, &target, Some(key(1)));
    assert!(matches!(error, SnapshotError::MacMismatch { .. }), "{error}");
    assert_nothing_left(&target);
    let error = restore_error(&forged_balance, &target, None);
    assert!(matches!(error, SnapshotError::Money { shard: 1, .. }), "{error}");
    assert_nothing_left(&target);

    // The balance and the totals, so that the money adds up: only the MAC tells. Without
    // a key this forgery restores, 45,000 richer.
    let forged_money = forged(&keyed, |states| {
        raise(states);
        states[1].totals.balances_minor += 45_000;
        states[1].totals.deposits_minor += 45_000;
    });
    let target = work.path().join("money");
    let error = restore_error(&forged_money, &target, Some(key(1)));
    assert!(matches!(&error, SnapshotError::MacMismatch { path } if path == &forged_money));
    assert_nothing_left(&target);
    let (fooled, _) = Engine::restore(&forged_money, None, config(&target, None)).unwrap();
    assert!(fooled.audit().unwrap().holds(), "the forgery is consistent");
    let original = plafond_snapshots::read(&keyed, |_| {}).unwrap();
    // Local account 0 of shard 1 is account 0 × shards + 1.
    let account = 1;
    let before = original.states[1].accounts[0].balance_minor;
    assert_eq!(balance(&fooled, account), before + 45_000);
}

#[test]
fn checkpoints_carry_the_mac_and_load_only_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cards = {
        let engine = Engine::open(config(dir.path(), Some(key(1)))).unwrap();
        let cards = busy(&engine);
        let report = engine.checkpoint().unwrap();
        let path = report.path.expect("a checkpoint file");
        assert_eq!(version(&path), plafond_snapshots::KEYED_FORMAT_VERSION);
        cards
    };
    let balances = |engine: &Engine| cards.iter().map(|&card| balance(engine, card)).collect();
    let expected: Vec<u64> = {
        let engine = Engine::open(config(dir.path(), Some(key(1)))).unwrap();
        balances(&engine)
    };
    // Another key: the only checkpoint is unusable, and the engine does not start.
    let refused = Engine::open(config(dir.path(), Some(key(2))));
    assert!(matches!(refused, Err(EngineError::NoCheckpoint { .. })), "{:?}", refused.err());
    // Without a key it loads, its MAC unchecked.
    let engine = Engine::open(config(dir.path(), None)).unwrap();
    assert_eq!(balances(&engine), expected);
}

#[test]
fn archive_segments_carry_the_mac_and_verify_and_replay_only_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("cold");
    let retention =
        plafond::LogRetention { days: 1, archive: plafond::Archive::Dir(archive_dir.clone()) };
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = config(dir.path(), Some(key(1))).with_clock(clock.clone());
    let engine = Engine::open(config.with_log_retention(retention)).unwrap();
    let start = engine.cut_with_position(|state, position| (state.clone(), position)).unwrap();
    let cards = busy(&engine);
    engine.checkpoint().unwrap();
    clock.advance(3 * DAY_MS);
    for &card in &cards {
        engine.run(Command::Pay { card, amount_minor: 7 }).unwrap();
    }
    engine.checkpoint().unwrap();
    drop(engine);

    let segments = archive::list_segments(&archive_dir).unwrap();
    assert!(!segments.is_empty(), "the log before the kept checkpoints was archived");
    for segment in &segments {
        assert_eq!(version(&segment.path), archive::KEYED_SEGMENT_FORMAT_VERSION);
    }
    let info = archive::verify_archive_keyed(&archive_dir, Some(&key(1)), |_, _, _| {}).unwrap();
    assert!(info.per_shard.iter().all(|shard| shard.segments.iter().all(|s| s.keyed)));
    let error = archive::verify_archive_keyed(&archive_dir, Some(&key(2)), |_, _, _| {});
    let error = error.unwrap_err();
    assert!(matches!(&error, ArchiveError::MacMismatch { path } if path == &segments[0].path));

    let regions = plafond::Regions::builtin();
    let shard = segments[0].shard;
    let replay = |key: &MacKey| {
        let (mut state, position) = start[usize::from(shard)].clone();
        let limit = ReplayLimit::default();
        let key = Some(key);
        archive::replay_shard_keyed(
            &archive_dir,
            &mut state,
            position,
            &regions,
            limit,
            key,
            |_, _| {},
        )
        .map(|reached| (position, reached))
    };
    let (position, reached) = replay(&key(1)).unwrap();
    assert!(reached > position, "the archived batches replay");
    let error = replay(&key(2)).unwrap_err();
    assert!(matches!(error, ArchiveError::MacMismatch { .. }), "{error}");
}
