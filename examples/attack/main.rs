//! A hostile crowd for the server, to measure what it does to well-behaved clients (issue
//! 15; docs/BENCHMARKS.md): connections that pipeline `PAY`s and never read a reply,
//! sockets that connect and say nothing, and sockets that trickle a `PING` one byte a
//! second. Every one reconnects as soon as the server drops it.
//!
//! ```sh
//! cargo run --release --example attack -- --port 7379 --pipeliners 500 --idlers 250 \
//!     --tricklers 250 --duration-s 60 [--token T] [--cards 100000]
//! ```
//!
//! Not a test: it measures nothing itself. Run loadgen next to it and compare with a run
//! without it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use plafond_examples::connect::ServerAddress;
use plafond_examples::sample::Rng;
use plafond_server::options::{in_range, number};
use plafond_wire::encode_command;

/// attack: a hostile crowd of connections against a plafond server (for benchmarks).
///
/// Each connection reconnects as soon as it is dropped. Prints what happened every 5 s.
#[derive(Debug, Parser)]
#[command(name = "attack")]
struct AttackArgs {
    /// The server, and the token pipeliners AUTH with first.
    #[command(flatten)]
    server: ServerAddress,
    /// Connections that send PAY <random card> 100 as fast as the server takes them and
    /// never read a reply.
    #[arg(long, value_name = "N", default_value_t = 500,
          value_parser = in_range::<usize>(0, CONNECTIONS_MAX as u64))]
    pipeliners: usize,
    /// Connections that send nothing.
    #[arg(long, value_name = "N", default_value_t = 250,
          value_parser = in_range::<usize>(0, CONNECTIONS_MAX as u64))]
    idlers: usize,
    /// Connections that send PING one byte per second.
    #[arg(long, value_name = "N", default_value_t = 250,
          value_parser = in_range::<usize>(0, CONNECTIONS_MAX as u64))]
    tricklers: usize,
    #[arg(long, value_name = "S", default_value_t = 60, value_parser = number::<u64>)]
    duration_s: u64,
    /// Pipeliners pay cards 0..N-1.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = number::<u64>)]
    cards: u64,
}

/// PAYs written per `write` call of a pipeliner.
const PIPELINE_PAYS: usize = 4096;
/// The most connections of each kind.
const CONNECTIONS_MAX: usize = 10_000;
/// The pause before reconnecting, so a refused crowd does not spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// The pause between two bytes of a trickler.
const TRICKLE_PAUSE: Duration = Duration::from_secs(1);
/// How often progress is printed.
const REPORT_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    connects: AtomicU64,
    drops: AtomicU64,
    bytes: AtomicU64,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("attack: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = AttackArgs::parse();
    let addr = args.server.addr();
    let (pipeliners, idlers, tricklers) = (args.pipeliners, args.idlers, args.tricklers);
    let duration = Duration::from_secs(args.duration_s);
    let cards = args.cards;
    let token = args.server.token()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let counters = Arc::new(Counters::default());
        let mut rng = Rng::new(7);
        let mut tasks = Vec::new();
        for _ in 0..pipeliners {
            let pays = pays(&mut rng, cards, token.as_deref());
            tasks.push(tokio::spawn(reconnecting(addr.clone(), counters.clone(), move |s, c| {
                pipeline(s, c, pays.clone())
            })));
        }
        for _ in 0..idlers {
            tasks.push(tokio::spawn(reconnecting(addr.clone(), counters.clone(), idle)));
        }
        for _ in 0..tricklers {
            tasks.push(tokio::spawn(reconnecting(addr.clone(), counters.clone(), trickle)));
        }
        let started = Instant::now();
        while started.elapsed() < duration {
            tokio::time::sleep(REPORT_EVERY.min(duration.saturating_sub(started.elapsed()))).await;
            eprintln!(
                "attack: {:.0} s: {} connects, {} dropped by the server, {} MB sent",
                started.elapsed().as_secs_f64(),
                counters.connects.load(Ordering::Relaxed),
                counters.drops.load(Ordering::Relaxed),
                counters.bytes.load(Ordering::Relaxed) >> 20
            );
        }
        for task in tasks {
            task.abort();
        }
    });
    Ok(())
}

/// One pipeliner's bytes: an AUTH if there is a token, then `PIPELINE_PAYS` pays.
fn pays(rng: &mut Rng, cards: u64, token: Option<&str>) -> Arc<(Vec<u8>, Vec<u8>)> {
    let mut auth = Vec::new();
    if let Some(token) = token {
        encode_command(&mut auth, &["AUTH", token]);
    }
    let mut bytes = Vec::new();
    for _ in 0..PIPELINE_PAYS {
        let card = rng.below(cards.max(1)).to_string();
        encode_command(&mut bytes, &["PAY", card.as_str(), "100"]);
    }
    Arc::new((auth, bytes))
}

/// Runs `behave` on a fresh connection, again and again.
async fn reconnecting<F, Fut>(addr: String, counters: Arc<Counters>, behave: F)
where
    F: Fn(TcpStream, Arc<Counters>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        if let Ok(stream) = TcpStream::connect(&addr).await {
            counters.connects.fetch_add(1, Ordering::Relaxed);
            behave(stream, counters.clone()).await;
            counters.drops.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

async fn pipeline(mut stream: TcpStream, counters: Arc<Counters>, bytes: Arc<(Vec<u8>, Vec<u8>)>) {
    if stream.write_all(&bytes.0).await.is_err() {
        return;
    }
    while stream.write_all(&bytes.1).await.is_ok() {
        counters.bytes.fetch_add(bytes.1.len() as u64, Ordering::Relaxed);
    }
}

async fn idle(mut stream: TcpStream, _: Arc<Counters>) {
    // Sends nothing; reads only to learn when the server closes it (after its farewell).
    let mut farewell = [0u8; 256];
    while let Ok(1..) = stream.read(&mut farewell).await {}
}

async fn trickle(mut stream: TcpStream, counters: Arc<Counters>) {
    let mut ping = Vec::new();
    encode_command(&mut ping, &["PING"]);
    for byte in ping.iter().cycle() {
        if stream.write_all(&[*byte]).await.is_err() {
            return;
        }
        counters.bytes.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(TRICKLE_PAUSE).await;
    }
}
