//! The embedded target: an engine in this process, driven by threads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};

use plafond::{Command, Durability, Engine, EngineConfig, ManualClock, Opening, Outcome, Request};
use plafond_examples::sample::Zipf;

use crate::args::LoadgenArgs;
use crate::tally::Tally;
use crate::workload::{Picker, Shared, DAY_MS};

// ---------------------------------------------------------------------------------------
// Embedded: an engine in this process, driven by `submit` batches from a few threads.

pub fn embedded_target(
    args: &LoadgenArgs,
    shared: &Arc<Shared>,
    zipf: Option<Arc<Zipf>>,
) -> anyhow::Result<(Tally, f64, String)> {
    let (durability, threads, batch) = (args.durability, args.threads, args.batch);
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let mut config =
        EngineConfig::in_memory().with_durability(durability).with_clock(clock.clone());
    if let Some(dir) = &args.data_dir {
        config.data_dir = Some(dir.clone());
    } else if durability != Durability::None {
        bail!("--durability {durability:?} needs --data-dir");
    }
    if let Some(shards) = args.shards {
        config = config.with_shards(shards);
    }
    let engine =
        Arc::new(Engine::open(config).map_err(|e| anyhow!("cannot open the engine: {e}"))?);
    let region = engine.regions().iter().next().map(|r| r.name.clone()).context("a region")?;
    let region = engine.region_id(&region).context("a region id")?;
    let cards = shared.workload.cards;
    let populate_started = Instant::now();
    engine
        .populate(region, cards, Opening::REFERENCE, |done| eprint!("\rpopulating: {done}/{cards}"))
        .map_err(|e| anyhow!("populate (use an empty --data-dir): {e}"))?;
    eprintln!(" in {:.1} s", populate_started.elapsed().as_secs_f64());

    let measured_from = Instant::now();
    let ticker = crate::progress(shared.clone(), measured_from);
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
        format!("ok (present {} = owed {})", audit.present_minor(), audit.owed_minor())
    } else {
        format!("BROKEN (present {} != owed {})", audit.present_minor(), audit.owed_minor())
    };
    if stats.total.counters.payments_approved_minor != u128::from(tally.approved_minor) {
        conservation = format!(
            "MISMATCH: engine approved volume {} != loadgen's {}",
            stats.total.counters.payments_approved_minor, tally.approved_minor
        );
    }
    Ok((tally, secs, conservation))
}

pub fn embedded_worker(
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
