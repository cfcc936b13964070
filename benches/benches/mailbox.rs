//! The measured choice of the shard runtime: an actix actor or a dedicated thread fed by
//! a crossbeam channel (see `docs/DECISIONS.md`).
//!
//! Same work in every variant: a "shard" owns `ACCOUNTS` balances and receives batches of
//! pay commands `(card, amount)`; it approves a pay when the balance covers it (and
//! debits), and answers each batch with its outcomes on a per-batch reply channel.
//! Producers keep up to `IN_FLIGHT_MAX` batches outstanding each, as engine clients keep
//! several tickets in flight.
//!
//! Variants:
//! - `thread`: a std thread draining a `crossbeam_channel`, reply on a crossbeam channel;
//! - `actix_do_send`: an actix actor in its own `System` thread, producers are plain
//!   threads using `do_send` with a crossbeam reply channel (how the embedded API and the
//!   server's connection threads would call it);
//! - `actix_send`: the same actor, producers run their own actix `System` and
//!   `send(..).await` (actix's own request/response, a oneshot per batch).
//!
//! Run: `cargo bench -p plafond-benches --bench mailbox`.

use std::collections::VecDeque;
use std::thread;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use plafond_benches::SplitMix;

/// Balances the shard owns.
const ACCOUNTS: usize = 1_000_000;
/// Every balance at the start: large, so that most pays are approved and debit.
const BALANCE_START_MINOR: u64 = 1 << 40;
/// Pay amounts are `1 ..= AMOUNT_MAX_MINOR`.
const AMOUNT_MAX_MINOR: u64 = 5_000;
/// Batches one producer keeps outstanding.
const IN_FLIGHT_MAX: usize = 8;
/// Batch sizes measured.
const BATCH_SIZES: [usize; 3] = [1, 64, 4096];
/// Producer thread counts measured.
const PRODUCERS: [usize; 2] = [1, 2];

/// One pay: card index and amount.
#[derive(Clone, Copy)]
struct Pay {
    card: u32,
    amount_minor: u64,
}

type Outcomes = Vec<bool>;

/// The shard's state and its decision: identical in every variant.
struct Balances {
    balances_minor: Vec<u64>,
}

impl Balances {
    fn new() -> Balances {
        Balances { balances_minor: vec![BALANCE_START_MINOR; ACCOUNTS] }
    }

    fn apply(&mut self, pays: &[Pay]) -> Outcomes {
        pays.iter()
            .map(|pay| {
                let balance = &mut self.balances_minor[pay.card as usize];
                let approved = *balance >= pay.amount_minor;
                if approved {
                    *balance -= pay.amount_minor;
                }
                approved
            })
            .collect()
    }
}

/// A batch of `size` random payments.
fn batch(rng: &mut SplitMix, size: usize) -> Vec<Pay> {
    (0..size)
        .map(|_| {
            let bits = rng.next_u64();
            Pay {
                card: ((bits >> 32) % ACCOUNTS as u64) as u32,
                amount_minor: 1 + (bits & 0xffff_ffff) % AMOUNT_MAX_MINOR,
            }
        })
        .collect()
}

/// Commands one criterion iteration sends, over all producers: enough batches that
/// thread start-up is noise, few enough that batch size 1 stays well under a second.
fn commands_per_iteration(batch_size: usize) -> usize {
    (batch_size * 256).clamp(16_384, 262_144)
}

/// Runs `producers` threads that together send `iterations * per_iteration` commands in
/// batches of `batch_size` through `send_batch` and wait for every reply. Returns the
/// elapsed time.
fn drive<S, W>(
    producers: usize,
    batch_size: usize,
    iterations: u64,
    make_sender: impl Fn() -> S,
    run_producer: impl Fn(S, u64, usize, u64) -> W + Sync,
) -> Duration
where
    S: Send,
    W: Send,
{
    let batches_total = iterations * (commands_per_iteration(batch_size) / batch_size) as u64;
    let batches_each = batches_total / producers as u64;
    let started = Instant::now();
    thread::scope(|scope| {
        for producer in 0..producers {
            let sender = make_sender();
            let run_producer = &run_producer;
            scope.spawn(move || run_producer(sender, batches_each, batch_size, producer as u64));
        }
    });
    started.elapsed()
}

/// A producer keeping up to `IN_FLIGHT_MAX` batches outstanding, with crossbeam replies.
fn produce_with_reply_channels(
    send: impl Fn(Vec<Pay>, Sender<Outcomes>),
    batches: u64,
    batch_size: usize,
    seed: u64,
) -> u64 {
    let mut rng = SplitMix(seed + 1);
    let mut waiting: VecDeque<Receiver<Outcomes>> = VecDeque::with_capacity(IN_FLIGHT_MAX);
    let mut approved = 0u64;
    for _ in 0..batches {
        if waiting.len() == IN_FLIGHT_MAX {
            approved += count_approved(waiting.pop_front());
        }
        let (reply_tx, reply_rx) = bounded(1);
        send(batch(&mut rng, batch_size), reply_tx);
        waiting.push_back(reply_rx);
    }
    while let Some(reply) = waiting.pop_front() {
        approved += count_approved(Some(reply));
    }
    approved
}

fn count_approved(reply: Option<Receiver<Outcomes>>) -> u64 {
    let outcomes =
        reply.expect("a batch is in flight").recv().expect("the shard answers every batch");
    outcomes.iter().filter(|&&approved| approved).count() as u64
}

// ---- Variant B: a dedicated thread fed by a crossbeam channel ----

struct ThreadMail {
    pays: Vec<Pay>,
    reply: Sender<Outcomes>,
}

/// A shard thread; it ends when every sender is dropped.
fn start_thread_shard() -> (Sender<ThreadMail>, thread::JoinHandle<()>) {
    // Bounded like the engine's ingress: a full mailbox pushes back on producers.
    let (mail_tx, mail_rx) = bounded::<ThreadMail>(4096);
    let handle = thread::spawn(move || {
        let mut balances = Balances::new();
        for mail in mail_rx {
            let outcomes = balances.apply(&mail.pays);
            let _ = mail.reply.send(outcomes);
        }
    });
    (mail_tx, handle)
}

// ---- Variant A: an actix actor ----

struct ActixShard {
    balances: Balances,
}

impl Actor for ActixShard {
    type Context = Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        // Producers bound themselves with `IN_FLIGHT_MAX`; let `send` not wait on the
        // default 16-message capacity when two producers have 16 batches out.
        context.set_mailbox_capacity(4096);
    }
}

/// A batch answered through actix's own response (`send(..).await`).
struct PayBatch(Vec<Pay>);

impl Message for PayBatch {
    type Result = Outcomes;
}

impl Handler<PayBatch> for ActixShard {
    type Result = MessageResult<PayBatch>;

    fn handle(&mut self, batch: PayBatch, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.balances.apply(&batch.0))
    }
}

/// A batch answered on a crossbeam channel (`do_send` from plain threads).
struct PayBatchTo {
    pays: Vec<Pay>,
    reply: Sender<Outcomes>,
}

impl Message for PayBatchTo {
    type Result = ();
}

impl Handler<PayBatchTo> for ActixShard {
    type Result = ();

    fn handle(&mut self, batch: PayBatchTo, _: &mut Self::Context) {
        let _ = batch.reply.send(self.balances.apply(&batch.pays));
    }
}

/// An actix shard running in its own `System` on its own thread.
struct ActixRunning {
    address: Addr<ActixShard>,
    system: System,
    handle: thread::JoinHandle<()>,
}

fn start_actix_shard() -> ActixRunning {
    let (started_tx, started_rx) = bounded(1);
    let handle = thread::spawn(move || {
        let system = System::new();
        system.block_on(async {
            let address = ActixShard { balances: Balances::new() }.start();
            let _ = started_tx.send((address, System::current()));
        });
        system.run().expect("the actix system runs");
    });
    let (address, system) = started_rx.recv().expect("the actix shard starts");
    ActixRunning { address, system, handle }
}

impl ActixRunning {
    fn stop(self) {
        self.system.stop();
        let _ = self.handle.join();
    }
}

/// A producer in its own actix `System`, using `send(..).await`.
fn produce_with_actix_send(
    address: Addr<ActixShard>,
    batches: u64,
    batch_size: usize,
    seed: u64,
) -> u64 {
    System::new().block_on(async move {
        let mut rng = SplitMix(seed + 1);
        let mut waiting = VecDeque::with_capacity(IN_FLIGHT_MAX);
        let mut approved = 0u64;
        for _ in 0..batches {
            if waiting.len() == IN_FLIGHT_MAX {
                let reply = waiting.pop_front().expect("a batch is in flight");
                approved += count_outcomes(reply.await);
            }
            // `send` queues the message now; the future only waits for the answer.
            waiting.push_back(address.send(PayBatch(batch(&mut rng, batch_size))));
        }
        while let Some(reply) = waiting.pop_front() {
            approved += count_outcomes(reply.await);
        }
        approved
    })
}

fn count_outcomes(outcomes: Result<Outcomes, MailboxError>) -> u64 {
    let outcomes = outcomes.expect("the actix shard answers every batch");
    outcomes.iter().filter(|&&approved| approved).count() as u64
}

fn mailbox(c: &mut Criterion) {
    let mut group = c.benchmark_group("mailbox");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for batch_size in BATCH_SIZES {
        group.throughput(Throughput::Elements(commands_per_iteration(batch_size) as u64));
        for producers in PRODUCERS {
            let parameter = format!("batch{batch_size}/producers{producers}");

            let (mail_tx, shard) = start_thread_shard();
            group.bench_function(BenchmarkId::new("thread", &parameter), |b| {
                b.iter_custom(|iterations| {
                    drive(
                        producers,
                        batch_size,
                        iterations,
                        || mail_tx.clone(),
                        |mail_tx, batches, size, seed| {
                            let send = |pays, reply| {
                                mail_tx
                                    .send(ThreadMail { pays, reply })
                                    .expect("the shard thread runs");
                            };
                            produce_with_reply_channels(send, batches, size, seed)
                        },
                    )
                })
            });
            drop(mail_tx);
            shard.join().expect("the shard thread ends cleanly");

            let actix = start_actix_shard();
            group.bench_function(BenchmarkId::new("actix_do_send", &parameter), |b| {
                b.iter_custom(|iterations| {
                    drive(
                        producers,
                        batch_size,
                        iterations,
                        || actix.address.clone(),
                        |address, batches, size, seed| {
                            let send = |pays, reply| address.do_send(PayBatchTo { pays, reply });
                            produce_with_reply_channels(send, batches, size, seed)
                        },
                    )
                })
            });
            group.bench_function(BenchmarkId::new("actix_send", &parameter), |b| {
                b.iter_custom(|iterations| {
                    drive(
                        producers,
                        batch_size,
                        iterations,
                        || actix.address.clone(),
                        produce_with_actix_send,
                    )
                })
            });
            actix.stop();
        }
    }
    group.finish();
}

criterion_group!(benches, mailbox);
criterion_main!(benches);
