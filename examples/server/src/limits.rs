//! The server's limits, each named with its unit, in one place, and how they relate to
//! each other and to the wire's and the engine's, checked when the crate compiles. The
//! modules that use a limit import it from here (some re-export it under their own path,
//! `budget::QUEUED_COMMANDS_MAX`, ...).
//!
//! A bank's most exposed service must not let sockets that do nothing hold its slots:
//! an anonymous connection has [`AUTH_TIMEOUT_DEFAULT`] to prove itself (AUTH with a
//! token, its first request without), a connection with nothing to do is closed after
//! [`IDLE_TIMEOUT_DEFAULT`] without a complete request, and one whose client stops reading
//! its replies is dropped once a write has made no progress for [`WRITE_TIMEOUT_DEFAULT`].
//! Tests scale them down with the flags (`options`).

use std::time::Duration;

/// How long an anonymous connection has to authenticate (or send its first request).
pub const AUTH_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const AUTH_TIMEOUT_DEFAULT: Duration = Duration::from_millis(AUTH_TIMEOUT_DEFAULT_MS);
/// How long a connection may go without a complete request while nothing of its is in
/// flight. Five minutes: longer than any client pool's idle check, short enough that idle
/// sockets cannot pile up for hours.
pub const IDLE_TIMEOUT_DEFAULT_MS: u64 = 300_000;
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(IDLE_TIMEOUT_DEFAULT_MS);
/// How long one write of replies may make no progress before the client is dropped.
pub const WRITE_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(WRITE_TIMEOUT_DEFAULT_MS);
/// The most connections served at once; the descriptor limit may make it fewer.
pub const CONNECTIONS_MAX: usize = 1024;
/// The range of every `--*-timeout-ms`: from 1 ms (tests) to a day.
pub const TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;

const _: () = assert!(AUTH_TIMEOUT_DEFAULT_MS <= TIMEOUT_MS_MAX);
const _: () = assert!(IDLE_TIMEOUT_DEFAULT_MS <= TIMEOUT_MS_MAX);
const _: () = assert!(WRITE_TIMEOUT_DEFAULT_MS <= TIMEOUT_MS_MAX);

/// The deadlines and the connection limit one server runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            auth_timeout: AUTH_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            max_connections: CONNECTIONS_MAX,
        }
    }
}

// One connection: its batches, buffers and the pace of its AUTH tries.

/// The most commands in one batch of one connection.
pub const PIPELINE_COMMANDS_MAX: usize = 4096;

/// The most batches one connection has in flight; beyond, it reads no more until the
/// oldest is answered (TCP flow control then slows the client).
pub const IN_FLIGHT_BATCHES_MAX: usize = 8;

/// Bytes read per `read` call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A connection's read buffer never holds more than this: one partial request plus one
/// chunk. The parser's limits make it unreachable; it is the belt to their braces.
pub const READ_BUFFER_BYTES_MAX: usize = 2 * (plafond_wire::FRAME_BYTES_MAX + READ_CHUNK_BYTES);

/// Replies buffered before they are written in the middle of a batch (a pipeline of many
/// `STATS` would otherwise pile up).
pub const OUTPUT_FLUSH_BYTES: usize = 256 * 1024;

/// After a failed `AUTH`, the connection waits this long before it goes on, so guessing
/// the token runs at a few tries per second per connection, not millions.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(100);

/// Failed `AUTH`s after which a connection is closed.
pub const AUTH_FAILURES_MAX: u32 = 10;

/// Commands refused with `NOAUTH` after which a connection is read no more (it closes at
/// its auth deadline): a client not configured with the token learns it from the first;
/// a flood of them only costs the server parsing (500 such pipeliners sent 400 MB/s).
/// Not closed at once: a closed attacker reconnects at once, a muted one costs nothing.
pub const REFUSALS_BEFORE_AUTH_MAX: u32 = 1000;

/// An anonymous connection's batches are at most this large: it can only get refusals
/// and `PONG`s, which gain nothing from batching, and small batches keep a crowd of them
/// from hogging the I/O threads.
pub const ANONYMOUS_BATCH_COMMANDS_MAX: usize = 64;

/// After a batch of at least this many commands, a connection lets the runtime run the
/// others before it goes on: a pipelining client whose input is always ready would
/// otherwise run batch after batch in one turn while a fresh client waits.
pub const YIELD_AFTER_COMMANDS: usize = 64;

/// Per-command vectors (parsed requests, engine requests) keep at most this capacity
/// between batches: a connection that once sent a 4,096-command pipeline must not hold
/// half a megabyte for ever (a thousand of them did).
pub const KEPT_COMMANDS_CAPACITY: usize = 256;

/// How long a connection that may neither read (the buffers of all connections are full)
/// nor wait for an answer of its own (it has none) waits before it looks again.
pub const BUDGET_RETRY: Duration = Duration::from_millis(5);

// The global budget of queued work (`budget`).

/// The shared pool of queued commands (parsed, not yet answered) of all connections,
/// beyond each connection's floor. At about a million pays per second it is some tens of
/// milliseconds of engine work: the most a fresh command waits behind the others.
pub const QUEUED_COMMANDS_MAX: usize = 32_768;

/// Commands a connection may always have queued, whatever the others do: enough for a
/// `redis-benchmark -P 64` or a loadgen pipeline to run undisturbed.
pub const CONNECTION_COMMANDS_FLOOR: usize = 64;

/// The sum of all connections' buffers (read, reply) beyond which only connections under
/// their floor read more.
pub const BUFFERED_BYTES_MAX: usize = 64 << 20;

/// Buffer bytes a connection may always hold: one read chunk and a little.
pub const CONNECTION_BUFFER_FLOOR_BYTES: usize = 128 << 10;

// Combined submissions (`combiner`).

/// The most requests one combined submission carries (unless one connection's batch alone
/// is larger); the rest waits for the next flush. It bounds one shard batch, one log value
/// in RocksDB, however many connections pipeline at once.
pub const COMBINED_REQUESTS_MAX: usize = 65_536;

/// The most commands handed to the engine and not yet answered; the rest waits in the
/// combiner, where a fresh connection's batch passes the backlogged ones. At the server's
/// 0.5–1M pays/s it is a few milliseconds of work: the most a fresh batch waits behind
/// others (plus the group commit it joins), and still several group commits' worth, so
/// the writer always has the next batch ready.
pub const ENGINE_COMMANDS_IN_FLIGHT_MAX: usize = 4096;
const _: () = assert!(ENGINE_COMMANDS_IN_FLIGHT_MAX <= COMBINED_REQUESTS_MAX);
const _: () = assert!(ENGINE_COMMANDS_IN_FLIGHT_MAX >= CONNECTION_COMMANDS_FLOOR);

/// The most of [`ENGINE_COMMANDS_IN_FLIGHT_MAX`] backlogged batches may take: the rest is
/// kept for fresh ones, which then go to the engine at once.
pub const BACKLOGGED_COMMANDS_IN_ENGINE_MAX: usize = ENGINE_COMMANDS_IN_FLIGHT_MAX * 3 / 4;
const _: () = assert!(BACKLOGGED_COMMANDS_IN_ENGINE_MAX < ENGINE_COMMANDS_IN_FLIGHT_MAX);
const _: () = assert!(BACKLOGGED_COMMANDS_IN_ENGINE_MAX >= CONNECTION_COMMANDS_FLOOR);

// Descriptors and accept back-off (`descriptors`).

/// Descriptors kept for what the engine and the server open after start-up (RocksDB's
/// new table and log files, snapshots, checkpoints, the refusal of a connection past the
/// limit), beyond those open when the limit is computed.
pub const DESCRIPTORS_RESERVED: u64 = 64;

/// The first pause after a failed `accept`, doubled after each failure in a row.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);

/// The longest pause after failed `accept`s in a row.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most one log line per this interval about failed `accept`s (with their count).
pub const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

// Accepting and shutting down (`run`).

/// How long shutdown waits for in-flight batches before dropping the connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The most refusals (`-ERR max number of clients reached`) being written at once; past
/// it a connection over the limit is closed without a word.
pub const REFUSALS_IN_FLIGHT_MAX: usize = 64;

/// How long a refusal may take to write before the connection is just closed.
pub const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

// The token (`access`).

/// The longest token file read: a token is a line, not a document.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;

// Snapshots kept (`snapshot_dir`).

/// Snapshots kept by default; older ones are removed after each new one.
pub const SNAPSHOTS_KEPT_DEFAULT: usize = 8;

/// The most `--snapshots-keep` allows.
pub const SNAPSHOTS_KEPT_MAX: usize = 10_000;

// Flags (`options`).

/// The most `--io-threads`.
pub const IO_THREADS_MAX: usize = 256;

/// The most `--checkpoint-log-mb`: a checkpoint at least every TiB of log.
pub const CHECKPOINT_LOG_MB_MAX: u64 = 1 << 20;

// The metrics port (`metrics`, `page`).

/// The most `/metrics` scrapes and `/stats.json` reads being answered at once: each takes
/// a consistent cut of every shard (one at a time, `Engine::cut`), so more would only
/// queue; past it a request gets `503` at once.
pub const HTTP_CUTS_IN_FLIGHT_MAX: usize = 4;

/// Samples the live page keeps in the browser for its charts: ten minutes at one a second.
pub const PAGE_SAMPLES_KEPT: usize = 600;

// The command table (`commands`).

/// The longest command name (`AUTHORIZE.INCREMENT`, §12, has 19 bytes); a longer one is
/// unknown.
pub const COMMAND_NAME_BYTES_MAX: usize = 24;
const _: () = assert!("AUTHORIZE.INCREMENT".len() <= COMMAND_NAME_BYTES_MAX);

/// The most bytes of a client's input any error quotes back (a command's name, a region's):
/// a 60 KB argument must not come back as a 180 KB error.
pub const CLIENT_INPUT_ECHO_BYTES_MAX: usize = 64;

// The change stream (`streams`).

/// The most entries one `XREAD` or `XRANGE` reply carries, its streams together (each gets
/// an equal part). `COUNT` asks for fewer, never more; without `COUNT` a reply stops here and
/// the client reads on from its last id, as a stream consumer does anyway.
pub const STREAM_REPLY_ENTRIES_MAX: usize = 8192;

/// The bytes past which a stream reply takes no more entries (an entry is some 200 bytes,
/// 1 KiB at most, so a full reply of small entries fits).
pub const STREAM_REPLY_BYTES_MAX: usize = 4 << 20;

/// Stream replies being read or written at once, all connections together: one that waits
/// (`BLOCK`) holds none, one whose client does not read holds one until the write timeout.
/// With [`STREAM_REPLY_BYTES_MAX`] it bounds what stream readers can make the server hold.
pub const STREAM_REPLIES_IN_FLIGHT_MAX: usize = 16;

/// Entries of one batch encoded and kept together (`streams::encoded`): a read of a few
/// entries of a big batch (tens of thousands) encodes only the pieces it takes.
pub const STREAM_PIECE_ENTRIES: usize = 1024;

/// The bytes of encoded stream entries kept for every reader (some 250 bytes an entry, so
/// about 260,000 entries): the last batches of every shard, for followers at their tails,
/// and a catch-up's pieces as it goes.
pub const STREAM_ENCODED_BYTES_MAX: usize = 64 << 20;

// How they relate.

// An interactive client's floor fits in one of its batches, and an anonymous batch is no
// larger than anyone's.
const _: () = assert!(CONNECTION_COMMANDS_FLOOR <= PIPELINE_COMMANDS_MAX);
const _: () = assert!(ANONYMOUS_BATCH_COMMANDS_MAX <= PIPELINE_COMMANDS_MAX);
const _: () = assert!(CONNECTION_COMMANDS_FLOOR <= QUEUED_COMMANDS_MAX);
// One connection's batch always fits one combined submission, so the combiner never has
// to split a batch (a connection's commands stay in order) ...
const _: () = assert!(PIPELINE_COMMANDS_MAX <= COMBINED_REQUESTS_MAX);
// ... and the engine's shards take a combined submission in a few batches each, not in
// thousands: a submission mails each shard one part, which the shard decides in batches of
// at most `BATCH_COMMANDS_MAX`.
const _: () = assert!(COMBINED_REQUESTS_MAX <= 16 * plafond::BATCH_COMMANDS_MAX);
// A connection under its buffer floor can always read one chunk, and the output flushed
// in the middle of a batch fits the global buffer budget many times over.
const _: () = assert!(READ_CHUNK_BYTES <= CONNECTION_BUFFER_FLOOR_BYTES);
const _: () = assert!(OUTPUT_FLUSH_BYTES * CONNECTIONS_MAX / 4 <= BUFFERED_BYTES_MAX);
// A whole frame (the largest request the wire accepts) fits the read buffer.
const _: () = assert!(plafond_wire::FRAME_BYTES_MAX + READ_CHUNK_BYTES <= READ_BUFFER_BYTES_MAX);
// Every connection slot can be given a descriptor beside those the server keeps.
const _: () = assert!(DESCRIPTORS_RESERVED < CONNECTIONS_MAX as u64);

// Replies of stream readers, even all at their largest, stay a part of the buffer budget,
// and one read never asks the engine for more than it reads at once.
const _: () = assert!(STREAM_REPLY_BYTES_MAX * STREAM_REPLIES_IN_FLIGHT_MAX <= BUFFERED_BYTES_MAX);
const _: () = assert!(STREAM_REPLY_ENTRIES_MAX <= plafond::stream::STREAM_READ_ENTRIES_MAX);
const _: () = assert!(STREAM_PIECE_ENTRIES <= plafond::stream::STREAM_READ_ENTRIES_MAX);
// A piece of the largest entries (1 KiB) is kept.
const _: () = assert!(STREAM_PIECE_ENTRIES * 1024 <= STREAM_ENCODED_BYTES_MAX);

/// The most commands the server holds parsed and unanswered, all connections together:
/// the shared pool plus every connection's floor. What a flood of clients can queue.
pub const QUEUED_COMMANDS_TOTAL_MAX: usize =
    QUEUED_COMMANDS_MAX + CONNECTIONS_MAX * CONNECTION_COMMANDS_FLOOR;
