//! `--metrics-port`: `GET /metrics` in the Prometheus exposition format (SPEC §15), read
//! with a parser that is not the one writing it, the numbers matching what was done.

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::InProcess;

/// One HTTP/1.1 request: the status line, the headers and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_ascii_lowercase(), body.to_string())
}

/// One sample as the Prometheus project's parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    /// The family's name and type (`counter`, `gauge`, ...).
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: std::collections::HashMap<String, String>,
    value: f64,
}

/// `GET /metrics`, parsed by `prometheus_client`'s strict OpenMetrics parser (Python; the
/// project's set-up installs it).
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, headers, body) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(headers.contains("content-type: application/openmetrics-text"), "{headers}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts/openmetrics_parse.py");
    let mut parser = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    parser.stdin.take().expect("a stdin").write_all(body.as_bytes()).expect("written");
    let output = parser.wait_with_output().expect("the parser ends");
    assert!(output.status.success(), "the exposition parses: {body}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a sample"))
        .collect()
}

/// The value of the one sample named `name` whose labels include every pair of `labels`;
/// its family must be of type `kind`.
fn value(samples: &[Sample], name: &str, kind: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(matching.len(), 1, "one sample {name} {labels:?}: {samples:?}");
    assert_eq!(matching[0].kind, kind, "{name} (family {})", matching[0].family);
    matching[0].value
}

/// The value of the one sample named `name` with exactly these labels (a histogram's
/// bucket is told apart by its `le`), of a family of type `kind`.
fn exact(samples: &[Sample], name: &str, kind: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels.len() == labels.len())
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert_eq!(matching.len(), 1, "one sample {name} {labels:?}: {samples:?}");
    assert_eq!(matching[0].kind, kind, "{name} (family {})", matching[0].family);
    matching[0].value
}

/// The sum of every sample named `name`.
fn sum(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}

#[test]
fn metrics_count_what_was_done_in_the_exposition_format() {
    let server = InProcess::start(&[
        "--durability",
        "none",
        "--populate",
        "100",
        "--clock",
        "manual",
        "--shards",
        "1",
        "--metrics-port",
        "0",
    ]);
    let metrics = server.metrics_addr.expect("a metrics address");
    let mut redis = server.redis();
    let pay = |redis: &mut redis::Connection, card: u64, amount: u64| -> String {
        let reply: Vec<redis::Value> =
            redis::cmd("PAY").arg(card).arg(amount).query(redis).expect("a reply");
        match &reply[0] {
            redis::Value::SimpleString(word) => word.clone(),
            redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            other => panic!("an outcome word, not {other:?}"),
        }
    };
    let before = scrape(metrics);
    assert_eq!(
        value(&before, "plafond_payments_approved_total", "counter", &[("region", "eu-west")]),
        0.0
    );
    assert_eq!(value(&before, "plafond_storage_healthy", "gauge", &[]), 1.0);
    assert_eq!(
        value(
            &before,
            "plafond_accounts_opened_total",
            "counter",
            &[("region", "eu-west"), ("kind", "checking")]
        ),
        100.0
    );

    // Three approved pays, two over the 10_000 ceiling, one unknown card.
    for card in 0..3 {
        assert_eq!(pay(&mut redis, card, 6_000), "APPROVED");
    }
    assert_eq!(pay(&mut redis, 0, 6_000), "DECLINED");
    assert_eq!(pay(&mut redis, 1, 6_000), "DECLINED");
    assert_eq!(pay(&mut redis, 1_000_000, 1), "DECLINED");

    let after = scrape(metrics);
    let eu = [("region", "eu-west")];
    assert_eq!(value(&after, "plafond_payments_approved_total", "counter", &eu), 3.0);
    assert_eq!(value(&after, "plafond_payments_approved_minor", "gauge", &eu), 18_000.0);
    let ceiling = [("region", "eu-west"), ("reason", "CEILING_EXCEEDED")];
    assert_eq!(value(&after, "plafond_declines_total", "counter", &ceiling), 2.0);
    let funds = [("region", "eu-west"), ("reason", "INSUFFICIENT_FUNDS")];
    assert_eq!(value(&after, "plafond_declines_total", "counter", &funds), 0.0);
    let unknown = [("region", "unattributed"), ("reason", "UNKNOWN_CARD")];
    assert_eq!(value(&after, "plafond_declines_total", "counter", &unknown), 1.0);
    assert_eq!(value(&after, "plafond_balances_minor", "gauge", &eu), 100.0 * 20_000.0 - 18_000.0);
    assert_eq!(value(&after, "plafond_conservation_holds", "gauge", &[]), 1.0);
    assert_eq!(value(&after, "plafond_open_holds", "gauge", &eu), 0.0);

    // Two holds on card 5 (§12): 1_500 and 2_500 held, one of them then voided in part.
    let authorize = |redis: &mut redis::Connection, amount: u64| -> u64 {
        let reply: Vec<redis::Value> =
            redis::cmd("AUTHORIZE").arg(5).arg(amount).query(redis).expect("a reply");
        match &reply[1] {
            redis::Value::Int(hold) => u64::try_from(*hold).expect("a hold id"),
            other => panic!("a hold id, not {other:?}"),
        }
    };
    let first = authorize(&mut redis, 1_500);
    authorize(&mut redis, 2_500);
    let _: redis::Value = redis::cmd("VOID").arg(first).arg(500).query(&mut redis).expect("void");
    let held = scrape(metrics);
    assert_eq!(value(&held, "plafond_open_holds", "gauge", &eu), 2.0);
    assert_eq!(value(&held, "plafond_held_minor", "gauge", &eu), 3_500.0);
    assert_eq!(value(&held, "plafond_holds_expiring", "gauge", &eu), 0.0);
    let commands = sum(&after, "plafond_shard_batch_commands_sum");
    let commands_before = sum(&before, "plafond_shard_batch_commands_sum");
    assert!(commands - commands_before >= 6.0, "{commands_before} then {commands}");
    assert_eq!(value(&after, "plafond_connections", "gauge", &[("auth", "yes")]), 1.0);
    assert!(value(&after, "plafond_submissions_total", "counter", &[]) >= 6.0);
    let batches = value(&after, "plafond_shard_service_time_seconds_count", "histogram", &[]);
    let busy = value(&after, "plafond_shard_service_time_seconds_sum", "histogram", &[]);
    assert!(batches >= 6.0 && (0.0..batches).contains(&busy), "{batches} batches, {busy} s");

    let (status, _, _) = get(metrics, "/nothing-here");
    assert!(status.contains("404"), "{status}");
}

/// A durable server on two shards: every command counted by kind and outcome (declines at
/// the door, on a shard, and a cross-shard transfer once settled), the histograms of
/// service time, batch size, group commit and fsync, the log bytes and epochs moving.
#[test]
fn durable_traffic_moves_the_command_counters_and_every_histogram() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data_dir = dir.path().to_str().expect("a UTF-8 path");
    let server = InProcess::start(&[
        "--data-dir",
        data_dir,
        "--durability",
        "sync",
        "--populate",
        "100",
        "--clock",
        "manual",
        "--shards",
        "2",
        "--metrics-port",
        "0",
    ]);
    let metrics = server.metrics_addr.expect("a metrics address");
    let mut redis = server.redis();
    let before = scrape(metrics);
    let answered = |samples: &[Sample], kind: &str, outcome: &str| {
        value(samples, "plafond_commands_total", "counter", &[("kind", kind), ("outcome", outcome)])
    };
    assert_eq!(answered(&before, "pay", "done"), 0.0);
    let group_commits = value(&before, "plafond_group_commit_seconds_count", "histogram", &[]);
    let fsyncs = value(&before, "plafond_wal_fsync_seconds_count", "histogram", &[]);
    let log_bytes = value(&before, "plafond_log_written_bytes_total", "counter", &[]);
    let batch_commands = sum(&before, "plafond_shard_batch_commands_sum");

    let run = |redis: &mut redis::Connection, args: &[&str]| -> redis::Value {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query(redis).expect("a reply")
    };
    for card in ["0", "1", "2"] {
        run(&mut redis, &["PAY", card, "6000"]);
    }
    run(&mut redis, &["PAY", "0", "6000"]); // over the ceiling
    run(&mut redis, &["PAY", "1", "6000"]); // over the ceiling
    run(&mut redis, &["PAY", "1000000", "1"]); // no such card: declined on its shard
    run(&mut redis, &["PROFILE.OPEN", "nowhere"]); // declined at the door
    run(&mut redis, &["TRANSFER", "0", "1", "100"]); // from shard 0 to shard 1
    run(&mut redis, &["DEPOSIT", "2", "50"]);
    run(&mut redis, &["BATCH.RUN", "eu-west"]);

    let after = scrape(metrics);
    assert_eq!(answered(&after, "pay", "done"), 3.0);
    assert_eq!(answered(&after, "pay", "declined"), 3.0);
    let declines = |reason: &str| {
        let labels = [("kind", "pay"), ("reason", reason)];
        value(&after, "plafond_command_declines_total", "counter", &labels)
    };
    assert_eq!(declines("CEILING_EXCEEDED"), 2.0);
    assert_eq!(declines("UNKNOWN_CARD"), 1.0);
    assert_eq!(answered(&after, "open_profile", "declined"), 1.0);
    assert_eq!(answered(&after, "transfer", "done"), 1.0, "counted once settled");
    assert_eq!(answered(&after, "deposit", "done"), 1.0);
    // BATCH.RUN ran one; the scheduler may have run one that was due since the scrape.
    let epochs = [("region", "eu-west")];
    let rolled_before = value(&before, "plafond_epochs_completed_total", "counter", &epochs);
    let rolled = value(&after, "plafond_epochs_completed_total", "counter", &epochs);
    assert!(rolled > rolled_before, "{rolled_before} then {rolled} epochs");

    let moved = sum(&after, "plafond_shard_batch_commands_sum") - batch_commands;
    assert!(moved >= 8.0, "the shards decided the 8 commands that reached them: {moved}");
    let histogram = |name: &str| value(&after, &format!("{name}_count"), "histogram", &[]);
    assert!(histogram("plafond_group_commit_seconds") > group_commits);
    assert!(histogram("plafond_wal_fsync_seconds") > fsyncs, "sync: each group waits for one");
    assert!(histogram("plafond_group_commit_batches") > 0.0);
    let inf = |name: &str| exact(&after, name, "histogram", &[("le", "+Inf")]);
    assert_eq!(
        inf("plafond_group_commit_seconds_bucket"),
        histogram("plafond_group_commit_seconds")
    );
    let fsync_s = value(&after, "plafond_wal_fsync_seconds_sum", "histogram", &[]);
    assert!(fsync_s > 0.0 && fsync_s < 60.0, "{fsync_s} s of fsync");
    for shard in ["0", "1"] {
        let of = [("shard", shard)];
        let count = value(&after, "plafond_shard_service_time_seconds_count", "histogram", &of);
        let below = exact(
            &after,
            "plafond_shard_service_time_seconds_bucket",
            "histogram",
            &[("shard", shard), ("le", "+Inf")],
        );
        assert!(count > 0.0 && below == count, "shard {shard}: {count} batches, {below} in +Inf");
    }
    assert!(value(&after, "plafond_log_written_bytes_total", "counter", &[]) > log_bytes);
    assert_eq!(value(&after, "plafond_archive_written_bytes_total", "counter", &[]), 0.0);
    let queue = [("shard", "1")];
    assert_eq!(value(&after, "plafond_shard_internal_queue_depth", "gauge", &queue), 0.0);
    assert!(value(&after, "plafond_store_tables_bytes", "gauge", &[("family", "log")]) >= 0.0);

    // The page's feed is `STATS JSON`, from the same numbers.
    let (status, headers, body) = get(metrics, "/stats.json");
    assert!(status.contains("200") && headers.contains("application/json"), "{status} {headers}");
    let stats: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(stats["commands"]["pay"]["done"], 3, "{body}");
    assert_eq!(stats["commands"]["pay"]["declined"], 3, "{body}");
    assert!(stats["epochs_completed"]["eu-west"].as_f64() >= Some(rolled), "{body}");
    assert!(stats["storage"]["group_commits"].as_u64().expect("a count") > 0, "{body}");
    let (status, headers, page) = get(metrics, "/");
    assert!(status.contains("200") && headers.contains("text/html"), "{status} {headers}");
    assert!(headers.contains("content-security-policy: default-src 'self'"), "{headers}");
    assert!(page.contains("/page.js"), "{page}");
}
