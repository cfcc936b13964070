//! The auditor's tool as a process: `audit verify` and `audit replay` on the archive of an
//! embedded engine's log.

mod support;

use std::path::Path;
use std::sync::Arc;

use plafond::internals::archive;
use plafond::internals::state::ShardState;
use plafond::internals::store::Store;
use plafond::{AccountKind, Command, Engine, EngineConfig, MacKey, ManualClock, Outcome, Request};
use support::{run_example, run_example_with_stderr};

const SHARDS: u16 = 2;

/// Runs an engine: a snapshot after a first round, a cut after a second; archives the log
/// after the snapshot, with `key`'s MAC when given. Returns the cut.
fn engine_with_archive(
    data: &Path,
    snapshot: &Path,
    archive_dir: &Path,
    key: Option<&MacKey>,
) -> Vec<(ShardState, u64)> {
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let mut config = EngineConfig::durable(data)
        .with_shards(SHARDS)
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    if let Some(key) = key {
        config = config.with_mac_key(key.clone());
    }
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
        archive::archive_range_keyed(&store, shard, from_seq, end_seq, archive_dir, key).unwrap();
    }
    cut
}

#[test]
fn audit_verifies_an_archive_and_replays_it_onto_a_snapshot() {
    let temp = tempfile::tempdir().unwrap();
    let (data, snapshot) = (temp.path().join("data"), temp.path().join("cut.plafsnap"));
    let archive_dir = temp.path().join("archive");
    let cut = engine_with_archive(&data, &snapshot, &archive_dir, None);
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

/// Writes `fill` repeated into an owner-only key file, as an operator would.
fn key_file(path: &Path, fill: u8) -> MacKey {
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = [fill; 32];
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).unwrap();
    std::io::Write::write_all(&mut file, &bytes).unwrap();
    MacKey::from_bytes(&bytes).unwrap()
}

#[test]
fn audit_with_a_key_verifies_only_what_the_key_made() {
    let temp = tempfile::tempdir().unwrap();
    let (data, snapshot) = (temp.path().join("data"), temp.path().join("cut.plafsnap"));
    let archive_dir = temp.path().join("archive");
    let (key_path, other_path) = (temp.path().join("key"), temp.path().join("other"));
    let key = key_file(&key_path, b'k');
    key_file(&other_path, b'o');
    engine_with_archive(&data, &snapshot, &archive_dir, Some(&key));
    let (archive_arg, snapshot_arg) = (archive_dir.to_str().unwrap(), snapshot.to_str().unwrap());
    let (key_arg, other_arg) = (key_path.to_str().unwrap(), other_path.to_str().unwrap());

    let verify = ["verify", "--archive", archive_arg, "--mac-key-file"];
    let (status, out) = run_example("audit", &[&verify[..], &[key_arg]].concat());
    assert!(status.success(), "{out}");
    assert!(out.contains("with the key's MAC") && out.trim_end().ends_with(": ok"), "{out}");
    let (status, _, out) = run_example_with_stderr("audit", &[&verify[..], &[other_arg]].concat());
    assert!(!status.success(), "another key's archive is refused: {out}");
    assert!(out.contains("the MAC of the segment") && out.contains("does not match"), "{out}");

    // Replay checks the snapshot's MAC and every segment's; --out carries the key's MAC.
    let rebuilt = temp.path().join("rebuilt.plafsnap");
    let replay = ["replay", "--snapshot", snapshot_arg, "--archive", archive_arg];
    let out_arg = ["--out", rebuilt.to_str().unwrap(), "--mac-key-file"];
    let (status, out) = run_example("audit", &[&replay[..], &out_arg, &[key_arg]].concat());
    assert!(status.success(), "{out}");
    assert!(plafond_snapshots::read_keyed(&rebuilt, Some(&key), |_| {}).is_ok());
    let other = MacKey::from_bytes(&[b'o'; 32]).unwrap();
    assert!(plafond_snapshots::read_keyed(&rebuilt, Some(&other), |_| {}).is_err());
    let other_key = ["--mac-key-file", other_arg];
    let (status, _, out) = run_example_with_stderr("audit", &[&replay[..], &other_key].concat());
    assert!(!status.success(), "another key's snapshot is refused: {out}");
    assert!(out.contains("the MAC of the snapshot") && out.contains("does not match"), "{out}");

    // An unkeyed archive is refused under a key.
    let plain_dir = temp.path().join("plain");
    let plain_snapshot = temp.path().join("plain.plafsnap");
    engine_with_archive(&temp.path().join("plain-data"), &plain_snapshot, &plain_dir, None);
    let plain = ["verify", "--archive", plain_dir.to_str().unwrap(), "--mac-key-file", key_arg];
    let (status, _, out) = run_example_with_stderr("audit", &plain);
    assert!(!status.success(), "an unkeyed archive is refused under a key: {out}");
    assert!(out.contains("carries no MAC"), "{out}");

    // A segment changed after it was written is refused under its own key.
    let segment = archive::list_segments(&archive_dir).unwrap().remove(0).path;
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, bytes).unwrap();
    let (status, _, out) = run_example_with_stderr("audit", &[&verify[..], &[key_arg]].concat());
    assert!(!status.success(), "a tampered segment is refused: {out}");
    assert!(out.contains(segment.to_str().unwrap()), "the message names the segment: {out}");
}
