//! A full disk, for real (SPEC §7, issue 10 item 5): the data directory on a small tmpfs,
//! filled up while the server runs. Nothing more is acknowledged, every command (PING too)
//! answers `-ERR STORAGE ...`, STATS reports the failure, the log says so; once space is
//! back, a restart has every acknowledged outcome.
//!
//! Needs root (mount(8)); CI runs as root. Without it the test fails and says why.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use plafond_wire::Value;
use support::{simple, Server};

/// The tmpfs size: room for RocksDB's files and a little log, small enough to fill fast.
const TMPFS_MIB: u64 = 48;
/// Cards populated (balance 20,000 each).
const CARDS: u64 = 50;
/// The most pays sent after the fill before a refusal must have come: the WAL's last page
/// still has room for a few records once the file system is full.
const PAYS_AFTER_FILL_MAX: usize = 20_000;
/// Filler writes: big first, then page-sized to use the last free pages.
const FILL_CHUNK_BYTES: [usize; 2] = [1 << 20, 4096];

/// A tmpfs mounted on a temporary directory, unmounted when dropped (on every path,
/// panics included).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a temp dir");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8) runs");
        assert!(
            output.status.success(),
            "mounting a {size_mib} MiB tmpfs on {} failed ({}): this test fills a real file \
             system and needs root; run it as root (CI does)",
            dir.path().display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            // Still busy (a server being killed): detach it; it goes once released.
            let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
        }
    }
}

/// Writes a file until the file system has no space left; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("the filler is created");
    for chunk in FILL_CHUNK_BYTES {
        let bytes = vec![0xA5u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(written) if written == bytes.len() => {}
                Ok(_) => break,
                Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(error) => panic!("filling the tmpfs: {error}"),
            }
        }
    }
    path
}

fn storage_error(value: &Value) -> bool {
    matches!(value, Value::Error(text) if text.starts_with("ERR STORAGE "))
}

fn balance(c: &mut support::Raw, card: u64) -> i64 {
    match c.call(&["BALANCE", &card.to_string()]) {
        Value::Integer(balance) => balance,
        other => panic!("a balance, got {other:?}"),
    }
}

#[test]
fn a_full_disk_stops_acknowledging_says_so_and_a_restart_keeps_every_acknowledged_outcome() {
    let tmpfs = Tmpfs::mount(TMPFS_MIB);
    let data = tmpfs.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let durable = ["--durability", "sync", "--shards", "2", "--data-dir", data_arg.as_str()];
    let cards = CARDS.to_string();
    let mut args = durable.to_vec();
    args.extend(["--populate", cards.as_str()]);
    let server = Server::start(&args);
    let mut c = server.raw();
    let mut paid = vec![0i64; CARDS as usize];
    for card in 0..CARDS {
        let reply = c.call(&["PAY", &card.to_string(), "7"]);
        assert!(matches!(&reply, Value::Array(items) if items[0] == simple("APPROVED")));
        paid[card as usize] += 7;
    }
    let filler = fill(tmpfs.path());
    // Pays until the writer fails: those answered APPROVED were durable and count.
    let mut refused = None;
    for attempt in 0..PAYS_AFTER_FILL_MAX {
        let card = attempt as u64 % CARDS;
        match c.call(&["PAY", &card.to_string(), "1"]) {
            Value::Array(items) if items[0] == simple("APPROVED") => paid[card as usize] += 1,
            reply if storage_error(&reply) => {
                refused = Some(reply);
                break;
            }
            other => panic!("APPROVED or -ERR STORAGE, got {other:?}"),
        }
    }
    let refused = refused.expect("a full disk refuses a write");
    assert!(format!("{refused:?}").contains("space"), "names the problem: {refused:?}");
    // Nothing more is acknowledged, PING tells the truth, STATS shows the failure only.
    assert!(storage_error(&c.call(&["PAY", "0", "1"])));
    assert!(storage_error(&c.call(&["DEPOSIT", "0", "1"])));
    assert!(storage_error(&c.call(&["PING"])));
    let Value::Bulk(json) = c.call(&["STATS", "JSON"]) else { panic!("STATS JSON is a bulk") };
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    assert_eq!(json["health"]["state"], "failed", "{json}");
    assert!(json["health"]["reason"].as_str().is_some_and(|r| !r.is_empty()), "{json}");
    assert!(json.get("audit").is_none(), "no numbers that were never durable: {json}");
    let Value::Bulk(table) = c.call(&["STATS"]) else { panic!("STATS is a bulk") };
    assert!(String::from_utf8_lossy(&table).contains("STORAGE FAILED"));
    drop(c);
    let (_, stderr) = server.terminate_with_stderr();
    assert!(stderr.contains("plafond: storage failed:"), "one clear log line:\n{stderr}");

    std::fs::remove_file(filler).expect("the filler is removed");
    let server = Server::start(&durable);
    let mut c = server.raw();
    assert_eq!(c.call(&["PING"]), simple("PONG"));
    for card in 0..CARDS {
        assert_eq!(balance(&mut c, card), 20_000 - paid[card as usize], "card {card}");
    }
    let reply = c.call(&["PAY", "0", "1"]);
    assert!(matches!(&reply, Value::Array(items) if items[0] == simple("APPROVED")), "{reply:?}");
    let Value::Bulk(json) = c.call(&["STATS", "JSON"]) else { panic!("STATS JSON is a bulk") };
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    assert_eq!(json["health"]["state"], "ok", "{json}");
    drop(c);
    server.terminate();
}
