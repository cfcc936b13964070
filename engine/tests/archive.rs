//! The log archive (§7) end to end: a durable engine's log after a snapshot is moved into
//! segment files and out of RocksDB, and replaying the archive onto the snapshot rebuilds
//! exactly the state the engine had at each recorded position, by position and by time.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plafond::internals::archive::{self, ArchiveError, ReplayLimit};
use plafond::internals::state::ShardState;
use plafond::internals::store::Store;
use plafond::{AccountKind, Command, CommandId, Engine, EngineConfig, ManualClock};
use plafond::{Clock, Regions, Request};
use support::Rng;

const SHARDS: u16 = 2;
const DAY_MS: i64 = 86_400_000;

fn config(dir: &Path, clock: &Arc<ManualClock>) -> EngineConfig {
    EngineConfig::durable(dir).with_shards(SHARDS).with_clock(clock.clone()).with_epoch_poll(None)
}

/// Opens `profiles` profiles, each with a checking and a savings account; returns the
/// accounts and the cards.
fn populate(engine: &Engine, profiles: usize) -> (Vec<u64>, Vec<u64>) {
    let (mut accounts, mut cards) = (Vec::new(), Vec::new());
    let regions = [engine.region_id("eu-west").unwrap(), engine.region_id("us-east").unwrap()];
    for index in 0..profiles {
        let profile = support::open_profile(engine, regions[index % 2]);
        for kind in [AccountKind::Checking, AccountKind::Savings] {
            let (account, card) = support::open_account(engine, profile, kind);
            accounts.push(account);
            cards.extend(card);
        }
    }
    (accounts, cards)
}

/// `commands` random pays, transfers (many across shards) and deposits with ids.
fn activity(engine: &Engine, ids: &(Vec<u64>, Vec<u64>), rng: &mut Rng, commands: u64, tag: &str) {
    let (accounts, cards) = ids;
    for start in (0..commands).step_by(16) {
        let requests: Vec<Request> = (start..commands.min(start + 16))
            .map(|n| {
                let command = match rng.below(4) {
                    0 | 1 => {
                        Command::Pay { card: rng.pick(cards), amount_minor: rng.between(1, 4000) }
                    }
                    2 => Command::Transfer {
                        from: rng.pick(accounts),
                        to: rng.pick(accounts),
                        amount_minor: rng.between(1, 3000),
                    },
                    _ => Command::Deposit { account: rng.pick(accounts), amount_minor: 500 },
                };
                Request::with_id(command, CommandId::new(&format!("{tag}-{n}")).unwrap())
            })
            .collect();
        engine.submit(requests).unwrap().wait().unwrap();
    }
}

/// Every shard's state and log position at one cut, once no transfer is in flight (so
/// nothing stamped before the cut is logged after it).
fn settled_cut(engine: &Engine) -> Vec<(ShardState, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.audit().unwrap().in_flight_minor != 0 {
        assert!(Instant::now() < deadline, "transfers never settled");
        std::thread::sleep(Duration::from_millis(5));
    }
    engine.cut_with_position(|state, position| (state.clone(), position)).unwrap()
}

/// Replays the archive onto the snapshot's states, each shard up to its `limit`.
fn rebuild(
    snapshot: &Path,
    dir: &Path,
    limit: impl Fn(usize) -> ReplayLimit,
) -> Vec<(ShardState, u64)> {
    let read = plafond_snapshots::read(snapshot, |_| {}).unwrap();
    let positions: Vec<u64> = read.header.sections.iter().map(|s| s.log_position).collect();
    let regions = Regions::builtin();
    let mut rebuilt = Vec::new();
    for (shard, (mut state, position)) in read.states.into_iter().zip(positions).enumerate() {
        // The snapshot carries the id records of its cut for a restore; a running shard
        // keeps them on disk, so its state (what the cuts recorded) lists none.
        assert!(!state.remembered.is_empty(), "the snapshot lists its records");
        state.remembered.clear();
        let reached =
            archive::replay_shard(dir, &mut state, position, &regions, limit(shard), |_, _| {})
                .unwrap();
        rebuilt.push((state, reached));
    }
    rebuilt
}

#[test]
fn replaying_the_archive_onto_a_snapshot_rebuilds_every_recorded_state() {
    let _watchdog = support::watchdog("archive replay", Duration::from_secs(60));
    let temp = tempfile::tempdir().unwrap();
    let (data, archive_dir) = (temp.path().join("data"), temp.path().join("archive"));
    let snapshot = temp.path().join("cut.plafsnap");
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let engine = Engine::open(config(&data, &clock)).unwrap();
    let ids = populate(&engine, 24);
    let mut rng = Rng::new(0x5eed_a5c1);
    activity(&engine, &ids, &mut rng, 160, "before");
    engine.snapshot(&snapshot).unwrap();
    // Each point is stamped later than everything before it, so `--until-ms` can find it.
    let mut points = Vec::new();
    for round in 0..4 {
        clock.advance(60_000);
        activity(&engine, &ids, &mut rng, 240, &format!("round-{round}"));
        if round == 1 {
            // Cross a business day: the epoch's rolls are archived and replayed too.
            clock.advance(DAY_MS);
            engine.run_due_epochs().unwrap();
        }
        points.push((clock.now_ms(), settled_cut(&engine)));
    }
    drop(engine);

    let store = Store::open(&data, SHARDS).unwrap();
    let start = plafond_snapshots::read(&snapshot, |_| {}).unwrap();
    for shard in 0..SHARDS {
        let from_seq = start.header.sections[usize::from(shard)].log_position;
        let end_seq = store.read_log(shard, from_seq, |_, _| Ok(())).unwrap();
        let last_point = points.last().unwrap().1[usize::from(shard)].1;
        assert!(end_seq >= last_point && last_point > from_seq + 10, "{from_seq} {end_seq}");
        let written =
            archive::archive_range(&store, shard, from_seq, end_seq, &archive_dir).unwrap();
        assert_eq!(written.last().unwrap().end_seq, end_seq);
        store.delete_log_range(shard, 0, end_seq).unwrap();
        assert_eq!(store.log_start(shard).unwrap(), end_seq);
    }
    drop(store);
    let info = archive::verify_archive(&archive_dir).unwrap();
    assert_eq!((info.shards, info.per_shard.len()), (SHARDS, usize::from(SHARDS)));

    for (index, (at_ms, cut)) in points.iter().enumerate() {
        let by_seq = rebuild(&snapshot, &archive_dir, |shard| ReplayLimit {
            until_seq: Some(cut[shard].1),
            until_ms: None,
        });
        assert_eq!(&by_seq, cut, "the state at point {index}, by position");
        let by_time = rebuild(&snapshot, &archive_dir, |_| ReplayLimit {
            until_seq: None,
            until_ms: Some(*at_ms),
        });
        assert_eq!(&by_time, cut, "the state at point {index}, by time");
    }
    let to_the_end = rebuild(&snapshot, &archive_dir, |_| ReplayLimit::default());
    assert_eq!(to_the_end, points.last().unwrap().1, "nothing after the last point");

    // A state that already holds the batches diverges when they are replayed again.
    let (mut later, _) = points[0].1[0].clone();
    let position = start.header.sections[0].log_position;
    let regions = Regions::builtin();
    let replayed = archive::replay_shard(
        &archive_dir,
        &mut later,
        position,
        &regions,
        ReplayLimit::default(),
        |_, _| {},
    );
    assert!(matches!(replayed, Err(ArchiveError::Replay { .. })), "{replayed:?}");
}
