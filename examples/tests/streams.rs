//! The change stream (SPEC §13) through real Redis clients: redis-py's `xread` and `xrange`
//! (a script under `tests/scripts`, installed by the project's set-up), `redis-cli XREAD`
//! unchanged, and the example consumer rebuilding every balance from the streams of a
//! server under load that restarts twice (once killed) in the middle.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plafond_examples::sample::Rng;
use plafond_wire::{Client, Value};
use support::{example_binary, free_port, python_script, InProcess, Server};

#[test]
fn redis_py_reads_the_streams_as_redis_streams() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The manual clock, so that no epoch falls due and logs entries while a `BLOCK` on
    // `$` is expected to time out.
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "2", "--clock", "manual"];
    let server = InProcess::start(&args);
    let out = python_script("streams_redis_py.py", &[&server.addr.port().to_string(), "follow"]);
    for check in ["xread from 0", "xrange", "block timeout", "block wake-up", "several streams"] {
        for protocol in [2, 3] {
            assert!(out.contains(&format!("ok {check} (RESP{protocol})")), "{out}");
        }
    }
}

#[test]
fn a_cursor_behind_retention_gets_trimmed_with_the_first_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = InProcess::start(&[
        "--durability",
        "sync",
        "--data-dir",
        data,
        "--shards",
        "1",
        "--clock",
        "manual",
        "--checkpoint-interval-s",
        "1",
        "--log-retention-days",
        "0",
        "--archive",
        "none",
    ]);
    let mut raw = server.raw();
    raw.call(&["PROFILE.OPEN", "eu-west"]);
    raw.call(&["ACCOUNT.OPEN", "0", "CHECKING"]);
    // Checkpoints each second while the log grows; retention then deletes the batches
    // before the oldest kept one.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        raw.call(&["PAY", "0", "1"]);
        raw.call(&["CLOCK.ADVANCE", "1000"]);
        let Value::Array(streams) = raw.call(&["STREAMS.INFO"]) else { panic!("an array") };
        let Value::Array(fields) = &streams[0] else { panic!("a map") };
        if fields[3] != Value::Bulk(b"0-1".to_vec()) {
            break;
        }
        assert!(Instant::now() < deadline, "retention never deleted a batch");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = python_script("streams_redis_py.py", &[&server.addr.port().to_string(), "trimmed"]);
    assert!(out.contains("ok trimmed"), "{out}");
}

#[test]
fn redis_cli_xread_and_xrange_work_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The manual clock: with the host's, a region's epoch that falls due during the test
    // logs `ROLL` entries, and `$` below would see one (it did, at 02:36 UTC).
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "1", "--clock", "manual"];
    let server = InProcess::start(&args);
    let mut raw = server.raw();
    raw.call(&["PROFILE.OPEN", "eu-west"]);
    raw.call(&["ACCOUNT.OPEN", "0", "CHECKING"]);
    raw.call(&["PAY", "0", "42", "cli-pay"]);
    let port = server.addr.port().to_string();
    let cli = |args: &[&str]| {
        let output = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .expect("redis-cli runs (the project's set-up installs redis-tools)");
        assert!(output.status.success());
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let read = cli(&["XREAD", "COUNT", "100", "STREAMS", "changes:0", "0"]);
    let lines: Vec<&str> = read.lines().collect();
    // Not a terminal: one element a line, the stream's name first.
    assert_eq!(lines[0], "changes:0", "{read}");
    assert_eq!(lines[1], "0-1", "{read}");
    let pay = lines.iter().position(|line| *line == "cli-pay").expect("the pay's command id");
    assert_eq!(lines[pay - 5..pay], ["kind", "PAY", "ts", lines[pay - 2], "command_id"]);
    assert_eq!(lines[pay + 1..pay + 7], ["card", "0", "amount", "42", "outcome", "APPROVED"]);
    let range = cli(&["XRANGE", "changes:0", "-", "+", "COUNT", "1"]);
    assert_eq!(range.lines().next(), Some("0-1"), "{range}");
    assert_eq!(cli(&["XREAD", "BLOCK", "100", "STREAMS", "changes:0", "$"]).trim(), "");
    let refused = cli(&["XREAD", "STREAMS", "changes:7", "0"]);
    assert!(refused.contains("no stream of shard 7"), "{refused}");
}

/// Accounts the load moves money between: checking accounts on both shards.
const ACCOUNTS: u64 = 24;
/// On the second shard (odd) and never opened: a transfer to it is refunded.
const NOBODY: u64 = 1_000_001;

/// Deposits, payments and transfers (within and across the shards, some refunded) on
/// pipelined connections, reconnecting while the server is away, until `stop`.
fn load(port: u16, stop: Arc<AtomicBool>, seed: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = Rng::new(seed);
        let mut answered = 0;
        while !stop.load(Ordering::Relaxed) {
            let Ok(mut client) = Client::connect(("127.0.0.1", port), Duration::from_secs(10))
            else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            // Holds placed and not yet captured or voided (§12): the stream names a
            // capture's hold only, so the consumer must map it to its authorization's card.
            let mut holds: Vec<u64> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut batch = Vec::new();
                let mut authorizations = Vec::new();
                for position in 0..32 {
                    let (a, b) = (rng.below(ACCOUNTS), rng.below(ACCOUNTS));
                    let amount = (1 + rng.below(3_000)).to_string();
                    let command: Vec<String> = match rng.below(14) {
                        0..=1 => vec!["DEPOSIT".into(), a.to_string(), amount],
                        2..=5 => vec!["PAY".into(), a.to_string(), amount],
                        6 => vec!["TRANSFER".into(), a.to_string(), NOBODY.to_string(), amount],
                        7..=9 => vec!["TRANSFER".into(), a.to_string(), b.to_string(), amount],
                        10 => {
                            authorizations.push(position);
                            vec!["AUTHORIZE".into(), a.to_string(), amount]
                        }
                        11 => vec!["REFUND".into(), a.to_string(), amount],
                        // A part, or the rest and final; a capture above what is held is
                        // declined, which the stream shows too.
                        _ => match holds.pop() {
                            Some(hold) if rng.below(2) == 0 => {
                                holds.push(hold);
                                let part = (1 + rng.below(500)).to_string();
                                vec!["CAPTURE".into(), hold.to_string(), part]
                            }
                            Some(hold) => {
                                let part = rng.below(3_000).to_string();
                                vec!["CAPTURE.FINAL".into(), hold.to_string(), part]
                            }
                            None => vec!["PAY".into(), a.to_string(), amount],
                        },
                    };
                    plafond_wire::encode_command(&mut batch, &command);
                }
                if client.send(&batch).is_err() {
                    break;
                }
                let replies: Vec<Value> =
                    (0..32).map(|_| client.read()).take_while(Result::is_ok).flatten().collect();
                answered += replies.len() as u64;
                for &position in &authorizations {
                    if let Some(Value::Array(reply)) = replies.get(position) {
                        if let [Value::Simple(word), Value::Integer(hold), ..] = reply.as_slice() {
                            if word == "APPROVED" {
                                holds.extend(u64::try_from(*hold).ok());
                            }
                        }
                    }
                }
                if replies.len() < 32 {
                    break;
                }
            }
        }
        answered
    })
}

fn consumer(port: u16, ledger: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(example_binary("consumer"));
    command
        .args(["--port", &port.to_string(), "--ledger", ledger, "--block-ms", "200"])
        .args(extra)
        .stdin(Stdio::null());
    command
}

fn follow(port: u16, ledger: &str) -> Child {
    consumer(port, ledger, &["--save-every-ms", "50"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the consumer starts")
}

#[test]
fn the_consumer_rebuilds_every_balance_through_load_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = dir.path().join("ledger.json");
    let (data, ledger) = (data.to_str().unwrap(), ledger.to_str().unwrap());
    let port = free_port();
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "2"];
    let server = Server::start_at(port, &args);
    let mut raw = server.raw();
    for _ in 0..ACCOUNTS {
        // Profiles go round the shards, and each profile's account lives with it.
        let Value::Integer(profile) = raw.call(&["PROFILE.OPEN", "eu-west"]) else { panic!() };
        raw.call(&["ACCOUNT.OPEN", &profile.to_string(), "CHECKING"]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..2).map(|seed| load(port, stop.clone(), seed)).collect();
    let mut first = follow(port, ledger);
    std::thread::sleep(Duration::from_millis(800));
    // The consumer dies with the server: the next one resumes from the ledger file alone.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(server.terminate().success());
    let server = Server::start_at(port, &args);
    let mut second = follow(port, ledger);
    std::thread::sleep(Duration::from_millis(800));
    // Killed this time, the server comes back with every acknowledged (and streamed) entry;
    // the consumer waits for it and reads on.
    drop(server);
    let server = Server::start_at(port, &args);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let answered: u64 = loads.into_iter().map(|load| load.join().unwrap()).sum();
    assert!(answered > 1_000, "the load ran: {answered} replies");
    // SIGTERM: it saves and stops.
    let pid = i32::try_from(second.id()).unwrap();
    // SAFETY: kill(2) with a pid we spawned and have not waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(second.wait().unwrap().success(), "the consumer stops cleanly");
    let output = consumer(port, ledger, &["--catch-up", "--dump"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rebuilt: BTreeMap<u64, i64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (account, balance) = line.split_once(' ').unwrap();
            (account.parse().unwrap(), balance.parse().unwrap())
        })
        .collect();
    let mut raw = server.raw();
    let mut expected = BTreeMap::new();
    for account in 0..ACCOUNTS {
        let Value::Integer(balance) = raw.call(&["BALANCE", &account.to_string()]) else {
            panic!("a balance")
        };
        expected.insert(account, balance);
    }
    assert_eq!(rebuilt, expected, "the stream alone gives the server's balances");
    let moved = expected.values().any(|&balance| balance != 100_000);
    assert!(moved, "the load changed balances: {expected:?}");
}
