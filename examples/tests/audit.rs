//! The auditor's tool as a process: `audit verify` and `audit replay` on the archive of an
//! embedded engine's log.

mod support;

use std::path::Path;
use std::sync::Arc;

use plafond::internals::archive;
use plafond::internals::state::ShardState;
use plafond::internals::store::Store;
use plafond::{AccountKind, Command, Engine, EngineConfig, ManualClock, Outcome, Request};
use support::run_example;

const SHARDS: u16 = 2;

/// Runs an engine: a snapshot after a first round, a cut after a second; archives the log
/// after the snapshot. Returns the cut.
fn engine_with_archive(data: &Path, snapshot: &Path, archive_dir: &Path) -> Vec<(ShardState, u64)> {
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = EngineConfig::durable(data)
        .with_shards(SHARDS)
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    let engine = Engine::open(config).unwrap();
    let region = engine.region_id("eu-west").unwrap();
    let mut cards = Vec::new();
    for _ in 0..8 {
        let Outcome::ProfileOpened { profile } =
            engine.run(Command::OpenProfile { region }).unwrap()
        else {
            panic!("a profile")
        };
        let opened = Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None };
        let Outcome::AccountOpened { card, .. } = engine.run(opened).unwrap() else { panic!() };
        cards.extend(card);
    }
    let pays = |round: u64| {
        let requests: Vec<Request> = (0..64)
            .map(|n| {
                Request::new(Command::Pay { card: cards[n % cards.len()], amount_minor: round })
            })
            .collect();
        for chunk in requests.chunks(4) {
            engine.submit(chunk.to_vec()).unwrap().wait().unwrap();
        }
    };
    pays(1);
    let report = engine.snapshot(snapshot).unwrap();
    clock.advance(1_000);
    pays(2);
    let cut = engine.cut_with_position(|state, position| (state.clone(), position)).unwrap();
    clock.advance(1_000);
    pays(3);
    drop(engine);
    let store = Store::open(data, SHARDS).unwrap();
    for shard in 0..SHARDS {
        let from_seq = report.log_positions[usize::from(shard)];
        let end_seq = store.read_log(shard, from_seq, |_, _| Ok(())).unwrap();
        archive::archive_range(&store, shard, from_seq, end_seq, archive_dir).unwrap();
    }
    cut
}

#[test]
fn audit_verifies_an_archive_and_replays_it_onto_a_snapshot() {
    let temp = tempfile::tempdir().unwrap();
    let (data, snapshot) = (temp.path().join("data"), temp.path().join("cut.plafsnap"));
    let archive_dir = temp.path().join("archive");
    let cut = engine_with_archive(&data, &snapshot, &archive_dir);
    let archive_arg = archive_dir.to_str().unwrap();

    let (status, out) = run_example("audit", &["verify", "--archive", archive_arg]);
    assert!(status.success(), "{out}");
    assert!(out.contains("shard 0: batches") && out.contains("shard 1: batches"), "{out}");
    assert!(out.trim_end().ends_with(": ok"), "{out}");

    let rebuilt = temp.path().join("rebuilt.plafsnap");
    let until: Vec<String> = cut
        .iter()
        .enumerate()
        .map(|(shard, (_, position))| format!("{shard}:{position}"))
        .collect();
    let mut args =
        vec!["replay", "--snapshot", snapshot.to_str().unwrap(), "--archive", archive_arg];
    for position in &until {
        args.extend(["--until-seq", position.as_str()]);
    }
    args.extend(["--out", rebuilt.to_str().unwrap()]);
    let (status, out) = run_example("audit", &args);
    assert!(status.success(), "{out}");
    assert!(out.contains("conservation:") && out.contains(": ok"), "{out}");
    let read = plafond_snapshots::read(&rebuilt, |_| {}).unwrap();
    let states: Vec<(ShardState, u64)> = read.shards().map(|(s, p)| (s.clone(), p)).collect();
    assert_eq!(states, cut, "the rebuilt snapshot is the state at the cut");

    // Past the archive's end, and a damaged segment, fail.
    let far = ["replay", "--snapshot", snapshot.to_str().unwrap(), "--archive", archive_arg];
    let (status, _) = run_example("audit", &[&far[..], &["--until-seq", "0:999999"]].concat());
    assert!(!status.success(), "a position beyond the archive is refused");
    let segment = archive::list_segments(&archive_dir).unwrap().remove(0).path;
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let (status, _) = run_example("audit", &["verify", "--archive", archive_arg]);
    assert!(!status.success(), "a damaged archive fails verify");
}
