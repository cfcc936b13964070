//! Rate mode (`--rate`): open loop, paced by a thread's ticks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::AsyncWriteExt;

use plafond_wire::{encode_command, AsyncClient, ReplyReader, Value};

use crate::args::RATE_MIN_PER_S;
use crate::server::encode_pay;
use crate::tally::{count_reply, Tally};
use crate::workload::{Picker, Shared, DAY_MS};

// ---------------------------------------------------------------------------------------
// Rate mode (`--rate`): open loop. Payments are due on a fixed schedule whatever the server
// does; a connection sends all that are due (catching up in a burst when late) while it
// reads replies, so a slow server shows as latency instead of as a slower client.

/// When one connection's payments are due: the `k`-th at `first + k × interval`. Connection
/// `i` of `C` starts `i / rate` after the others' origin, so together they are due evenly at
/// `rate` (one every `1 / rate`), not in bursts of `C`.
pub struct Schedule {
    pub first: Instant,
    pub interval_s: f64,
    /// Payments of this schedule sent so far: the next one due is number `sent`.
    pub sent: u64,
}

impl Schedule {
    pub fn new(rate_per_s: f64, index: usize, connections: usize, origin: Instant) -> Schedule {
        debug_assert!(rate_per_s >= RATE_MIN_PER_S && index < connections);
        let offset = Duration::from_secs_f64(index as f64 / rate_per_s);
        Schedule { first: origin + offset, interval_s: connections as f64 / rate_per_s, sent: 0 }
    }

    /// When payment `k` is due; `None` if beyond any clock (never).
    pub fn due_at(&self, k: u64) -> Option<Instant> {
        let after = Duration::try_from_secs_f64(k as f64 * self.interval_s).ok()?;
        self.first.checked_add(after)
    }

    /// How many payments not yet sent are due by `now`.
    pub fn due_by(&self, now: Instant) -> u64 {
        match self.due_at(self.sent) {
            Some(next) if next <= now => {
                let elapsed_s = now.duration_since(self.first).as_secs_f64();
                let due_total = (elapsed_s / self.interval_s) as u64 + 1;
                // Rounding must not hide the one `due_at` says is due, or the loop would
                // wake for it again and again without sending it.
                due_total.saturating_sub(self.sent).max(1)
            }
            _ => 0,
        }
    }
}

/// A request sent in rate mode whose reply has not arrived yet, in sending order.
pub enum Awaiting {
    Advance,
    Pay { due: Instant, amount: u64 },
}

/// One connection's rate-mode state: the schedule, what is in flight, what is to be written.
pub struct Pacer {
    pub schedule: Schedule,
    /// `--pipeline`: the most payments in flight; when reached, sending waits for replies.
    pub in_flight_max: u64,
    pub in_flight: u64,
    pub deadline: Instant,
    /// False once the deadline passed or the `--ops` budget is spent.
    pub sending: bool,
    /// At most `in_flight_max` payments plus their `CLOCK.ADVANCE`s.
    pub awaiting: VecDeque<Awaiting>,
    pub output: Vec<u8>,
    /// How much of `output` is written (the socket may take it in parts).
    pub written: usize,
}

impl Pacer {
    pub fn new(schedule: Schedule, in_flight_max: usize, deadline: Instant) -> Pacer {
        Pacer {
            schedule,
            in_flight_max: in_flight_max as u64,
            in_flight: 0,
            deadline,
            sending: true,
            awaiting: VecDeque::with_capacity(in_flight_max * 2),
            output: Vec::with_capacity(in_flight_max * 40),
            written: 0,
        }
    }

    /// Queues every payment due by `now` that the in-flight cap allows.
    pub fn queue_due(
        &mut self,
        now: Instant,
        shared: &Shared,
        picker: &mut Picker,
        tally: &mut Tally,
        clock_works: bool,
    ) {
        if !self.sending {
            return;
        }
        if now >= self.deadline {
            self.sending = false;
            return;
        }
        let want = self.schedule.due_by(now).min(self.in_flight_max - self.in_flight);
        if want == 0 {
            return;
        }
        let (count, days) = shared.claim(want);
        if count == 0 {
            self.sending = false;
            return;
        }
        if clock_works && days > 0 {
            encode_command(
                &mut self.output,
                &["CLOCK.ADVANCE", &(DAY_MS * days as i64).to_string()],
            );
            self.awaiting.push_back(Awaiting::Advance);
        }
        for _ in 0..count {
            // `due_by` counted this payment as due, so its time is a real instant.
            let due = self.schedule.due_at(self.schedule.sent).unwrap_or(now);
            self.schedule.sent += 1;
            tally.record_schedule_lag(due, now);
            let amount = encode_pay(&mut self.output, picker, &mut Vec::new());
            self.awaiting.push_back(Awaiting::Pay { due, amount });
        }
        self.in_flight += count;
    }

    /// When to wake to send the next payment: `None` while the cap is reached (a reply
    /// wakes the loop instead) or once sending is over.
    pub fn wake_at(&self) -> Option<Instant> {
        if !self.sending || self.in_flight >= self.in_flight_max {
            return None;
        }
        // A schedule beyond any clock: wake at the deadline, which ends sending.
        Some(
            self.schedule
                .due_at(self.schedule.sent)
                .map_or(self.deadline, |at| at.min(self.deadline)),
        )
    }

    pub fn unwritten(&self) -> &[u8] {
        &self.output[self.written..]
    }

    pub fn wrote(&mut self, bytes: usize) {
        self.written += bytes;
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
    }

    /// Matches the replies read so far with what was sent; returns the payments answered.
    pub fn take_replies(
        &mut self,
        replies: &mut ReplyReader,
        tally: &mut Tally,
    ) -> anyhow::Result<u64> {
        // All replies of one read arrived together.
        let replied = Instant::now();
        let mut answered = 0;
        while let Some(reply) = replies.next_reply()? {
            match self.awaiting.pop_front() {
                Some(Awaiting::Pay { due, amount }) => {
                    tally.record_latency_from_due(due, replied);
                    count_reply(tally, &reply, amount);
                    answered += 1;
                }
                Some(Awaiting::Advance) => {
                    if let Value::Error(error) = reply {
                        bail!("CLOCK.ADVANCE refused: {error}");
                    }
                }
                None => bail!("the server sent a reply to no request"),
            }
        }
        self.in_flight -= answered;
        Ok(answered)
    }

    pub fn finished(&self) -> bool {
        // Everything queued is awaited, so nothing awaited means nothing left to write.
        !self.sending && self.awaiting.is_empty()
    }
}

/// How often the pacing ticker wakes the paced connections.
pub const PACING_TICK: Duration = Duration::from_micros(100);

/// Wakes every paced connection each [`PACING_TICK`] or so. tokio's timers fire on a
/// millisecond wheel, so a payment due between two of its ticks would be sent up to 1 ms
/// late, and that lag counts in its latency; a thread's `sleep` is finer (about 100 µs
/// plus the kernel's timer slack) and costs one wake-up per tick, not a spinning core.
pub struct PacingTicker {
    pub tick: Arc<tokio::sync::Notify>,
    pub stop: Arc<AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl PacingTicker {
    pub fn start() -> anyhow::Result<PacingTicker> {
        let tick = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_tick, thread_stop) = (tick.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("loadgen-pacing".into())
            .spawn(move || {
                while !thread_stop.load(Ordering::Relaxed) {
                    std::thread::sleep(PACING_TICK);
                    thread_tick.notify_waiters();
                }
            })
            .context("cannot start the pacing thread")?;
        Ok(PacingTicker { tick, stop, thread: Some(thread) })
    }
}

impl Drop for PacingTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Rate mode: sends on the pacer's schedule, writes and reads concurrently (a burst of
/// sends never waits for replies to be read, and the other way round), and sleeps until the
/// next pacing tick: the machine may be shared with the server, so no busy waiting.
pub async fn paced_worker(
    mut conn: AsyncClient,
    shared: Arc<Shared>,
    mut picker: Picker,
    mut pacer: Pacer,
    tick: Arc<tokio::sync::Notify>,
    clock_works: bool,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let (mut reader, mut writer, replies) = conn.split();
    let timer = tokio::time::sleep_until(pacer.deadline.into());
    tokio::pin!(timer);
    loop {
        pacer.queue_due(Instant::now(), &shared, &mut picker, &mut tally, clock_works);
        if pacer.finished() {
            break;
        }
        let wake_at = pacer.wake_at();
        if let Some(at) = wake_at {
            timer.as_mut().reset(at.into());
        }
        let awaiting = !pacer.awaiting.is_empty();
        let unwritten = !pacer.unwritten().is_empty();
        tokio::select! {
            read = replies.fill_async(&mut reader), if awaiting => {
                read?;
                let approved_before = tally.approved;
                let answered = pacer.take_replies(replies, &mut tally)?;
                shared.done.fetch_add(answered, Ordering::Relaxed);
                shared.approved.fetch_add(tally.approved - approved_before, Ordering::Relaxed);
            }
            // `write` is cancel-safe: when another branch wins, nothing was written.
            wrote = writer.write(pacer.unwritten()), if unwritten => match wrote? {
                0 => bail!("the server closed the connection"),
                bytes => pacer.wrote(bytes),
            },
            () = &mut timer, if wake_at.is_some() => {}
            () = tick.notified(), if wake_at.is_some() => {}
            // Not finished means something is awaited, so the read branch is enabled.
            else => bail!("rate mode stalled with nothing to send, write or read"),
        }
    }
    Ok(tally)
}
