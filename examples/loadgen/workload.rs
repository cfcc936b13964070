//! What is measured (the §11 workload from the command line), the counters the workers
//! share, and each worker's picker of cards, amounts and command ids.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plafond::CommandId;
use plafond_examples::sample::{Rng, Zipf};

/// Payment amounts are uniform in `1 ..= AMOUNT_MAX_MINOR`.
pub const AMOUNT_MAX_MINOR: u64 = 5_000;
/// One business day, for `CLOCK.ADVANCE`.
pub const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Debug)]
pub struct Workload {
    pub cards: u64,
    pub ops: u64,
    pub duration: Duration,
    pub zipf: Option<f64>,
    pub seed: u64,
    pub day_every: u64,
    /// Payments per second over all connections (`--rate`), or `None` for closed loop.
    pub rate_per_s: Option<f64>,
    /// `--ids unique`: every payment carries a command id of its own.
    pub ids: bool,
    /// The run's start (Unix ms), part of every command id.
    pub run_nonce: u64,
    /// `--network`: the profile of the fault proxy the connections go through.
    pub network: Option<String>,
}

/// What all workers share: progress counters and the day-advance schedule.
pub struct Shared {
    /// Payments handed out so far (the budget is `workload.ops`).
    pub issued: AtomicU64,
    pub done: AtomicU64,
    pub approved: AtomicU64,
    pub stop: AtomicBool,
    pub workload: Workload,
}

impl Shared {
    /// Claims up to `want` payments of the budget; also says how many days to advance
    /// first (the day advances every `day_every` payments).
    pub fn claim(&self, want: u64) -> (u64, u64) {
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
pub struct Picker {
    pub rng: Rng,
    pub zipf: Option<Arc<Zipf>>,
    pub cards: u64,
    /// With `--ids unique`: this worker's prefix of its command ids, and how many it made.
    pub ids: Option<(u64, u64)>,
}

impl Picker {
    pub fn new(workload: &Workload, zipf: &Option<Arc<Zipf>>, worker: usize) -> Picker {
        let worker = worker as u64;
        Picker {
            rng: Rng::new(workload.seed.wrapping_add(worker)),
            zipf: zipf.clone(),
            cards: workload.cards,
            // The run's start time keeps ids unique across runs against one server.
            ids: workload.ids.then(|| (workload.run_nonce.wrapping_mul(4096) ^ worker, 0)),
        }
    }

    pub fn pay(&mut self) -> (u64, u64) {
        let card = match &self.zipf {
            Some(zipf) => zipf.sample(&mut self.rng),
            None => self.rng.below(self.cards),
        };
        (card, 1 + self.rng.below(AMOUNT_MAX_MINOR))
    }

    /// The next payment's command id: 32 hex digits, the length of a UUID without dashes,
    /// as a card network's authorization id would be.
    pub fn command_id(&mut self) -> Option<CommandId> {
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
