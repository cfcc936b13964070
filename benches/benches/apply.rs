//! The pure decision function on one thread: the ceiling of one shard, without channels,
//! tickets or disk. The baseline the `pay` bench's engine figures are read against; the
//! same workload (§11: N cards, balance 20_000, ceiling 10_000, ten pays per card over ten
//! business days).
//!
//! It needs the core only, so it builds without RocksDB:
//! `cargo bench -p plafond-benches --no-default-features --bench apply`.
//! `PLAFOND_BENCH_CARDS` (default 1_000_000) sets N.

use std::time::Instant;

use plafond_benches::workload::{Skew, Workload, PAYS_PER_CARD};
use plafond_benches::SplitMix;
use plafond_core::apply::{apply, prefetch, Env, Input, Reply, PREFETCH_AHEAD};
use plafond_core::calendar::Calendar;
use plafond_core::command::{AccountKind, Command, Opening, Outcome, Request};
use plafond_core::region::Regions;
use plafond_core::state::ShardState;

/// One business day.
const DAY_MS: i64 = 86_400_000;
/// 2027-01-04T12:00:00Z: the manual clock's start (SPEC §9), so the days match `pay`'s.
const START_MS: i64 = 1_799_064_000_000;
/// The §11 opening of every card's account.
const OPENING: Opening = Opening::REFERENCE;

/// One shard of `cards` checking accounts, as a shard at start-up with the population.
fn populated(regions: &Regions, calendar: &mut Calendar, cards: u64) -> ShardState {
    let region = regions.id_of("eu-west").unwrap_or(0);
    let mut state = ShardState::new(0, 1, regions.len());
    let mut env = Env::new(regions, calendar);
    // What a shard logs at start-up: the configured rules of every region.
    for (region_id, region) in (0..regions.len() as u16).filter_map(|r| Some((r, regions.get(r)?)))
    {
        let rules = Input::SetRules { region: region_id, rules: region.rules.clone() };
        apply(&mut state, &mut env, START_MS, &rules);
    }
    for profile in 0..cards {
        let open = Input::Client(Request::new(Command::OpenProfile { region }));
        apply(&mut state, &mut env, START_MS, &open);
        let open = Input::Client(Request::new(Command::OpenAccount {
            profile,
            kind: AccountKind::Checking,
            opening: Some(OPENING),
        }));
        apply(&mut state, &mut env, START_MS, &open);
    }
    state
}

fn main() {
    let cards = std::env::var("PLAFOND_BENCH_CARDS")
        .ok()
        .and_then(|text| text.replace('_', "").parse().ok())
        .unwrap_or(1_000_000u64)
        .max(1);
    let regions = Regions::builtin();
    let mut calendar = Calendar::new(&regions);
    let populated = populated(&regions, &mut calendar, cards);
    let mut env = Env::new(&regions, &mut calendar);
    let workload = Workload::new(cards, Skew::Uniform);
    let mut rng = SplitMix(11);
    let pays = cards * PAYS_PER_CARD;
    let inputs: Vec<Input> =
        (0..pays).map(|_| Input::Client(Request::new(workload.pay(&mut rng)))).collect();
    for ahead in [0, 4, 8, PREFETCH_AHEAD, 32] {
        let mut state = populated.clone();
        let mut approved = 0u64;
        let started = Instant::now();
        for (index, input) in inputs.iter().enumerate() {
            if let Some(Input::Client(request)) = inputs.get(index + ahead).filter(|_| ahead > 0) {
                prefetch(&state, request);
            }
            let ts_ms = START_MS + (index as u64 / cards) as i64 * DAY_MS;
            let applied = apply(&mut state, &mut env, ts_ms, input);
            if matches!(applied.reply, Reply::Now(Outcome::Approved { .. })) {
                approved += 1;
            }
        }
        let elapsed = started.elapsed();
        println!(
            "baseline/apply (prefetch {ahead} ahead): {:.0} pays/s on one thread, one shard of \
             {cards} cards ({:.1} ns each; {approved} approved)",
            pays as f64 / elapsed.as_secs_f64(),
            elapsed.as_nanos() as f64 / pays as f64
        );
    }
}
