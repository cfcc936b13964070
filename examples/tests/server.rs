//! The server driven over TCP: every §9 command and reply, the limits, AUTH, the manual
//! clock, populate (served in-process), and what needs the program itself: flag refusals,
//! its memory under hostile clients, a clean shutdown on SIGTERM and a restart.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use plafond_wire::{encode_command, Value, FRAME_BYTES_MAX};
use support::{approved, array, declined, int, is_error, simple, InProcess, Server};

const MEMORY: &[&str] = &["--durability", "none", "--shards", "2"];

fn bulk(text: &str) -> Value {
    Value::Bulk(text.as_bytes().to_vec())
}

fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = MEMORY.to_vec();
    all.extend_from_slice(args);
    all
}

#[test]
fn every_command_replies_as_the_spec_table_says() {
    let snapshots = tempfile::tempdir().expect("a temp dir");
    let dir = snapshots.path().to_str().expect("utf-8").to_string();
    let mut args = with(&["--clock", "manual", "--snapshot-dir"]);
    args.push(&dir);
    let server = InProcess::start(&args);
    let mut c = server.raw();
    assert_eq!(c.call(&["PING"]), simple("PONG"));
    assert_eq!(c.call(&["PROFILE.OPEN", "eu-west"]), int(0));
    assert_eq!(c.call(&["PROFILE.OPEN", "mars"]), declined("UNKNOWN_REGION"));
    let Value::Array(opened) = c.call(&["ACCOUNT.OPEN", "0", "CHECKING"]) else {
        panic!("ACCOUNT.OPEN replies an array")
    };
    let [Value::Integer(account), Value::Integer(card)] = opened[..] else {
        panic!("[account_id, card_id], got {opened:?}")
    };
    assert_eq!(account, card, "a card's id is its checking account's");
    let Value::Array(savings) = c.call(&["ACCOUNT.OPEN", "0", "SAVINGS"]) else {
        panic!("ACCOUNT.OPEN replies an array")
    };
    assert!(matches!(savings[..], [Value::Integer(_), Value::Nil]), "{savings:?}");
    let Value::Integer(savings) = savings[0] else { unreachable!() };
    assert_eq!(c.call(&["ACCOUNT.OPEN", "77", "CHECKING"]), declined("UNKNOWN_PROFILE"));
    let (card, savings) = (card.to_string(), savings.to_string());
    let card = card.as_str();
    let savings = savings.as_str();

    assert_eq!(c.call(&["BALANCE", card]), int(100_000));
    assert_eq!(c.call(&["PAY", card, "2500"]), approved(97_500, 2_500));
    assert_eq!(c.call(&["PAY", card, "0"]), declined("INVALID_AMOUNT"));
    assert_eq!(c.call(&["PAY", card, "-3"]), declined("INVALID_AMOUNT"));
    assert_eq!(c.call(&["PAY", card, "1000000000000001"]), declined("INVALID_AMOUNT"));
    assert_eq!(c.call(&["PAY", card, "200000"]), declined("INSUFFICIENT_FUNDS"));
    assert_eq!(c.call(&["PAY", "424242", "1"]), declined("UNKNOWN_CARD"));
    assert_eq!(c.call(&["PAY", savings, "1"]), declined("UNKNOWN_CARD"));
    assert_eq!(
        c.call(&["TRANSFER", card, savings, "500"]),
        array(vec![simple("DONE"), int(97_000)])
    );
    assert_eq!(c.call(&["TRANSFER", card, card, "1"]), declined("SAME_ACCOUNT"));
    assert_eq!(c.call(&["TRANSFER", card, "424242", "1"]), declined("UNKNOWN_ACCOUNT"));
    assert_eq!(c.call(&["DEPOSIT", savings, "10"]), array(vec![simple("DONE"), int(100_510)]));
    assert_eq!(c.call(&["DEPOSIT", "424242", "10"]), declined("UNKNOWN_ACCOUNT"));
    assert_eq!(c.call(&["BALANCE", "424242"]), declined("UNKNOWN_ACCOUNT"));
    assert_eq!(
        c.call(&["CARD", card]),
        array(vec![
            int(card.parse().unwrap()),
            simple("ACTIVE"),
            int(300_000),
            int(2_500),
            int(297_500)
        ])
    );
    assert_eq!(c.call(&["CARD", "424242"]), declined("UNKNOWN_CARD"));
    assert_eq!(c.call(&["CARD.BLOCK", card]), simple("OK"));
    assert_eq!(c.call(&["PAY", card, "1"]), declined("CARD_BLOCKED"));
    assert!(matches!(&c.call(&["CARD", card]), Value::Array(v) if v[1] == simple("BLOCKED")));
    assert_eq!(c.call(&["CARD.UNBLOCK", card]), simple("OK"));
    assert_eq!(c.call(&["CARD.CEILING", card, "3000"]), simple("OK"));
    assert_eq!(c.call(&["CARD.CEILING", card, "0"]), declined("INVALID_AMOUNT"));
    assert_eq!(c.call(&["CARD.BLOCK", "424242"]), declined("UNKNOWN_CARD"));
    assert_eq!(c.call(&["PAY", card, "600"]), declined("CEILING_EXCEEDED"));

    // Idempotency: the same id and command gets the first outcome; another command under
    // that id is a conflict.
    assert_eq!(c.call(&["PAY", card, "100", "order-1"]), approved(96_900, 2_600));
    assert_eq!(c.call(&["PAY", card, "100", "order-1"]), approved(96_900, 2_600));
    assert_eq!(c.call(&["BALANCE", card]), int(96_900));
    assert_eq!(c.call(&["PAY", card, "200", "order-1"]), declined("IDEMPOTENCY_CONFLICT"));

    // The batch service: an epoch on demand, and the status per region.
    let Value::Array(report) = c.call(&["BATCH.RUN", "eu-west"]) else {
        panic!("BATCH.RUN replies a map")
    };
    assert_eq!(report[..4], [bulk("region"), bulk("eu-west"), bulk("day"), bulk("2027-01-04")]);
    assert!(is_error(&c.call(&["BATCH.RUN", "mars"])));
    let Value::Array(status) = c.call(&["BATCH.STATUS"]) else {
        panic!("BATCH.STATUS replies an array")
    };
    assert_eq!(status.len(), 2, "one entry per region");
    assert!(
        matches!(&status[0], Value::Array(m) if m[..4] == [bulk("region"), bulk("eu-west"), bulk("last_day"), bulk("2027-01-04")]),
        "{status:?}"
    );
    // A snapshot is written where --snapshot-dir says, and its path returned.
    let Value::Bulk(path) = c.call(&["SNAPSHOT"]) else { panic!("SNAPSHOT replies a path") };
    let path = std::path::PathBuf::from(String::from_utf8(path).expect("a utf-8 path"));
    assert!(path.starts_with(snapshots.path().canonicalize().expect("exists")), "{path:?}");
    assert!(std::fs::metadata(&path).expect("the snapshot exists").len() > 0);
    assert_eq!(c.call(&["CLOCK.ADVANCE", "1000"]), simple("OK"));
    assert_eq!(c.call(&["CLOCK.SET", "1799064000000"]), simple("OK"));
}

#[test]
fn stats_are_a_table_and_json_with_conservation() {
    let server = InProcess::start(&with(&["--populate", "100"]));
    let mut c = server.raw();
    for card in 0..10 {
        assert_eq!(c.call(&["PAY", &card.to_string(), "1000"]), approved(19_000, 1_000));
    }
    assert_eq!(c.call(&["PAY", "0", "9500"]), declined("CEILING_EXCEEDED"));
    let Value::Bulk(table) = c.call(&["STATS"]) else { panic!("STATS replies a bulk string") };
    let table = String::from_utf8(table).expect("text");
    for word in ["eu-west", "us-east", "TOTAL", "CEILING_EXCEEDED", "shard", "conservation ok"] {
        assert!(table.contains(word), "{word} in\n{table}");
    }
    let Value::Bulk(json) = c.call(&["STATS", "JSON"]) else {
        panic!("STATS JSON replies a bulk string")
    };
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    let eu = &json["regions"]["eu-west"];
    assert_eq!(eu["profiles"], 100);
    assert_eq!(eu["accounts"]["CHECKING"], 100);
    assert_eq!(eu["payments_approved"]["count"], 10);
    assert_eq!(eu["payments_approved"]["volume_minor"], 10_000);
    assert_eq!(eu["declined"]["CEILING_EXCEEDED"]["count"], 1);
    assert_eq!(eu["declined"]["CEILING_EXCEEDED"]["volume_minor"], 9_500);
    assert_eq!(eu["balances_minor"], 100 * 20_000 - 10_000);
    assert_eq!(json["total"]["payments_approved"]["count"], 10);
    assert_eq!(json["audit"]["holds"], true);
    assert_eq!(json["health"]["state"], "ok");
    assert_eq!(json["audit"]["card_payments_minor"], 10_000);
    let shards = json["shards"].as_array().expect("per-shard figures");
    assert_eq!(shards.len(), 2);
    for shard in shards {
        assert!(shard["inline_batches"].as_u64() <= shard["batches"].as_u64(), "{shard}");
    }
    // One client, one command at a time: the shards were idle, so the submitter decided.
    let inline: u64 = shards.iter().filter_map(|shard| shard["inline_batches"].as_u64()).sum();
    assert!(inline > 0, "{json}");
    assert!(is_error(&c.call(&["STATS", "XML"])));
}

/// The pretty dump's mean batch size is client commands per batch that held some: the
/// batches of an epoch's chunks, which hold none, do not pull it below one.
#[test]
fn the_mean_batch_size_counts_batches_of_client_commands() {
    let server = InProcess::start(&with(&["--clock", "manual"]));
    let mut c = server.raw();
    assert_eq!(c.call(&["PROFILE.OPEN", "eu-west"]), int(0));
    assert!(!is_error(&c.call(&["ACCOUNT.OPEN", "0", "CHECKING"])));
    assert_eq!(c.call(&["PAY", "0", "100"]), approved(99_900, 100));
    for _ in 0..3 {
        assert_eq!(c.call(&["CLOCK.ADVANCE", "86400000"]), simple("OK"));
        assert!(!is_error(&c.call(&["BATCH.RUN", "eu-west"])));
    }
    let Value::Bulk(json) = c.call(&["STATS", "JSON"]) else {
        panic!("STATS JSON replies a bulk string")
    };
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    let shard = &json["shards"][0];
    // Shard 0 holds the profile and the account: three client commands, one at a time.
    assert_eq!(shard["commands"], 3, "{shard}");
    assert_eq!(shard["batches"], 3, "{shard}");
    assert_eq!(shard["mean_batch"].as_f64(), Some(1.0), "{shard}");
}

#[test]
fn the_redis_crate_is_a_client() {
    let server = InProcess::start(&with(&["--populate", "10"]));
    let mut con = server.redis();
    let pong: String = redis::cmd("PING").query(&mut con).expect("PING");
    assert_eq!(pong, "PONG");
    let reply: redis::Value = redis::cmd("PAY").arg(3).arg(150).query(&mut con).expect("PAY");
    assert_eq!(
        reply,
        redis::Value::Array(vec![
            redis::Value::SimpleString("APPROVED".into()),
            redis::Value::Int(19_850),
            redis::Value::Int(150),
        ])
    );
    let balance: i64 = redis::cmd("BALANCE").arg(3).query(&mut con).expect("BALANCE");
    assert_eq!(balance, 19_850);
    let error = redis::cmd("PAY").arg(3).query::<redis::Value>(&mut con);
    assert!(error.is_err(), "wrong arity is an error reply");
    // A pipeline through the crate.
    let mut pipe = redis::pipe();
    for card in 0..10 {
        pipe.cmd("PAY").arg(card).arg(1);
    }
    let replies: Vec<redis::Value> = pipe.query(&mut con).expect("a pipeline");
    assert_eq!(replies.len(), 10);
}

#[test]
fn malformed_requests_get_errors_and_the_connection_keeps_working() {
    let server = InProcess::start(MEMORY);
    let mut c = server.raw();
    let arity = c.call(&["PAY", "1"]);
    assert!(
        matches!(&arity, Value::Error(t) if t.contains("wrong number of arguments")),
        "{arity:?}"
    );
    assert!(is_error(&c.call(&["PAY", "one", "5"])));
    let not_number = c.call(&["PAY", "1", "5x"]);
    assert!(matches!(&not_number, Value::Error(t) if t.contains("not an integer")));
    let unknown = c.call(&["FLY", "1"]);
    assert!(matches!(&unknown, Value::Error(t) if t.contains("unknown command")));
    assert!(is_error(&c.call(&["ACCOUNT.OPEN", "0", "GOLD"])));
    assert!(is_error(&c.call(&["CLOCK.ADVANCE", "10"])), "no manual clock");
    assert!(is_error(&c.call(&["PAY", "1", "5", &"x".repeat(65)])), "command id too long");
    // A frame over the limit is refused, skipped, and the connection goes on.
    let big = "9".repeat(FRAME_BYTES_MAX + 1);
    let too_large = c.call(&["PAY", "1", &big]);
    assert!(matches!(&too_large, Value::Error(t) if t.contains("too large")), "{too_large:?}");
    let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(is_error(&c.call(&many)));
    // Inline commands work too (what telnet sends).
    c.send(b"PING\r\n");
    assert_eq!(c.read(), Some(simple("PONG")));
    assert_eq!(c.call(&["PING"]), simple("PONG"));
}

#[test]
fn garbage_is_answered_then_the_connection_closes() {
    let server = InProcess::start(MEMORY);
    let mut c = server.raw();
    c.send(b"*2\r\n$3\r\nPAY\r\n:12\r\n");
    let reply = c.read();
    assert!(matches!(&reply, Some(Value::Error(t)) if t.contains("Protocol error")), "{reply:?}");
    assert_eq!(c.read(), None, "closed after losing the framing");
    let mut other = server.raw();
    assert_eq!(other.call(&["PING"]), simple("PONG"), "the server goes on");
}

#[test]
fn a_half_sent_request_never_runs() {
    let server = InProcess::start(&with(&["--populate", "2"]));
    {
        let mut c = server.raw();
        c.send(b"*3\r\n$3\r\nPAY\r\n$1\r\n0\r\n$3\r\n10");
        // Dropped here: the request never completes.
    }
    std::thread::sleep(Duration::from_millis(200));
    let mut c = server.raw();
    assert_eq!(c.call(&["BALANCE", "0"]), int(20_000));
    assert_eq!(c.call(&["PING"]), simple("PONG"));
}

#[test]
fn pipelined_commands_come_back_in_order_and_conserve_money() {
    let cards = 100;
    let server = InProcess::start(&with(&["--populate", "100"]));
    let mut c = server.raw();
    let pays = 10_000;
    let mut bytes = Vec::new();
    for i in 0..pays {
        let card = (i * 7 % cards).to_string();
        let amount = (1 + i % 5000).to_string();
        encode_command(&mut bytes, &["PAY", &card, &amount]);
        if i == 5_000 {
            encode_command(&mut bytes, &["PING", "marker"]);
        }
    }
    // STATS in the same pipeline must see every pay before it (it waits for them).
    encode_command(&mut bytes, &["STATS", "JSON"]);
    c.send(&bytes);
    let mut approved_minor = 0i64;
    let mut approved_count = 0;
    for i in 0..pays {
        let reply = c.read().expect("a reply per command");
        match reply {
            Value::Array(items) if items.first() == Some(&simple("APPROVED")) => {
                approved_count += 1;
                approved_minor += 1 + i % 5000;
            }
            Value::Array(items) if items.first() == Some(&simple("DECLINED")) => {
                assert!(
                    items[1] == simple("INSUFFICIENT_FUNDS")
                        || items[1] == simple("CEILING_EXCEEDED"),
                    "{items:?}"
                );
            }
            other => panic!("reply {i}: {other:?}"),
        }
        if i == 5_000 {
            assert_eq!(c.read(), Some(Value::Bulk(b"marker".to_vec())), "in order");
        }
    }
    assert!(approved_count > 0);
    let Some(Value::Bulk(json)) = c.read() else { panic!("STATS JSON replies a bulk string") };
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    assert_eq!(json["total"]["payments_approved"]["count"], approved_count);
    assert_eq!(json["total"]["payments_approved"]["volume_minor"], approved_minor);
    // Conservation for a populated server without other traffic.
    let balances = json["total"]["balances_minor"].as_i64().expect("a number");
    assert_eq!(balances + approved_minor, cards * 20_000);
    assert_eq!(json["audit"]["holds"], true);
    assert_eq!(json["health"]["state"], "ok");
}

#[test]
fn concurrent_pipelines_each_get_their_own_replies_in_order() {
    // The server combines the batches of connections that are ready together into one
    // engine submission; each connection must still get exactly its own replies, in order.
    let connections: i64 = 8;
    let pays: i64 = 2_000;
    let server = InProcess::start(&with(&["--populate", "8", "--io-threads", "2"]));
    let threads: Vec<_> = (0..connections)
        .map(|card| {
            let mut c = server.raw();
            std::thread::spawn(move || {
                let card_text = card.to_string();
                for round in 0..4 {
                    let mut bytes = Vec::new();
                    for i in 0..pays / 4 {
                        encode_command(&mut bytes, &["PAY", &card_text, "1"]);
                        if i % 100 == 0 {
                            encode_command(&mut bytes, &["PING", &format!("{card}-{round}-{i}")]);
                        }
                    }
                    c.send(&bytes);
                    for i in 0..pays / 4 {
                        // Card `card` pays 1 each time: its own pays alone set the balance.
                        let paid = round * (pays / 4) + i + 1;
                        assert_eq!(c.read(), Some(approved(20_000 - paid, paid)), "card {card}");
                        if i % 100 == 0 {
                            let marker = format!("{card}-{round}-{i}");
                            assert_eq!(c.read(), Some(bulk(&marker)), "card {card}");
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every connection got its own replies");
    }
}

#[test]
fn a_bad_io_thread_count_is_refused_with_a_reason() {
    for bad in ["0", "-1", "many", "100000"] {
        let refused = Server::try_start(&with(&["--io-threads", bad])).err().expect("refused");
        assert!(refused.0.is_some_and(|status| !status.success()), "{bad}: {refused:?}");
        assert!(refused.1.contains("--io-threads"), "{bad}: {}", refused.1);
    }
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_server() {
    let server = Server::start(MEMORY);
    let before_kib = server.rss_kib();
    let c = server.raw();
    c.client.stream().set_nonblocking(true).expect("nonblocking");
    let mut bytes = Vec::new();
    for _ in 0..10_000 {
        encode_command(&mut bytes, &["PING", "a-long-enough-message-to-fill-buffers-quickly"]);
    }
    let mut stream = c.client.stream();
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && sent < 1 << 30 {
        // Resume where the last partial write stopped, so the stream stays valid RESP.
        match stream.write(&bytes[sent % bytes.len()..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    let grown_kib = server.rss_kib().saturating_sub(before_kib);
    // The server stops reading once its replies back up: what it holds is a few batches
    // and the kernel's socket buffers, not what the client tried to send.
    assert!(sent < 256 << 20, "the server stopped reading (accepted {sent} bytes)");
    assert!(grown_kib < 64 * 1024, "server grew by {grown_kib} KiB");
    let mut other = server.raw();
    assert_eq!(other.call(&["PING"]), simple("PONG"), "others are still served");
}

#[test]
fn ten_thousand_idle_connections_cost_bounded_memory_and_never_stick_the_server() {
    const IDLE: usize = 10_000;
    const CONNECTING_THREADS: usize = 16;
    let server = Server::start(MEMORY);
    let before_kib = server.rss_kib();
    let started = Instant::now();
    // Opened from several threads: one connect takes milliseconds on this VM.
    let mut idle: Vec<std::net::TcpStream> = std::thread::scope(|scope| {
        let openers: Vec<_> = (0..CONNECTING_THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    for _ in 0..IDLE / CONNECTING_THREADS {
                        match std::net::TcpStream::connect(server.addr) {
                            Ok(stream) => mine.push(stream),
                            // The test process's own descriptor limit: enough were opened.
                            Err(error) => {
                                eprintln!("stopped after {} connections: {error}", mine.len());
                                break;
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        openers.into_iter().flat_map(|opener| opener.join().expect("opener")).collect()
    });
    assert!(idle.len() > 2_000, "only {} connections could be opened", idle.len());
    // Slow here (tens of seconds): bursts overflow the kernel's accept backlog of 128 and
    // the client retransmits its SYN a second later.
    eprintln!("{} connections opened in {:?}", idle.len(), started.elapsed());
    // Past the server's limit, a connection is told so and closed, not kept.
    let last = idle.last_mut().expect("connections");
    last.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reply = String::new();
    let _ = std::io::Read::read_to_string(last, &mut reply);
    assert!(reply.starts_with("-ERR"), "an over-limit connection is refused: {reply:?}");
    let grown_kib = server.rss_kib().saturating_sub(before_kib);
    assert!(
        grown_kib < 128 * 1024,
        "{} idle connections grew the server by {grown_kib} KiB",
        idle.len()
    );
    drop(idle);
    // Once they are gone, the server serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = server.raw();
        fresh.send_command(&["PING"]);
        match fresh.read() {
            Some(value) if value == simple("PONG") => break,
            other => {
                assert!(Instant::now() < deadline, "server stuck after idle clients: {other:?}")
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn with_a_token_only_auth_hello_and_ping_run_before_auth() {
    let server = InProcess::start(&with(&["--token", "s3cret", "--populate", "1"]));
    let mut c = server.raw();
    assert_eq!(c.call(&["PING"]), simple("PONG"));
    let refused = c.call(&["PAY", "0", "1"]);
    assert!(matches!(&refused, Value::Error(t) if t.starts_with("NOAUTH")), "{refused:?}");
    assert!(matches!(c.call(&["STATS"]), Value::Error(t) if t.starts_with("NOAUTH")));
    assert!(matches!(c.call(&["AUTH", "wrong"]), Value::Error(_)));
    assert!(matches!(c.call(&["BALANCE", "0"]), Value::Error(t) if t.starts_with("NOAUTH")));
    assert_eq!(c.call(&["AUTH", "s3cret"]), simple("OK"));
    assert_eq!(c.call(&["PAY", "0", "1"]), approved(19_999, 1));
    // The redis crate authenticates from the url.
    let mut con = server.redis_with_url(&format!("redis://:s3cret@{}/", server.addr));
    let balance: i64 = redis::cmd("BALANCE").arg(0).query(&mut con).expect("authenticated");
    assert_eq!(balance, 19_999);
}

#[test]
fn hello_3_switches_to_resp3() {
    let server = InProcess::start(&with(&["--populate", "1"]));
    let mut c = server.raw();
    let Value::Array(hello) = c.call(&["HELLO", "3"]) else { panic!("HELLO replies a map") };
    assert!(hello.contains(&int(3)), "{hello:?}");
    c.send_command(&["ACCOUNT.OPEN", "0", "SAVINGS"]);
    // RESP3 nil is `_`.
    let opened = c.read();
    assert!(
        matches!(&opened, Some(Value::Array(v)) if matches!(v[..], [Value::Integer(_), Value::Nil])),
        "{opened:?}"
    );
    assert!(matches!(c.call(&["HELLO", "4"]), Value::Error(t) if t.starts_with("NOPROTO")));
}

#[test]
fn populate_gives_cards_zero_to_n_minus_one() {
    let server = InProcess::start(&with(&["--populate", "1000"]));
    let mut c = server.raw();
    assert_eq!(c.call(&["PAY", "999", "100"]), approved(19_900, 100));
    assert_eq!(c.call(&["PAY", "0", "100"]), approved(19_900, 100));
    assert_eq!(c.call(&["PAY", "1000", "100"]), declined("UNKNOWN_CARD"));
    assert_eq!(
        c.call(&["CARD", "5"]),
        array(vec![int(5), simple("ACTIVE"), int(10_000), int(0), int(10_000)])
    );
}

#[test]
fn the_manual_clock_slides_the_seven_day_window() {
    let server = InProcess::start(&with(&["--populate", "1", "--clock", "manual"]));
    let mut c = server.raw();
    let day_ms = "86400000";
    assert_eq!(c.call(&["PAY", "0", "4000"]), approved(16_000, 4_000));
    assert_eq!(c.call(&["CLOCK.ADVANCE", day_ms]), simple("OK"));
    assert_eq!(c.call(&["PAY", "0", "4000"]), approved(12_000, 8_000));
    assert_eq!(c.call(&["PAY", "0", "4000"]), declined("CEILING_EXCEEDED"));
    // Six days after the first payment it still counts.
    c.call(&["CLOCK.ADVANCE", &(5 * 86_400_000).to_string()]);
    assert_eq!(c.call(&["PAY", "0", "4000"]), declined("CEILING_EXCEEDED"));
    // Seven days after it, the first payment has left the window; the second has not.
    c.call(&["CLOCK.ADVANCE", day_ms]);
    assert_eq!(c.call(&["PAY", "0", "4000"]), approved(8_000, 8_000));
    c.call(&["CLOCK.ADVANCE", day_ms]);
    assert_eq!(c.call(&["PAY", "0", "4000"]), approved(4_000, 8_000));
    // A week later the window is empty again, and the balance is what stops a payment.
    c.call(&["CLOCK.ADVANCE", &(7 * 86_400_000).to_string()]);
    assert_eq!(c.call(&["PAY", "0", "4001"]), declined("INSUFFICIENT_FUNDS"));
    assert_eq!(c.call(&["PAY", "0", "4000"]), approved(0, 4_000));
    // Pipelined: commands after CLOCK.SET are stamped with the new time.
    let mut bytes = Vec::new();
    encode_command(&mut bytes, &["CLOCK.ADVANCE", &(30 * 86_400_000i64).to_string()]);
    encode_command(&mut bytes, &["CARD", "0"]);
    c.send(&bytes);
    assert_eq!(c.read(), Some(simple("OK")));
    assert_eq!(
        c.read(),
        Some(array(vec![int(0), simple("ACTIVE"), int(10_000), int(0), int(10_000)]))
    );
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_keeps_balances() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let durable = ["--durability", "sync", "--shards", "2", "--data-dir", data_dir];
    let mut first: Vec<&str> = durable.to_vec();
    first.extend(["--populate", "100"]);
    let server = Server::start(&first);
    let mut c = server.raw();
    assert_eq!(c.call(&["PAY", "5", "1234"]), approved(18_766, 1_234));
    assert_eq!(c.call(&["TRANSFER", "6", "7", "1000"]), array(vec![simple("DONE"), int(19_000)]));
    let status = server.terminate();
    assert!(status.success(), "exit code 0 after SIGTERM, got {status:?}");

    // Populate is refused on a data directory that is not empty.
    let refused = Server::try_start(&first).err().expect("populate is refused");
    assert!(refused.0.is_some_and(|status| !status.success()), "{refused:?}");
    assert!(refused.1.contains("--populate needs an empty engine"), "{}", refused.1);

    let server = Server::start(&durable);
    let mut c = server.raw();
    assert_eq!(c.call(&["BALANCE", "5"]), int(18_766));
    assert_eq!(c.call(&["BALANCE", "6"]), int(19_000));
    assert_eq!(c.call(&["BALANCE", "7"]), int(21_000));
    assert_eq!(
        c.call(&["CARD", "5"]),
        array(vec![int(5), simple("ACTIVE"), int(10_000), int(1_234), int(8_766)])
    );
    assert!(server.terminate().success());

    // Without --shards the server adopts the directory's own count, whatever the cores.
    let server = Server::start(&["--durability", "sync", "--data-dir", data_dir]);
    let mut c = server.raw();
    assert_eq!(c.call(&["BALANCE", "5"]), int(18_766));
    let Value::Bulk(json) = c.call(&["STATS", "JSON"]) else { panic!("STATS JSON is a bulk") };
    let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
    assert_eq!(json["shards"].as_array().map(Vec::len), Some(2), "{json}");
    assert!(server.terminate().success());
    // Asking for another count is refused, with both counts named.
    let other = ["--durability", "sync", "--shards", "3", "--data-dir", data_dir];
    let refused = Server::try_start(&other).err().expect("another shard count is refused");
    assert!(refused.1.contains('2') && refused.1.contains('3'), "{}", refused.1);
}

/// `STATS JSON` of `client`, parsed.
fn stats_json(client: &mut support::Raw) -> serde_json::Value {
    let Value::Bulk(json) = client.call(&["STATS", "JSON"]) else {
        panic!("STATS JSON replies a bulk string")
    };
    serde_json::from_slice(&json).expect("valid JSON")
}

/// `STATS` of `client`, as text.
fn stats_text(client: &mut support::Raw) -> String {
    let Value::Bulk(table) = client.call(&["STATS"]) else { panic!("STATS replies a bulk string") };
    String::from_utf8(table).expect("text")
}

#[test]
fn stats_show_the_clock_guard_with_the_system_clock_and_not_with_the_manual_one() {
    let system = InProcess::start(&with(&[]));
    let mut c = system.raw();
    let guard = &stats_json(&mut c)["clock_guard"];
    assert_eq!(guard["jumps_refused"], 0, "{guard}");
    assert!(guard["refused"].is_null(), "{guard}");
    let table = stats_text(&mut c);
    assert!(table.contains("clock guard: on, jumps refused 0, none refused now"), "{table}");

    let manual = InProcess::start(&with(&["--clock", "manual"]));
    let mut c = manual.raw();
    let json = stats_json(&mut c);
    let guard = json.get("clock_guard").expect("the field is there");
    assert!(guard.is_null(), "a manual clock is not guarded: {guard}");
    assert!(stats_text(&mut c).contains("clock guard: off"));
}

#[test]
fn stats_show_a_refused_clock_jump_and_how_far_ahead_the_host_is() {
    use std::sync::Arc;
    const DAY_MS: i64 = 86_400_000;
    let host = Arc::new(plafond::ManualClock::new(plafond::ManualClock::SERVER_START_MS));
    let guard = Arc::new(plafond::TimeGuard::new(host.clone()));
    let config = plafond::EngineConfig::in_memory().with_shards(2).with_clock(guard.clone());
    let engine = Arc::new(plafond::Engine::open(config).expect("the engine opens"));
    let dir = tempfile::tempdir().expect("a temp dir");
    let clock = plafond_server::clock::ServerClock::System(guard);
    let settings = support::default_config(clock, dir.path().into());
    let server = InProcess::serve(engine, settings, 1, None);
    let mut c = server.raw();
    // Each CLOCK.STATUS reads the guarded clock: the first reading, then the jump.
    assert!(!is_error(&c.call(&["CLOCK.STATUS"])));
    let jump_ms = (plafond::CLOCK_JUMP_DAYS_MAX + 1) * DAY_MS;
    host.advance(jump_ms);
    assert!(!is_error(&c.call(&["CLOCK.STATUS"])));

    let guard = stats_json(&mut c)["clock_guard"].clone();
    assert_eq!(guard["jumps_refused"], 1, "{guard}");
    let refused = &guard["refused"];
    let ahead_ms = refused["ahead_ms"].as_i64().expect("ahead_ms");
    // The engine's time goes on at the machine's pace from the refusal: a little less ahead.
    assert!(ahead_ms <= jump_ms && ahead_ms > jump_ms - 60_000, "{guard}");
    let (host_ms, guarded_ms) = (refused["host_ms"].as_i64(), refused["guarded_ms"].as_i64());
    assert_eq!(host_ms, Some(plafond::ManualClock::SERVER_START_MS + jump_ms), "{guard}");
    assert_eq!(host_ms.zip(guarded_ms).map(|(h, g)| h - g), Some(ahead_ms), "{guard}");
    let table = stats_text(&mut c);
    assert!(table.contains("clock guard: REFUSING A JUMP: the host's clock is"), "{table}");
    assert!(table.contains("CLOCK.ACCEPT"), "{table}");

    assert_eq!(c.call(&["CLOCK.ACCEPT"]), simple("OK"));
    let guard = stats_json(&mut c)["clock_guard"].clone();
    assert_eq!(guard["jumps_refused"], 1, "the count stays: {guard}");
    assert!(guard["refused"].is_null(), "{guard}");
}
