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
use support::{example_binary, free_port, python_script, simple, InProcess, Server};

#[test]
fn redis_py_reads_the_streams_as_redis_streams() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // The manual clock, so that no epoch falls due and logs entries while a `BLOCK` on
    // `$` is expected to time out; the epochs a fresh server runs at its start are let
    // finish first.
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "2", "--clock", "manual"];
    let server = InProcess::start(&args);
    wait_until_quiet(&mut server.raw(), &["changes:0", "changes:1"]);
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
    // logs `ROLL` entries, and `$` below would see one (it did, at 02:36 UTC). The epochs
    // a fresh server runs at its start are let finish first (on a busy machine the second
    // region's ended after the pay below, and `$` saw its `EPOCH` entry).
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "1", "--clock", "manual"];
    let server = InProcess::start(&args);
    let mut raw = server.raw();
    wait_until_quiet(&mut raw, &["changes:0"]);
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

/// The ids of an `XRANGE`'s entries, or of an `XREAD`'s first stream's.
fn entry_ids(reply: &Value, xread: bool) -> Vec<(u64, u64)> {
    let entries = match (reply, xread) {
        (Value::Nil, _) => Vec::new(),
        (Value::Array(streams), true) => match streams.first() {
            Some(Value::Array(stream)) => match stream.get(1) {
                Some(Value::Array(entries)) => entries.clone(),
                _ => panic!("an XREAD stream: {stream:?}"),
            },
            _ => panic!("XREAD's streams: {streams:?}"),
        },
        (Value::Array(entries), false) => entries.clone(),
        (other, _) => panic!("not stream entries: {other:?}"),
    };
    entries
        .iter()
        .map(|entry| {
            let Value::Array(pair) = entry else { panic!("an entry: {entry:?}") };
            let Some(Value::Bulk(id)) = pair.first() else { panic!("an id: {pair:?}") };
            let (batch, index) = std::str::from_utf8(id).unwrap().split_once('-').unwrap();
            (batch.parse().unwrap(), index.parse().unwrap())
        })
        .collect()
}

#[test]
fn reads_of_any_size_from_any_id_give_each_entry_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Batches of thousands of entries: each is encoded and kept in several pieces.
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "1", "--populate", "2500"];
    let server = InProcess::start(&args);
    let mut raw = server.raw();
    wait_until_quiet(&mut raw, &["changes:0"]);
    let all = entry_ids(&raw.call(&["XRANGE", "changes:0", "-", "+", "COUNT", "8000"]), false);
    assert!(all.len() > 5_000, "{} entries", all.len());
    assert!(all.windows(2).all(|pair| pair[0] < pair[1]), "in order, each once");
    let biggest = all.iter().map(|&(_, index)| index).max().unwrap();
    assert!(biggest > 2 * 1024, "a batch of several pieces: {biggest} entries");
    for count in [1, 333, 1024, 1500] {
        let (mut read, mut cursor) = (Vec::new(), "0-0".to_string());
        loop {
            let reply =
                raw.call(&["XREAD", "COUNT", &count.to_string(), "STREAMS", "changes:0", &cursor]);
            let ids = entry_ids(&reply, true);
            let Some(&(batch, index)) = ids.last() else { break };
            assert!(ids.len() <= count);
            cursor = format!("{batch}-{index}");
            read.extend(ids);
        }
        assert!(read == all, "COUNT {count}: {} entries read, {} there", read.len(), all.len());
    }
    for &(batch, index) in all.iter().step_by(511) {
        let from = format!("{batch}-{index}");
        let range = entry_ids(&raw.call(&["XRANGE", "changes:0", &from, "+", "COUNT", "5"]), false);
        let at = all.iter().position(|&id| id == (batch, index)).unwrap();
        assert!(range == all[at..(at + 5).min(all.len())], "from {from}: {range:?}");
    }
}

/// Waits until every region's first epoch has completed (a fresh server runs them at its
/// start, also on the manual clock), then until `streams` get no entry for half a second:
/// the epochs log entries for a while after the server starts.
fn wait_until_quiet(raw: &mut support::Raw, streams: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Value::Bulk(json) = raw.call(&["STATS", "JSON"]) else { panic!("STATS JSON") };
        let stats: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
        let regions = stats["regions"].as_object().expect("regions");
        let completed = &stats["epochs_completed"];
        if regions.keys().all(|region| completed[region].as_u64() >= Some(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "the first epochs never completed: {completed}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut quiet = vec!["XREAD", "BLOCK", "500", "STREAMS"];
    quiet.extend(streams);
    quiet.extend(streams.iter().map(|_| "$"));
    while raw.call(&quiet) != Value::Nil {}
}

/// `plafond_stream_blocked_readers` from `GET /metrics` at `addr`.
fn blocked_readers(addr: std::net::SocketAddr) -> f64 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).expect("sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let line = response
        .lines()
        .find(|line| line.starts_with("plafond_stream_blocked_readers "))
        .unwrap_or_else(|| panic!("no blocked readers gauge in {response}"));
    line.rsplit(' ').next().and_then(|value| value.parse().ok()).expect("a number")
}

/// Polls the gauge until it reads `wanted`; how long that took.
fn wait_for_blocked(addr: std::net::SocketAddr, wanted: f64) -> Duration {
    let started = Instant::now();
    while blocked_readers(addr) != wanted {
        assert!(started.elapsed() < Duration::from_secs(20), "never {wanted} blocked readers");
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[test]
fn a_blocked_reader_that_hangs_up_stops_waiting_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "2", "--metrics-port", "0"];
    let server = InProcess::start(&args);
    let metrics = server.metrics_addr.expect("metrics served");
    assert_eq!(blocked_readers(metrics), 0.0);
    wait_until_quiet(&mut server.raw(), &["changes:0", "changes:1"]);
    let block = ["XREAD", "BLOCK", "60000", "STREAMS", "changes:0", "changes:1", "$", "$"];
    let mut reader = server.raw();
    reader.send_command(&block);
    wait_for_blocked(metrics, 1.0);
    // Closed by the client: the wait ends long before its 60 s.
    drop(reader);
    let noticed = wait_for_blocked(metrics, 0.0);
    assert!(noticed < Duration::from_secs(10), "noticed after {noticed:?}");
    // A reader that stays is still woken by a new entry, and its connection goes on.
    let mut reader = server.raw();
    reader.send_command(&block);
    wait_for_blocked(metrics, 1.0);
    server.raw().call(&["PROFILE.OPEN", "eu-west"]);
    let Some(Value::Array(streams)) = reader.read() else { panic!("the entry wakes it") };
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert_eq!(reader.call(&["PING"]), Value::Simple("PONG".into()));
    assert_eq!(blocked_readers(metrics), 0.0);
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
    let rebuilt = rebuilt(consumer(port, ledger, &["--catch-up", "--dump"]));
    let accounts: Vec<i64> = (0..ACCOUNTS as i64).collect();
    let expected = on_the_server(&mut server.raw(), &accounts);
    assert_eq!(rebuilt, expected, "the stream alone gives the server's balances and holds");
    let moved = expected.values().any(|&(balance, _)| balance != 100_000);
    assert!(moved, "the load changed balances: {expected:?}");
}

/// What the consumer `command` (with `--dump`) rebuilt: account → (balance, held).
fn rebuilt(mut command: Command) -> BTreeMap<i64, (i64, i64)> {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let columns: Vec<i64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
            let [account, balance, held] = columns[..] else { panic!("a dump line: {line}") };
            (account, (balance, held))
        })
        .collect()
}

/// What the server says of `accounts`: account → (balance, held), by `BALANCE.DETAIL`.
fn on_the_server(raw: &mut support::Raw, accounts: &[i64]) -> BTreeMap<i64, (i64, i64)> {
    let mut seen = BTreeMap::new();
    for &account in accounts {
        let detail = raw.call(&["BALANCE.DETAIL", &account.to_string()]);
        let Value::Array(detail) = &detail else { panic!("a detail: {detail:?}") };
        let [Value::Integer(balance), _, Value::Integer(held), _] = detail[..] else {
            panic!("[balance, available, held, open_holds]: {detail:?}")
        };
        seen.insert(account, (balance, held));
    }
    seen
}

/// The fields of every entry of `changes:<shard>`, as `(name, value)` pairs.
fn entries(raw: &mut support::Raw, shard: u16) -> Vec<Vec<(String, String)>> {
    let stream = format!("changes:{shard}");
    let Value::Array(entries) = raw.call(&["XRANGE", &stream, "-", "+", "COUNT", "8000"]) else {
        panic!("XRANGE replies an array")
    };
    let text = |value: &Value| match value {
        Value::Bulk(text) => String::from_utf8_lossy(text).into_owned(),
        other => panic!("a field is a bulk string: {other:?}"),
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::Array(pair) => match pair.get(1) {
                Some(Value::Array(fields)) => {
                    fields.chunks(2).map(|pair| (text(&pair[0]), text(&pair[1]))).collect()
                }
                other => panic!("an entry's fields: {other:?}"),
            },
            other => panic!("an entry: {other:?}"),
        })
        .collect()
}

/// The kinds of every entry of `changes:<shard>`.
fn kinds(raw: &mut support::Raw, shard: u16) -> Vec<String> {
    let kind = |fields: Vec<(String, String)>| fields.into_iter().next().map(|(_, kind)| kind);
    entries(raw, shard).into_iter().filter_map(kind).collect()
}

/// The `region` of every `INTEREST` entry of `changes:<shard>` (`None` for one without).
fn interest_regions(raw: &mut support::Raw, shard: u16) -> Vec<Option<String>> {
    let region = |fields: &[(String, String)]| {
        fields.iter().find(|(name, _)| name == "region").map(|(_, region)| region.clone())
    };
    let interest = |fields: &Vec<(String, String)>| fields[0].1 == "INTEREST";
    entries(raw, shard).iter().filter(|fields| interest(fields)).map(|f| region(f)).collect()
}

#[test]
fn an_epochs_interest_expiries_and_end_are_entries_and_the_consumer_stays_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ledger = dir.path().join("ledger.json");
    let (data, ledger) = (data.to_str().unwrap(), ledger.to_str().unwrap());
    let args = ["--durability", "sync", "--data-dir", data, "--shards", "2", "--clock", "manual"];
    let server = InProcess::start(&args);
    let mut raw = server.raw();
    let (mut accounts, mut before) = (Vec::new(), BTreeMap::new());
    for index in 0..8 {
        let Value::Integer(profile) = raw.call(&["PROFILE.OPEN", "eu-west"]) else { panic!() };
        let profile = profile.to_string();
        let Value::Array(card) = raw.call(&["ACCOUNT.OPEN", &profile, "CHECKING"]) else {
            panic!("an account")
        };
        let Value::Array(savings) = raw.call(&["ACCOUNT.OPEN", &profile, "SAVINGS"]) else {
            panic!("an account")
        };
        let [Value::Integer(card), ..] = card[..] else { panic!("{card:?}") };
        let [Value::Integer(savings), ..] = savings[..] else { panic!("{savings:?}") };
        let amount = (50_000 + 7_919 * index).to_string();
        let Value::Array(done) = raw.call(&["DEPOSIT", &savings.to_string(), &amount]) else {
            panic!("a deposit")
        };
        let Value::Integer(deposited) = done[1] else { panic!("{done:?}") };
        before.insert(savings, deposited);
        // A hold left open expires at the epoch of its seventh business day.
        let Value::Array(hold) = raw.call(&["AUTHORIZE", &card.to_string(), "3000"]) else {
            panic!("a hold")
        };
        assert_eq!(hold[0], Value::Simple("APPROVED".into()), "{hold:?}");
        accounts.extend([card, savings]);
    }
    // The manual clock starts on 2027-01-04: past the next 1 January, when the year's
    // interest is posted (§5), and long past the holds' expiry.
    let days = (370 * 86_400_000i64).to_string();
    assert_eq!(raw.call(&["CLOCK.ADVANCE", &days]), Value::Simple("OK".into()));
    assert!(matches!(raw.call(&["BATCH.RUN", "eu-west"]), Value::Array(_)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for shard in 0..2 {
            seen.extend(kinds(&mut raw, shard));
        }
        let count = |kind: &str| seen.iter().filter(|seen| *seen == kind).count();
        // One per savings account and one per hold, once the epochs reached them.
        if (count("INTEREST"), count("EXPIRE")) == (8, 8) {
            break;
        }
        assert!(count("INTEREST") <= 8 && count("EXPIRE") <= 8, "{seen:?}");
        assert!(Instant::now() < deadline, "the epochs never posted it all: {seen:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until_quiet(&mut raw, &["changes:0", "changes:1"]);
    for shard in 0..2 {
        // Each shard's stream ends its epochs' rolls with the epoch's end.
        let seen = kinds(&mut raw, shard);
        let last = |kind: &str| seen.iter().rposition(|seen| seen == kind);
        assert!(last("EPOCH") > last("ROLL"), "shard {shard}: {seen:?}");
        // Each INTEREST names the region of its epoch (and of its account), as a lazy one.
        let regions = interest_regions(&mut raw, shard);
        assert!(regions.iter().all(|region| region.is_some() && *region == regions[0]));
    }
    let rebuilt = rebuilt(consumer(server.addr.port(), ledger, &["--catch-up", "--dump"]));
    let expected = on_the_server(&mut raw, &accounts);
    assert_eq!(rebuilt, expected, "the stream alone gives the server's balances and holds");
    let paid = before.iter().filter(|&(account, &balance)| expected[account].0 > balance).count();
    assert_eq!(paid, 8, "every savings account earned interest: {expected:?} {before:?}");
}

/// The id an `ACCOUNT.OPEN` reply names.
fn opened(reply: Value) -> i64 {
    match reply {
        Value::Array(account) => match account[..] {
            [Value::Integer(account), ..] => account,
            _ => panic!("an account: {account:?}"),
        },
        other => panic!("an account: {other:?}"),
    }
}

/// The hold an approved `AUTHORIZE` placed.
fn placed(reply: Value) -> String {
    match reply {
        Value::Array(hold) => match &hold[..] {
            [Value::Simple(approved), Value::Integer(hold), ..] if approved == "APPROVED" => {
                hold.to_string()
            }
            _ => panic!("a hold: {hold:?}"),
        },
        other => panic!("a hold: {other:?}"),
    }
}

#[test]
fn what_commands_apply_lazily_is_in_the_stream_and_the_consumer_stays_exact() {
    use plafond_server::clock::ServerClock;
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.json");
    let ledger = ledger.to_str().unwrap();
    // No epoch runs (no scheduler, no BATCH.RUN): every interest posting and expiry below is
    // applied lazily, by the command that first touches its account after the clock moved.
    let clock = Arc::new(plafond::ManualClock::new(plafond::ManualClock::SERVER_START_MS));
    let config = plafond::EngineConfig::durable(dir.path().join("data"))
        .with_shards(2)
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    let engine = Arc::new(plafond::Engine::open(config).expect("the engine opens"));
    let eu_west = engine.region_id("eu-west").expect("a built-in region").to_string();
    let settings = support::default_config(ServerClock::Manual(clock), dir.path().join("snap"));
    let server = InProcess::serve(engine, settings, 1, None);
    let mut raw = server.raw();
    let mut call = |args: &[&str]| raw.call(args);
    // Profiles go round the shards: p0's accounts live on shard 0, p1's on shard 1.
    let (p0, p1) = (call(&["PROFILE.OPEN", "eu-west"]), call(&["PROFILE.OPEN", "eu-west"]));
    let (Value::Integer(p0), Value::Integer(p1)) = (p0, p1) else { panic!("two profiles") };
    let (p0, p1) = (p0.to_string(), p1.to_string());
    let card0 = opened(call(&["ACCOUNT.OPEN", &p0, "CHECKING"]));
    let savings0 = opened(call(&["ACCOUNT.OPEN", &p0, "SAVINGS"]));
    let savings0b = opened(call(&["ACCOUNT.OPEN", &p0, "SAVINGS"]));
    let card1 = opened(call(&["ACCOUNT.OPEN", &p1, "CHECKING"]));
    let savings1 = opened(call(&["ACCOUNT.OPEN", &p1, "SAVINGS"]));
    let accounts = [card0, savings0, savings0b, card1, savings1];
    assert_eq!(accounts.map(|account| account % 2), [0, 0, 0, 1, 1]);
    let (card0, card1) = (card0.to_string(), card1.to_string());
    placed(call(&["AUTHORIZE", &card0, "3000"]));
    let second = placed(call(&["AUTHORIZE", &card0, "2000"]));
    assert!(matches!(call(&["CAPTURE", &second, "500"]), Value::Array(_)));
    let third = placed(call(&["AUTHORIZE", &card1, "1000"]));
    let before = on_the_server(&mut raw, &accounts);
    let mut call = |args: &[&str]| raw.call(args);
    // Past every hold's expiry (seven business days), not past their keeping.
    let days = (10 * 86_400_000i64).to_string();
    assert_eq!(call(&["CLOCK.ADVANCE", &days]), Value::Simple("OK".into()));
    // A payment expires its card's two holds first; a capture of an expired hold is
    // declined, and expires it (and the other holds of its card) all the same.
    assert!(matches!(call(&["PAY", &card0, "100"]), Value::Array(_)));
    let late = call(&["CAPTURE", &third, "100"]);
    assert_eq!(late, Value::Array(vec![simple("DECLINED"), simple("HOLD_EXPIRED")]));
    // A debit to another shard (PENDING: no balance) posts its source's interest first; a
    // transfer within a shard its target's, which its entry's balance (the source's) does
    // not say; a credit from another shard its target's.
    // Past the next 1 January: the year's interest is due (§5).
    let days = (360 * 86_400_000i64).to_string();
    assert_eq!(call(&["CLOCK.ADVANCE", &days]), Value::Simple("OK".into()));
    let (s0, s0b, s1) = (savings0.to_string(), savings0b.to_string(), savings1.to_string());
    assert!(matches!(call(&["TRANSFER", &s0, &card1, "1000"]), Value::Array(_)));
    assert!(matches!(call(&["TRANSFER", &card0, &s0b, "500"]), Value::Array(_)));
    assert!(matches!(call(&["TRANSFER", &card0, &s1, "700"]), Value::Array(_)));

    let seen: Vec<String> = (0..2).flat_map(|shard| kinds(&mut raw, shard)).collect();
    let count = |kind: &str| seen.iter().filter(|seen| *seen == kind).count();
    assert_eq!(count("ROLL"), 0, "no epoch ran: {seen:?}");
    assert_eq!((count("EXPIRE"), count("INTEREST")), (3, 3), "{seen:?}");
    // Each names its account's region, as an epoch's INTEREST does (SPEC §13).
    let regions: Vec<_> = (0..2).flat_map(|shard| interest_regions(&mut raw, shard)).collect();
    assert_eq!(regions, vec![Some(eu_west); 3], "the lazy INTEREST entries' regions");
    let rebuilt = rebuilt(consumer(server.addr.port(), ledger, &["--catch-up", "--dump"]));
    let expected = on_the_server(&mut raw, &accounts);
    assert_eq!(rebuilt, expected, "the stream alone gives the server's balances and holds");
    assert!(expected.values().all(|&(_, held)| held == 0), "every hold expired: {expected:?}");
    // Each savings account got more than the transfers moved: its interest.
    for (savings, moved) in [(savings0, -1_000), (savings0b, 500), (savings1, 700)] {
        let (now, then) = (expected[&savings].0, before[&savings].0);
        assert!(now > then + moved, "interest on {savings}: {then} then, {now} now");
    }
}
