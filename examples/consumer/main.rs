//! plafond's example change-stream consumer (SPEC §13): follows every shard's stream with
//! `XREAD BLOCK`, rebuilds each account's balance and what its holds hold from the entries
//! alone, and keeps its cursors with them in one file, so that it resumes where it stopped.
//!
//! ```text
//! # follow for ever (reconnecting when the server restarts), saving every second:
//! cargo run --release --example consumer -- --port 7379 --ledger ledger.json
//! # read up to the last entry there is now, then print `account balance held` lines:
//! cargo run --release --example consumer -- --port 7379 --ledger ledger.json --catch-up --dump
//! ```
//!
//! Every few seconds, and at exit, it writes one line on stderr:
//! `consumer applied=N entries_per_s=R lag_ms=L` (the age of the newest entry applied; 0
//! once a read waited out its `BLOCK`: nothing is behind).
//! Every balance change is an entry: savings interest comes as `INTEREST` entries with the
//! balance after (an epoch's, or one a command applied first), and a hold's expiry as an
//! `EXPIRE` entry, so savings accounts and held money are exact too.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;

use plafond_examples::connect::ServerAddress;
use plafond_server::options::number;
use plafond_server::streams::STREAM_REPLY_ENTRIES_MAX;
use plafond_wire::{Client, Token, Tokens, Value};

use plafond_examples::ledger::{Cursor, Ledger};

/// How long the consumer waits for a reply beyond its `BLOCK`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest pause between two attempts to reach a server that is away.
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(2);

/// plafond consumer: follow the change stream and rebuild the balances.
#[derive(Debug, Parser)]
#[command(name = "consumer")]
struct ConsumerArgs {
    #[command(flatten)]
    server: ServerAddress,
    /// The ledger file: cursors and balances, read at start, written atomically.
    #[arg(long, value_name = "FILE", required_unless_present = "count_only")]
    ledger: Option<PathBuf>,
    /// Entries asked for per stream and read (the server caps it).
    #[arg(long, default_value_t = 2000, value_parser = number::<usize>)]
    count: usize,
    /// How long one `XREAD BLOCK` waits for new entries.
    #[arg(long, default_value_t = 1000, value_parser = number::<u64>)]
    block_ms: u64,
    /// While it keeps up, wait this long after a read that was not full before the next:
    /// fewer, larger reads cost the server and the consumer less, for this much lag.
    #[arg(long, default_value_t = 10, value_parser = number::<u64>)]
    pause_ms: u64,
    /// How often the ledger is saved while following (and always at exit).
    #[arg(long, default_value_t = 1000, value_parser = number::<u64>)]
    save_every_ms: u64,
    /// Read up to the last entry each stream has when it starts, save, and exit.
    #[arg(long)]
    catch_up: bool,
    /// Without a ledger to resume from, start after the last entry each stream has now
    /// (`$`) instead of at the first retained: follow what happens from now on.
    #[arg(long, conflicts_with = "catch_up")]
    from_end: bool,
    /// How often the progress line is written on stderr.
    #[arg(long, default_value_t = 5000, value_parser = number::<u64>)]
    progress_every_ms: u64,
    /// At exit, print every account as `account balance held` on stdout.
    #[arg(long)]
    dump: bool,
    /// Apply nothing and keep no file: only read, count and move the cursors (measures
    /// reading the streams; with --catch-up, from the start to the end).
    #[arg(long, conflicts_with_all = ["ledger", "dump"])]
    count_only: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("consumer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = ConsumerArgs::parse();
    let token = args.server.token()?;
    let stop = stop_on_signal()?;
    let mut client = connect(&args, token.as_deref(), &stop)?;
    let shards = stream_ends(&mut client)?.len();
    let loaded = match &args.ledger {
        Some(path) => Ledger::load(path)?,
        None => None,
    };
    let mut ledger = match loaded {
        Some(ledger) if ledger.shards.len() == shards => ledger,
        Some(ledger) => {
            bail!("the ledger follows {} streams, the server has {shards}", ledger.shards.len())
        }
        None => {
            let mut ledger = Ledger::new(shards);
            if args.from_end {
                let ends = stream_ends(&mut client)?;
                for (shard, end) in ledger.shards.iter_mut().zip(ends) {
                    shard.cursor = end;
                }
            }
            ledger
        }
    };
    let save = |ledger: &Ledger| match &args.ledger {
        Some(path) => ledger.save(path),
        None => Ok(()),
    };
    let targets = if args.catch_up { Some(stream_ends(&mut client)?) } else { None };
    let mut progress = Progress::new(ledger.applied);
    let mut saved = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(targets) = &targets {
            let behind = ledger.shards.iter().zip(targets).any(|(s, end)| s.cursor < *end);
            if !behind {
                break;
            }
        }
        match read_once(&mut client, &args, &mut ledger, &mut progress) {
            Ok(full) => {
                if !full && targets.is_none() {
                    std::thread::sleep(Duration::from_millis(args.pause_ms));
                }
            }
            // A signal interrupted the read: the loop stops.
            Err(ReadError::Connection(_)) if stop.load(Ordering::Relaxed) => break,
            Err(ReadError::Connection(error)) => {
                eprintln!("consumer: {error}; reconnecting");
                client = connect(&args, token.as_deref(), &stop)?;
            }
            Err(ReadError::Other(error)) => {
                save(&ledger)?;
                return Err(error);
            }
        }
        if saved.elapsed() >= Duration::from_millis(args.save_every_ms) {
            save(&ledger)?;
            saved = Instant::now();
        }
        progress.report_every(Duration::from_millis(args.progress_every_ms), ledger.applied);
    }
    save(&ledger)?;
    progress.report(ledger.applied);
    if args.dump {
        let held = ledger.held();
        for (account, balance) in &ledger.balances {
            println!("{account} {balance} {}", held.get(account).copied().unwrap_or(0));
        }
    }
    Ok(())
}

/// Why one read did not go through.
enum ReadError {
    /// The server is away (restarting): connect again and resume.
    Connection(plafond_wire::ClientError),
    /// A refusal or an entry the ledger cannot apply: stop.
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ReadError {
    fn from(error: anyhow::Error) -> ReadError {
        ReadError::Other(error)
    }
}

/// One `XREAD BLOCK` over every stream, its entries applied; whether some stream gave as
/// many as were asked for (more are waiting). The reply is read in place as it arrives, a
/// part at a time (its header, each stream's, each entry), each tokenized once: no value
/// and no allocation per entry, only the field list reused from entry to entry.
fn read_once(
    client: &mut Client,
    args: &ConsumerArgs,
    ledger: &mut Ledger,
    progress: &mut Progress,
) -> Result<bool, ReadError> {
    let shards = ledger.shards.len();
    let mut command: Vec<String> = vec!["XREAD".into(), "COUNT".into(), args.count.to_string()];
    command.extend(["BLOCK".into(), args.block_ms.to_string(), "STREAMS".into()]);
    command.extend((0..shards).map(|shard| format!("changes:{shard}")));
    command.extend(ledger.shards.iter().map(|shard| shard.cursor.to_string()));
    client.send_command(&command).map_err(ReadError::Connection)?;
    let streams = part(client, |tokens| match tokens.next_token().map_err(wire)? {
        Token::Nil => Ok(None),
        Token::Array(streams) => Ok(Some(streams)),
        Token::Error(error) => {
            let error = String::from_utf8_lossy(error);
            Err(anyhow::anyhow!("the server refused XREAD: {error}").into())
        }
        other => Err(anyhow::anyhow!("XREAD answered {other:?}").into()),
    })?;
    let Some(streams) = streams else {
        progress.caught_up();
        return Ok(false);
    };
    let mut full = false;
    // The field list, empty between entries, so that it borrows nothing past its part.
    let mut stash: Vec<(&'static str, &'static str)> = Vec::with_capacity(32);
    for _ in 0..streams {
        let (shard, entries) = part(client, |tokens| {
            if tokens.array().map_err(wire)? != 2 {
                return Err(malformed("a stream's name and entries").into());
            }
            let name = text(tokens.bulk().map_err(wire)?)?;
            let shard: usize = name
                .strip_prefix("changes:")
                .and_then(|shard| shard.parse().ok())
                .ok_or_else(|| malformed("a stream name"))?;
            Ok((shard, tokens.array().map_err(wire)?))
        })?;
        // The server caps each stream's part of a reply: that many is full too.
        full |= entries >= args.count.min(STREAM_REPLY_ENTRIES_MAX / shards.max(1));
        for _ in 0..entries {
            let ts_ms = part(client, |tokens| {
                let mut fields = reuse(&mut stash);
                let ts_ms = apply_entry(ledger, shard, tokens, &mut fields, args.count_only);
                stash = reuse(&mut fields);
                ts_ms
            })?;
            progress.saw(ts_ms);
        }
    }
    Ok(full)
}

/// Reads the next part of the reply with `read` ([`Client::read_part`]).
fn part<T>(
    client: &mut Client,
    read: impl FnMut(&mut Tokens<'_>) -> Result<T, ReadError>,
) -> Result<T, ReadError> {
    client.read_part(read).map_err(ReadError::Connection)?
}

/// `fields` emptied, to hold borrows of another lifetime: the same allocation (collecting
/// a vector's iterator into one of the same layout reuses it), so reading an entry
/// allocates nothing.
fn reuse<'b>(fields: &mut Vec<(&str, &str)>) -> Vec<(&'b str, &'b str)> {
    fields.clear();
    // Empty: the map is never called; it only gives the elements their new lifetime.
    std::mem::take(fields).into_iter().map(|_| ("", "")).collect()
}

fn malformed(what: &str) -> anyhow::Error {
    anyhow::anyhow!("XREAD's reply is not what Redis sends: {what}")
}

fn wire(error: plafond_wire::ProtocolError) -> ReadError {
    ReadError::Other(anyhow::anyhow!("XREAD's reply: {error}"))
}

/// Applies the next `[id, [field, value, ...]]` of `tokens` (or with `count_only` only
/// moves past it), once all its fields are read into `fields` (empty); returns its time.
/// Nothing is applied before the entry has all arrived, so that a part cut short is read
/// again.
fn apply_entry<'a>(
    ledger: &mut Ledger,
    shard: usize,
    tokens: &mut Tokens<'a>,
    fields: &mut Vec<(&'a str, &'a str)>,
    count_only: bool,
) -> Result<i64, ReadError> {
    if tokens.array().map_err(wire)? != 2 {
        return Err(malformed("an entry's id and fields").into());
    }
    let id = Cursor::parse(text(tokens.bulk().map_err(wire)?)?)?;
    let values = tokens.array().map_err(wire)?;
    if values % 2 != 0 {
        return Err(malformed("a field without its value").into());
    }
    for _ in 0..values / 2 {
        let name = text(tokens.bulk().map_err(wire)?)?;
        fields.push((name, text(tokens.bulk().map_err(wire)?)?));
    }
    let ts_ms = fields.iter().find(|(name, _)| *name == "ts").and_then(|(_, ts)| ts.parse().ok());
    if count_only {
        ledger.skip(shard, id)?;
    } else {
        ledger.apply(shard, id, fields)?;
    }
    Ok(ts_ms.unwrap_or(0))
}

/// A field's name or value as text (the server sends ASCII).
fn text(bytes: &[u8]) -> anyhow::Result<&str> {
    Ok(std::str::from_utf8(bytes)?)
}

/// The last id of every stream, from `STREAMS.INFO`.
fn stream_ends(client: &mut Client) -> anyhow::Result<Vec<Cursor>> {
    let Value::Array(streams) = client.call(&["STREAMS.INFO"])? else {
        bail!("STREAMS.INFO did not answer an array");
    };
    let mut ends = Vec::with_capacity(streams.len());
    for stream in streams {
        let Value::Array(pairs) = stream else { bail!("STREAMS.INFO: a stream is not a map") };
        let last = pairs.chunks(2).find_map(|pair| match pair {
            [Value::Bulk(key), Value::Bulk(value)] if key == b"last_id" => Some(value.clone()),
            _ => None,
        });
        let last = last.context("STREAMS.INFO: a stream without last_id")?;
        ends.push(Cursor::parse(&String::from_utf8_lossy(&last))?);
    }
    Ok(ends)
}

/// Connects, waiting (longer each time, up to [`RECONNECT_PAUSE_MAX`]) while the server is
/// away, until it answers or a signal stops the consumer.
fn connect(args: &ConsumerArgs, token: Option<&str>, stop: &AtomicBool) -> anyhow::Result<Client> {
    let timeout = REPLY_TIMEOUT + Duration::from_millis(args.block_ms);
    let mut pause = Duration::from_millis(50);
    loop {
        let attempt = Client::connect(args.server.addr(), timeout).and_then(|mut client| {
            if let Some(token) = token {
                client.auth(token)?;
            }
            Ok(client)
        });
        match attempt {
            Ok(client) => return Ok(client),
            Err(plafond_wire::ClientError::AuthRefused(error)) => bail!("AUTH refused: {error}"),
            Err(error) if stop.load(Ordering::Relaxed) => return Err(error.into()),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
            }
        }
    }
}

/// A flag SIGTERM and SIGINT set, so that the consumer saves its ledger and stops.
fn stop_on_signal() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    let (mut terminate, mut interrupt) = runtime.block_on(async {
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let flag = stop.clone();
    std::thread::Builder::new().name("consumer-signals".into()).spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        });
        flag.store(true, Ordering::Relaxed);
    })?;
    Ok(stop)
}

/// The progress line: entries applied, their rate, and the age of the newest.
struct Progress {
    started: Instant,
    applied_at_start: u64,
    last_report: Instant,
    newest_ts_ms: i64,
    /// Whether the last read waited out its `BLOCK` without an entry: nothing is behind.
    caught_up: bool,
}

impl Progress {
    fn new(applied: u64) -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            applied_at_start: applied,
            last_report: now,
            newest_ts_ms: 0,
            caught_up: false,
        }
    }

    fn saw(&mut self, ts_ms: i64) {
        self.newest_ts_ms = self.newest_ts_ms.max(ts_ms);
        self.caught_up = false;
    }

    fn caught_up(&mut self) {
        self.caught_up = true;
    }

    fn report_every(&mut self, interval: Duration, applied: u64) {
        if self.last_report.elapsed() >= interval {
            self.report(applied);
        }
    }

    fn report(&mut self, applied: u64) {
        self.last_report = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = (applied - self.applied_at_start) as f64 / secs;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let behind = self.newest_ts_ms > 0 && !self.caught_up;
        let lag_ms = if behind { now_ms - self.newest_ts_ms } else { 0 };
        eprintln!("consumer applied={applied} entries_per_s={rate:.0} lag_ms={lag_ms}");
    }
}
