//! What an epoch that expires a day's holds costs a shard, with no load beside it: `HOLDS`
//! cards (every `CARDS / HOLDS`-th) authorize a hold each, the six epochs after run
//! (nothing expires), then the seventh expires them all (§12, the region's
//! `hold_expiry_days`, 7 by default);
//! prints each region's epoch and the longest chunk a shard applied.
//!
//! ```sh
//! CARDS=1000000 HOLDS=100000 cargo run --release -p plafond --example expiry_bench
//! ```

use std::sync::Arc;
use std::time::Instant;

use plafond::{Command, Durability, Engine, EngineConfig, ManualClock, Opening, Request, DAY_MS};

/// Authorizations per submission.
const BATCH: u64 = 1024;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|text| text.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cards = env_or("CARDS", 1_000_000);
    let holds = env_or("HOLDS", 100_000).clamp(1, cards);
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = EngineConfig::durable(dir.path())
        .with_durability(Durability::None)
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    let engine = Engine::open(config)?;
    engine.populate(0, cards, Opening::REFERENCE, |_| {})?;
    engine.run_due_epochs()?;
    let spacing = cards / holds;
    let mut next = 0;
    while next < holds {
        let end = (next + BATCH).min(holds);
        let requests: Vec<Request> = (next..end)
            .map(|i| Request::new(Command::Authorize { card: i * spacing, amount_minor: 1 }))
            .collect();
        engine.submit(requests)?.wait()?;
        next = end;
    }
    // The cards are in region 0: its rule says when their holds expire.
    let expiry_days = i64::from(engine.regions().get(0).ok_or("no region 0")?.hold_expiry_days);
    clock.advance((expiry_days - 1) * DAY_MS);
    let started = Instant::now();
    engine.run_due_epochs()?;
    println!("the {} epochs before the expiry: {:?}", expiry_days - 1, started.elapsed());
    clock.advance(DAY_MS);
    let open = engine.stats()?.total.open_holds;
    for report in engine.run_due_epochs()? {
        println!(
            "epoch of region {}: {:?} over {} accounts, longest chunk {:?}",
            report.region, report.duration, report.accounts, report.max_pause
        );
    }
    println!("open holds: {open} before, {} after", engine.stats()?.total.open_holds);
    Ok(())
}
