//! The server's clock and epochs under mishap (issue 15, parts 3 and 4): a catch-up of
//! years neither freezes the connections nor delays SIGTERM; moves of the manual clock are
//! bounded; the system clock's guard is reported and accepted by command.

mod support;

use std::time::{Duration, Instant};

use plafond_wire::Value;
use support::{is_error, simple, Server};

const DAY_MS: i64 = 86_400_000;
/// The longest move of the manual clock the server takes.
const MOVE_MS_MAX: i64 = 400 * DAY_MS;
/// Moves of 400 days: about twenty years of epochs per region to catch up.
const MOVES: usize = 18;
/// What "at once" means here, on a loaded two-core machine: before the fix a `PING`
/// waited for the whole catch-up (10 s for ten years), and SIGTERM longer.
const PROMPT: Duration = Duration::from_secs(3);

/// Each region's last completed business day, `YYYY-MM-DD` (so they compare as days).
fn last_days(status: &Value) -> Vec<String> {
    let Value::Array(regions) = status else { panic!("BATCH.STATUS is an array: {status:?}") };
    regions
        .iter()
        .map(|region| match region {
            Value::Array(fields) => match &fields[3] {
                Value::Bulk(day) => String::from_utf8_lossy(day).into_owned(),
                Value::Nil => String::new(),
                other => panic!("a day, got {other:?}"),
            },
            other => panic!("a map per region, got {other:?}"),
        })
        .collect()
}

#[test]
fn a_catch_up_of_years_neither_freezes_the_server_nor_delays_sigterm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let server = Server::start(&[
        "--durability",
        "sync",
        "--data-dir",
        data_dir,
        "--shards",
        "2",
        "--io-threads",
        "1",
        "--clock",
        "manual",
        "--populate",
        "1000",
    ]);
    let mut operator = server.raw();
    let mut other = server.raw();
    let before = last_days(&operator.call(&["BATCH.STATUS"]));
    for _ in 0..MOVES {
        assert_eq!(operator.call(&["CLOCK.ADVANCE", &MOVE_MS_MAX.to_string()]), simple("OK"));
    }
    // The scheduler polls every 200 ms: let the catch-up start.
    std::thread::sleep(Duration::from_millis(600));
    let asked = Instant::now();
    operator.send_command(&["BATCH.STATUS"]);
    other.send_command(&["PING"]);
    assert_eq!(other.read(), Some(simple("PONG")));
    let ping_waited = asked.elapsed();
    let during = last_days(&operator.read().expect("a status"));
    let status_waited = asked.elapsed();
    assert!(ping_waited < PROMPT, "a PING waited {ping_waited:?} during a catch-up");
    assert!(status_waited < PROMPT, "BATCH.STATUS waited {status_waited:?}");
    assert_ne!(during, before, "the catch-up runs");
    let target = last_days(&operator.call(&["BATCH.STATUS"]));
    let stopping = Instant::now();
    let (exit, stderr) = server.terminate_with_stderr();
    let stop_took = stopping.elapsed();
    assert!(exit.success(), "{exit:?}: {stderr}");
    assert!(stop_took < PROMPT, "SIGTERM took {stop_took:?} during a catch-up");
    eprintln!("status answered in {status_waited:?}, PING in {ping_waited:?}, stop {stop_took:?}; {before:?} {during:?} {target:?}");
    // Not finished when stopped: the restart resumes from the record (the manual clock
    // starts again at its start, so nothing more is due and nothing goes back).
    let server = Server::start(&["--durability", "sync", "--data-dir", data_dir, "--shards", "2"]);
    let after = last_days(&server.raw().call(&["BATCH.STATUS"]));
    assert_ne!(after, before, "what completed is recorded");
    assert!(after >= target, "{after:?} {target:?}");
}

#[test]
fn manual_clock_moves_are_bounded() {
    let server = Server::start(&["--durability", "none", "--clock", "manual"]);
    let mut c = server.raw();
    let Value::Array(status) = c.call(&["CLOCK.STATUS"]) else { panic!("a map") };
    assert_eq!(status[1], Value::Bulk(b"manual".to_vec()));
    assert_eq!(status[3], Value::Integer(1_799_064_000_000));
    for refused in [
        vec!["CLOCK.ADVANCE", "9223372036854775807"],
        vec!["CLOCK.ADVANCE", "-9223372036854775808"],
        vec!["CLOCK.ADVANCE", &(MOVE_MS_MAX + 1).to_string()],
        vec!["CLOCK.SET", "0"],
        vec!["CLOCK.SET", &(1_799_064_000_000 + MOVE_MS_MAX + 1).to_string()],
    ] {
        let reply = c.call(&refused);
        assert!(is_error(&reply), "{refused:?} is refused: {reply:?}");
    }
    let Value::Array(status) = c.call(&["CLOCK.STATUS"]) else { panic!("a map") };
    assert_eq!(status[3], Value::Integer(1_799_064_000_000), "a refused move moves nothing");
    assert_eq!(c.call(&["CLOCK.ADVANCE", &MOVE_MS_MAX.to_string()]), simple("OK"));
    assert_eq!(c.call(&["CLOCK.SET", "1799064000000"]), simple("OK"));
    assert!(is_error(&c.call(&["CLOCK.ACCEPT"])), "nothing to accept on a manual clock");
}

#[test]
fn the_system_clock_is_guarded_and_reported() {
    let server = Server::start(&["--durability", "none"]);
    let mut c = server.raw();
    let Value::Array(status) = c.call(&["CLOCK.STATUS"]) else { panic!("a map") };
    assert_eq!(status[1], Value::Bulk(b"system".to_vec()));
    assert_eq!(status[6..], [Value::Bulk(b"refused_ahead_ms".to_vec()), Value::Nil]);
    let reply = c.call(&["CLOCK.ACCEPT"]);
    assert!(
        matches!(&reply, Value::Error(text) if text.contains("nothing to accept")),
        "{reply:?}"
    );
    assert!(is_error(&c.call(&["CLOCK.ADVANCE", "1000"])), "no manual clock");
}
