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
//! `ids=unique`: every payment carried a command id of its own).

/// Every allocation goes through mimalloc: commands and replies are allocated
/// on the I/O threads and freed on the writer's, which glibc's malloc makes costly
/// (`docs/DECISIONS.md`, allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use plafond::{
    Command, CommandId, Durability, Engine, EngineConfig, ManualClock, Opening, Outcome, Reason,
    Request,
};
use plafond_examples::flags::Flags;
use plafond_examples::resp::{encode_command, parse_value, Value};
use plafond_examples::sample::{Rng, Zipf};

/// The §11 population.
const OPENING: Opening = Opening { deposit_minor: 20_000, ceiling_minor: 10_000 };
/// Payment amounts are uniform in `1 ..= AMOUNT_MAX_MINOR`.
const AMOUNT_MAX_MINOR: u64 = 5_000;
/// One business day, for `CLOCK.ADVANCE`.
const DAY_MS: i64 = 86_400_000;
/// The highest latency the histograms record (longer ones are clamped to it).
const LATENCY_MAX_US: u64 = 60_000_000;
/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// The most connections, threads and pipeline depth accepted: all stay within reason.
const CONNECTIONS_MAX: usize = 4096;
const PIPELINE_MAX: usize = 65_536;
/// The range of `--rate`: the top is far above what one machine can send, yet keeps a
/// connection's schedule exact in `f64` seconds; below the bottom it is no load test.
const RATE_MIN_PER_S: f64 = 1.0;
const RATE_MAX_PER_S: f64 = 100_000_000.0;
/// Achieved rates more than this fraction below `--rate` get a warning.
const RATE_SHORTFALL_WARN: f64 = 0.05;

const HELP: &str = "\
plafond loadgen: the reference workload (SPEC §11).

usage: loadgen [--target server|embedded] [--cards 100000] [--ops 10*cards] [--duration-s 60]
               [--zipf S] [--seed 42] [--day-every cards] [--ids none|unique]
  server:   [--host 127.0.0.1] [--port 7379] [--token T] [--connections 16] [--pipeline 64]
            [--rate OPS_PER_S]
            (start the server with --populate <cards> and, for the day to advance,
             --clock manual)
  embedded: [--data-dir DIR] [--durability none|async|sync] [--shards N] [--threads 4]
            [--batch 256]

With --ids unique every payment carries a command id of its own (32 hex digits), as real
card authorizations do; the engine then remembers each one for its region's retention.

Runs until --ops payments are done or --duration-s has passed. Prints progress on stderr
once a second, then latencies, outcome counts, the conservation check, and a last line
`summary key=value ...`.

Without --rate the server run is closed-loop: each connection sends --pipeline payments,
waits for their replies, and sends the next ones, as fast as the server answers.
With --rate OPS_PER_S (server only) it is open-loop: payments are due on a fixed schedule,
OPS_PER_S in total spread evenly over the connections, and each connection sends every
payment that is due while it reads replies as they come; --pipeline then caps the payments
in flight per connection. Latency runs from when a payment was due, not from when it was
sent, so time spent waiting behind a slow server counts (no coordinated omission). How late
payments were sent is reported as `schedule lag`: waits for the --pipeline cap, and the
client's pacing tick (a thread wakes the connections about every 100-200 us; it sleeps
rather than spins). A run that falls more than 5 % short of the rate gets a warning.
";

/// What is being measured, from the command line.
#[derive(Clone, Debug)]
struct Workload {
    cards: u64,
    ops: u64,
    duration: Duration,
    zipf: Option<f64>,
    seed: u64,
    day_every: u64,
    /// Payments per second over all connections (`--rate`), or `None` for closed loop.
    rate_per_s: Option<f64>,
    /// `--ids unique`: every payment carries a command id of its own.
    ids: bool,
    /// The run's start (Unix ms), part of every command id.
    run_nonce: u64,
}

/// The outcomes one worker saw.
struct Tally {
    latency_us: Histogram<u64>,
    /// Rate mode only: how late each payment was queued for sending after it was due.
    schedule_lag_us: Histogram<u64>,
    approved: u64,
    approved_minor: u64,
    declined: [u64; Reason::ALL.len()],
    errors: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            schedule_lag_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            approved: 0,
            approved_minor: 0,
            declined: [0; Reason::ALL.len()],
            errors: 0,
        })
    }

    fn add(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.schedule_lag_us.add(&other.schedule_lag_us)?;
        self.approved += other.approved;
        self.approved_minor += other.approved_minor;
        for (mine, theirs) in self.declined.iter_mut().zip(other.declined) {
            *mine += theirs;
        }
        self.errors += other.errors;
        Ok(())
    }

    fn record_latency(&mut self, since: Instant, count: u64) {
        let us = (since.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let _ = self.latency_us.record_n(us, count);
    }

    /// Records one payment's latency from `due` (not from when it was sent: see HELP).
    fn record_latency_from_due(&mut self, due: Instant, replied: Instant) {
        let us =
            (replied.saturating_duration_since(due).as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let _ = self.latency_us.record(us);
    }

    fn record_schedule_lag(&mut self, due: Instant, queued: Instant) {
        let us = (queued.saturating_duration_since(due).as_micros() as u64).min(LATENCY_MAX_US);
        let _ = self.schedule_lag_us.record(us);
    }

    fn declined_total(&self) -> u64 {
        self.declined.iter().sum()
    }
}

/// What all workers share: progress counters and the day-advance schedule.
struct Shared {
    /// Payments handed out so far (the budget is `workload.ops`).
    issued: AtomicU64,
    done: AtomicU64,
    approved: AtomicU64,
    stop: AtomicBool,
    workload: Workload,
}

impl Shared {
    /// Claims up to `want` payments of the budget; also says how many days to advance
    /// first (the day advances every `day_every` payments).
    fn claim(&self, want: u64) -> (u64, u64) {
        if self.stop.load(Ordering::Relaxed) {
            return (0, 0);
        }
        let start = self.issued.fetch_add(want, Ordering::Relaxed);
        let end = (start + want).min(self.workload.ops);
        let claimed = end.saturating_sub(start);
        let every = self.workload.day_every.max(1);
        let days = if claimed == 0 { 0 } else { end / every - start / every };
        (claimed, days)
    }
}

/// Picks cards and amounts.
struct Picker {
    rng: Rng,
    zipf: Option<Arc<Zipf>>,
    cards: u64,
    /// With `--ids unique`: this worker's prefix of its command ids, and how many it made.
    ids: Option<(u64, u64)>,
}

impl Picker {
    fn new(workload: &Workload, zipf: &Option<Arc<Zipf>>, worker: usize) -> Picker {
        let worker = worker as u64;
        Picker {
            rng: Rng::new(workload.seed.wrapping_add(worker)),
            zipf: zipf.clone(),
            cards: workload.cards,
            // The run's start time keeps ids unique across runs against one server.
            ids: workload.ids.then(|| (workload.run_nonce.wrapping_mul(4096) ^ worker, 0)),
        }
    }

    fn pay(&mut self) -> (u64, u64) {
        let card = match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng),
            None => self.rng.below(self.cards),
        };
        (card, 1 + self.rng.below(AMOUNT_MAX_MINOR))
    }

    /// The next payment's command id: 32 hex digits, the length of a UUID without dashes,
    /// as a card network's authorization id would be.
    fn command_id(&mut self) -> Option<CommandId> {
        let (prefix, count) = self.ids.as_mut()?;
        *count += 1;
        // Written in place: the load generator shares the cores with the server, so what
        // it spends per payment is taken from the figure it measures.
        let mut id = [0; 32];
        for (digit, place) in id.iter_mut().enumerate() {
            let word = if digit < 16 { *prefix } else { *count };
            let nibble = (word >> (4 * (15 - digit % 16))) & 0xf;
            *place = b"0123456789abcdef"[nibble as usize];
        }
        // Hex digits are always a valid id: `new` only checks them again.
        CommandId::new(std::str::from_utf8(&id).ok()?).ok()
    }
}

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

const FLAGS: &[&str] = &[
    "target",
    "cards",
    "ops",
    "duration-s",
    "zipf",
    "seed",
    "day-every",
    "ids",
    "host",
    "port",
    "token",
    "connections",
    "pipeline",
    "rate",
    "data-dir",
    "durability",
    "shards",
    "threads",
    "batch",
];

fn run() -> anyhow::Result<bool> {
    let flags = Flags::parse(std::env::args().skip(1), FLAGS).map_err(|e| anyhow!(e))?;
    if flags.help {
        print!("{HELP}");
        return Ok(true);
    }
    let f = |e: String| anyhow!(e);
    let cards: u64 = flags.get("cards", 100_000).map_err(f)?;
    if cards == 0 {
        bail!("--cards must be at least 1");
    }
    let workload = Workload {
        cards,
        ops: flags.get("ops", cards.saturating_mul(10)).map_err(f)?,
        duration: Duration::from_secs_f64(flags.get("duration-s", 60.0f64).map_err(f)?.max(0.0)),
        zipf: flags.optional("zipf").map_err(f)?,
        seed: flags.get("seed", 42).map_err(f)?,
        day_every: flags.get("day-every", cards).map_err(f)?,
        rate_per_s: rate_flag(&flags)?,
        ids: match flags.text("ids").unwrap_or("none") {
            "unique" => true,
            "none" => false,
            other => bail!("--ids {other}: use unique or none"),
        },
        run_nonce: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64),
    };
    let target = flags.text("target").unwrap_or("server").to_string();
    if workload.rate_per_s.is_some() && target != "server" {
        bail!("--rate works with --target server only");
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
    let (tally, secs, conservation) = match target.as_str() {
        "server" => server_target(&flags, &shared, zipf)?,
        "embedded" => embedded_target(&flags, &shared, zipf)?,
        other => bail!("--target {other}: use server or embedded"),
    };
    report(&target, &workload, &tally, secs, &conservation, started);
    Ok(conservation.starts_with("ok") && tally.errors == 0)
}

/// `--rate`: payments per second, in `RATE_MIN_PER_S ..= RATE_MAX_PER_S`.
fn rate_flag(flags: &Flags) -> anyhow::Result<Option<f64>> {
    let Some(rate) = flags.optional::<f64>("rate").map_err(|e| anyhow!(e))? else {
        return Ok(None);
    };
    // `f64` parsing also accepts `inf` and `NaN`, which the range check refuses too.
    if !(RATE_MIN_PER_S..=RATE_MAX_PER_S).contains(&rate) {
        bail!("--rate {rate}: give the payments per second, {RATE_MIN_PER_S} to {RATE_MAX_PER_S}");
    }
    Ok(Some(rate))
}

/// Prints a progress line once a second until `stop`.
fn progress(shared: Arc<Shared>, measured_from: Instant) -> std::thread::JoinHandle<()> {
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

fn report(
    target: &str,
    workload: &Workload,
    tally: &Tally,
    secs: f64,
    conservation: &str,
    started: Instant,
) {
    let ops = tally.approved + tally.declined_total();
    let h = &tally.latency_us;
    println!(
        "workload: cards={} ops={} distribution={} seed={} day_every={}",
        workload.cards,
        workload.ops,
        workload.zipf.map_or("uniform".to_string(), |s| format!("zipf(s={s})")),
        workload.seed,
        workload.day_every
    );
    println!(
        "latency_us: p50={} p90={} p99={} p99.9={} max={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    println!("approved: {} (volume {})", tally.approved, tally.approved_minor);
    for reason in Reason::ALL {
        let count = tally.declined[reason.index()];
        if count > 0 {
            println!("declined {}: {count}", reason.as_str());
        }
    }
    if tally.errors > 0 {
        println!("errors: {}", tally.errors);
    }
    println!("conservation: {conservation}");
    println!("total time incl. setup: {:.1} s", started.elapsed().as_secs_f64());
    let ops_per_s = if secs > 0.0 { ops as f64 / secs } else { 0.0 };
    if let Some(rate) = workload.rate_per_s {
        report_rate(rate, ops_per_s, &tally.schedule_lag_us);
    }
    println!(
        "summary target={target} ops={ops} secs={secs:.3} ops_per_s={ops_per_s:.0} p50_us={} \
         p99_us={} p999_us={} approved={} declined={} insufficient_funds={} \
         ceiling_exceeded={} errors={} conservation={} rate={} ids={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        tally.approved,
        tally.declined_total(),
        tally.declined[Reason::InsufficientFunds.index()],
        tally.declined[Reason::CeilingExceeded.index()],
        tally.errors,
        if conservation.starts_with("ok") { "ok" } else { "FAILED" },
        workload.rate_per_s.unwrap_or(0.0),
        if workload.ids { "unique" } else { "none" }
    );
}

/// The achieved rate next to the target, and a warning when it falls short: then the server
/// (or this client) could not keep up, and the latencies include the backlog.
fn report_rate(rate_per_s: f64, achieved_per_s: f64, schedule_lag_us: &Histogram<u64>) {
    println!(
        "rate: target {rate_per_s:.0} ops/s, achieved {achieved_per_s:.0} ops/s ({:.1} %)",
        100.0 * achieved_per_s / rate_per_s
    );
    println!(
        "schedule lag_us (due -> queued for sending): p50={} p99={} max={}",
        schedule_lag_us.value_at_quantile(0.5),
        schedule_lag_us.value_at_quantile(0.99),
        schedule_lag_us.max()
    );
    if achieved_per_s < rate_per_s * (1.0 - RATE_SHORTFALL_WARN) {
        println!(
            "WARNING: achieved {achieved_per_s:.0} ops/s is more than {:.0} % below the target \
             {rate_per_s:.0} ops/s: the server or the client could not keep up; the latencies \
             include the backlog",
            100.0 * RATE_SHORTFALL_WARN
        );
    }
}

// ---------------------------------------------------------------------------------------
// Embedded: an engine in this process, driven by `submit` batches from a few threads.

fn embedded_target(
    flags: &Flags,
    shared: &Arc<Shared>,
    zipf: Option<Arc<Zipf>>,
) -> anyhow::Result<(Tally, f64, String)> {
    let f = |e: String| anyhow!(e);
    let durability: Durability = flags
        .text("durability")
        .unwrap_or("none")
        .parse()
        .map_err(|e| anyhow!("--durability: {e}"))?;
    let threads: usize = flags.get("threads", 4).map_err(f)?;
    let batch: u64 = flags.get("batch", 256).map_err(f)?;
    if threads == 0 || threads > CONNECTIONS_MAX || batch == 0 || batch > PIPELINE_MAX as u64 {
        bail!("--threads must be 1..={CONNECTIONS_MAX} and --batch 1..={PIPELINE_MAX}");
    }
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let mut config =
        EngineConfig::in_memory().with_durability(durability).with_clock(clock.clone());
    if let Some(dir) = flags.text("data-dir") {
        config.data_dir = Some(dir.into());
    } else if durability != Durability::None {
        bail!("--durability {} needs --data-dir", flags.text("durability").unwrap_or(""));
    }
    if let Some(shards) = flags.optional::<u16>("shards").map_err(f)? {
        config = config.with_shards(shards);
    }
    let engine =
        Arc::new(Engine::open(config).map_err(|e| anyhow!("cannot open the engine: {e}"))?);
    let region = engine.regions().iter().next().map(|r| r.name.clone()).context("a region")?;
    let region = engine.region_id(&region).context("a region id")?;
    let cards = shared.workload.cards;
    let populate_started = Instant::now();
    engine
        .populate(region, cards, OPENING, |done| eprint!("\rpopulating: {done}/{cards}"))
        .map_err(|e| anyhow!("populate (use an empty --data-dir): {e}"))?;
    eprintln!(" in {:.1} s", populate_started.elapsed().as_secs_f64());

    let measured_from = Instant::now();
    let ticker = progress(shared.clone(), measured_from);
    let workers: Vec<_> = (0..threads)
        .map(|index| {
            let (engine, shared, clock) = (engine.clone(), shared.clone(), clock.clone());
            let picker = Picker::new(&shared.workload, &zipf, index);
            std::thread::spawn(move || embedded_worker(&engine, &shared, &clock, picker, batch))
        })
        .collect();
    let mut tally = Tally::new()?;
    for worker in workers {
        let worker = worker.join().map_err(|_| anyhow!("a worker panicked"))??;
        tally.add(&worker)?;
    }
    let secs = measured_from.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    let audit = engine.audit()?;
    let stats = engine.stats()?;
    let mut conservation = if audit.holds() {
        format!("ok (held {} = owed {})", audit.held_minor(), audit.owed_minor())
    } else {
        format!("BROKEN (held {} != owed {})", audit.held_minor(), audit.owed_minor())
    };
    if stats.total.counters.payments_approved_minor != u128::from(tally.approved_minor) {
        conservation = format!(
            "MISMATCH: engine approved volume {} != loadgen's {}",
            stats.total.counters.payments_approved_minor, tally.approved_minor
        );
    }
    Ok((tally, secs, conservation))
}

fn embedded_worker(
    engine: &Engine,
    shared: &Shared,
    clock: &ManualClock,
    mut picker: Picker,
    batch: u64,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let deadline = Instant::now() + shared.workload.duration;
    while Instant::now() < deadline {
        let (count, days) = shared.claim(batch);
        if count == 0 {
            break;
        }
        if days > 0 {
            clock.advance(DAY_MS * days as i64);
        }
        let requests: Vec<Request> = (0..count)
            .map(|_| {
                let (card, amount_minor) = picker.pay();
                let pay = Command::Pay { card, amount_minor };
                match picker.command_id() {
                    Some(id) => Request::with_id(pay, id),
                    None => Request::new(pay),
                }
            })
            .collect();
        let amounts: Vec<u64> = requests
            .iter()
            .map(|r| match r.command {
                Command::Pay { amount_minor, .. } => amount_minor,
                _ => 0,
            })
            .collect();
        let approved_before = tally.approved;
        let sent = Instant::now();
        let outcomes = engine.submit(requests)?.wait()?;
        tally.record_latency(sent, count);
        for (outcome, amount) in outcomes.iter().zip(amounts) {
            match outcome {
                Outcome::Approved { .. } => {
                    tally.approved += 1;
                    tally.approved_minor += amount;
                }
                Outcome::Declined(reason) => tally.declined[reason.index()] += 1,
                _ => tally.errors += 1,
            }
        }
        shared.done.fetch_add(count, Ordering::Relaxed);
        shared.approved.fetch_add(tally.approved - approved_before, Ordering::Relaxed);
    }
    Ok(tally)
}

// ---------------------------------------------------------------------------------------
// Server: connections × pipeline depth of raw RESP over tokio TcpStreams; closed-loop, or
// paced by `--rate`.

fn server_target(
    flags: &Flags,
    shared: &Arc<Shared>,
    zipf: Option<Arc<Zipf>>,
) -> anyhow::Result<(Tally, f64, String)> {
    let f = |e: String| anyhow!(e);
    let host = flags.text("host").unwrap_or("127.0.0.1").to_string();
    let port: u16 = flags.get("port", 7379).map_err(f)?;
    let connections: usize = flags.get("connections", 16).map_err(f)?;
    let pipeline: usize = flags.get("pipeline", 64).map_err(f)?;
    if connections == 0 || connections > CONNECTIONS_MAX || pipeline == 0 || pipeline > PIPELINE_MAX
    {
        bail!("--connections must be 1..={CONNECTIONS_MAX} and --pipeline 1..={PIPELINE_MAX}");
    }
    let token = flags.text("token").map(str::to_owned);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let addr = format!("{host}:{port}");
        let mut control = Conn::connect(&addr, token.as_deref()).await?;
        check_population(&mut control, shared.workload.cards).await?;
        let clock_works = !matches!(control.call(&["CLOCK.ADVANCE", "0"]).await?, Value::Error(_));
        if !clock_works {
            eprintln!(
                "loadgen: the server's clock is not manual (start it with --clock manual): \
                 the business day will not advance"
            );
        }
        let pacing = PacingTicker::start()?;
        let measured_from = Instant::now();
        let ticker = progress(shared.clone(), measured_from);
        let mut tasks = Vec::new();
        for index in 0..connections {
            let conn = Conn::connect(&addr, token.as_deref()).await?;
            let picker = Picker::new(&shared.workload, &zipf, index);
            let shared = shared.clone();
            tasks.push(match shared.workload.rate_per_s {
                None => tokio::spawn(server_worker(conn, shared, picker, pipeline, clock_works)),
                Some(rate_per_s) => {
                    let schedule = Schedule::new(rate_per_s, index, connections, measured_from);
                    let deadline = measured_from + shared.workload.duration;
                    let pacer = Pacer::new(schedule, pipeline, deadline);
                    let tick = pacing.tick.clone();
                    tokio::spawn(paced_worker(conn, shared, picker, pacer, tick, clock_works))
                }
            });
        }
        let mut tally = Tally::new()?;
        for task in tasks {
            tally.add(&task.await??)?;
        }
        let secs = measured_from.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        drop(pacing);
        let conservation = server_conservation(&mut control, shared.workload.cards, &tally).await?;
        Ok((tally, secs, conservation))
    })
}

/// Checks that the server holds the §11 population: card N-1 exists, card N does not.
async fn check_population(control: &mut Conn, cards: u64) -> anyhow::Result<()> {
    let last = control.call(&["CARD", &(cards - 1).to_string()]).await?;
    let beyond = control.call(&["CARD", &cards.to_string()]).await?;
    let is_card = |v: &Value| matches!(v, Value::Array(items) if items.len() == 5);
    if !is_card(&last) || is_card(&beyond) {
        bail!(
            "the server does not hold exactly {cards} cards (start it with --populate {cards}, \
             or pass --cards to match)"
        );
    }
    Ok(())
}

/// The server's own audit, and the exact check for a freshly populated server without other
/// traffic: balances + approved volume = N × 20_000.
async fn server_conservation(
    control: &mut Conn,
    cards: u64,
    tally: &Tally,
) -> anyhow::Result<String> {
    let Value::Bulk(json) = control.call(&["STATS", "JSON"]).await? else {
        bail!("STATS JSON did not reply a bulk string");
    };
    let json = String::from_utf8_lossy(&json);
    let holds = json.contains("\"holds\":true");
    let total = json.split("\"total\":").nth(1).unwrap_or("");
    let balances = number_after(total, "\"balances_minor\":");
    let expected = u128::from(cards) * u128::from(OPENING.deposit_minor);
    let exact = balances.map(|b| b + u128::from(tally.approved_minor) == expected);
    Ok(match (holds, exact) {
        (true, Some(true)) => format!(
            "ok (audit holds; balances {} + approved {} = {expected})",
            balances.unwrap_or(0),
            tally.approved_minor
        ),
        (true, _) => format!(
            "ok (audit holds; balances {:?} + approved {} != {expected}: other traffic on the \
             server?)",
            balances, tally.approved_minor
        ),
        (false, _) => "BROKEN (the server's audit does not hold)".to_string(),
    })
}

fn number_after(text: &str, key: &str) -> Option<u128> {
    let rest = text.split(key).nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

async fn server_worker(
    mut conn: Conn,
    shared: Arc<Shared>,
    mut picker: Picker,
    pipeline: usize,
    clock_works: bool,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let deadline = Instant::now() + shared.workload.duration;
    let mut request = Vec::with_capacity(pipeline * 40);
    let mut amounts = Vec::with_capacity(pipeline);
    while Instant::now() < deadline {
        let (count, days) = shared.claim(pipeline as u64);
        if count == 0 {
            break;
        }
        request.clear();
        amounts.clear();
        let advance = clock_works && days > 0;
        if advance {
            encode_command(&mut request, &["CLOCK.ADVANCE", &(DAY_MS * days as i64).to_string()]);
        }
        for _ in 0..count {
            encode_pay(&mut request, &mut picker, &mut amounts);
        }
        let approved_before = tally.approved;
        let sent = Instant::now();
        conn.stream.write_all(&request).await?;
        if advance {
            if let Value::Error(error) = conn.read().await? {
                bail!("CLOCK.ADVANCE refused: {error}");
            }
        }
        for &amount in &amounts {
            let reply = conn.read().await?;
            tally.record_latency(sent, 1);
            count_reply(&mut tally, &reply, amount);
        }
        shared.done.fetch_add(count, Ordering::Relaxed);
        shared.approved.fetch_add(tally.approved - approved_before, Ordering::Relaxed);
    }
    Ok(tally)
}

/// Appends the next `PAY` (with its command id under `--ids unique`) to `output`, and its
/// amount to `amounts`; returns the amount.
fn encode_pay(output: &mut Vec<u8>, picker: &mut Picker, amounts: &mut Vec<u64>) -> u64 {
    let (card, amount) = picker.pay();
    let (card_text, amount_text) = (card.to_string(), amount.to_string());
    match picker.command_id() {
        Some(id) => encode_command(
            output,
            &[&b"PAY"[..], card_text.as_bytes(), amount_text.as_bytes(), id.as_bytes()],
        ),
        None => encode_command(output, &["PAY", &card_text, &amount_text]),
    }
    amounts.push(amount);
    amount
}

fn count_reply(tally: &mut Tally, reply: &Value, amount: u64) {
    let Value::Array(items) = reply else {
        tally.errors += 1;
        return;
    };
    match (items.first(), items.get(1)) {
        (Some(Value::Simple(word)), _) if word == "APPROVED" => {
            tally.approved += 1;
            tally.approved_minor += amount;
        }
        (Some(Value::Simple(word)), Some(Value::Simple(reason))) if word == "DECLINED" => {
            match Reason::ALL.iter().find(|r| r.as_str() == reason) {
                Some(reason) => tally.declined[reason.index()] += 1,
                None => tally.errors += 1,
            }
        }
        _ => tally.errors += 1,
    }
}

// ---------------------------------------------------------------------------------------
// Rate mode (`--rate`): open loop. Payments are due on a fixed schedule whatever the server
// does; a connection sends all that are due (catching up in a burst when late) while it
// reads replies, so a slow server shows as latency instead of as a slower client.

/// When one connection's payments are due: the `k`-th at `first + k × interval`. Connection
/// `i` of `C` starts `i / rate` after the others' origin, so together they are due evenly at
/// `rate` (one every `1 / rate`), not in bursts of `C`.
struct Schedule {
    first: Instant,
    interval_s: f64,
    /// Payments of this schedule sent so far: the next one due is number `sent`.
    sent: u64,
}

impl Schedule {
    fn new(rate_per_s: f64, index: usize, connections: usize, origin: Instant) -> Schedule {
        debug_assert!(rate_per_s >= RATE_MIN_PER_S && index < connections);
        let offset = Duration::from_secs_f64(index as f64 / rate_per_s);
        Schedule { first: origin + offset, interval_s: connections as f64 / rate_per_s, sent: 0 }
    }

    /// When payment `k` is due; `None` if beyond any clock (never).
    fn due_at(&self, k: u64) -> Option<Instant> {
        let after = Duration::try_from_secs_f64(k as f64 * self.interval_s).ok()?;
        self.first.checked_add(after)
    }

    /// How many payments not yet sent are due by `now`.
    fn due_by(&self, now: Instant) -> u64 {
        match self.due_at(self.sent) {
            Some(next) if next <= now => {
                let elapsed_s = now.duration_since(self.first).as_secs_f64();
                let due_total = (elapsed_s / self.interval_s) as u64 + 1;
                // Rounding must not hide the one `due_at` says is due, or the loop would
                // wake for it again and again without sending it.
                due_total.saturating_sub(self.sent).max(1)
            }
            _ => 0,
        }
    }
}

/// A request sent in rate mode whose reply has not arrived yet, in sending order.
enum Awaiting {
    Advance,
    Pay { due: Instant, amount: u64 },
}

/// One connection's rate-mode state: the schedule, what is in flight, what is to be written.
struct Pacer {
    schedule: Schedule,
    /// `--pipeline`: the most payments in flight; when reached, sending waits for replies.
    in_flight_max: u64,
    in_flight: u64,
    deadline: Instant,
    /// False once the deadline passed or the `--ops` budget is spent.
    sending: bool,
    /// At most `in_flight_max` payments plus their `CLOCK.ADVANCE`s.
    awaiting: VecDeque<Awaiting>,
    output: Vec<u8>,
    /// How much of `output` is written (the socket may take it in parts).
    written: usize,
}

impl Pacer {
    fn new(schedule: Schedule, in_flight_max: usize, deadline: Instant) -> Pacer {
        Pacer {
            schedule,
            in_flight_max: in_flight_max as u64,
            in_flight: 0,
            deadline,
            sending: true,
            awaiting: VecDeque::with_capacity(in_flight_max * 2),
            output: Vec::with_capacity(in_flight_max * 40),
            written: 0,
        }
    }

    /// Queues every payment due by `now` that the in-flight cap allows.
    fn queue_due(
        &mut self,
        now: Instant,
        shared: &Shared,
        picker: &mut Picker,
        tally: &mut Tally,
        clock_works: bool,
    ) {
        if !self.sending {
            return;
        }
        if now >= self.deadline {
            self.sending = false;
            return;
        }
        let want = self.schedule.due_by(now).min(self.in_flight_max - self.in_flight);
        if want == 0 {
            return;
        }
        let (count, days) = shared.claim(want);
        if count == 0 {
            self.sending = false;
            return;
        }
        if clock_works && days > 0 {
            encode_command(
                &mut self.output,
                &["CLOCK.ADVANCE", &(DAY_MS * days as i64).to_string()],
            );
            self.awaiting.push_back(Awaiting::Advance);
        }
        for _ in 0..count {
            // `due_by` counted this payment as due, so its time is a real instant.
            let due = self.schedule.due_at(self.schedule.sent).unwrap_or(now);
            self.schedule.sent += 1;
            tally.record_schedule_lag(due, now);
            let amount = encode_pay(&mut self.output, picker, &mut Vec::new());
            self.awaiting.push_back(Awaiting::Pay { due, amount });
        }
        self.in_flight += count;
    }

    /// When to wake to send the next payment: `None` while the cap is reached (a reply
    /// wakes the loop instead) or once sending is over.
    fn wake_at(&self) -> Option<Instant> {
        if !self.sending || self.in_flight >= self.in_flight_max {
            return None;
        }
        // A schedule beyond any clock: wake at the deadline, which ends sending.
        Some(
            self.schedule
                .due_at(self.schedule.sent)
                .map_or(self.deadline, |at| at.min(self.deadline)),
        )
    }

    fn unwritten(&self) -> &[u8] {
        &self.output[self.written..]
    }

    fn wrote(&mut self, bytes: usize) {
        self.written += bytes;
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
    }

    /// Matches the replies read so far with what was sent; returns the payments answered.
    fn take_replies(&mut self, replies: &mut Replies, tally: &mut Tally) -> anyhow::Result<u64> {
        // All replies of one read arrived together.
        let replied = Instant::now();
        let mut answered = 0;
        while let Some(reply) = replies.next()? {
            match self.awaiting.pop_front() {
                Some(Awaiting::Pay { due, amount }) => {
                    tally.record_latency_from_due(due, replied);
                    count_reply(tally, &reply, amount);
                    answered += 1;
                }
                Some(Awaiting::Advance) => {
                    if let Value::Error(error) = reply {
                        bail!("CLOCK.ADVANCE refused: {error}");
                    }
                }
                None => bail!("the server sent a reply to no request"),
            }
        }
        self.in_flight -= answered;
        Ok(answered)
    }

    fn finished(&self) -> bool {
        // Everything queued is awaited, so nothing awaited means nothing left to write.
        !self.sending && self.awaiting.is_empty()
    }
}

/// How often the pacing ticker wakes the paced connections.
const PACING_TICK: Duration = Duration::from_micros(100);

/// Wakes every paced connection each [`PACING_TICK`] or so. tokio's timers fire on a
/// millisecond wheel, so a payment due between two of its ticks would be sent up to 1 ms
/// late, and that lag counts in its latency; a thread's `sleep` is finer (about 100 µs
/// plus the kernel's timer slack) and costs one wake-up per tick, not a spinning core.
struct PacingTicker {
    tick: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PacingTicker {
    fn start() -> anyhow::Result<PacingTicker> {
        let tick = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_tick, thread_stop) = (tick.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("loadgen-pacing".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(PACING_TICK);
                    thread_tick.notify_waiters();
                }
            })
            .context("cannot start the pacing thread")?;
        Ok(PacingTicker { tick, stop, thread: Some(thread) })
    }
}

impl Drop for PacingTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Rate mode: sends on the pacer's schedule, writes and reads concurrently (a burst of
/// sends never waits for replies to be read, and the other way round), and sleeps until the
/// next pacing tick: the machine may be shared with the server, so no busy waiting.
async fn paced_worker(
    mut conn: Conn,
    shared: Arc<Shared>,
    mut picker: Picker,
    mut pacer: Pacer,
    tick: Arc<tokio::sync::Notify>,
    clock_works: bool,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let (mut reader, mut writer) = conn.stream.split();
    let timer = tokio::time::sleep_until(pacer.deadline.into());
    tokio::pin!(timer);
    loop {
        pacer.queue_due(Instant::now(), &shared, &mut picker, &mut tally, clock_works);
        if pacer.finished() {
            break;
        }
        let wake_at = pacer.wake_at();
        if let Some(at) = wake_at {
            timer.as_mut().reset(at.into());
        }
        let awaiting = !pacer.awaiting.is_empty();
        let unwritten = !pacer.unwritten().is_empty();
        tokio::select! {
            read = conn.replies.fill(&mut reader), if awaiting => {
                read?;
                let approved_before = tally.approved;
                let answered = pacer.take_replies(&mut conn.replies, &mut tally)?;
                shared.done.fetch_add(answered, Ordering::Relaxed);
                shared.approved.fetch_add(tally.approved - approved_before, Ordering::Relaxed);
            }
            // `write` is cancel-safe: when another branch wins, nothing was written.
            wrote = writer.write(pacer.unwritten()), if unwritten => match wrote? {
                0 => bail!("the server closed the connection"),
                bytes => pacer.wrote(bytes),
            },
            () = &mut timer, if wake_at.is_some() => {}
            () = tick.notified(), if wake_at.is_some() => {}
            // Not finished means something is awaited, so the read branch is enabled.
            else => bail!("rate mode stalled with nothing to send, write or read"),
        }
    }
    Ok(tally)
}

/// A raw RESP connection.
struct Conn {
    stream: TcpStream,
    replies: Replies,
}

impl Conn {
    async fn connect(addr: &str, token: Option<&str>) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr} (is the server running?)"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn { stream, replies: Replies::new() };
        if let Some(token) = token {
            if let Value::Error(error) = conn.call(&["AUTH", token]).await? {
                bail!("AUTH refused: {error}");
            }
        }
        Ok(conn)
    }

    async fn call(&mut self, args: &[&str]) -> anyhow::Result<Value> {
        let mut request = Vec::new();
        encode_command(&mut request, args);
        self.stream.write_all(&request).await?;
        self.read().await
    }

    async fn read(&mut self) -> anyhow::Result<Value> {
        loop {
            if let Some(value) = self.replies.next()? {
                return Ok(value);
            }
            self.replies.fill(&mut self.stream).await?;
        }
    }
}

/// Replies read from a connection and not yet parsed.
struct Replies {
    buffer: Vec<u8>,
    /// Where the unread replies start in `buffer` (compacted before each read, so a deep
    /// pipeline's replies are not moved once per reply).
    start: usize,
    chunk: Vec<u8>,
}

impl Replies {
    fn new() -> Replies {
        Replies { buffer: Vec::new(), start: 0, chunk: vec![0; READ_CHUNK_BYTES] }
    }

    /// The next complete reply already read, if any.
    fn next(&mut self) -> anyhow::Result<Option<Value>> {
        let Some((value, used)) = parse_value(&self.buffer[self.start..])? else {
            return Ok(None);
        };
        self.start += used;
        Ok(Some(value))
    }

    /// Reads once from `stream`. Cancel-safe (rate mode races it against sending): the only
    /// await is one `read`, and nothing is lost if it is dropped before it completes.
    async fn fill(&mut self, stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<()> {
        self.buffer.drain(..self.start);
        self.start = 0;
        let read = stream.read(&mut self.chunk).await?;
        if read == 0 {
            bail!("the server closed the connection");
        }
        self.buffer.extend_from_slice(&self.chunk[..read]);
        Ok(())
    }
}
