//! Does an epoch disturb payments? The §11 workload at half its maximum rate, first alone,
//! then while one epoch rolls every card of the region; compares the p99 latency.
//!
//! ```sh
//! PLAFOND_CARDS=10000000 cargo run --release -p plafond --example epoch_bench
//! PLAFOND_CARDS=1000000 PLAFOND_DURABILITY=sync cargo run --release -p plafond --example epoch_bench
//! PLAFOND_CARDS=10000000 PLAFOND_HOLDS=1000000 cargo run --release -p plafond --example epoch_bench
//! ```
//!
//! With `PLAFOND_HOLDS=N`, N cards authorize a hold each after the quiet phase and the
//! clock moves to the day they expire (§12), so the epoch of the measured phase also
//! expires a day's holds (those the load does not touch first: a touched card expires its
//! own).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plafond::{
    Command, Durability, Engine, EngineConfig, ManualClock, Opening, Outcome, Reason, Request,
    Ticket, DAY_MS,
};

/// Commands per submission of the paced load.
const BATCH: usize = 1024;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

/// xorshift64*, for card ids and amounts.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

fn pays(rng: &mut Rng, cards: u64) -> Vec<Request> {
    (0..BATCH)
        .map(|_| {
            let card = rng.below(cards);
            Request::new(Command::Pay { card, amount_minor: 1 + rng.below(5_000) })
        })
        .collect()
}

/// Submits as fast as possible for `duration`: payments per second.
fn max_rate(engine: &Engine, clock: &ManualClock, cards: u64, duration: Duration) -> f64 {
    let mut rng = Rng(7);
    let started = Instant::now();
    let mut done = 0usize;
    let mut in_flight = std::collections::VecDeque::new();
    let mut sent = 0u64;
    while started.elapsed() < duration {
        in_flight.push_back(engine.submit(pays(&mut rng, cards)).expect("submit"));
        sent += BATCH as u64;
        // §11: the business day advances every N payments, so the window slides.
        if sent % cards < BATCH as u64 {
            clock.advance(DAY_MS);
        }
        if in_flight.len() > 64 {
            done += in_flight.pop_front().map_or(0, |t| t.wait().map_or(0, |o| o.len()));
        }
    }
    done += in_flight.into_iter().map(|t| t.wait().map_or(0, |o| o.len())).sum::<usize>();
    done as f64 / started.elapsed().as_secs_f64()
}

struct Phase {
    latencies_us: Vec<u64>,
    declined: [u64; Reason::ALL.len()],
    approved: u64,
}

/// Paces batches at `rate` payments/s until `running` is cleared, without waiting for
/// answers (a second thread does); latency is measured from each batch's scheduled time,
/// so a stall shows even if submission itself had to wait.
fn paced(
    engine: &Engine,
    clock: &ManualClock,
    cards: u64,
    rate: f64,
    running: &AtomicBool,
    seed: u64,
) -> Phase {
    let (sent, answers) = crossbeam_channel::bounded::<(Instant, Ticket)>(4096);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(move || {
            let mut phase =
                Phase { latencies_us: Vec::new(), declined: [0; Reason::ALL.len()], approved: 0 };
            for (scheduled, ticket) in answers {
                let outcomes = ticket.wait().expect("answer");
                phase.latencies_us.push(scheduled.elapsed().as_micros() as u64);
                for outcome in outcomes {
                    match outcome {
                        Outcome::Approved { .. } => phase.approved += 1,
                        Outcome::Declined(reason) => phase.declined[reason.index()] += 1,
                        _ => {}
                    }
                }
            }
            phase
        });
        let mut rng = Rng(seed);
        let interval = Duration::from_secs_f64(BATCH as f64 / rate);
        let started = Instant::now();
        let mut tick = 0u32;
        while running.load(Ordering::Relaxed) {
            let scheduled = started + interval * tick;
            tick += 1;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let ticket = engine.submit(pays(&mut rng, cards)).expect("submit");
            if u64::from(tick) * BATCH as u64 % cards < BATCH as u64 {
                clock.advance(DAY_MS);
            }
            if sent.send((scheduled, ticket)).is_err() {
                break;
            }
        }
        drop(sent);
        waiter.join().expect("waiter thread")
    })
}

/// Authorizes a hold of one minor unit on each of the cards `0..holds`: how many were
/// approved.
fn authorize_holds(engine: &Engine, holds: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let mut approved = 0;
    let mut card = 0;
    while card < holds {
        let end = (card + BATCH as u64).min(holds);
        let requests: Vec<Request> = (card..end)
            .map(|card| Request::new(Command::Authorize { card, amount_minor: 1 }))
            .collect();
        let outcomes = engine.submit(requests)?.wait()?;
        approved +=
            outcomes.iter().filter(|o| matches!(o, Outcome::Authorized { .. })).count() as u64;
        card = end;
    }
    Ok(approved)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p) as usize).copied().unwrap_or(0)
}

fn report(name: &str, mut phase: Phase) -> u64 {
    phase.latencies_us.sort_unstable();
    let (p50, p99) = (percentile(&phase.latencies_us, 0.5), percentile(&phase.latencies_us, 0.99));
    let declined: Vec<String> = Reason::ALL
        .iter()
        .filter(|r| phase.declined[r.index()] > 0)
        .map(|r| format!("{}={}", r.as_str(), phase.declined[r.index()]))
        .collect();
    println!(
        "{name}: batches={} p50_us={p50} p99_us={p99} max_us={} approved={} declined[{}]",
        phase.latencies_us.len(),
        phase.latencies_us.last().copied().unwrap_or(0),
        phase.approved,
        declined.join(" ")
    );
    p99
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cards: u64 = env_or("PLAFOND_CARDS", 1_000_000);
    let durability: Durability = env_or("PLAFOND_DURABILITY", Durability::None);
    let dir = tempfile::tempdir_in(std::env::temp_dir())?;
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = EngineConfig::durable(dir.path())
        .with_durability(durability)
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    let engine = Arc::new(Engine::open(config)?);
    let started = Instant::now();
    let opening = Opening::REFERENCE;
    engine.populate(0, cards, opening, |_| {})?;
    engine.run_due_epochs()?;
    println!("populated {cards} cards ({durability:?}) in {:?}", started.elapsed());

    let max = max_rate(&engine, &clock, cards, Duration::from_secs(3));
    let rate = max / 2.0;
    println!("maximum rate {max:.0} payments/s; pacing at {rate:.0}");

    // Warm up at the paced rate (page faults, caches), then measure without an epoch.
    let running = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let load = scope.spawn(|| paced(&engine, &clock, cards, rate, &running, 5));
        std::thread::sleep(Duration::from_secs(1));
        running.store(false, Ordering::Relaxed);
        load.join().expect("load thread")
    });
    running.store(true, Ordering::Relaxed);
    let quiet = std::thread::scope(|scope| {
        let load = scope.spawn(|| paced(&engine, &clock, cards, rate, &running, 11));
        std::thread::sleep(Duration::from_secs(3));
        running.store(false, Ordering::Relaxed);
        load.join().expect("load thread")
    });
    let quiet_p99 = report("without epoch", quiet);

    let holds: u64 = env_or("PLAFOND_HOLDS", 0);
    if holds > 0 {
        let approved = authorize_holds(&engine, holds.min(cards))?;
        // Authorized on day D, they expire at the roll of D + the region's
        // `hold_expiry_days`: the epochs of the days before run now, unmeasured, so that
        // the measured one is the day's expiry alone.
        let expiry_days = i64::from(engine.regions().get(0).ok_or("no region 0")?.hold_expiry_days);
        clock.advance((expiry_days - 1) * DAY_MS);
        engine.run_due_epochs()?;
        clock.advance(DAY_MS);
        println!(
            "{approved} of {holds} holds authorized; the epochs of the {} days after run; \
             the next one expires them",
            expiry_days - 1
        );
    }
    let open_before = engine.stats()?.total.open_holds;

    running.store(true, Ordering::Relaxed);
    let phase_started = Instant::now();
    let (during, epoch) = std::thread::scope(|scope| {
        let load = scope.spawn(|| paced(&engine, &clock, cards, rate, &running, 13));
        std::thread::sleep(Duration::from_millis(500));
        // The load moved the days on: this epoch (and any missed one) rolls every card.
        let epoch = engine.run_epoch("eu-west");
        std::thread::sleep(Duration::from_millis(500));
        running.store(false, Ordering::Relaxed);
        (load.join().expect("load thread"), epoch)
    });
    let epoch = epoch?;
    println!(
        "epoch over {} accounts: {:?}, longest shard pause {:?} (the phase: {:?})",
        epoch.accounts,
        epoch.duration,
        epoch.max_pause,
        phase_started.elapsed()
    );
    let during_p99 = report("with epoch", during);
    let open_after = engine.stats()?.total.open_holds;
    if holds > 0 {
        println!("open holds: {open_before} before the phase, {open_after} after");
    }
    let audit = engine.audit()?;
    println!(
        "summary cards={cards} p99_quiet_us={quiet_p99} p99_epoch_us={during_p99} added_p99_us={} \
         epoch_ms={} pause_ms={:.3} conservation={}",
        during_p99.saturating_sub(quiet_p99),
        epoch.duration.as_millis(),
        epoch.max_pause.as_secs_f64() * 1e3,
        if audit.holds() { "ok" } else { "BROKEN" }
    );
    Ok(())
}
