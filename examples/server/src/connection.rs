//! One client connection: read, parse every complete request into a batch, send the
//! batch's engine commands on through the combiner, and write the replies of earlier
//! batches, in order, as they are answered.
//!
//! Memory per connection is bounded: the parser buffers at most one partial request, a
//! batch has at most [`PIPELINE_COMMANDS_MAX`] commands, at most [`IN_FLIGHT_BATCHES_MAX`]
//! batches wait for their answers, and the loop reads no more while they are all out, so
//! a client that sends without reading stalls only itself (TCP flow control does the
//! rest).
//!
//! Once the storage refuses a write (disk full, I/O error), the engine acknowledges nothing
//! more: every command, `PING` included, gets `-ERR STORAGE <reason>`, and `STATS` shows
//! the failure instead of numbers that were never all made durable. A restart, once space
//! is back, recovers every acknowledged outcome.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use plafond::{Engine, Health, Request};
use plafond_wire::{Encoder, Frame, Protocol, ProtocolError, RequestParser};

use crate::budget::Share;
use crate::combiner::{Answer, Lane, Pending};
use crate::commands::{self, Action, Local};
use crate::epochs;
use crate::slots::{Eviction, Slot};
use crate::stats;
use crate::streams;
use crate::Shared;

use crate::limits::{
    ANONYMOUS_BATCH_COMMANDS_MAX, AUTH_FAILURES_MAX, AUTH_FAILURE_DELAY, BUDGET_RETRY,
    CONNECTION_COMMANDS_FLOOR, IN_FLIGHT_BATCHES_MAX, KEPT_COMMANDS_CAPACITY, OUTPUT_FLUSH_BYTES,
    PIPELINE_COMMANDS_MAX, READ_BUFFER_BYTES_MAX, READ_CHUNK_BYTES, REFUSALS_BEFORE_AUTH_MAX,
    YIELD_AFTER_COMMANDS,
};

/// A reply waiting for its turn in the batch.
enum Reply {
    /// Encoded already: the bytes of the batch's `staged` up to this offset.
    Ready { end: usize },
    /// The outcome of the next engine request of the batch.
    Engine,
}

/// A batch whose replies are not written yet: built from one read, sent to the engine,
/// answered in order.
#[derive(Default)]
struct Batch {
    /// Replies in request order.
    replies: Vec<Reply>,
    /// Replies that needed no engine, encoded, waiting for the engine replies before them.
    staged: Vec<u8>,
}

/// A batch sent to the engine (or needing none), waiting for its turn to be written.
struct InFlight {
    batch: Batch,
    /// How its engine outcomes are encoded (a later `HELLO` does not change them).
    protocol: Protocol,
    /// The engine's answer; `None` if the batch had no engine request.
    pending: Option<Pending>,
    /// Its commands, given back to the budget once answered.
    commands: usize,
    /// The combiner's lane it went in (see `lane`).
    lane: Lane,
}

/// One client connection.
///
/// Its loop reads, parses every complete request, and sends them as one batch, without
/// waiting for the batches before it: up to [`IN_FLIGHT_BATCHES_MAX`] are in flight, and
/// their replies are written in order as the engine answers. A request that arrives while
/// earlier ones wait for their fsync is sent at once, not after them. Commands that read
/// or move server state (HELLO, the clock, stats, snapshots, epochs) first wait for every
/// batch before them, so a pipeline behaves as if sent one command at a time.
pub(crate) struct Connection {
    stream: TcpStream,
    server: Arc<Shared>,
    parser: RequestParser,
    /// Bytes read; those before `parsed` are parsed already.
    input: Vec<u8>,
    parsed: usize,
    /// Whether the last parse stopped for want of bytes (not at the allowance).
    parser_wants_more: bool,
    protocol: Protocol,
    authenticated: bool,
    /// Set by `QUIT` or a lost framing: close once the replies are written.
    closing: bool,
    /// The requests of the last read, parsed. Like every buffer here it is reused from
    /// batch to batch, so a connection in its steady state allocates nothing per request.
    actions: Vec<Action>,
    /// The batch being built, and the engine's share of it.
    building: Batch,
    requests: Vec<Request>,
    in_flight: VecDeque<InFlight>,
    /// Emptied batches, for reuse.
    spare: Vec<Batch>,
    out: Vec<u8>,
    /// This connection's part of the global budget of queued commands and buffers.
    share: Share,
    /// Its connection slot: anonymous until it authenticates (or, without a token, sends
    /// its first request), then counted among the authenticated.
    slot: Slot,
    /// Resolves if a newer anonymous connection needs this one's slot.
    eviction: Eviction,
    connected_at: Instant,
    /// When the last complete request arrived (or the connection, before any).
    last_request: Instant,
    /// Fires at the auth deadline or idle deadline, whichever is first. Deadlines only
    /// move later, so it is reset only when it fires early, not on every request.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    auth_failures: u32,
    /// Commands refused with `NOAUTH` so far.
    refusals_before_auth: u32,
    /// Set after too many of them: nothing more is read or parsed.
    muted: bool,
    /// The server's shutdown, for an `XREAD BLOCK` to return at.
    shutdown: watch::Receiver<bool>,
    /// Whether the last read filled all the room it had: the client had sent more than
    /// one chunk, so it is ahead of its replies (see `lane`).
    last_read_filled: bool,
}

/// Why a connection's timer closes it.
enum Expired {
    Auth,
    Idle,
}

impl Connection {
    pub(crate) fn new(
        stream: TcpStream,
        server: Arc<Shared>,
        slot: Slot,
        eviction: Eviction,
        shutdown: watch::Receiver<bool>,
    ) -> Connection {
        let authenticated = server.token.is_none();
        let now = Instant::now();
        let limits = server.limits;
        let first = now + limits.auth_timeout.min(limits.idle_timeout);
        let share = server.budget.share();
        Connection {
            stream,
            server,
            parser: RequestParser::new(),
            input: Vec::new(),
            parsed: 0,
            parser_wants_more: true,
            protocol: Protocol::Resp2,
            authenticated,
            closing: false,
            actions: Vec::new(),
            building: Batch::default(),
            requests: Vec::new(),
            in_flight: VecDeque::new(),
            spare: Vec::new(),
            out: Vec::new(),
            share,
            slot,
            eviction,
            connected_at: now,
            last_request: now,
            deadline: Box::pin(tokio::time::sleep_until(first.into())),
            auth_failures: 0,
            refusals_before_auth: 0,
            muted: false,
            shutdown,
            last_read_filled: false,
        }
    }

    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut stopping = *shutdown.borrow();
        loop {
            self.report_buffered();
            let batch_max = if self.slot.is_anonymous() {
                ANONYMOUS_BATCH_COMMANDS_MAX
            } else {
                PIPELINE_COMMANDS_MAX
            };
            let allowance = self.share.allowance().min(batch_max);
            if !self.muted && self.in_flight.len() < IN_FLIGHT_BATCHES_MAX && allowance > 0 {
                let lost = self.parse_input(allowance);
                if !self.actions.is_empty() {
                    let commands = self.actions.len();
                    if self.execute().await.is_err() {
                        return;
                    }
                    if commands >= YIELD_AFTER_COMMANDS {
                        tokio::task::yield_now().await;
                    }
                    if self.closing {
                        let _ = self.drain().await;
                        return;
                    }
                    continue;
                }
                if let Some(error) = lost {
                    // The framing is lost: answer what came before, say why, then close
                    // (Redis does the same).
                    if self.drain().await.is_ok() {
                        self.encoder().error(&format!("ERR {error}"));
                        let _ = self.write_out().await;
                    }
                    return;
                }
            }
            if self.write_answered().await.is_err() {
                return;
            }
            // Over its share of the queued commands, or its buffers full, a connection
            // reads no more until an answer of its own frees some: TCP flow control then
            // slows its client, and it alone.
            let has_room = !self.muted
                && self.in_flight.len() < IN_FLIGHT_BATCHES_MAX
                && self.input.len() < READ_BUFFER_BYTES_MAX
                && self.share.allowance() > 0;
            // Complete requests still wait in the input (the last parse stopped at the
            // allowance): reading more would only buffer more.
            let requests_waiting = self.parsed < self.input.len() && !self.parser_wants_more;
            if (stopping || (!has_room && !self.muted)) && self.in_flight.is_empty() {
                return;
            }
            if has_room && requests_waiting {
                // Room again (batches that needed no engine were written): parse on.
                continue;
            }
            let budget_allows = self.share.may_buffer_more();
            let can_read = !stopping && has_room && budget_allows && !requests_waiting;
            // With nothing of its own in flight no answer will wake it: look again soon.
            let retry = !stopping && !budget_allows && self.in_flight.is_empty();
            if retry {
                // Over the floor while all buffers are full: give back what is idle, so
                // that it falls under its floor and reads again (after the others).
                self.release_idle_buffers();
            }
            if can_read {
                // What is left is one partial request: move it to the front, then make
                // room for exactly one chunk, so the buffer stays within a request and a
                // chunk. `read_buf` fills the spare capacity without zeroing it first.
                self.input.drain(..self.parsed);
                self.parsed = 0;
                self.input.reserve_exact(READ_CHUNK_BYTES);
            }
            let anonymous = self.slot.is_anonymous();
            // `write_answered` finished every front batch that needed no engine, so the
            // front one, if any, waits for the engine.
            let front = self.in_flight.front_mut().and_then(|batch| batch.pending.as_mut());
            let waiting = front.is_some();
            tokio::select! {
                biased;
                Some(answer) = answer_of(front), if waiting => self.finish_front(Some(answer)),
                read = self.stream.read_buf(&mut self.input), if can_read => match read {
                    // The client sent all it will: what it sent whole is answered if it
                    // still reads. A half-sent request is dropped with the connection.
                    Ok(0) => {
                        let _ = self.drain().await;
                        return;
                    }
                    // Gone (reset): nobody will read the replies, so the batches not yet
                    // handed to the engine are dropped with their answers' receivers.
                    Err(_) => return,
                    Ok(read) => self.last_read_filled = read >= READ_CHUNK_BYTES,
                },
                _ = shutdown.changed(), if !stopping => stopping = true,
                _ = &mut self.eviction, if anonymous => {
                    return self.farewell("ERR too many unauthenticated connections").await;
                }
                () = &mut self.deadline => match self.expired() {
                    Some(Expired::Auth) => {
                        return self.farewell("ERR authentication timeout").await;
                    }
                    Some(Expired::Idle) => return self.farewell("ERR idle timeout").await,
                    None => {}
                },
                () = tokio::time::sleep(BUDGET_RETRY), if retry => {}
            }
        }
    }

    /// Frees the buffers that hold nothing now.
    fn release_idle_buffers(&mut self) {
        if self.parsed == self.input.len() {
            self.input = Vec::new();
            self.parsed = 0;
        }
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if self.building.staged.is_empty() {
            self.building.staged = Vec::new();
        }
        self.spare.clear();
        self.report_buffered();
    }

    /// Reports this connection's buffers to the budget.
    fn report_buffered(&mut self) {
        let bytes = self.input.capacity() + self.out.capacity() + self.building.staged.capacity();
        self.share.set_buffered(bytes);
    }

    /// When the timer fires: which deadline passed, if any; otherwise sets it anew.
    fn expired(&mut self) -> Option<Expired> {
        let limits = self.server.limits;
        let now = Instant::now();
        let auth_deadline = self.connected_at + limits.auth_timeout;
        if self.slot.is_anonymous() && now >= auth_deadline {
            return Some(Expired::Auth);
        }
        let idle_deadline = self.last_request + limits.idle_timeout;
        if self.in_flight.is_empty() && now >= idle_deadline {
            return Some(Expired::Idle);
        }
        // A connection waiting for its answers is not idle: look again a timeout later.
        let mut next = idle_deadline.max(now + limits.idle_timeout.min(limits.write_timeout));
        if self.slot.is_anonymous() {
            next = next.min(auth_deadline);
        }
        self.deadline.as_mut().reset(next.into());
        None
    }

    /// Writes what is ready and a last error, then the connection closes.
    async fn farewell(&mut self, error: &str) {
        self.encoder().error(error);
        let _ = self.write_out().await;
    }

    /// Parses the complete requests in the input (at most `allowance`) into `actions`,
    /// takes them from the budget, and returns the protocol error that stopped the parse,
    /// if any.
    fn parse_input(&mut self, allowance: usize) -> Option<ProtocolError> {
        let regions = self.server.engine.regions();
        let mut at = self.parsed;
        let mut lost = None;
        self.parser_wants_more = false;
        while self.actions.len() < allowance {
            match self.parser.next(&self.input[at..]) {
                Ok(step) => {
                    at += step.consumed;
                    match step.frame {
                        Some(Frame::Args(args)) => {
                            self.actions.push(commands::parse(args.as_slice(), regions));
                        }
                        Some(Frame::TooLarge) => self.actions.push(Action::Error(format!(
                            "ERR request too large (at most {} bytes in {} arguments)",
                            plafond_wire::FRAME_BYTES_MAX,
                            plafond_wire::FRAME_ARGS_MAX
                        ))),
                        None if step.consumed == 0 => {
                            self.parser_wants_more = true;
                            break;
                        }
                        None => {}
                    }
                }
                Err(error) => {
                    lost = Some(error);
                    break;
                }
            }
        }
        // Consumed bytes are dropped lazily (before the next read), not moved on every parse:
        // a connection over its allowance parses a few commands at a time.
        self.parsed = at;
        if self.parsed == self.input.len() {
            self.input.clear();
            self.parsed = 0;
        }
        if !self.actions.is_empty() {
            self.share.take(self.actions.len());
            self.last_request = Instant::now();
            // Without a token, a first complete request is what proves a connection.
            if self.server.token.is_none() && !self.slot.authenticate() {
                self.closing = true;
            }
        }
        lost
    }

    fn encoder(&mut self) -> Encoder<'_> {
        Encoder { out: &mut self.out, protocol: self.protocol }
    }

    /// Runs the parsed requests as one batch; its engine requests go out together.
    async fn execute(&mut self) -> std::io::Result<()> {
        let mut actions = std::mem::take(&mut self.actions);
        self.requests.reserve(actions.len());
        // Once per read: the health only ever goes from ok to failed.
        let storage_failed = storage_failure(&self.server.engine);
        // Likewise once per read: a replica that does not lead refuses what it cannot decide.
        let refusal = self.server.engine.replication().and_then(|status| status.refusal());
        let mut unanswered = actions.len();
        for action in actions.drain(..) {
            if self.closing || self.muted {
                break;
            }
            unanswered -= 1;
            if !self.authenticated && !action.allowed_before_auth() {
                self.refusals_before_auth += 1;
                if self.refusals_before_auth < REFUSALS_BEFORE_AUTH_MAX {
                    self.ready(|e| e.error("NOAUTH Authentication required."));
                } else {
                    self.ready(|e| {
                        e.error(
                            "NOAUTH Authentication required; too many commands, this \
                             connection is read no more",
                        )
                    });
                    self.muted = true;
                }
                continue;
            }
            let exempt = matches!(action, Action::Local(Local::Quit | Local::Stats { .. }));
            if let Some(error) = storage_failed.as_ref().filter(|_| !exempt) {
                self.ready(|e| e.error(error));
                continue;
            }
            if let Some(error) = refusal.as_ref().filter(|_| !action.allowed_on_follower()) {
                self.ready(|e| e.error(error));
                continue;
            }
            match action {
                Action::Engine(request) => {
                    self.requests.push(request);
                    self.building.replies.push(Reply::Engine);
                }
                Action::Error(text) => self.ready(|e| e.error(&text)),
                Action::Local(local) => self.local(local).await?,
            }
            // Replies that need no engine (errors, `NOAUTH`, `PING`s) pile up here while
            // the engine's are awaited: written out past a bound, so a client that does
            // not read them stalls here instead of growing the server.
            if self.building.staged.len() >= OUTPUT_FLUSH_BYTES {
                self.drain().await?;
            }
        }
        // Requests skipped because the connection closes were never queued.
        self.share.give_back(unanswered);
        // Handed back empty, with its capacity (up to a bound), for the next read.
        self.actions = actions;
        self.actions.shrink_to(KEPT_COMMANDS_CAPACITY);
        self.requests.shrink_to(KEPT_COMMANDS_CAPACITY);
        self.seal();
        Ok(())
    }

    /// Queues a reply that needs no engine.
    fn ready(&mut self, encode: impl FnOnce(&mut Encoder<'_>)) {
        let staged = &mut self.building.staged;
        encode(&mut Encoder { out: staged, protocol: self.protocol });
        let end = staged.len();
        self.building.replies.push(Reply::Ready { end });
    }

    /// Sends the batch being built on its way: to the engine if it has requests for it.
    fn seal(&mut self) {
        if self.building.replies.is_empty() {
            return;
        }
        let commands = self.building.replies.len();
        let lane = self.lane(commands);
        let pending = (!self.requests.is_empty())
            .then(|| self.server.combiner.submit(&mut self.requests, lane));
        let batch = std::mem::replace(&mut self.building, self.spare.pop().unwrap_or_default());
        let in_flight = InFlight { batch, protocol: self.protocol, pending, commands, lane };
        self.in_flight.push_back(in_flight);
    }

    /// The combiner's lane for the batch of `commands` being sealed: fresh when the client
    /// keeps up with its replies, backlogged when it is ahead of them: complete requests
    /// wait in the input after this batch, the last read filled its chunk (more waits in
    /// the socket), an earlier batch of its own waits in the backlogged lane (a fresh one
    /// must not pass it), or its commands waiting on the engine would pass the floor every
    /// connection may always have queued. A client that reads its replies as they come,
    /// however it pipelines below the floor (a terminal, `redis-benchmark -P 64`, a gateway
    /// sending requests as they arrive), is fresh; one that pipelines without reading falls
    /// behind the fresh ones until its buffers fill and it stalls.
    fn lane(&self, commands: usize) -> Lane {
        let waiting = self.in_flight.iter().filter(|batch| batch.pending.is_some());
        let (mut waiting_commands, mut earlier_backlogged) = (0, false);
        for batch in waiting {
            waiting_commands += batch.commands;
            earlier_backlogged |= batch.lane == Lane::Backlogged;
        }
        let input_ahead = self.parsed < self.input.len() && !self.parser_wants_more;
        let over_floor = waiting_commands + commands > CONNECTION_COMMANDS_FLOOR;
        if input_ahead || self.last_read_filled || earlier_backlogged || over_floor {
            Lane::Backlogged
        } else {
            Lane::Fresh
        }
    }

    /// Encodes the replies of the oldest batch in flight, whose engine answer is `answer`.
    fn finish_front(&mut self, answer: Option<Answer>) {
        let Some(InFlight { mut batch, protocol, commands, .. }) = self.in_flight.pop_front()
        else {
            return;
        };
        self.share.give_back(commands);
        let storage_failed = answer
            .as_ref()
            .is_some_and(|answer| answer.is_err())
            .then(|| storage_failure(&self.server.engine))
            .flatten();
        let (outcomes, failure) = match &answer {
            None => (&[][..], None),
            Some(Ok(outcomes)) => (outcomes.as_slice(), None),
            Some(Err(error)) => (&[][..], Some(error.as_str())),
        };
        let mut outcomes = outcomes.iter();
        let mut encoder = Encoder { out: &mut self.out, protocol };
        let mut staged_from = 0;
        for reply in batch.replies.drain(..) {
            match reply {
                Reply::Ready { end } => {
                    encoder.out.extend_from_slice(&batch.staged[staged_from..end]);
                    staged_from = end;
                }
                Reply::Engine => match (outcomes.next(), &storage_failed) {
                    (Some(outcome), _) => commands::render_outcome(&mut encoder, outcome),
                    (None, Some(error)) => encoder.error(error),
                    // A replica that lost its lead between the read and the submission.
                    (None, None) if failure.is_some_and(is_replica_refusal) => {
                        encoder.error(failure.unwrap_or_default())
                    }
                    (None, None) => {
                        encoder.error(&format!("ERR engine: {}", failure.unwrap_or("no outcome")))
                    }
                },
            }
        }
        batch.staged.clear();
        if self.spare.len() < IN_FLIGHT_BATCHES_MAX {
            self.spare.push(batch);
        }
    }

    /// Writes the replies of every batch at the front that needs no more waiting.
    async fn write_answered(&mut self) -> std::io::Result<()> {
        while let Some(front) = self.in_flight.front_mut() {
            let answer = match &mut front.pending {
                None => None,
                Some(pending) => match pending.try_answer() {
                    Some(answer) => Some(answer),
                    None => break,
                },
            };
            self.finish_front(answer);
        }
        self.write_out().await
    }

    /// Sends the batch being built, then waits for and writes every batch in flight.
    async fn drain(&mut self) -> std::io::Result<()> {
        self.seal();
        while let Some(front) = self.in_flight.front_mut() {
            let answer = match &mut front.pending {
                None => None,
                Some(pending) => Some(pending.answer().await),
            };
            self.finish_front(answer);
        }
        self.write_out().await
    }

    /// Writes `bytes` with the write timeout of [`Connection::write_out`], past every reply
    /// encoded so far (which must have been written: nothing may overtake them).
    async fn write_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        debug_assert!(self.out.is_empty() && self.in_flight.is_empty());
        let timeout = self.server.limits.write_timeout;
        match tokio::time::timeout(timeout, self.stream.write_all(bytes)).await {
            Ok(written) => written,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes the replies encoded so far. A client that accepts none of them within the
    /// write timeout is dropped: it stopped reading, and its replies would only pile up.
    async fn write_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let timeout = self.server.limits.write_timeout;
            match tokio::time::timeout(timeout, self.stream.write_all(&self.out)).await {
                Ok(written) => written?,
                Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            }
            self.out.clear();
            // One burst of large replies (STATS, BATCH.RUN) must not keep its memory.
            if self.out.capacity() > OUTPUT_FLUSH_BYTES {
                self.out.shrink_to(OUTPUT_FLUSH_BYTES);
            }
        }
        Ok(())
    }

    /// Runs a command the server answers itself.
    async fn local(&mut self, local: Local) -> std::io::Result<()> {
        match local {
            Local::Ping(None) => self.ready(|e| e.simple("PONG")),
            Local::Ping(Some(message)) => self.ready(|e| e.bulk(&message)),
            Local::Auth(token) => self.auth(&token).await,
            Local::Hello { protocol, auth } => {
                self.drain().await?;
                self.hello(protocol, auth).await;
            }
            Local::Quit => {
                self.ready(|e| e.simple("OK"));
                self.closing = true;
            }
            Local::Stats { json } => {
                self.drain().await?;
                let text = self.stats(json).await;
                match text {
                    Ok(text) => self.ready(|e| e.bulk(text.as_bytes())),
                    Err(error) => self.ready(|e| e.error(&format!("ERR stats: {error}"))),
                }
            }
            Local::ClockSet(_)
            | Local::ClockAdvance(_)
            | Local::ClockAccept
            | Local::ClockStatus => {
                // Commands before this one are stamped with the time before it.
                self.drain().await?;
                let clock = self.server.clock.clone();
                self.ready(|e| clock.reply(&local, e));
            }
            Local::ConfigGet(name) => self.ready(|e| {
                e.array(2);
                e.bulk(&name);
                e.bulk(b"");
            }),
            Local::Snapshot => {
                // Acknowledged commands before it are in the snapshot: complete them first.
                self.drain().await?;
                match self.snapshot().await {
                    Ok(path) => self.ready(|e| e.bulk(path.as_bytes())),
                    Err(error) => self.ready(|e| e.error(&format!("ERR snapshot: {error}"))),
                }
            }
            Local::BatchRun(region) => {
                self.drain().await?;
                match self.batch_run(region).await {
                    Ok(reply) => self.ready(|e| e.out.extend_from_slice(&reply)),
                    Err(error) => self.ready(|e| e.error(&format!("ERR batch: {error}"))),
                }
            }
            Local::Role => {
                let view = self.server.engine.replication().map(|status| status.view());
                self.ready(|e| render_role(e, view.as_ref()));
            }
            Local::BatchStatus => {
                let status = self.server.engine.epoch_status();
                self.ready(|e| epochs::render_status(e, &status));
            }
            Local::XRead(_) | Local::XRange(_) | Local::StreamsInfo => {
                // What the client acknowledged before is durable and in the stream.
                self.drain().await?;
                let reader = streams::Reader {
                    engine: &self.server.engine,
                    streams: &self.server.streams,
                    protocol: self.protocol,
                    replies: &self.server.stream_replies,
                    socket: &self.stream,
                };
                let reply = match local {
                    Local::XRead(read) => {
                        match streams::xread(reader, read, &mut self.shutdown).await {
                            Some(reply) => reply,
                            // Nobody reads the reply: the connection ends here.
                            None => return Err(std::io::ErrorKind::ConnectionAborted.into()),
                        }
                    }
                    Local::XRange(range) => streams::xrange(reader, range).await,
                    _ => streams::info(&self.server.engine, self.protocol).await,
                };
                match reply {
                    Ok((bytes, permit)) => {
                        // Everything before it is written (drained above): written out now
                        // as it is, without a copy into the batch, while it holds its permit.
                        self.write_bytes(&bytes).await?;
                        drop(permit);
                    }
                    Err(error) => self.ready(|e| streams::render_error(e, &error)),
                }
            }
        }
        Ok(())
    }

    async fn auth(&mut self, token: &[u8]) {
        match &self.server.token {
            None => self.ready(|e| {
                e.error("ERR AUTH called without any token configured (start with --token)")
            }),
            Some(expected) if constant_time_eq(expected, token) => {
                if self.authenticated() {
                    self.ready(|e| e.simple("OK"));
                }
            }
            Some(_) => self.auth_failed().await,
        }
    }

    /// Marks the connection authenticated; false (and an error queued, the connection
    /// closing) if it lost its anonymous slot to a newer connection meanwhile.
    fn authenticated(&mut self) -> bool {
        if !self.slot.authenticate() {
            self.ready(|e| e.error("ERR too many unauthenticated connections"));
            self.closing = true;
            return false;
        }
        self.authenticated = true;
        true
    }

    /// A wrong token: the connection waits before it goes on, and closes after too many.
    async fn auth_failed(&mut self) {
        self.auth_failures += 1;
        tokio::time::sleep(AUTH_FAILURE_DELAY).await;
        if self.auth_failures < AUTH_FAILURES_MAX {
            return self.ready(|e| e.error("WRONGPASS invalid token"));
        }
        self.ready(|e| e.error("WRONGPASS invalid token; too many failed attempts, closing"));
        self.closing = true;
    }

    async fn hello(&mut self, protocol: Option<i64>, auth: Option<Vec<u8>>) {
        let protocol = match protocol {
            None => self.protocol,
            Some(2) => Protocol::Resp2,
            Some(3) => Protocol::Resp3,
            Some(_) => {
                return self.ready(|e| e.error("NOPROTO unsupported protocol version"));
            }
        };
        if let Some(token) = auth {
            let ok = self
                .server
                .token
                .as_ref()
                .is_some_and(|expected| constant_time_eq(expected, &token));
            if !ok {
                return self.auth_failed().await;
            }
            if !self.authenticated() {
                return;
            }
        }
        if !self.authenticated {
            return self.ready(|e| e.error("NOAUTH HELLO must be called with AUTH <user> <token>"));
        }
        self.protocol = protocol;
        let version = i128::from(if protocol == Protocol::Resp3 { 3u8 } else { 2 });
        self.ready(|e| {
            e.map(6);
            e.bulk(b"server");
            e.bulk(b"plafond");
            e.bulk(b"version");
            e.bulk(env!("CARGO_PKG_VERSION").as_bytes());
            e.bulk(b"proto");
            e.integer(version);
            e.bulk(b"mode");
            e.bulk(b"standalone");
            e.bulk(b"role");
            e.bulk(b"master");
            e.bulk(b"modules");
            e.array(0);
        });
    }

    async fn snapshot(&self) -> Result<String, LocalError> {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || {
            let path = server.snapshots.take(&server.engine)?;
            Ok(path.display().to_string())
        })
        .await?
    }

    async fn batch_run(&self, region: String) -> Result<Vec<u8>, LocalError> {
        let server = self.server.clone();
        let protocol = self.protocol;
        tokio::task::spawn_blocking(move || {
            let report = server.engine.run_epoch(&region)?;
            let mut out = Vec::new();
            epochs::render_report(
                &mut Encoder { out: &mut out, protocol },
                server.engine.regions(),
                &report,
            );
            Ok(out)
        })
        .await?
    }

    async fn stats(&self, json: bool) -> Result<String, LocalError> {
        let server = self.server.clone();
        // A consistent cut blocks until every shard pauses: not on the async workers.
        let rendered = move || stats::render(&server.engine, &server.sampler, json);
        Ok(tokio::task::spawn_blocking(rendered).await??)
    }
}

/// Why a command the server answers itself failed; its text follows `ERR <command>: `.
#[derive(Debug, thiserror::Error)]
enum LocalError {
    #[error(transparent)]
    Engine(#[from] plafond::EngineError),
    #[error(transparent)]
    Epoch(#[from] plafond::BatchError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot_dir::SnapshotDirError),
    #[error("the task running it failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The `-ERR STORAGE` text every command gets once the storage refused a write, or `None`
/// while it is healthy.
fn storage_failure(engine: &Engine) -> Option<String> {
    let Health::Failed { reason, .. } = engine.health() else { return None };
    // RocksDB's messages are one line, but a reply must never carry a line break.
    let reason = reason.replace(['\r', '\n'], " ");
    Some(format!(
        "ERR STORAGE {reason}; nothing more is acknowledged: free space or fix the disk, then \
         restart the server (acknowledged outcomes are kept)"
    ))
}

/// Whether an engine's refusal is a replica's `READONLY` or `CLUSTERDOWN` (sent as is).
fn is_replica_refusal(text: &str) -> bool {
    text.starts_with("READONLY ") || text.starts_with("CLUSTERDOWN ")
}

/// `ROLE` (SPEC §14): `[role, term, leader HOST:PORT]`, the leader nil while none is known.
/// A single node leads itself in term 0.
fn render_role(e: &mut plafond_wire::Encoder<'_>, view: Option<&plafond::RoleView>) {
    e.array(3);
    let Some(view) = view else {
        e.bulk(b"leader");
        e.integer(0);
        e.nil();
        return;
    };
    e.bulk(view.role.as_str().as_bytes());
    e.integer(i128::from(view.term));
    match view.leader {
        Some(leader) => e.bulk(leader.to_string().as_bytes()),
        None => e.nil(),
    }
}

/// The engine's answer to `pending`, or `None` at once if there is nothing to wait for.
async fn answer_of(pending: Option<&mut Pending>) -> Option<Answer> {
    match pending {
        Some(pending) => Some(pending.answer().await),
        None => None,
    }
}

/// Compares a token without an early exit, so timing does not reveal its prefix.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut difference = expected.len() ^ given.len();
    for (index, byte) in expected.iter().enumerate() {
        difference |= usize::from(byte ^ given.get(index).copied().unwrap_or(0));
    }
    difference == 0
}
