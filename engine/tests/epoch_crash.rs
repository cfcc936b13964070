//! §4 under `kill -9`: a child process runs the 1 January epoch, which posts a year's
//! savings interest, and is killed with SIGKILL at instants spread over its run. After each
//! kill the parent reopens the data directory: no interest was posted twice, and running
//! the due epochs finishes the work exactly once.
//!
//! The child is this test binary itself, re-executed to run the ignored test
//! [`epoch_child`] with [`CHILD_DIR_ENV`] set.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plafond::{AccountKind, Command, Engine, EngineConfig, ManualClock, Outcome, Regions, Request};

const CHILD_DIR_ENV: &str = "PLAFOND_EPOCH_CRASH_CHILD";
const KILLS: u64 = 12;
const SHARDS: u16 = 2;
const ACCOUNTS: u64 = 100_000;
/// Opened in half-month 21 (20 November): E_21 = 0, E_22 = E_23 = 100_000 at 600 bp, so
/// 1 January posts `2 × 100_000 × 600 / 240_000 = 500` to every account.
const OPENED: &str = "2027-11-20T12:00:00Z";
const NEW_YEAR: &str = "2028-01-01T12:00:00Z";
const POSTED_MINOR: u64 = 500;

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn config(dir: &Path, now: &str) -> EngineConfig {
    let regions = Regions::from_toml(
        "[[region]]\nname = \"eu-west\"\ntime_zone = \"Europe/Paris\"\nroll_time = \"04:00\"\n\
         initial_deposit = 100000\ndefault_card_ceiling = 300000\nsavings_rate_bp = 600\n",
    )
    .unwrap();
    EngineConfig::durable(dir)
        .with_shards(SHARDS)
        .with_regions(regions)
        .with_clock(Arc::new(ManualClock::new(ms(now))))
        .with_epoch_poll(None)
}

/// Savings accounts opened on 20 November, with the epoch of that day run.
fn prepare(dir: &Path) {
    let engine = Engine::open(config(dir, OPENED)).unwrap();
    let profiles: Vec<Request> =
        (0..ACCOUNTS).map(|_| Request::new(Command::OpenProfile { region: 0 })).collect();
    let opened = engine.submit(profiles).unwrap().wait().unwrap();
    let accounts = opened
        .iter()
        .map(|outcome| match outcome {
            Outcome::ProfileOpened { profile } => Request::new(Command::OpenAccount {
                profile: *profile,
                kind: AccountKind::Savings,
                opening: None,
            }),
            other => panic!("{other:?}"),
        })
        .collect();
    engine.submit(accounts).unwrap().wait().unwrap();
    assert_eq!(engine.run_due_epochs().unwrap().len(), 1);
    drop(engine);
    // Every epoch up to 31 December on time: the child's is the one that posts.
    let engine = Engine::open(config(dir, "2027-12-31T12:00:00Z")).unwrap();
    assert_eq!(engine.run_due_epochs().unwrap().len(), 41);
}

fn balances(engine: &Engine) -> Vec<u64> {
    let reads =
        (0..ACCOUNTS).map(|account| Request::new(Command::ReadAccount { account })).collect();
    let outcomes = engine.submit(reads).unwrap().wait().unwrap();
    outcomes
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Account(view) => view.balance_minor,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
#[ignore = "run by epoch_killed_midway_resumes_exactly_once in a child process"]
fn epoch_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else { return };
    let engine = Engine::open(config(Path::new(&dir), NEW_YEAR)).unwrap();
    println!("ready");
    engine.run_due_epochs().unwrap();
    println!("caught up");
    // Killed before this, or it waits to be killed.
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn epoch_killed_midway_resumes_exactly_once() {
    let seed = std::process::id() as u64;
    println!("epoch crash seed {seed}");
    let template = tempfile::tempdir().unwrap();
    prepare(template.path());
    let epoch = calibrate(template.path());
    println!("the child's epoch takes {epoch:?}");
    for kill in 0..KILLS {
        let work = tempfile::tempdir().unwrap();
        copy_dir(template.path(), work.path());
        let mut child = spawn_child(work.path(), Stdio::piped());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
        assert!(lines.any(|line| line.contains("ready")), "the child did not start");
        // Spread over the epoch, from its first chunk to past its durable record.
        let jitter = (seed.wrapping_mul(kill + 1).wrapping_mul(2_654_435_761) % 100) as f64 / 100.0;
        let delay = epoch.mul_f64(1.2 * (kill as f64 + jitter) / KILLS as f64);
        let delay_ms = delay.as_millis();
        std::thread::sleep(delay);
        child.kill().unwrap();
        child.wait().unwrap();

        let engine = Engine::open(config(work.path(), NEW_YEAR)).unwrap();
        let before = balances(&engine);
        let posted = before.iter().filter(|&&balance| balance == 100_000 + POSTED_MINOR).count();
        assert!(
            before.iter().all(|&b| b == 100_000 || b == 100_000 + POSTED_MINOR),
            "kill {kill} after {delay_ms} ms: a balance is neither before nor after one posting"
        );
        let last = engine.epoch_status()[0].1.last_day;
        engine.run_due_epochs().unwrap();
        assert!(balances(&engine).iter().all(|&b| b == 100_000 + POSTED_MINOR), "kill {kill}");
        let audit = engine.audit().unwrap();
        assert!(audit.holds(), "{audit:?}");
        assert_eq!(audit.interest_minor, u128::from(ACCOUNTS * POSTED_MINOR));
        assert!(engine.run_due_epochs().unwrap().is_empty(), "the catch-up is recorded");
        println!("kill {kill} after {delay_ms} ms: last epoch {last:?}, {posted} already posted");
    }
}

fn spawn_child(dir: &Path, stdout: Stdio) -> std::process::Child {
    Process::new(std::env::current_exe().unwrap())
        .args(["epoch_child", "--exact", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR_ENV, dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// How long the child's epoch takes, from its "ready" to its "caught up".
fn calibrate(template: &Path) -> Duration {
    let work = tempfile::tempdir().unwrap();
    copy_dir(template, work.path());
    let mut child = spawn_child(work.path(), Stdio::piped());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
    assert!(lines.any(|line| line.contains("ready")), "the calibration child did not start");
    let started = Instant::now();
    let caught_up = lines.any(|line| line.contains("caught up"));
    let elapsed = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(caught_up, "the calibration child did not catch up");
    elapsed
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
