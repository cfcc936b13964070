//! The auditor's tool: verifies a log archive, and replays it onto a snapshot to rebuild
//! the state at any archived position (SPEC §7). The archive's format is
//! `docs/ARCHIVE_FORMAT.md`; the work is done by `plafond_shards::archive`.
//!
//! ```text
//! cargo run --release --example audit -- verify --archive DATA/archive [--mac-key-file KEY]
//! cargo run --release --example audit -- replay --snapshot cut.plafsnap --archive DATA/archive \
//!     [--config regions.toml] [--until-ms T | --until-seq SHARD:SEQ ...] [--out state.plafsnap] \
//!     [--mac-key-file KEY]
//! ```
//!
//! Exits non-zero on any damage, on a replayed outcome that differs from the logged one,
//! on a position the archive does not reach, and when conservation does not hold. With
//! `--mac-key-file` (the engine's key, the server's flag of that name), every segment and
//! the snapshot must carry that key's MAC: one without a MAC, or with another key's, is
//! refused; `--out` is then written with the key's MAC too.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Parser, Subcommand};

use plafond::internals::archive::{self, ArchiveInfo, ReplayLimit, ShardArchive};
use plafond::internals::region::Regions;
use plafond::internals::state::{ShardState, Totals};
use plafond::{Audit, MacKey};
use plafond_snapshots::format::WriteOptions;
use plafond_snapshots::{Progress, Snapshot, Terminal};

/// Bytes in a megabyte, for throughput.
const MB_BYTES: f64 = 1e6;

#[derive(Parser)]
#[command(name = "audit", about = "Verify a plafond log archive, or replay it onto a snapshot")]
struct Cli {
    #[command(subcommand)]
    action: Action,
    /// The operator's key (32+ bytes, a file only its owner can read), as the engine ran
    /// with: every archive segment and the snapshot must carry its MAC; any without one,
    /// or with another key's, is refused.
    #[arg(long, value_name = "FILE", global = true)]
    mac_key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Action {
    /// Check every segment of an archive whole, and that no batch is missing.
    Verify {
        /// The archive directory (the engine's --archive-dir).
        #[arg(long)]
        archive: PathBuf,
    },
    /// Rebuild the state at an archived position from a snapshot and the archive after it.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// The snapshot (or a checkpoint written as one) to start from.
    #[arg(long)]
    snapshot: PathBuf,
    /// The archive directory.
    #[arg(long)]
    archive: PathBuf,
    /// The regions file the engine ran with (default: the built-in regions).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Stop each shard before its first batch holding an entry stamped after T (Unix ms).
    #[arg(long, value_name = "T", conflicts_with = "until_seq")]
    until_ms: Option<i64>,
    /// Stop SHARD at log position SEQ (its batches 0 .. SEQ applied); repeatable. Shards
    /// not named replay to the end of their archive.
    #[arg(long, value_name = "SHARD:SEQ", value_parser = parse_position)]
    until_seq: Vec<(u16, u64)>,
    /// Write the rebuilt state as a snapshot file.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

fn parse_position(text: &str) -> Result<(u16, u64), String> {
    let (shard, seq) = text.split_once(':').ok_or("expected SHARD:SEQ, e.g. 0:1500")?;
    let shard = shard.parse().map_err(|e| format!("shard `{shard}`: {e}"))?;
    let seq = seq.parse().map_err(|e| format!("position `{seq}`: {e}"))?;
    Ok((shard, seq))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = load_key(cli.mac_key_file.as_deref()).and_then(|key| match cli.action {
        Action::Verify { archive } => verify(&archive, key.as_ref()),
        Action::Replay(args) => replay(&args, key.as_ref()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("audit: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The key of `--mac-key-file`, read with the engine's rules (owner-only, 32+ bytes).
fn load_key(path: Option<&Path>) -> anyhow::Result<Option<MacKey>> {
    let Some(path) = path else { return Ok(None) };
    let key =
        MacKey::from_file(path).map_err(|e| anyhow!("--mac-key-file {}: {e}", path.display()))?;
    Ok(Some(key))
}

/// Verifies the archive whole (with `key`, every segment's MAC too), showing progress;
/// errors name the damaged file.
fn verified(dir: &Path, key: Option<&MacKey>) -> anyhow::Result<ArchiveInfo> {
    let mut terminal = Terminal::new("audit");
    let info = archive::verify_archive_keyed(dir, key, |_, done, total| {
        terminal.show(Progress { phase: "verify", done, total, unit: "bytes" });
    });
    terminal.finish();
    Ok(info?)
}

fn verify(dir: &Path, key: Option<&MacKey>) -> anyhow::Result<()> {
    let started = Instant::now();
    let info = verified(dir, key)?;
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    let macs = if key.is_some() { ", every one with the key's MAC" } else { "" };
    println!("archive {}: segments of an engine with {} shards{macs}", dir.display(), info.shards);
    for shard in &info.per_shard {
        println!("{}", describe(shard));
    }
    let batches: u64 = info.per_shard.iter().map(ShardArchive::batches).sum();
    let entries: u64 = info.per_shard.iter().map(ShardArchive::entries).sum();
    let bytes: u64 = info.per_shard.iter().map(ShardArchive::file_bytes).sum();
    println!(
        "verified {batches} batches, {entries} entries, {bytes} bytes in {seconds:.3} s \
         ({:.0} batches/s, {:.1} MB/s): ok",
        batches as f64 / seconds,
        bytes as f64 / MB_BYTES / seconds
    );
    Ok(())
}

fn describe(shard: &ShardArchive) -> String {
    let (first_ms, last_ms) = shard.entry_ms_range();
    format!(
        "shard {}: batches {} .. {} ({} batches, {} entries), {} segments, {} bytes, \
         entries stamped {} .. {}",
        shard.shard,
        shard.first_seq(),
        shard.end_seq(),
        shard.batches(),
        shard.entries(),
        shard.segments.len(),
        shard.file_bytes(),
        stamp(first_ms),
        stamp(last_ms),
    )
}

/// A Unix-ms stamp, with its UTC time when it has one.
fn stamp(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(time) => format!("{ms} ({time})"),
        Err(_) => ms.to_string(),
    }
}

fn load_regions(config: Option<&Path>) -> anyhow::Result<Regions> {
    let Some(path) = config else { return Ok(Regions::builtin()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --config {}", path.display()))?;
    Regions::from_toml(&text).map_err(|e| anyhow!("--config {}: {e}", path.display()))
}

fn load_snapshot(path: &Path, key: Option<&MacKey>) -> anyhow::Result<Snapshot> {
    let mut terminal = Terminal::new("audit");
    let snapshot = plafond_snapshots::read_keyed(path, key, |progress| terminal.show(progress));
    terminal.finish();
    snapshot.map_err(|e| anyhow!("snapshot {}: {e}", path.display()))
}

/// Where each shard stops, checked against the snapshot's positions.
fn limits(args: &ReplayArgs, snapshot: &Snapshot) -> anyhow::Result<Vec<ReplayLimit>> {
    let sections = &snapshot.header.sections;
    let mut limits = vec![ReplayLimit { until_seq: None, until_ms: args.until_ms }; sections.len()];
    for &(shard, seq) in &args.until_seq {
        let Some(limit) = limits.get_mut(usize::from(shard)) else {
            bail!("--until-seq {shard}:{seq}: the snapshot has {} shards", sections.len());
        };
        if limit.until_seq.replace(seq).is_some() {
            bail!("--until-seq names shard {shard} twice");
        }
        let position = sections[usize::from(shard)].log_position;
        if seq < position {
            bail!("--until-seq {shard}:{seq} is before the snapshot, which is at {position}");
        }
    }
    Ok(limits)
}

/// Batches the replay will apply at most, for progress.
fn batches_ahead(info: &ArchiveInfo, snapshot: &Snapshot, limits: &[ReplayLimit]) -> u64 {
    let mut total = 0;
    for shard in &info.per_shard {
        let index = usize::from(shard.shard);
        let (Some(section), Some(limit)) = (snapshot.header.sections.get(index), limits.get(index))
        else {
            continue;
        };
        let end = limit.until_seq.map_or(shard.end_seq(), |until| until.min(shard.end_seq()));
        total += end.saturating_sub(section.log_position.max(shard.first_seq()));
    }
    total
}

fn replay(args: &ReplayArgs, key: Option<&MacKey>) -> anyhow::Result<()> {
    let regions = load_regions(args.config.as_deref())?;
    let snapshot = load_snapshot(&args.snapshot, key)?;
    if usize::from(snapshot.header.regions) != regions.len() {
        bail!(
            "the snapshot has {} regions, the configuration {}: pass the --config the engine \
             ran with",
            snapshot.header.regions,
            regions.len()
        );
    }
    let info = verified(&args.archive, key)?;
    if info.shards != snapshot.header.shards {
        bail!(
            "the archive is of {} shards, the snapshot of {}",
            info.shards,
            snapshot.header.shards
        );
    }
    let limits = limits(args, &snapshot)?;
    let total = batches_ahead(&info, &snapshot, &limits);
    let started = Instant::now();
    let mut terminal = Terminal::new("audit");
    let (mut done, mut entries) = (0u64, 0u64);
    let mut rebuilt = Vec::with_capacity(snapshot.states.len());
    let positions: Vec<u64> = snapshot.header.sections.iter().map(|s| s.log_position).collect();
    for ((mut state, position), limit) in snapshot.states.into_iter().zip(positions).zip(limits) {
        let on_batch = |_, n: usize| {
            done += 1;
            entries += n as u64;
            terminal.show(Progress { phase: "replay", done, total, unit: "batches" });
        };
        let reached = archive::replay_shard_keyed(
            &args.archive,
            &mut state,
            position,
            &regions,
            limit,
            key,
            on_batch,
        )?;
        if let Some(until) = limit.until_seq.filter(|&until| until != reached) {
            bail!("shard {}: the archive ends at position {reached}, not {until}", state.shard);
        }
        println!("shard {}: position {position} -> {reached}", state.shard);
        rebuilt.push((state, reached));
    }
    terminal.finish();
    let seconds = started.elapsed().as_secs_f64().max(f64::EPSILON);
    println!(
        "replayed {done} batches, {entries} entries in {seconds:.3} s ({:.0} batches/s, {:.0} \
         entries/s)",
        done as f64 / seconds,
        entries as f64 / seconds
    );
    let holds = summarize(&rebuilt);
    if let Some(out) = &args.out {
        let mut terminal = Terminal::new("audit");
        let options = WriteOptions::now(None);
        let written =
            plafond_snapshots::write_keyed(out, &rebuilt, options, key, &mut |p| terminal.show(p));
        let report = written.map_err(|e| anyhow!("writing {}: {e}", out.display()))?;
        terminal.finish();
        println!("wrote {} ({} bytes)", out.display(), report.bytes);
    }
    if !holds {
        bail!("conservation does not hold in the rebuilt state");
    }
    Ok(())
}

/// Prints accounts, balances, totals and the conservation check; whether it holds.
fn summarize(shards: &[(ShardState, u64)]) -> bool {
    let mut totals = Totals::default();
    let (mut accounts, mut balances_minor) = (0u64, 0u128);
    let (mut refunds_minor, mut captures_minor, mut held_minor) = (0u128, 0u128, 0u128);
    for (state, _) in shards {
        totals.add(&state.totals);
        refunds_minor += state.holds.refunded_minor();
        captures_minor += state.holds.captured_minor();
        held_minor += state.holds.held_minor();
        accounts += state.accounts.len() as u64;
        balances_minor += state.accounts.iter().map(|a| u128::from(a.balance_minor)).sum::<u128>();
    }
    let audit = Audit {
        balances_minor,
        in_flight_minor: totals.in_flight_minor(),
        initial_deposits_minor: totals.initial_deposits_minor,
        deposits_minor: totals.deposits_minor,
        interest_minor: totals.interest_minor,
        card_payments_minor: totals.card_payments_minor,
        refunds_minor,
        captures_minor,
        held_minor,
    };
    let stated_minor = totals.balances_minor;
    println!("accounts {accounts}, sum of balances {balances_minor} (totals say {stated_minor})");
    println!(
        "initial deposits {}, deposits {}, interest {}, card payments {}, transfers out {}, \
         in {}, refunded {}, in flight {}, card refunds {refunds_minor}, captures \
         {captures_minor}, held {held_minor}",
        totals.initial_deposits_minor,
        totals.deposits_minor,
        totals.interest_minor,
        totals.card_payments_minor,
        totals.transfers_out_minor,
        totals.transfers_in_minor,
        totals.refunds_minor,
        audit.in_flight_minor
    );
    let holds = audit.holds() && balances_minor == totals.balances_minor;
    println!(
        "conservation: balances + in flight = {}, initial + deposits + interest + refunds - \
         card payments - captures = {}: {}",
        audit.present_minor(),
        audit.owed_minor(),
        if holds { "ok" } else { "VIOLATED" }
    );
    holds
}
