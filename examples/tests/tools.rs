//! The cli and the load generator, run as processes against a real server (and, for the
//! load generator, an embedded engine).

mod support;

use support::{example_binary, run_example, Server};

/// The `key=value` fields of loadgen's last line, which must start with `summary`.
fn summary(stdout: &str) -> std::collections::HashMap<String, String> {
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("summary "), "last line is the summary: {stdout}");
    last.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// Conservation held, no errors, and each of the `ops` pays was approved or declined.
fn assert_every_pay_accounted_for(fields: &std::collections::HashMap<String, String>, ops: u64) {
    assert_eq!(fields["conservation"], "ok");
    assert_eq!(fields["errors"], "0");
    let approved: u64 = fields["approved"].parse().expect("a count");
    let declined: u64 = fields["declined"].parse().expect("a count");
    assert_eq!(approved + declined, ops);
}

#[test]
fn the_cli_speaks_to_the_server() {
    let server = Server::start(&["--durability", "none", "--shards", "2", "--token", "t0k"]);
    let port = server.addr.port().to_string();
    let cli = |words: &[&str]| {
        let mut args = vec!["--port", &port, "--token", "t0k"];
        args.extend_from_slice(words);
        run_example("cli", &args)
    };
    let (status, out) = cli(&["open-profile", "eu-west"]);
    assert!(status.success());
    assert_eq!(out.trim(), "(integer) 0");
    let (_, out) = cli(&["open-account", "0", "checking"]);
    assert_eq!(out.trim(), "1) (integer) 0\n2) (integer) 0");
    let (_, out) = cli(&["pay", "0", "100"]);
    assert_eq!(out.trim(), "1) APPROVED\n2) (integer) 99900\n3) (integer) 100");
    let (_, out) = cli(&["balance", "0"]);
    assert_eq!(out.trim(), "(integer) 99900");
    let (_, out) = cli(&["card", "0"]);
    assert!(out.contains("ACTIVE"), "{out}");
    let (_, out) = cli(&["stats"]);
    assert!(out.contains("eu-west") && out.contains("TOTAL"), "{out}");
    let (_, out) = cli(&["stats-json"]);
    let json: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(json["total"]["payments_approved"]["count"], 1);
    // Card holds (§12) through the friendly verbs.
    let (_, out) = cli(&["authorize", "0", "500"]);
    assert_eq!(out.trim(), "1) APPROVED\n2) (integer) 0\n3) (integer) 99400\n4) (integer) 600");
    let (_, out) = cli(&["balance-detail", "0"]);
    assert_eq!(
        out.trim(),
        "1) (integer) 99900\n2) (integer) 99400\n3) (integer) 500\n4) (integer) 1"
    );
    let (_, out) = cli(&["capture-final", "0", "200"]);
    assert_eq!(out.trim(), "1) DONE\n2) (integer) 99700\n3) (integer) 0");
    let (_, out) = cli(&["hold", "0"]);
    assert!(out.contains("CLOSED"), "{out}");
    let (status, out) = cli(&["pay", "0"]);
    assert!(!status.success(), "an error reply fails the cli");
    assert!(out.contains("(error) ERR wrong number of arguments"), "{out}");
    let (status, _) = run_example("cli", &["--port", &port, "--token", "nope", "ping"]);
    assert!(!status.success(), "a wrong token is refused");
}

/// The cli with `args` and, if given, `PLAFOND_TOKEN` set: its status, stdout and stderr.
fn cli_with_env(
    args: &[&str],
    token_env: Option<&str>,
) -> (std::process::ExitStatus, String, String) {
    let mut command = std::process::Command::new(example_binary("cli"));
    command.args(args).stdin(std::process::Stdio::null()).env_remove("PLAFOND_TOKEN");
    if let Some(token) = token_env {
        command.env("PLAFOND_TOKEN", token);
    }
    let output = command.output().expect("the cli runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status, text(&output.stdout), text(&output.stderr))
}

#[test]
fn the_cli_takes_its_token_from_a_file_or_the_environment_so_it_stays_out_of_ps() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = Server::start(&["--durability", "none", "--token", "t0k"]);
    let port = server.addr.port().to_string();
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("token");
    std::fs::write(&file, "t0k\n").expect("written");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = file.to_str().expect("a UTF-8 path");

    let (status, out, _) =
        cli_with_env(&["--port", &port, "--token-file", file, "balance", "0"], None);
    assert!(status.success(), "{out}");
    assert!(out.contains("UNKNOWN_ACCOUNT"), "{out}");
    let (status, out, _) = cli_with_env(&["--port", &port, "balance", "0"], Some("t0k"));
    assert!(status.success(), "{out}");
    assert!(out.contains("UNKNOWN_ACCOUNT"), "{out}");

    // Without a token the server refuses; with two sources the cli refuses to guess.
    let (status, out, _) = cli_with_env(&["--port", &port, "balance", "0"], None);
    assert!(!status.success(), "{out}");
    assert!(out.contains("NOAUTH"), "{out}");
    let (status, _, err) =
        cli_with_env(&["--port", &port, "--token", "t0k", "balance", "0"], Some("t0k"));
    assert!(!status.success());
    assert!(err.contains("one way only"), "{err}");
    let (_, help, _) = cli_with_env(&["--help"], None);
    assert!(help.contains("--token-file") && help.contains("PLAFOND_TOKEN"), "{help}");
}

/// A server holding the §11 population of 1,000 cards, its day moved by the load generator.
fn loadgen_server() -> Server {
    Server::start(&[
        "--durability",
        "none",
        "--shards",
        "2",
        "--populate",
        "1000",
        "--clock",
        "manual",
    ])
}

#[test]
fn loadgen_runs_the_reference_workload_against_a_server() {
    let server = loadgen_server();
    let port = server.addr.port().to_string();
    let (status, out) = run_example(
        "loadgen",
        &[
            "--target",
            "server",
            "--port",
            &port,
            "--cards",
            "1000",
            "--connections",
            "4",
            "--pipeline",
            "16",
            "--duration-s",
            "60",
        ],
    );
    assert!(status.success(), "{out}");
    let fields = summary(&out);
    assert_eq!(fields["ops"], "10000", "ten pays per card");
    assert_every_pay_accounted_for(&fields, 10_000);
    // Ten business days of about one pay a day each: the ceiling declines many.
    assert!(fields["ceiling_exceeded"].parse::<u64>().expect("a count") > 1000, "{out}");
    assert!(out.contains("balances") && out.contains("= 20000000"), "exact check: {out}");
}

#[test]
fn loadgen_holds_the_rate_it_is_given() {
    let server = loadgen_server();
    let port = server.addr.port().to_string();
    // 20_000 payments/s for 1.5 s: the duration, not --ops, ends the run. Closed-loop, the
    // same connections do several hundred thousand a second here, far outside the band.
    let rate = 20_000.0;
    let (status, out) = run_example(
        "loadgen",
        &[
            "--target",
            "server",
            "--port",
            &port,
            "--cards",
            "1000",
            "--connections",
            "4",
            "--pipeline",
            "64",
            "--rate",
            "20000",
            "--duration-s",
            "1.5",
            "--ops",
            "1000000",
        ],
    );
    assert!(status.success(), "{out}");
    let fields = summary(&out);
    assert_eq!(fields["rate"], "20000");
    let ops: u64 = fields["ops"].parse().expect("a count");
    let secs: f64 = fields["secs"].parse().expect("seconds");
    let achieved = ops as f64 / secs;
    assert!((0.8 * rate..=1.2 * rate).contains(&achieved), "achieved {achieved}/s: {out}");
    assert!(secs >= 1.4, "the duration bounds the run: {out}");
    assert!(out.contains("rate: target 20000 ops/s, achieved"), "{out}");
    assert_every_pay_accounted_for(&fields, ops);
    // About 30 pays per card over 30 business days: only if the day advances does the
    // sliding ceiling let a card spend its whole balance and meet insufficient funds.
    assert!(fields["insufficient_funds"].parse::<u64>().expect("a count") > 1000, "{out}");
    assert!(out.contains("= 20000000"), "exact check: {out}");
}

#[test]
fn loadgen_runs_the_two_message_flow() {
    let server = loadgen_server();
    let port = server.addr.port().to_string();
    let args = ["--target", "server", "--port", &port, "--cards", "1000", "--ops", "20000"];
    let (status, out) = run_example("loadgen", &[&args[..], &["--flow", "hold"]].concat());
    assert!(status.success(), "{out}");
    let fields = summary(&out);
    assert_every_pay_accounted_for(&fields, 20_000);
    // Every hold was finally captured: what left the accounts is what was captured.
    assert!(out.contains("= 20000000"), "exact check: {out}");
    let (status, _) =
        run_example("loadgen", &[&args[..], &["--flow", "hold", "--rate", "100"]].concat());
    assert!(!status.success(), "the hold flow is closed loop only");
}

#[test]
fn loadgen_refuses_a_bad_rate() {
    for rate in ["0", "-5", "fast", "inf"] {
        let output = std::process::Command::new(example_binary("loadgen"))
            .args(["--target", "server", "--port", "1", "--rate", rate])
            .output()
            .expect("loadgen runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--rate {rate} is refused");
        assert!(stderr.contains(&format!("--rate {rate}")), "says which flag: {stderr}");
    }
}

#[test]
fn loadgen_runs_the_reference_workload_embedded() {
    let (status, out) = run_example(
        "loadgen",
        &[
            "--target",
            "embedded",
            "--cards",
            "2000",
            "--shards",
            "2",
            "--threads",
            "2",
            "--zipf",
            "1.0",
            "--duration-s",
            "60",
        ],
    );
    assert!(status.success(), "{out}");
    let fields = summary(&out);
    assert_eq!(fields["ops"], "20000");
    assert_eq!(fields["conservation"], "ok");
    // Zipf piles payments on a few cards: most of theirs hit the ceiling.
    let ceiling: u64 = fields["ceiling_exceeded"].parse().expect("a count");
    assert!(ceiling > 5_000, "{out}");
}
