//! `server --restore`: a snapshot restored by the shipped program, checked whole, with or
//! without the log written after it, and nothing left behind when it is refused.

mod support;

use std::path::Path;

use plafond_snapshots::format::{self, WriteOptions, CHUNK_BYTES};
use plafond_wire::Value;
use support::{array, int, simple, Server};

fn text(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The server serving `data_dir` (sync durability, the manual clock) with `extra` flags.
fn server(
    data_dir: &Path,
    extra: &[&str],
) -> Result<Server, (Option<std::process::ExitStatus>, String)> {
    let mut args = vec!["--data-dir", text(data_dir), "--clock", "manual"];
    args.extend_from_slice(extra);
    Server::try_start(&args)
}

#[test]
fn a_snapshot_restores_with_and_without_its_later_log_and_a_forged_one_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, snapshots) = (dir.path().join("old"), dir.path().join("snapshots"));
    let source = server(&old, &["--populate", "10", "--snapshot-dir", text(&snapshots)])
        .expect("the first server starts");
    let mut c = source.raw();
    assert_eq!(c.call(&["DEPOSIT", "3", "500"]), array(vec![simple("DONE"), int(20_500)]));
    let Value::Bulk(snapshot) = c.call(&["SNAPSHOT"]) else { panic!("SNAPSHOT replies a path") };
    let snapshot = std::path::PathBuf::from(String::from_utf8(snapshot).expect("utf-8"));
    assert_eq!(c.call(&["DEPOSIT", "3", "250"]), array(vec![simple("DONE"), int(20_750)]));
    drop(c);
    assert!(source.terminate().success());

    // The snapshot alone: the state at its cut.
    let bare = dir.path().join("bare");
    let restored = server(&bare, &["--restore", text(&snapshot)]).expect("restores");
    assert_eq!(restored.raw().call(&["BALANCE", "3"]), int(20_500));
    assert_eq!(restored.raw().call(&["BALANCE", "4"]), int(20_000));
    assert!(restored.terminate().success());

    // With the old directory's log after it: every acknowledged deposit.
    let full = dir.path().join("full");
    let restored = server(&full, &["--restore", text(&snapshot), "--restore-log-from", text(&old)])
        .expect("restores with the log");
    assert_eq!(restored.raw().call(&["BALANCE", "3"]), int(20_750));
    assert!(restored.terminate().success());

    // A restored directory is an engine's own: it opens again without --restore.
    let reopened = server(&full, &[]).expect("reopens");
    assert_eq!(reopened.raw().call(&["BALANCE", "3"]), int(20_750));
    assert!(reopened.terminate().success());

    // A target that is not empty is refused and kept as it was.
    let Err((_, stderr)) = server(&full, &["--restore", text(&snapshot)]) else {
        panic!("restored over a data directory")
    };
    assert!(stderr.contains("not empty"), "{stderr}");

    // One balance raised by 45,000, every checksum recomputed by the format's writer.
    let read = plafond_snapshots::read(&snapshot, |_| {}).expect("reads");
    let positions: Vec<u64> = read.header.sections.iter().map(|s| s.log_position).collect();
    let mut states = read.states;
    let state = states.iter_mut().find(|s| !s.accounts.is_empty()).expect("an account");
    state.accounts[0].balance_minor += 45_000;
    let forged = dir.path().join("forged.plafsnap");
    let shards: Vec<_> = states.into_iter().zip(positions).collect();
    let options = WriteOptions { chunk_bytes: CHUNK_BYTES, created_ms: 0, bytes_per_second: None };
    format::write(&forged, &shards, options, &mut |_| {}).expect("writes");
    let target = dir.path().join("forged-target");
    let Err((status, stderr)) = server(&target, &["--restore", text(&forged)]) else {
        panic!("restored a forged snapshot")
    };
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(stderr.contains("add up to"), "{stderr}");
    assert!(!target.exists(), "a refused restore left {}", target.display());
    assert!(!dir.path().join(".forged-target.restoring").exists(), "the staging was left");
}

#[test]
fn restore_flags_that_cannot_go_together_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let Err((_, stderr)) = server(&data, &["--restore-log-from", text(dir.path())]) else {
        panic!("--restore-log-from without --restore")
    };
    assert!(stderr.contains("needs --restore"), "{stderr}");
    let Err((_, stderr)) = server(&data, &["--restore", "x.plafsnap", "--populate", "3"]) else {
        panic!("--restore with --populate")
    };
    assert!(stderr.contains("drop --populate"), "{stderr}");
}

/// `--mac-key-file`: snapshots carry the key's MAC and restore with it; a snapshot made
/// without the key, or a key file others can read, is refused.
#[test]
fn snapshots_made_under_a_mac_key_restore_only_with_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("mac.key");
    std::fs::write(&key, [7u8; 32]).expect("key written");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("0600");
    let snapshot_of = |data: &Path, extra: &[&str]| {
        let snapshots = data.with_extension("snapshots");
        let mut args = vec!["--populate", "4", "--snapshot-dir", text(&snapshots)];
        args.extend_from_slice(extra);
        let source = server(data, &args).expect("a server starts");
        let Value::Bulk(path) = source.raw().call(&["SNAPSHOT"]) else { panic!("a path") };
        assert!(source.terminate().success());
        std::path::PathBuf::from(String::from_utf8(path).expect("utf-8"))
    };
    let keyed = snapshot_of(&dir.path().join("keyed"), &["--mac-key-file", text(&key)]);
    let bare = snapshot_of(&dir.path().join("bare"), &[]);

    let restored =
        server(&dir.path().join("r1"), &["--restore", text(&keyed), "--mac-key-file", text(&key)])
            .expect("a keyed snapshot restores with its key");
    assert_eq!(restored.raw().call(&["BALANCE", "3"]), int(20_000));
    assert!(restored.terminate().success());

    let target = dir.path().join("r2");
    let Err((_, stderr)) =
        server(&target, &["--restore", text(&bare), "--mac-key-file", text(&key)])
    else {
        panic!("a snapshot without a MAC restored under a key")
    };
    assert!(stderr.to_lowercase().contains("mac"), "{stderr}");
    assert!(!target.exists(), "a refused restore left {}", target.display());

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("0644");
    let Err((_, stderr)) = server(&dir.path().join("r3"), &["--mac-key-file", text(&key)]) else {
        panic!("served with a key file others can read")
    };
    assert!(stderr.contains("--mac-key-file"), "{stderr}");
}
