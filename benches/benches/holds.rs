//! The hold table of one shard (§12) on one thread: what a checkpoint's capture of it
//! costs on the shard's thread at N holds, and what placing, capturing and voiding a hold
//! cost, with no capture outstanding and while one is (a checkpoint being written: the
//! table's first change of each shared part copies it).
//!
//! It needs the core only, so it builds without RocksDB:
//! `cargo bench -p plafond-benches --no-default-features --bench holds`.
//! `PLAFOND_BENCH_HOLDS` (default 1_000_000) sets N.

use std::hint::black_box;
use std::time::{Duration, Instant};

use plafond_core::holds::Holds;

/// The business day the holds are placed on, and the day they expire at.
const DAY: i32 = 100;
const EXPIRES_DAY: i32 = DAY + 7;
/// What each hold authorizes; a capture takes part of it, a void the rest.
const AMOUNT_MINOR: u64 = 100;
const CAPTURED_MINOR: u64 = 30;
/// Best of this many captures.
const CAPTURES: usize = 5;
/// Visits every hold once in a scattered order (prime, so coprime with N unless N is a
/// multiple of it): the operations touch the table as random holds' commands do.
const STRIDE: u64 = 999_983;

fn ns_each(elapsed: Duration, ops: u64) -> f64 {
    elapsed.as_nanos() as f64 / ops.max(1) as f64
}

/// Places `ops` holds on accounts from `first_account`, captures part of `ops` placed
/// holds in a scattered order from `from`, then voids the rest of them; prints each.
fn operations(holds: &mut Holds, label: &str, first_account: u32, from: u64, ops: u64, n: u64) {
    let started = Instant::now();
    for account in first_account..first_account + ops as u32 {
        black_box(holds.place(account, DAY, EXPIRES_DAY, AMOUNT_MINOR));
    }
    let place = ns_each(started.elapsed(), ops);
    let seqs: Vec<u64> = (from..from + ops).map(|i| i * STRIDE % n).collect();
    let started = Instant::now();
    for &seq in &seqs {
        holds.capture(seq, CAPTURED_MINOR, false, None);
    }
    let capture = ns_each(started.elapsed(), ops);
    let started = Instant::now();
    for &seq in &seqs {
        holds.void(seq, AMOUNT_MINOR - CAPTURED_MINOR, None);
    }
    let void = ns_each(started.elapsed(), ops);
    println!(
        "holds/ops ({label}): place {place:.0} ns, capture {capture:.0} ns, void {void:.0} ns \
         each ({ops} of each, table of {} holds)",
        holds.len()
    );
}

/// The process's resident memory in bytes (Linux), to tell what a hold weighs.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 =
        line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

fn main() {
    let n = std::env::var("PLAFOND_BENCH_HOLDS")
        .ok()
        .and_then(|text| text.replace('_', "").parse().ok())
        .unwrap_or(1_000_000u64)
        .clamp(8, u64::from(u32::MAX) / 2);
    // One open hold on each of N accounts, as the hold flow at 1M cards leaves them.
    let mut holds = Holds::default();
    let resident_before = resident_bytes();
    let started = Instant::now();
    for account in 0..n as u32 {
        holds.place(account, DAY, EXPIRES_DAY, AMOUNT_MINOR);
    }
    println!(
        "holds/fill: {n} holds placed in {:.3} s ({:.0} ns each)",
        started.elapsed().as_secs_f64(),
        ns_each(started.elapsed(), n)
    );
    if let (Some(before), Some(after)) = (resident_before, resident_bytes()) {
        let per_hold = after.saturating_sub(before) as f64 / n as f64;
        println!("holds/memory: {per_hold:.1} resident bytes per open hold");
    }

    // What `ShardState::begin_capture` does to the holds on the shard's thread.
    let mut best = Duration::MAX;
    for _ in 0..CAPTURES {
        let started = Instant::now();
        let captured = black_box(holds.clone());
        best = best.min(started.elapsed());
        drop(captured);
    }
    println!("holds/capture: {:.3} µs at {n} holds (best of {CAPTURES})", best.as_secs_f64() * 1e6);

    let ops = (n / 4).min(200_000);
    operations(&mut holds, "no capture outstanding", n as u32, 0, ops, n);
    let outstanding = holds.clone();
    operations(&mut holds, "a capture outstanding", (n + ops) as u32, ops, ops, n);
    black_box(outstanding.len());
}
