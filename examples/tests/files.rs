//! Files and secrets (issue 15, part 5): the token kept out of the process list, snapshots
//! private, bounded in number and one at a time, and no open port without a token.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use plafond_wire::Value;
use support::{server_binary, simple, Server};

const TOKEN: &str = "correct-horse-battery-staple";

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
}

fn command_line(server: &Server) -> String {
    let raw = std::fs::read(format!("/proc/{}/cmdline", server.child.id())).expect("cmdline");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

fn requires_the_token(server: &Server) {
    let mut c = server.raw();
    assert!(matches!(c.call(&["BALANCE", "0"]), Value::Error(text) if text.starts_with("NOAUTH")));
    assert!(
        matches!(c.call(&["AUTH", "guess"]), Value::Error(text) if text.starts_with("WRONGPASS"))
    );
    assert_eq!(c.call(&["AUTH", TOKEN]), simple("OK"));
    assert_eq!(c.call(&["PING"]), simple("PONG"));
    assert!(!command_line(server).contains(TOKEN), "the token shows in ps");
}

#[test]
fn the_token_comes_from_a_file_or_the_environment() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("written");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = file.to_str().expect("utf-8");
    requires_the_token(&Server::start(&["--durability", "none", "--token-file", file]));
    let from_env =
        Server::try_start_with_env(&["--durability", "none"], &[("PLAFOND_TOKEN", TOKEN)])
            .unwrap_or_else(|e| panic!("starts: {e:?}"));
    requires_the_token(&from_env);
    // One source only, and never an empty token.
    let both = Server::try_start(&["--durability", "none", "--token-file", file, "--token", "x"]);
    assert!(both.is_err_and(|(_, stderr)| stderr.contains("one way only")));
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").expect("written");
    let empty =
        Server::try_start(&["--durability", "none", "--token-file", empty.to_str().unwrap()]);
    assert!(empty.is_err_and(|(_, stderr)| stderr.contains("empty")));
    let help = Command::new(server_binary()).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--token-file") && help.contains("PLAFOND_TOKEN"), "{help}");
}

#[test]
fn a_network_address_needs_a_token_or_an_explicit_switch() {
    let open = Server::try_start(&["--durability", "none", "--bind", "0.0.0.0"]);
    let Err((status, stderr)) = open else { panic!("served 0.0.0.0 without a token") };
    assert!(status.is_some_and(|status| !status.success()), "{status:?}");
    assert!(stderr.contains("--allow-no-token"), "{stderr}");
    let allowed = Server::start(&["--durability", "none", "--bind", "0.0.0.0", "--allow-no-token"]);
    assert_eq!(allowed.raw().call(&["PING"]), simple("PONG"));
    let with_token = Server::try_start_with_env(
        &["--durability", "none", "--bind", "0.0.0.0"],
        &[("PLAFOND_TOKEN", TOKEN)],
    );
    assert!(with_token.is_ok(), "a token makes a network address fine");
}

#[test]
fn snapshots_are_private_and_only_the_newest_are_kept() {
    const KEPT: usize = 3;
    let dir = tempfile::tempdir().expect("a temp dir");
    let snapshots = dir.path().join("snapshots");
    let server = Server::start(&[
        "--durability",
        "none",
        "--populate",
        "100",
        "--snapshot-dir",
        snapshots.to_str().expect("utf-8"),
        "--snapshots-keep",
        &KEPT.to_string(),
    ]);
    let mut c = server.raw();
    let mut written = Vec::new();
    for _ in 0..KEPT + 2 {
        let Value::Bulk(path) = c.call(&["SNAPSHOT"]) else { panic!("SNAPSHOT replies a path") };
        written.push(std::path::PathBuf::from(String::from_utf8(path).expect("utf-8")));
    }
    assert_eq!(mode(&snapshots), 0o700, "the snapshot directory is private");
    let mut left: Vec<_> =
        std::fs::read_dir(&snapshots).expect("lists").map(|e| e.expect("entry").path()).collect();
    left.sort();
    let mut newest = written[2..].to_vec();
    newest.sort();
    assert_eq!(left, newest, "the oldest are removed");
    for path in &left {
        assert_eq!(mode(path), 0o600, "{} is private", path.display());
    }
}
