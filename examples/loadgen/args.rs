//! The load generator's command line, parsed by clap.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use plafond::Durability;
use plafond_examples::connect::ServerAddress;
use plafond_examples::faultproxy::Profile;
use plafond_server::options::{in_range, number};

/// The most connections, threads and pipeline depth accepted: all stay within reason.
pub const CONNECTIONS_MAX: usize = 4096;
pub const PIPELINE_MAX: usize = 65_536;
/// The range of `--rate`: the top is far above what one machine can send, yet keeps a
/// connection's schedule exact in `f64` seconds; below the bottom it is no load test.
pub const RATE_MIN_PER_S: f64 = 1.0;
const RATE_MAX_PER_S: f64 = 100_000_000.0;

/// plafond loadgen: the reference workload (SPEC §11).
///
/// With --ids unique every payment carries a command id of its own (32 hex digits), as real
/// card authorizations do; the engine then remembers each one for its region's retention.
///
/// Runs until --ops payments are done or --duration-s has passed. Prints progress on
/// stderr once a second, then latencies, outcome counts, the conservation check, and a last
/// line `summary key=value ...`.
///
/// Without --rate the server run is closed-loop: each connection sends --pipeline payments,
/// waits for their replies, and sends the next ones, as fast as the server answers. With
/// --rate OPS_PER_S (server only) it is open-loop: payments are due on a fixed schedule,
/// OPS_PER_S in total spread evenly over the connections, and each connection sends every
/// payment that is due while it reads replies as they come; --pipeline then caps the
/// payments in flight per connection. Latency runs from when a payment was due, not from
/// when it was sent, so time spent waiting behind a slow server counts (no coordinated
/// omission). How late payments were sent is reported as `schedule lag`: waits for the
/// --pipeline cap, and the client's pacing tick (a thread wakes the connections about
/// every 100-200 us; it sleeps rather than spins). A run that falls more than 5 % short of
/// the rate gets a warning.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen")]
pub struct LoadgenArgs {
    /// Against a running server, or an engine in this process.
    #[arg(long, value_enum, default_value_t = Target::Server)]
    pub target: Target,
    /// Cards (the server must hold exactly these: start it with --populate <cards>).
    #[arg(long, default_value_t = 100_000, value_parser = in_range::<u64>(1, u64::MAX))]
    pub cards: u64,
    /// Payments to run (default 10 × cards).
    #[arg(long, value_parser = number::<u64>)]
    pub ops: Option<u64>,
    /// Stop after this many seconds at most.
    #[arg(long, default_value_t = 60.0, value_parser = number::<f64>)]
    pub duration_s: f64,
    /// Cards Zipf-distributed with exponent S instead of uniform.
    #[arg(long, value_name = "S", value_parser = number::<f64>)]
    pub zipf: Option<f64>,
    #[arg(long, default_value_t = 42, value_parser = number::<u64>)]
    pub seed: u64,
    /// The business day advances every this many payments (default: cards).
    #[arg(long, value_parser = number::<u64>)]
    pub day_every: Option<u64>,
    /// none, or unique: every payment carries a command id of its own.
    #[arg(long, value_enum, default_value_t = Ids::None)]
    pub ids: Ids,
    /// `pay`: one `PAY` per payment; `hold` (server, closed loop): `AUTHORIZE`, then
    /// `CAPTURE.FINAL` of a random part of it once approved (SPEC §12's two messages).
    #[arg(long, value_enum, default_value_t = Flow::Pay)]
    pub flow: Flow,
    /// Server: its address (for the day to advance, start it with --clock manual).
    #[command(flatten)]
    pub server: ServerAddress,
    #[arg(long, default_value_t = 16,
          value_parser = in_range::<usize>(1, CONNECTIONS_MAX as u64))]
    pub connections: usize,
    /// Payments per round trip (closed loop), or in flight per connection (rate mode).
    #[arg(long, default_value_t = 64, value_parser = in_range::<usize>(1, PIPELINE_MAX as u64))]
    pub pipeline: usize,
    /// Open loop: payments per second over all connections (server only).
    #[arg(long, value_name = "OPS_PER_S", allow_negative_numbers = true, value_parser = rate)]
    pub rate: Option<f64>,
    /// Server: the payments' connections go through an in-process fault proxy of this
    /// network profile (none, lan, fibre, 4g, 3g, 2g: docs/BENCHMARKS.md), so latency and
    /// throughput are what clients on that network see. The checks go direct.
    #[arg(long, value_name = "PROFILE", value_parser = |name: &str| Profile::named(name))]
    pub network: Option<Profile>,
    /// Embedded: the engine's data directory (needed unless --durability none).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, value_name = "MODE", default_value = "none",
          value_parser = |text: &str| text.parse::<Durability>())]
    pub durability: Durability,
    #[arg(long, value_name = "N", value_parser = number::<u16>)]
    pub shards: Option<u16>,
    /// Embedded: submitting threads.
    #[arg(long, default_value_t = 4, value_parser = in_range::<usize>(1, CONNECTIONS_MAX as u64))]
    pub threads: usize,
    /// Embedded: commands per submission.
    #[arg(long, default_value_t = 256, value_parser = in_range::<u64>(1, PIPELINE_MAX as u64))]
    pub batch: u64,
}

/// `--target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Server,
    Embedded,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Server => "server",
            Target::Embedded => "embedded",
        }
    }
}

/// `--flow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    Pay,
    Hold,
}

/// `--ids`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ids {
    None,
    Unique,
}

/// `--rate`: payments per second, in `RATE_MIN_PER_S ..= RATE_MAX_PER_S`. The message
/// repeats the flag and its value, as the operator typed them.
fn rate(text: &str) -> Result<f64, String> {
    let refused = || {
        format!("--rate {text}: give the payments per second, {RATE_MIN_PER_S} to {RATE_MAX_PER_S}")
    };
    let rate: f64 = number(text).map_err(|_| refused())?;
    // `f64` parsing also accepts `inf` and `NaN`, which the range check refuses too.
    if !(RATE_MIN_PER_S..=RATE_MAX_PER_S).contains(&rate) {
        return Err(refused());
    }
    Ok(rate)
}
