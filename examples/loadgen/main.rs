//! plafond's load generator: the §11 reference workload, against a server or an embedded
//! engine.
//!
//! N cards (balance 20_000, ceiling 10_000, ids 0..N-1), `PAY card amount` with amounts
//! uniform in 1..=5000 and cards uniform (or Zipf with `--zipf 1.0`). By default it runs
//! 10·N payments, and the business day advances every N of them, so about ten pays per
//! card spread over ten business days: the window slides and both decline reasons occur.
//!
//! ```text
//! # against a server (start it with --populate N --clock manual):
//! cargo run --release --example loadgen -- --target server --port 7379 --cards 100000
//! # embedded:
//! cargo run --release --example loadgen -- --target embedded --durability none
//! ```
//!
//! Against a server it runs closed-loop by default (each connection sends `--pipeline`
//! payments, waits for their replies, and goes on: it measures the most the server can do),
//! or open-loop with
//! `--rate R` (payments sent on a fixed schedule of R per second, so it measures latency at
//! a given load, queueing included).
//!
//! The last line is one machine-parsable summary:
//! `summary target=... ops=... secs=... ops_per_s=... p50_us=... p99_us=... p999_us=...
//! approved=... declined=... conservation=ok rate=... ids=...` (`rate=0`: no rate limit;
//! `ids=unique`: every payment carried a command id of its own; `network=4g`: through an
//! in-process fault proxy of that profile, `network=direct` without).

/// Every allocation goes through mimalloc: commands and replies are allocated
/// on the I/O threads and freed on the writer's, which glibc's malloc makes costly
/// (`docs/DECISIONS.md`, allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
mod args;
mod embedded;
mod paced;
mod server;
mod tally;
mod workload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser as _;

use plafond_examples::sample::Zipf;

use crate::args::{Flow, Ids, LoadgenArgs, Target};
use crate::tally::report;
use crate::workload::{Shared, Workload};

fn main() -> std::process::ExitCode {
    match run() {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let args = LoadgenArgs::parse();
    let cards = args.cards;
    let workload = Workload {
        cards,
        ops: args.ops.unwrap_or(cards.saturating_mul(10)),
        duration: Duration::from_secs_f64(args.duration_s.max(0.0)),
        zipf: args.zipf,
        seed: args.seed,
        day_every: args.day_every.unwrap_or(cards),
        rate_per_s: args.rate,
        ids: args.ids == Ids::Unique,
        run_nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
        network: args.network.as_ref().map(|profile| profile.name.clone()),
    };
    if workload.network.is_some() && args.target != Target::Server {
        bail!("--network works with --target server only");
    }
    if workload.rate_per_s.is_some() && args.target != Target::Server {
        bail!("--rate works with --target server only");
    }
    if args.flow == Flow::Hold && (args.target != Target::Server || args.rate.is_some()) {
        bail!("--flow hold works with --target server, closed loop (without --rate), only");
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        approved: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        workload: workload.clone(),
    });
    let zipf = workload.zipf.map(|s| Arc::new(Zipf::new(workload.cards, s)));
    let (tally, secs, conservation) = match args.target {
        Target::Server => server::server_target(&args, &shared, zipf)?,
        Target::Embedded => embedded::embedded_target(&args, &shared, zipf)?,
    };
    report(args.target.name(), &workload, &tally, secs, &conservation, started);
    Ok(conservation.starts_with("ok") && tally.errors == 0)
}

/// Prints a progress line once a second until `stop`.
pub fn progress(shared: Arc<Shared>, measured_from: Instant) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut last = (Instant::now(), 0u64);
        while !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if last.0.elapsed() < Duration::from_secs(1) {
                continue;
            }
            let done = shared.done.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprintln!(
                "[{:>5.1}s] ops={done} ops/s={rate:.0} approved={} day={}",
                measured_from.elapsed().as_secs_f64(),
                shared.approved.load(Ordering::Relaxed),
                done / shared.workload.day_every.max(1),
            );
            last = (Instant::now(), done);
        }
    })
}
