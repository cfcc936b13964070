//! Resident memory per account: opens an in-memory engine, populates the §11 accounts
//! (one profile, one checking account and its card each) and prints the growth of VmRSS
//! divided by the number of accounts.
//!
//! Then it places one open hold (§12, `AUTHORIZE`) on each of the first
//! `PLAFOND_RSS_HOLDS` cards (1_000_000 by default) and prints the growth per hold.
//!
//! Run: `cargo run --release -p plafond-benches --bin rss` (`PLAFOND_RSS_ACCOUNTS` sets
//! how many accounts; 10_000_000 by default).

use std::time::Instant;

use plafond::internals::state::{Account, Profile};
use plafond::{Command, Engine, EngineConfig, Opening, Outcome, Request};

/// Accounts populated unless `PLAFOND_RSS_ACCOUNTS` says otherwise.
const ACCOUNTS_DEFAULT: u64 = 10_000_000;
/// Holds placed unless `PLAFOND_RSS_HOLDS` says otherwise.
const HOLDS_DEFAULT: u64 = 1_000_000;
/// Authorizations per submission.
const HOLDS_PER_SUBMISSION: u64 = 8_192;

/// The process's resident set size in bytes, from `/proc/self/status`.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("a VmRSS line");
    let kib: u64 =
        line.split_whitespace().nth(1).and_then(|field| field.parse().ok()).expect("VmRSS in kB");
    kib * 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let accounts: u64 = match std::env::var("PLAFOND_RSS_ACCOUNTS") {
        Ok(text) => text.parse()?,
        Err(_) => ACCOUNTS_DEFAULT,
    };
    let engine = Engine::open(EngineConfig::in_memory())?;
    let region = engine.region_id("eu-west").ok_or("no eu-west region")?;
    let before_bytes = rss_bytes();
    let started = Instant::now();
    let opening = Opening::REFERENCE;
    engine.populate(region, accounts, opening, |_| {})?;
    let populate_s = started.elapsed().as_secs_f64();
    let after_bytes = rss_bytes();
    let grown_bytes = after_bytes.saturating_sub(before_bytes);
    let audit_ok = engine.audit()?.holds();
    println!("shards                 {}", engine.shards());
    println!("accounts               {accounts}");
    println!(
        "populate               {populate_s:.2} s ({:.0} accounts/s)",
        accounts as f64 / populate_s
    );
    println!("rss before             {:.1} MiB", mib(before_bytes));
    println!("rss after              {:.1} MiB", mib(after_bytes));
    println!(
        "bytes per account      {:.1} (rss growth / accounts)",
        grown_bytes as f64 / accounts as f64
    );
    println!(
        "size_of Account        {} (+ Profile {})",
        std::mem::size_of::<Account>(),
        std::mem::size_of::<Profile>()
    );
    println!("conservation holds     {audit_ok}");
    let holds: u64 = match std::env::var("PLAFOND_RSS_HOLDS") {
        Ok(text) => text.parse()?,
        Err(_) => HOLDS_DEFAULT,
    };
    let holds = holds.min(accounts);
    let before_bytes = rss_bytes();
    let started = Instant::now();
    let mut card = 0;
    while card < holds {
        let end = (card + HOLDS_PER_SUBMISSION).min(holds);
        let requests = (card..end)
            .map(|card| Request::new(Command::Authorize { card, amount_minor: 100 }))
            .collect();
        for outcome in engine.submit(requests)?.wait()? {
            if !matches!(outcome, Outcome::Authorized { .. }) {
                return Err(format!("an authorization was not approved: {outcome:?}").into());
            }
        }
        card = end;
    }
    let holds_s = started.elapsed().as_secs_f64();
    let grown_bytes = rss_bytes().saturating_sub(before_bytes);
    let audit = engine.audit()?;
    println!("holds                  {holds} open, placed in {holds_s:.2} s");
    println!(
        "bytes per open hold    {:.1} (rss growth / holds)",
        grown_bytes as f64 / holds.max(1) as f64
    );
    println!("held                   {} (conservation holds {})", audit.held_minor, audit.holds());
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
