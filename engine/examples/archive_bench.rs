//! Log archive throughput: a durable engine with N cards takes a snapshot, then runs M
//! payments (each with a unique command id, as real authorizations carry); its log after
//! the snapshot is then archived into segment files, verified, and replayed onto the
//! snapshot.
//!
//! ```text
//! cargo run --release -p plafond --example archive_bench
//! PLAFOND_ARCHIVE_PAYS=3000000 cargo run --release -p plafond --example archive_bench
//! ```
//!
//! Environment: `PLAFOND_ARCHIVE_CARDS` (default 100_000), `PLAFOND_ARCHIVE_PAYS` (default
//! 1_000_000), `PLAFOND_ARCHIVE_SHARDS` (default 2), `PLAFOND_ARCHIVE_IDS` (1: every pay
//! has a command id, the default; 0: none), `PLAFOND_ARCHIVE_DIR` (default: a temporary
//! directory; set it to keep the snapshot and the archive for `audit`).

use std::error::Error;
use std::time::Instant;

use plafond::internals::archive::{self, ReplayLimit};
use plafond::internals::store::Store;
use plafond::{Command, CommandId, Engine, EngineConfig, Opening, Request, Ticket};

/// Pays per submission: about one shard batch each.
const SUBMISSION_PAYS: u64 = 4096;
/// Submissions in flight, so that group commit has work while one is fsynced.
const SUBMISSIONS_IN_FLIGHT: usize = 8;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Box<dyn Error>> {
    match std::env::var(name) {
        Ok(text) => {
            text.replace('_', "").parse().map_err(|_| format!("{name}={text} is not valid").into())
        }
        Err(_) => Ok(default),
    }
}

/// Runs `pays` payments of 1 on the cards `0 .. cards` in turn.
fn pay(engine: &Engine, cards: u64, pays: u64, ids: bool) -> Result<(), Box<dyn Error>> {
    let mut in_flight: std::collections::VecDeque<Ticket> = Default::default();
    for start in (0..pays).step_by(SUBMISSION_PAYS as usize) {
        let requests = (start..pays.min(start + SUBMISSION_PAYS))
            .map(|n| {
                let command = Command::Pay { card: n % cards, amount_minor: 1 };
                match ids {
                    true => Request::with_id(command, CommandId::new(&format!("p{n}")).unwrap()),
                    false => Request::new(command),
                }
            })
            .collect();
        in_flight.push_back(engine.submit(requests)?);
        if in_flight.len() >= SUBMISSIONS_IN_FLIGHT {
            in_flight.pop_front().map(Ticket::wait).transpose()?;
        }
    }
    for ticket in in_flight {
        ticket.wait()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let cards: u64 = env_or("PLAFOND_ARCHIVE_CARDS", 100_000)?;
    let pays: u64 = env_or("PLAFOND_ARCHIVE_PAYS", 1_000_000)?;
    let shards: u16 = env_or("PLAFOND_ARCHIVE_SHARDS", 2)?;
    let ids = env_or::<u8>("PLAFOND_ARCHIVE_IDS", 1)? == 1;
    let temporary = tempfile::tempdir()?;
    let dir = match std::env::var_os("PLAFOND_ARCHIVE_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => temporary.path().to_path_buf(),
    };
    let (data, archive_dir) = (dir.join("data"), dir.join("archive"));
    let snapshot_path = dir.join("start.plafsnap");
    let config = EngineConfig::durable(&data).with_shards(shards).with_epoch_poll(None);
    let engine = Engine::open(config)?;
    let region = engine.region_id("eu-west").ok_or("no eu-west region")?;
    let opening = Opening { deposit_minor: 1 << 40, ceiling_minor: 1 << 40 };
    engine.populate(region, cards, opening, |_| {})?;
    let snapshot = engine.snapshot(&snapshot_path)?;
    let started = Instant::now();
    pay(&engine, cards, pays, ids)?;
    let pay_seconds = started.elapsed().as_secs_f64();
    println!("{pays} pays (ids: {ids}) on {cards} cards, {shards} shards in {pay_seconds:.2} s");
    let final_totals = engine.cut(|state| (state.totals, state.accounts.len()))?;
    drop(engine);

    let store = Store::open(&data, shards)?;
    let started = Instant::now();
    let (mut batches, mut bytes) = (0, 0);
    for shard in 0..shards {
        let from_seq = snapshot.log_positions[usize::from(shard)];
        let end_seq = store.read_log(shard, from_seq, |_, _| Ok(()))?;
        for segment in archive::archive_range(&store, shard, from_seq, end_seq, &archive_dir)? {
            batches += segment.batches();
            bytes += segment.file_bytes;
        }
    }
    report("archive (read RocksDB, write, fsync, read back)", batches, bytes, pays, started);
    drop(store);

    let started = Instant::now();
    archive::verify_archive(&archive_dir)?;
    report("verify_archive", batches, bytes, pays, started);

    let started = Instant::now();
    let read = plafond_snapshots::read(&snapshot_path, |_| {})?;
    let positions: Vec<u64> = read.header.sections.iter().map(|s| s.log_position).collect();
    let regions = plafond::Regions::builtin();
    for (shard, (mut state, position)) in read.states.into_iter().zip(positions).enumerate() {
        let limit = ReplayLimit::default();
        archive::replay_shard(&archive_dir, &mut state, position, &regions, limit, |_, _| {})?;
        if (state.totals, state.accounts.len()) != final_totals[shard] {
            return Err(format!("shard {shard}: the replayed totals differ").into());
        }
    }
    report("replay_shard (read, check, decode, apply)", batches, bytes, pays, started);
    Ok(())
}

fn report(what: &str, batches: u64, bytes: u64, pays: u64, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    println!(
        "{what}: {batches} batches, {bytes} bytes in {seconds:.3} s: {:.0} batches/s, {:.1} MB/s, \
         {:.2}M pays/s",
        batches as f64 / seconds,
        bytes as f64 / 1e6 / seconds,
        pays as f64 / 1e6 / seconds
    );
}
