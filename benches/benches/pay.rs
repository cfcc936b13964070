//! The §11 reference workload on the embedded engine, with its own timing loop.
//!
//! N cards (balance 20_000, ceiling 10_000), about ten pays per card with amounts uniform
//! in `1 ..= 5000`, cards uniform (or Zipf s = 1.0), over ten business days: a
//! `ManualClock` moves one day every N pays. Pays go through `Engine::submit` in batches
//! from one or two submitting threads, each keeping several tickets in flight. Every
//! scenario runs `PLAFOND_BENCH_RUNS` times on a fresh engine; the median is reported,
//! and conservation is checked after every run.
//!
//! Before the engine runs, a baseline splits the cost: building the requests alone. The
//! other baseline, the pure `apply` decision on one thread without channels, tickets or
//! disk, is the `apply` bench of this crate, which builds without RocksDB.
//!
//! Run: `cargo bench -p plafond-benches --bench pay`. Environment:
//! - `PLAFOND_BENCH_CARDS` (default 1_000_000): N;
//! - `PLAFOND_BENCH_RUNS` (default 3): runs per scenario;
//! - `PLAFOND_BENCH_ONLY`: run only scenarios whose name contains this text;
//! - `PLAFOND_BENCH_DIR` (default the system temp dir): where `sync` puts RocksDB.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plafond::{Durability, Engine, EngineConfig, ManualClock, Opening, Outcome, Reason, Ticket};
use plafond_benches::workload::{Skew, Workload, PAYS_PER_CARD};
use plafond_benches::SplitMix;

/// One business day.
const DAY_MS: i64 = 86_400_000;
/// The §11 opening of every card's account.
const OPENING: Opening = Opening::REFERENCE;

#[derive(Clone, Copy, Debug)]
struct Scenario {
    durability: Durability,
    skew: Skew,
    submitters: usize,
    batch_commands: usize,
    /// Tickets each submitter keeps outstanding.
    in_flight: usize,
}

impl Scenario {
    fn name(&self) -> String {
        let durability = match self.durability {
            Durability::None => "none",
            Durability::Async => "async",
            Durability::Sync => "sync",
        };
        let skew = match self.skew {
            Skew::Uniform => "uniform",
            Skew::Zipf => "zipf",
        };
        format!(
            "{durability}/{skew}/submitters{}/batch{}/inflight{}",
            self.submitters, self.batch_commands, self.in_flight
        )
    }
}

const SCENARIOS: [Scenario; 9] = [
    scenario(Durability::None, Skew::Uniform, 1, 16_384),
    scenario(Durability::None, Skew::Uniform, 2, 16_384),
    scenario(Durability::None, Skew::Uniform, 1, 4_096),
    scenario(Durability::None, Skew::Uniform, 1, 65_536),
    scenario(Durability::None, Skew::Zipf, 1, 16_384),
    scenario(Durability::Sync, Skew::Uniform, 1, 16_384),
    scenario(Durability::Sync, Skew::Uniform, 2, 16_384),
    scenario(Durability::Sync, Skew::Uniform, 1, 65_536),
    scenario(Durability::Sync, Skew::Zipf, 1, 16_384),
];

const fn scenario(
    durability: Durability,
    skew: Skew,
    submitters: usize,
    batch_commands: usize,
) -> Scenario {
    Scenario { durability, skew, submitters, batch_commands, in_flight: 4 }
}

/// What one submitter saw.
#[derive(Default)]
struct Tally {
    approved: u64,
    declined: [u64; Reason::ALL.len()],
    /// Submit to observed completion of each ticket, in microseconds.
    latencies_us: Vec<u32>,
}

impl Tally {
    fn count(&mut self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            match outcome {
                Outcome::Approved { .. } => self.approved += 1,
                Outcome::Declined(reason) => self.declined[reason.index()] += 1,
                other => panic!("a pay is approved or declined, not {other:?}"),
            }
        }
    }

    fn add(&mut self, other: Tally) {
        self.approved += other.approved;
        for (total, count) in self.declined.iter_mut().zip(other.declined) {
            *total += count;
        }
        self.latencies_us.extend(other.latencies_us);
    }

    fn declined_total(&self) -> u64 {
        self.declined.iter().sum()
    }
}

/// The result of one run.
struct RunResult {
    populate: Duration,
    elapsed: Duration,
    /// CPU time the whole process got during the run: on a shared machine, less than
    /// `elapsed` times the cores.
    cpu_s: f64,
    pays: u64,
    tally: Tally,
    conservation: bool,
}

impl RunResult {
    fn pays_per_s(&self) -> f64 {
        self.pays as f64 / self.elapsed.as_secs_f64()
    }

    /// Cores the process actually had, on average, during the run.
    fn cores(&self) -> f64 {
        self.cpu_s / self.elapsed.as_secs_f64()
    }
}

/// User plus system CPU time of this process, all threads, from `/proc/self/stat`
/// (clock ticks of 10 ms, the Linux default).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The day the clock shows, moved forward only, one submission at a time.
struct Days {
    clock: Arc<ManualClock>,
    start_ms: i64,
    day: Mutex<u64>,
}

impl Days {
    fn reach(&self, day: u64) {
        let mut current = self.day.lock().expect("the day lock");
        if *current < day {
            self.clock.set(self.start_ms + day as i64 * DAY_MS);
            *current = day;
        }
    }
}

fn run_once(scenario: &Scenario, cards: u64, data_dir: Option<PathBuf>) -> RunResult {
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = match (&data_dir, scenario.durability) {
        (Some(dir), Durability::Sync | Durability::Async) => EngineConfig::durable(dir),
        _ => EngineConfig::in_memory(),
    };
    let config = config.with_durability(scenario.durability).with_clock(clock.clone());
    let engine = Engine::open(config).expect("the engine opens");
    let region = engine.region_id("eu-west").expect("a built-in region");
    let started = Instant::now();
    engine.populate(region, cards, OPENING, |_| {}).expect("populate");
    let populate = started.elapsed();

    let pays = cards * PAYS_PER_CARD;
    let batch = scenario.batch_commands as u64;
    let chunks = pays.div_ceil(batch);
    let next_chunk = AtomicU64::new(0);
    let days = Days { clock, start_ms: ManualClock::SERVER_START_MS, day: Mutex::new(0) };
    let workload = Workload::new(cards, scenario.skew);
    let cpu_started_s = cpu_seconds();
    let started = Instant::now();
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let submitters: Vec<_> = (0..scenario.submitters)
            .map(|submitter| {
                let (engine, workload, days, next_chunk) = (&engine, &workload, &days, &next_chunk);
                scope.spawn(move || {
                    let mut rng = SplitMix(0x5eed + submitter as u64);
                    let mut tally = Tally::default();
                    let mut waiting: VecDeque<(Instant, Ticket)> = VecDeque::new();
                    loop {
                        let chunk = next_chunk.fetch_add(1, Ordering::Relaxed);
                        if chunk >= chunks {
                            break;
                        }
                        if waiting.len() == scenario.in_flight {
                            wait_oldest(&mut waiting, &mut tally);
                        }
                        let first = chunk * batch;
                        let count = batch.min(pays - first) as usize;
                        let requests = workload.requests(&mut rng, count);
                        days.reach(first / cards);
                        let ticket = engine.submit(requests).expect("submit");
                        waiting.push_back((Instant::now(), ticket));
                    }
                    while !waiting.is_empty() {
                        wait_oldest(&mut waiting, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        submitters.into_iter().map(|handle| handle.join().expect("a submitter")).collect()
    });
    let elapsed = started.elapsed();
    let cpu_s = cpu_seconds() - cpu_started_s;
    let mut tally = Tally::default();
    for one in tallies {
        tally.add(one);
    }
    assert_eq!(tally.approved + tally.declined_total(), pays);
    let conservation = engine.audit().expect("audit").holds();
    RunResult { populate, elapsed, cpu_s, pays, tally, conservation }
}

fn wait_oldest(waiting: &mut VecDeque<(Instant, Ticket)>, tally: &mut Tally) {
    let (submitted, ticket) = waiting.pop_front().expect("a ticket in flight");
    let outcomes = ticket.wait().expect("the engine answers");
    let latency_us = submitted.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    tally.latencies_us.push(latency_us);
    tally.count(&outcomes);
}

fn percentile_us(sorted: &[u32], fraction: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn run_scenario(scenario: &Scenario, cards: u64, runs: usize, base_dir: &Path) {
    let name = scenario.name();
    let mut results = Vec::new();
    for run in 0..runs {
        let dir = match scenario.durability {
            Durability::None => None,
            _ => Some(tempfile::tempdir_in(base_dir).expect("a temp dir")),
        };
        let result = run_once(scenario, cards, dir.as_ref().map(|d| d.path().to_owned()));
        println!(
            "  {name} run {run}: {:>10.0} pays/s  ({:.2} s, {:.2} cores, {:.0} pays per CPU-s; \
             populate {:.2} s)  conservation {}",
            result.pays_per_s(),
            result.elapsed.as_secs_f64(),
            result.cores(),
            result.pays as f64 / result.cpu_s.max(0.01),
            result.populate.as_secs_f64(),
            if result.conservation { "ok" } else { "BROKEN" },
        );
        results.push(result);
    }
    results.sort_by(|a, b| a.pays_per_s().total_cmp(&b.pays_per_s()));
    let rates: Vec<String> = results.iter().map(|r| format!("{:.0}", r.pays_per_s())).collect();
    let conservation = results.iter().all(|r| r.conservation);
    let median = &mut results[runs / 2];
    median.tally.latencies_us.sort_unstable();
    let latencies = &median.tally.latencies_us;
    let declined = &median.tally.declined;
    println!(
        "{name}: median {:.0} pays/s (runs {}; {:.2} cores, {:.0} pays per CPU-s) | approved {} declined {} (ceiling {}, funds {}, \
         other {}) | ticket latency p50 {} us p99 {} us p99.9 {} us | conservation {}",
        median.pays_per_s(),
        rates.join(", "),
        median.cores(),
        median.pays as f64 / median.cpu_s.max(0.01),
        median.tally.approved,
        median.tally.declined_total(),
        declined[Reason::CeilingExceeded.index()],
        declined[Reason::InsufficientFunds.index()],
        median.tally.declined_total()
            - declined[Reason::CeilingExceeded.index()]
            - declined[Reason::InsufficientFunds.index()],
        percentile_us(latencies, 0.50),
        percentile_us(latencies, 0.99),
        percentile_us(latencies, 0.999),
        if conservation { "ok" } else { "BROKEN" },
    );
}

/// Building the requests alone: what the load generator costs the submitting thread.
fn baseline_requests(cards: u64) {
    let workload = Workload::new(cards, Skew::Uniform);
    let mut rng = SplitMix(7);
    let pays = cards * PAYS_PER_CARD;
    let started = Instant::now();
    let mut built = 0u64;
    while built < pays {
        let requests = workload.requests(&mut rng, 16_384);
        built += requests.len() as u64;
        std::hint::black_box(requests);
    }
    let elapsed = started.elapsed();
    println!(
        "baseline/requests: {:.0} requests built per s on one thread ({:.1} ns each)",
        built as f64 / elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / built as f64
    );
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|text| text.replace('_', "").parse().ok()).unwrap_or(default)
}

fn main() {
    let cards = env_number("PLAFOND_BENCH_CARDS", 1_000_000).max(1);
    let runs = env_number("PLAFOND_BENCH_RUNS", 3).max(1) as usize;
    let only = std::env::var("PLAFOND_BENCH_ONLY").unwrap_or_default();
    let base_dir =
        std::env::var_os("PLAFOND_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "pay: {cards} cards, {} pays per run, {runs} runs per scenario, {shards} shards \
         (one per core), sync data in {}",
        cards * PAYS_PER_CARD,
        base_dir.display()
    );
    if only.is_empty() || only.contains("baseline") {
        baseline_requests(cards);
    }
    for scenario in &SCENARIOS {
        if scenario.name().contains(&only) {
            run_scenario(scenario, cards, runs, &base_dir);
        }
    }
}
