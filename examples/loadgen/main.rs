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
//! The last line is one machine-parsable summary:
//! `summary target=... ops=... secs=... ops_per_s=... p50_us=... p99_us=... p999_us=...
//! approved=... declined=... conservation=ok`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use plafond::{
    Command, Durability, Engine, EngineConfig, ManualClock, Opening, Outcome, Reason, Request,
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

const HELP: &str = "\
plafond loadgen: the reference workload (SPEC §11).

usage: loadgen [--target server|embedded] [--cards 100000] [--ops 10*cards] [--duration-s 60]
               [--zipf S] [--seed 42] [--day-every cards]
  server:   [--host 127.0.0.1] [--port 7379] [--token T] [--connections 16] [--pipeline 64]
            (start the server with --populate <cards> and, for the day to advance,
             --clock manual)
  embedded: [--data-dir DIR] [--durability none|async|sync] [--shards N] [--threads 4]
            [--batch 256]

Runs until --ops payments are done or --duration-s has passed. Prints progress on stderr
once a second, then latencies, outcome counts, the conservation check, and a last line
`summary key=value ...`.
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
}

/// The outcomes one worker saw.
struct Tally {
    latency_us: Histogram<u64>,
    approved: u64,
    approved_minor: u64,
    declined: [u64; Reason::ALL.len()],
    errors: u64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            approved: 0,
            approved_minor: 0,
            declined: [0; Reason::ALL.len()],
            errors: 0,
        })
    }

    fn add(&mut self, other: &Tally) -> anyhow::Result<()> {
        self.latency_us.add(&other.latency_us)?;
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
}

impl Picker {
    fn pay(&mut self) -> (u64, u64) {
        let card = match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng),
            None => self.rng.below(self.cards),
        };
        (card, 1 + self.rng.below(AMOUNT_MAX_MINOR))
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
    "host",
    "port",
    "token",
    "connections",
    "pipeline",
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
    };
    let target = flags.text("target").unwrap_or("server").to_string();
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
    println!(
        "summary target={target} ops={ops} secs={secs:.3} ops_per_s={ops_per_s:.0} p50_us={} \
         p99_us={} p999_us={} approved={} declined={} insufficient_funds={} \
         ceiling_exceeded={} errors={} conservation={}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        tally.approved,
        tally.declined_total(),
        tally.declined[Reason::InsufficientFunds.index()],
        tally.declined[Reason::CeilingExceeded.index()],
        tally.errors,
        if conservation.starts_with("ok") { "ok" } else { "FAILED" }
    );
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
            let picker = Picker {
                rng: Rng::new(shared.workload.seed.wrapping_add(index as u64)),
                zipf: zipf.clone(),
                cards,
            };
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
                Request::new(Command::Pay { card, amount_minor })
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
// Server: connections × pipeline depth of raw RESP over tokio TcpStreams.

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
        let measured_from = Instant::now();
        let ticker = progress(shared.clone(), measured_from);
        let mut tasks = Vec::new();
        for index in 0..connections {
            let conn = Conn::connect(&addr, token.as_deref()).await?;
            let picker = Picker {
                rng: Rng::new(shared.workload.seed.wrapping_add(index as u64)),
                zipf: zipf.clone(),
                cards: shared.workload.cards,
            };
            let shared = shared.clone();
            tasks.push(tokio::spawn(server_worker(conn, shared, picker, pipeline, clock_works)));
        }
        let mut tally = Tally::new()?;
        for task in tasks {
            tally.add(&task.await??)?;
        }
        let secs = measured_from.elapsed().as_secs_f64();
        shared.stop.store(true, Ordering::Relaxed);
        let _ = ticker.join();
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
            let (card, amount) = picker.pay();
            encode_command(&mut request, &["PAY", &card.to_string(), &amount.to_string()]);
            amounts.push(amount);
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

/// A raw RESP connection.
struct Conn {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// Where the unread replies start in `buffer` (compacted before each read, so a deep
    /// pipeline's replies are not moved once per reply).
    start: usize,
    chunk: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str, token: Option<&str>) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr} (is the server running?)"))?;
        stream.set_nodelay(true)?;
        let mut conn =
            Conn { stream, buffer: Vec::new(), start: 0, chunk: vec![0; READ_CHUNK_BYTES] };
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
            if let Some((value, used)) = parse_value(&self.buffer[self.start..])? {
                self.start += used;
                return Ok(value);
            }
            self.buffer.drain(..self.start);
            self.start = 0;
            let read = self.stream.read(&mut self.chunk).await?;
            if read == 0 {
                bail!("the server closed the connection");
            }
            self.buffer.extend_from_slice(&self.chunk[..read]);
        }
    }
}
