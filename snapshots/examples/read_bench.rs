//! How long reading and checking a snapshot or checkpoint file takes (every checksum, every
//! state decoded and checked), and optionally rewriting it in this build's format version.
//!
//! ```text
//! cargo run --release -p plafond-snapshots --example read_bench -- FILE [RUNS] [--rewrite OUT]
//! ```
//!
//! With a version 2 file, `--rewrite` writes the same states as version 3, so the two
//! versions' read times can be compared on the same states by the same build.

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

/// Runs when none is given.
const RUNS_DEFAULT: usize = 3;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let file = PathBuf::from(args.next().ok_or("usage: read_bench FILE [RUNS] [--rewrite OUT]")?);
    let mut runs = RUNS_DEFAULT;
    let mut rewrite = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rewrite" => rewrite = Some(PathBuf::from(args.next().ok_or("--rewrite OUT")?)),
            other => runs = other.parse().map_err(|_| format!("{other} is not a run count"))?,
        }
    }
    let mut seconds = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        let snapshot = plafond_snapshots::read(&file, |_| {})?;
        seconds.push(started.elapsed().as_secs_f64());
        last = Some(snapshot);
    }
    let snapshot = last.ok_or("no run")?;
    seconds.sort_by(f64::total_cmp);
    println!(
        "version {} shards {} accounts {} bytes {} read seconds {:?} median {:.3}",
        snapshot.header.version,
        snapshot.header.shards,
        snapshot.accounts(),
        std::fs::metadata(&file)?.len(),
        seconds,
        seconds[seconds.len() / 2]
    );
    if let Some(out) = rewrite {
        let shards: Vec<_> = snapshot.shards().map(|(state, at)| (state.clone(), at)).collect();
        let report = plafond_snapshots::write(&out, &shards, |_| {})?;
        println!("rewrote {} ({} bytes) in {:.3} s", out.display(), report.bytes, report.seconds);
    }
    Ok(())
}
