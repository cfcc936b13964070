//! plafond's TCP server as a library: the Redis protocol (RESP2, RESP3 after `HELLO 3`) in
//! front of an embedded engine (SPEC §9).
//!
//! [`run`] serves an engine on a listener until a shutdown future resolves, in the spirit
//! of mini-redis's `server::run(listener, shutdown)`; the `server` program only turns its
//! flags ([`options::ServerArgs`]) into an engine and a [`ServerConfig`] ([`open::open`])
//! and calls it. Tests do the same in-process on a port-0 listener.
//!
//! Each connection ([`connection`]) runs one loop: read what the client sent, parse every
//! complete request in the buffer into a batch, send the batch's engine commands on, and
//! write the replies of earlier batches, in order, as they are answered. The batches of
//! connections that are ready at the same time travel to the engine as one submission
//! ([`combiner`]): the engine pays its fixed costs (channel hand-offs, wake-ups, group
//! commit) per submission, not per command or per connection.
//!
//! This crate knows commands, not bytes: RESP is `plafond_wire`'s.

pub mod access;
pub mod budget;
pub mod clock;
pub mod combiner;
pub mod commands;
mod connection;
pub mod descriptors;
pub mod epochs;
pub mod holds;
pub mod limits;
pub mod metrics;
pub mod open;
pub mod options;
mod page;
pub mod rejoin;
pub mod slots;
pub mod snapshot_dir;
pub mod stats;
pub mod streams;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use plafond::Engine;
use plafond_wire::{Encoder, Protocol};

use crate::budget::Budget;
use crate::clock::ServerClock;
use crate::combiner::Combiner;
use crate::connection::Connection;
use crate::descriptors::{AcceptBackoff, Descriptors, DESCRIPTORS_RESERVED};
use crate::limits::ConnectionLimits;
use crate::slots::Slots;
use crate::snapshot_dir::SnapshotDir;
use crate::stats::Sampler;

pub use crate::limits::SHUTDOWN_GRACE;
use crate::limits::{REFUSALS_IN_FLIGHT_MAX, REFUSAL_WRITE_TIMEOUT};

/// What a server serves with, besides its engine and listener.
pub struct ServerConfig {
    /// The manual clock `CLOCK.*` moves, or the guarded system clock; the engine must have
    /// been opened with its [`ServerClock::clock`].
    pub clock: ServerClock,
    /// Clients must `AUTH` with it first, if set.
    pub token: Option<String>,
    /// Where `SNAPSHOT` writes, and how many it keeps.
    pub snapshots: SnapshotDir,
    pub limits: ConnectionLimits,
    /// Where `GET /metrics` is served (`--metrics-port`), if anywhere; bound by the caller,
    /// as the main listener is.
    pub metrics: Option<TcpListener>,
}

/// Why [`run`] could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "the descriptor limit ({limit}) leaves no room for connections beyond the {open} \
         open: raise `ulimit -n`"
    )]
    NoDescriptors { limit: u64, open: u64 },
}

/// What every connection shares.
struct Shared {
    engine: Arc<Engine>,
    clock: ServerClock,
    token: Option<Vec<u8>>,
    sampler: Sampler,
    /// Gathers the engine requests of connections ready at the same time.
    combiner: Arc<Combiner>,
    snapshots: SnapshotDir,
    /// The global bound on queued commands and buffered bytes of all connections.
    budget: Arc<Budget>,
    limits: ConnectionLimits,
    slots: Arc<Slots>,
    /// Stream replies being read or written (`streams::STREAM_REPLIES_IN_FLIGHT_MAX`).
    stream_replies: Arc<Semaphore>,
    /// The stream commands' encoded entries and blocked readers.
    streams: Arc<streams::Streams>,
    /// Requests on the metrics port taking a cut now (`limits::HTTP_CUTS_IN_FLIGHT_MAX`).
    http_cuts: Arc<Semaphore>,
}

impl Shared {
    /// What the server counts itself, for `/metrics`.
    fn server_gauges(&self) -> metrics::ServerGauges {
        metrics::ServerGauges {
            connections: self.slots.held(),
            queued_commands: self.budget.pooled(),
            buffered_bytes: self.budget.buffered(),
            submissions: self.combiner.counts(),
            stream_blocked_readers: self.streams.blocked.count(),
            replica: self.engine.replication().map(|status| status.view()),
        }
    }
}

/// Serves `engine` on `listener` until `shutdown` resolves, then stops the epochs, lets
/// every connection finish what it started (at most [`SHUTDOWN_GRACE`]) and returns. The
/// engine itself is the caller's to drop, which flushes the log.
pub async fn run(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    config: ServerConfig,
) -> Result<(), ServeError> {
    let slots = Slots::new(connection_limit(config.limits.max_connections)?);
    let shared = Arc::new(Shared {
        combiner: Combiner::new(engine.clone()),
        engine,
        clock: config.clock,
        token: config.token.map(String::into_bytes),
        sampler: Sampler::default(),
        snapshots: config.snapshots,
        budget: Arc::new(Budget::default()),
        limits: config.limits,
        slots: slots.clone(),
        stream_replies: Arc::new(Semaphore::new(streams::STREAM_REPLIES_IN_FLIGHT_MAX)),
        streams: Arc::default(),
        http_cuts: Arc::new(Semaphore::new(crate::limits::HTTP_CUTS_IN_FLIGHT_MAX)),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = config.metrics.map(|listener| {
        tokio::spawn(metrics::serve(listener, shared.clone(), shutdown_rx.clone()))
    });
    // Refusals get a task each: they are bounded so that a flood of them cannot hold
    // descriptors the slots do not count.
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT_MAX));
    let mut backoff = AcceptBackoff::default();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors, typically: wait, longer each time, instead
                        // of spinning, and say so now and then rather than 20 times a second.
                        let (pause, line) = backoff.failed(&error, Instant::now());
                        if let Some(line) = line {
                            eprintln!("{line}");
                        }
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                backoff.succeeded();
                admit(stream, &shared, &slots, &refusals, &shutdown_rx, &mut tasks);
            }
        }
    }
    drop(listener);
    // A catch-up of epochs may be years long: it stops at its next chunk, and resumes
    // after a restart.
    shared.engine.stop_epochs();
    eprintln!("shutting down: finishing {} connection(s)", tasks.len());
    let _ = shutdown_tx.send(true);
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        eprintln!("server: connections still busy after {SHUTDOWN_GRACE:?}; dropping them");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if let Some(metrics) = metrics {
        // A scrape in progress is let finish; the listener is closed.
        if tokio::time::timeout(SHUTDOWN_GRACE, metrics).await.is_err() {
            eprintln!("server: the metrics listener did not stop within {SHUTDOWN_GRACE:?}");
        }
    }
    Ok(())
}

/// `--max-connections`, lowered to what the descriptor limit allows (raised to its hard
/// limit first); says which on stderr.
fn connection_limit(wanted: usize) -> Result<usize, ServeError> {
    // Each connection holds one descriptor.
    let descriptors = Descriptors::probe(wanted as u64 * 2);
    let limit = descriptors.connections(wanted);
    if limit == 0 {
        return Err(ServeError::NoDescriptors { limit: descriptors.limit, open: descriptors.open });
    }
    let why = if limit < wanted { "fewer than --max-connections: " } else { "" };
    eprintln!(
        "server: at most {limit} connections ({why}descriptor limit {}, {} open at start, {} \
         reserved)",
        descriptors.limit, descriptors.open, DESCRIPTORS_RESERVED
    );
    Ok(limit)
}

/// Gives an accepted connection a slot and its task, or tells it there is none.
fn admit(
    mut stream: TcpStream,
    shared: &Arc<Shared>,
    slots: &Arc<Slots>,
    refusals: &Arc<Semaphore>,
    shutdown: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    let Ok((slot, eviction)) = slots.admit() else {
        let Ok(permit) = refusals.clone().try_acquire_owned() else { return };
        tasks.spawn(async move {
            let mut bytes = Vec::new();
            Encoder { out: &mut bytes, protocol: Protocol::Resp2 }
                .error("ERR max number of clients reached");
            let refusal = stream.write_all(&bytes);
            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, refusal).await;
            drop(permit);
        });
        return;
    };
    let _ = stream.set_nodelay(true);
    let connection = Connection::new(stream, shared.clone(), slot, eviction, shutdown.clone());
    let shutdown = shutdown.clone();
    tasks.spawn(connection.run(shutdown));
}
