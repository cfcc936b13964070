//! Snapshot and restore throughput on the §11 population: N checking accounts with
//! balance 20_000 and ceiling 10_000.
//!
//! ```text
//! cargo run --release -p plafond --example snapshot_bench
//! PLAFOND_SNAPSHOT_ACCOUNTS=10000000 cargo run --release -p plafond --example snapshot_bench
//! ```
//!
//! Environment: `PLAFOND_SNAPSHOT_ACCOUNTS` (default 1_000_000), `PLAFOND_SNAPSHOT_SHARDS`
//! (default: one per core), `PLAFOND_SNAPSHOT_DURABILITY` of the engine snapshotted
//! (`none` by default, so populating is quick; the restored engine is always durable),
//! `PLAFOND_SNAPSHOT_DIR` (default: a temporary directory), `PLAFOND_SNAPSHOT_MAC=1` to
//! write and restore under an operator key (HMAC-SHA-256 over the file, `--mac-key-file`).
//!
//! Snapshot time covers the cut, encoding, writing and fsync; restore time covers reading
//! and checking the file, writing the data directory, and `Engine::open` until it is
//! ready to serve.

use std::error::Error;
use std::time::Instant;

use plafond::{Durability, Engine, EngineConfig, MacKey, Opening, Progress};
use plafond_snapshots::Terminal;

const ACCOUNTS_DEFAULT: u64 = 1_000_000;

/// Remembers when each phase of a run ended, to say where the time goes.
struct Phases {
    started: Instant,
    ends: Vec<(&'static str, f64)>,
}

impl Phases {
    fn new() -> Phases {
        Phases { started: Instant::now(), ends: Vec::new() }
    }

    fn saw(&mut self, progress: Progress) {
        let now = self.started.elapsed().as_secs_f64();
        match self.ends.last_mut() {
            Some((phase, end)) if *phase == progress.phase => *end = now,
            _ => self.ends.push((progress.phase, now)),
        }
    }

    fn describe(&self) -> String {
        let mut previous = 0.0;
        let mut parts = Vec::new();
        for (phase, end) in &self.ends {
            parts.push(format!("{phase} {:.3} s", end - previous));
            previous = *end;
        }
        parts.join(", ")
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn Error>> {
    match std::env::var(name) {
        Ok(text) => {
            text.replace('_', "").parse().map_err(|_| format!("{name}={text} is not valid").into())
        }
        Err(_) => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let accounts: u64 = env_or("PLAFOND_SNAPSHOT_ACCOUNTS", ACCOUNTS_DEFAULT)?;
    let default_shards = EngineConfig::in_memory().shards;
    let shards: u16 = env_or("PLAFOND_SNAPSHOT_SHARDS", default_shards)?;
    let durability: Durability = env_or("PLAFOND_SNAPSHOT_DURABILITY", Durability::None)?;
    let temporary = tempfile::tempdir()?;
    let dir = match std::env::var_os("PLAFOND_SNAPSHOT_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => temporary.path().to_path_buf(),
    };
    std::fs::create_dir_all(&dir)?;
    // A fixed key: the bench measures what the MAC costs, not how keys are kept.
    let key = match env_or("PLAFOND_SNAPSHOT_MAC", 0u8)? {
        0 => None,
        _ => Some(MacKey::from_bytes(&[0x5a; 32])?),
    };
    let keyed = |config: EngineConfig| match &key {
        Some(key) => config.with_mac_key(key.clone()),
        None => config,
    };
    let config = keyed(
        EngineConfig::durable(dir.join("source"))
            .with_durability(durability)
            .with_shards(shards)
            .with_epoch_poll(None),
    );
    let engine = Engine::open(config)?;
    let region = engine.region_id("eu-west").ok_or("no eu-west region")?;
    let opening = Opening::REFERENCE;
    let started = Instant::now();
    engine.populate(region, accounts, opening, |_| {})?;
    println!(
        "populated {accounts} accounts on {shards} shards in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let audit = engine.audit()?;

    let path = dir.join("bench.plafsnap");
    let (mut phases, mut terminal) = (Phases::new(), Terminal::new("snapshot"));
    let snapshot = engine.snapshot_with_progress(&path, |p| {
        phases.saw(p);
        terminal.show(p);
    })?;
    terminal.finish();
    drop(engine);
    println!(
        "snapshot{}: {} accounts, {} bytes ({:.1} bytes/account), {:.3} s, {:.0} accounts/s",
        if key.is_some() { " (keyed)" } else { "" },
        snapshot.accounts,
        snapshot.bytes,
        snapshot.bytes as f64 / snapshot.accounts.max(1) as f64,
        snapshot.seconds,
        snapshot.accounts_per_second
    );
    println!("  snapshot phases: {}", phases.describe());

    let target = keyed(
        EngineConfig::durable(dir.join("restored")).with_shards(shards).with_epoch_poll(None),
    );
    let (mut phases, mut terminal) = (Phases::new(), Terminal::new("restore"));
    let (restored, report) = Engine::restore_with_progress(&path, None, target, |p| {
        phases.saw(p);
        terminal.show(p);
    })?;
    terminal.finish();
    println!(
        "restore: {} accounts, {:.3} s (of which Engine::open {:.3} s), {:.0} accounts/s",
        report.accounts, report.seconds, report.open_seconds, report.accounts_per_second
    );
    println!("  restore phases: {}", phases.describe());
    let restored_audit = restored.audit()?;
    if restored_audit != audit || !restored_audit.holds() {
        return Err(format!("audit differs: {audit:?} then {restored_audit:?}").into());
    }
    Ok(())
}
