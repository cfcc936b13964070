//! Pieces the engine's integration tests share. Each test file includes what it uses
//! with `mod support;`, so some items are unused in some files.
#![allow(dead_code)]

use std::time::Duration;

/// xorshift64*: tiny, seeded, reproducible, no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced: xorshift would stay at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0 .. n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform enough in `low ..= high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// One of `items` (not empty).
    pub fn pick(&mut self, items: &[u64]) -> u64 {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Ends the whole test process if a test hangs (a ticket that never resolves, a cut that
/// never completes): a hang must fail, not stall CI. Dropping it disarms it.
pub struct Watchdog {
    _disarm: std::sync::mpsc::Sender<()>,
}

/// Arms a [`Watchdog`] for `test`, firing after `limit`.
pub fn watchdog(test: &'static str, limit: Duration) -> Watchdog {
    let (disarm, armed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if armed.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            eprintln!("{test} did not finish within {limit:?}: something hangs");
            std::process::exit(1);
        }
    });
    Watchdog { _disarm: disarm }
}

/// Opens a profile in `region`; returns it.
pub fn open_profile(engine: &plafond::Engine, region: plafond::RegionId) -> u64 {
    use plafond::{Command, Outcome};
    match engine.run(Command::OpenProfile { region }).unwrap() {
        Outcome::ProfileOpened { profile } => profile,
        other => panic!("a profile opens: {other:?}"),
    }
}

/// Opens an account of `kind` in `profile`, on its region's terms; returns the account and
/// its card (a checking account's has the account's id).
pub fn open_account(
    engine: &plafond::Engine,
    profile: u64,
    kind: plafond::AccountKind,
) -> (u64, Option<u64>) {
    use plafond::{Command, Outcome};
    match engine.run(Command::OpenAccount { profile, kind, opening: None }).unwrap() {
        Outcome::AccountOpened { account, card } => (account, card),
        other => panic!("an account opens: {other:?}"),
    }
}

/// Opens a profile in `region` and a checking account in it, on its region's terms;
/// returns the account (its card has the same id).
pub fn open_checking(engine: &plafond::Engine, region: &str) -> u64 {
    let region = engine.region_id(region).expect("a built-in region");
    let profile = open_profile(engine, region);
    open_account(engine, profile, plafond::AccountKind::Checking).0
}
