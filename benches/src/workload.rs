//! The §11 reference workload: which card pays how much. Pure (it needs the core's
//! vocabulary only), so the `apply` bench draws the same pays as the engine's `pay` bench
//! without building RocksDB.

use plafond_core::command::{Command, Request};

use crate::SplitMix;

/// Pays per card over the whole run.
pub const PAYS_PER_CARD: u64 = 10;
/// Pay amounts are `1 ..= PAY_AMOUNT_MAX_MINOR`.
pub const PAY_AMOUNT_MAX_MINOR: u64 = 5_000;

/// How the paying cards are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    /// Every card equally often.
    Uniform,
    /// Zipf with s = 1: card 0 the hottest.
    Zipf,
}

/// Zipf with s = 1 over ranks `1 ..= n` by rejection-inversion (Hörmann and Derflinger,
/// as in `rand_distr::Zipf`): O(1) per sample, no table.
struct Zipf {
    t: f64,
}

impl Zipf {
    fn new(n: u64) -> Zipf {
        Zipf { t: 1.0 + (n as f64).ln() }
    }

    fn rank(&self, rng: &mut SplitMix) -> u64 {
        loop {
            let pt = rng.unit() * self.t;
            let inv_b = if pt <= 1.0 { pt } else { (pt - 1.0).exp() };
            let x = (inv_b + 1.0).floor();
            let ratio = if x > 1.0 { inv_b / x } else { 1.0 / x };
            if rng.unit() < ratio {
                return x as u64;
            }
        }
    }
}

/// Draws the cards and amounts of the workload.
pub struct Workload {
    cards: u64,
    skew: Skew,
    zipf: Zipf,
}

impl Workload {
    /// Pays over cards `0 .. cards`, drawn by `skew`.
    pub fn new(cards: u64, skew: Skew) -> Workload {
        Workload { cards, skew, zipf: Zipf::new(cards) }
    }

    /// The next pay.
    pub fn pay(&self, rng: &mut SplitMix) -> Command {
        let card = match self.skew {
            Skew::Uniform => rng.below(self.cards),
            // Rank 1 is card 0: the hottest cards alternate between shards.
            Skew::Zipf => (self.zipf.rank(rng) - 1).min(self.cards - 1),
        };
        Command::Pay { card, amount_minor: 1 + rng.below(PAY_AMOUNT_MAX_MINOR) }
    }

    /// The next `count` pays, as requests without ids.
    pub fn requests(&self, rng: &mut SplitMix, count: usize) -> Vec<Request> {
        (0..count).map(|_| Request::new(self.pay(rng))).collect()
    }
}
