//! The change stream as Redis Streams (SPEC §13): `XREAD`, `XRANGE` and `STREAMS.INFO` on
//! the streams `changes:<shard>`, with Redis's argument syntax and reply shapes, so that any
//! Redis client's stream consumer works unchanged.
//!
//! Reading runs on the blocking pool (it reads RocksDB and decodes batches, never on a
//! shard's thread nor an I/O thread), through the entries already encoded for any reader
//! ([`encoded`]); `BLOCK` waits on the engine's durable marks, woken by the writer, not by
//! polling, and on the client's socket, so that a reader that hangs up stops waiting at
//! once (counted in [`BlockedReaders`]). A reply holds at most [`STREAM_REPLY_ENTRIES_MAX`] entries
//! and about [`STREAM_REPLY_BYTES_MAX`] bytes (`COUNT` asks for fewer, never more; without
//! `COUNT` the cap applies and the client reads on from the last id, as it does anyway), and
//! at most [`STREAM_REPLIES_IN_FLIGHT_MAX`] are being read or written at once, so readers
//! that never read their sockets cannot grow the server's memory.

mod encoded;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use plafond::stream::{StreamId, StreamStart};
use plafond::{Engine, EngineError, ShardId};
use plafond_wire::{Encoder, Protocol};

use encoded::{encode_id, Limit};
pub use encoded::{EncodedEntries, PIECE_ENTRIES, STREAM_ENCODED_BYTES_MAX};

pub use crate::limits::{
    STREAM_REPLIES_IN_FLIGHT_MAX, STREAM_REPLY_BYTES_MAX, STREAM_REPLY_ENTRIES_MAX,
};

/// The prefix of every stream's name: `changes:<shard>`.
pub const STREAM_PREFIX: &str = "changes:";

/// Where an `XREAD` reads a stream from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Entries after this id (`0` and `0-0`: from the start of what is retained).
    Id(StreamId),
    /// `$`: entries after the last one there is when the command runs.
    Last,
}

/// `XREAD [COUNT n] [BLOCK ms] STREAMS key ... id ...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XRead {
    pub count: Option<usize>,
    /// `BLOCK ms`; `Some(Duration::ZERO)` waits for ever.
    pub block: Option<Duration>,
    pub streams: Vec<(ShardId, After)>,
}

/// `XRANGE key start end [COUNT n]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XRange {
    pub shard: ShardId,
    pub start: StreamStart,
    /// Inclusive; `None` when an exclusive end left nothing (`(0-0`).
    pub end: Option<StreamId>,
    pub count: Option<usize>,
}

/// The `ERR` text of a malformed stream command (without `ERR `).
type Refusal = String;

const INVALID_ID: &str = "Invalid stream ID specified as stream command argument";

/// Reads `changes:<shard>`.
fn stream_key(key: &[u8]) -> Result<ShardId, Refusal> {
    std::str::from_utf8(key)
        .ok()
        .and_then(|key| key.strip_prefix(STREAM_PREFIX))
        .and_then(|shard| shard.parse().ok())
        .ok_or_else(|| "no such stream: the streams are changes:<shard> (STREAMS.INFO)".into())
}

/// `<batch>-<index>`, or `<batch>` alone with `missing` as its index (Redis: 0 for a
/// start, the largest for an end).
fn stream_id(text: &[u8], missing: u64) -> Result<StreamId, Refusal> {
    let text = std::str::from_utf8(text).map_err(|_| INVALID_ID.to_string())?;
    let number = |part: &str| -> Result<u64, Refusal> {
        let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| part.parse().ok()).flatten().ok_or_else(|| INVALID_ID.to_string())
    };
    match text.split_once('-') {
        Some((batch, index)) => Ok(StreamId { batch_seq: number(batch)?, index: number(index)? }),
        None => Ok(StreamId { batch_seq: number(text)?, index: missing }),
    }
}

/// `COUNT n`: Redis reads a count below 1 as no count.
fn count(text: &[u8]) -> Result<Option<usize>, Refusal> {
    let n = plafond_wire::parse_i64(text).ok_or("value is not an integer or out of range")?;
    Ok(usize::try_from(n).ok().filter(|&n| n > 0))
}

/// Parses `XREAD`'s arguments.
pub fn parse_xread(rest: &[&[u8]]) -> Result<XRead, Refusal> {
    let mut read = XRead { count: None, block: None, streams: Vec::new() };
    let mut at = 0;
    loop {
        let option = rest.get(at).ok_or("syntax error")?.to_ascii_uppercase();
        let value = rest.get(at + 1);
        match (option.as_slice(), value) {
            (b"COUNT", Some(value)) => read.count = count(value)?,
            (b"BLOCK", Some(value)) => {
                let ms = plafond_wire::parse_i64(value).ok_or("timeout is not an integer")?;
                let ms = u64::try_from(ms).map_err(|_| "timeout is negative")?;
                read.block = Some(Duration::from_millis(ms));
            }
            (b"STREAMS", _) => break,
            _ => return Err("syntax error".into()),
        }
        at += 2;
    }
    let names = &rest[at + 1..];
    if names.is_empty() || !names.len().is_multiple_of(2) {
        return Err("Unbalanced 'xread' list of streams: for each stream key an ID or '$' must \
                    be specified."
            .into());
    }
    let (keys, ids) = names.split_at(names.len() / 2);
    for (key, id) in keys.iter().zip(ids) {
        let after = match *id {
            b"$" => After::Last,
            id => After::Id(stream_id(id, 0)?),
        };
        read.streams.push((stream_key(key)?, after));
    }
    Ok(read)
}

/// Parses `XRANGE`'s arguments.
pub fn parse_xrange(rest: &[&[u8]]) -> Result<Option<XRange>, Refusal> {
    if rest.len() != 3 && rest.len() != 5 {
        return Ok(None);
    }
    let shard = stream_key(rest[0])?;
    let start = match rest[1] {
        b"-" => StreamStart::Retained,
        text => match text.strip_prefix(b"(") {
            Some(id) => match stream_id(id, 0)?.successor() {
                Some(id) => StreamStart::At(id),
                None => return Err(INVALID_ID.into()),
            },
            None => StreamStart::At(stream_id(text, 0)?),
        },
    };
    let end = match rest[2] {
        b"+" => Some(StreamId::MAX),
        text => match text.strip_prefix(b"(") {
            Some(id) => predecessor(stream_id(id, u64::MAX)?),
            None => Some(stream_id(text, u64::MAX)?),
        },
    };
    let count = match rest.get(3..5) {
        Some([option, value]) if option.eq_ignore_ascii_case(b"COUNT") => count(value)?,
        Some(_) => return Err("syntax error".into()),
        None => None,
    };
    Ok(Some(XRange { shard, start, end, count }))
}

/// The greatest id before `id`, if any.
fn predecessor(id: StreamId) -> Option<StreamId> {
    match id.index.checked_sub(1) {
        Some(index) => Some(StreamId { index, ..id }),
        None => Some(StreamId { batch_seq: id.batch_seq.checked_sub(1)?, index: u64::MAX }),
    }
}

/// What a stream command answers, encoded, with its part of
/// [`STREAM_REPLIES_IN_FLIGHT_MAX`], to be held until the bytes are written out; or the
/// error it gets.
pub type Reply = Result<(Vec<u8>, Option<OwnedSemaphorePermit>), EngineError>;

/// The reply bytes of an engine error (`-ERR TRIMMED <first_id>`, ...).
pub fn render_error(encoder: &mut Encoder<'_>, error: &EngineError) {
    encoder.error(&format!("ERR {error}"));
}

/// What the stream commands share, server-wide.
#[derive(Default)]
pub struct Streams {
    /// Entries encoded once for every reader.
    pub encoded: EncodedEntries,
    /// `XREAD BLOCK`s waiting now.
    pub blocked: BlockedReaders,
}

/// How many `XREAD BLOCK`s wait for entries now (`/metrics`: a reader that hung up while
/// waiting leaves the count at once).
#[derive(Default)]
pub struct BlockedReaders(AtomicUsize);

impl BlockedReaders {
    /// The readers waiting now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one waiting reader until the guard is dropped.
    fn enter(&self) -> BlockedGuard<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        BlockedGuard(self)
    }
}

struct BlockedGuard<'a>(&'a BlockedReaders);

impl Drop for BlockedGuard<'_> {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's side of a stream command.
pub struct Reader<'a> {
    pub engine: &'a Arc<Engine>,
    pub streams: &'a Arc<Streams>,
    pub protocol: Protocol,
    /// Stream replies being read or written, server-wide.
    pub replies: &'a Arc<Semaphore>,
    /// Its client's socket: a wait ends when the client hangs up.
    pub socket: &'a TcpStream,
}

/// Answers an `XREAD`: at once if any stream has entries after its id, else after waiting
/// up to `BLOCK` for one (nil if none came, or `shutdown` fired). `None` if the client hung
/// up while it waited: nobody is left to answer.
pub async fn xread(
    reader: Reader<'_>,
    read: XRead,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Reply> {
    let Reader { engine, protocol, replies, .. } = reader;
    let mut watches = Vec::with_capacity(read.streams.len());
    for &(shard, _) in &read.streams {
        let mut watch = match engine.stream_watch(shard) {
            Ok(watch) => watch,
            Err(error) => return Some(Err(error)),
        };
        // Subscribed before the first read: a batch made durable after it wakes the wait.
        watch.mark_unchanged();
        watches.push(watch);
    }
    let starts = match resolve(engine, &read.streams).await {
        Ok(starts) => starts,
        Err(error) => return Some(Err(error)),
    };
    let deadline =
        read.block.filter(|block| !block.is_zero()).map(|b| tokio::time::Instant::now() + b);
    // Requests the client pipelined behind the `XREAD` make its socket readable for good:
    // then only the end of the wait notices a hang-up.
    let mut watch_socket = true;
    loop {
        let permit = replies.clone().acquire_owned().await.ok();
        match read_streams(engine, reader.streams, &starts, read.count, protocol).await {
            Ok(Some(reply)) => return Some(Ok((reply, permit))),
            Ok(None) => {}
            Err(error) => return Some(Err(error)),
        }
        drop(permit);
        if read.block.is_none() || *shutdown.borrow() {
            return Some(Ok((null(protocol), None)));
        }
        let _blocked = reader.streams.blocked.enter();
        let woken = async {
            loop {
                tokio::select! {
                    woken = any_changed(&mut watches) => return Wake::Entries(woken),
                    _ = shutdown.changed() => return Wake::Entries(false),
                    gone = hung_up(reader.socket), if watch_socket => match gone {
                        true => return Wake::HungUp,
                        false => watch_socket = false,
                    },
                }
            }
        };
        let woken = match deadline {
            Some(deadline) => {
                tokio::time::timeout_at(deadline, woken).await.unwrap_or(Wake::Entries(false))
            }
            None => woken.await,
        };
        match woken {
            Wake::Entries(true) => {}
            Wake::Entries(false) => return Some(Ok((null(protocol), None))),
            Wake::HungUp => return None,
        }
    }
}

/// What ended a wait.
enum Wake {
    /// New entries (true), or the deadline, the shutdown or the engine's end (false).
    Entries(bool),
    /// The client closed its connection or it broke.
    HungUp,
}

/// Waits until `socket` is readable: true if the client hung up (end of stream or an
/// error), false if it sent more requests (left unread for the connection's loop).
async fn hung_up(socket: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(socket.peek(&mut byte).await, Ok(read) if read > 0)
}

fn null(protocol: Protocol) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder { out: &mut out, protocol }.null_array();
    out
}

/// Each stream's inclusive start: `$` becomes the entry after the last durable one.
async fn resolve(
    engine: &Arc<Engine>,
    streams: &[(ShardId, After)],
) -> Result<Vec<(ShardId, StreamStart)>, EngineError> {
    // Only `$` reads the store; other ids need no trip to the blocking pool.
    let reads_store = streams.iter().any(|(_, after)| *after == After::Last);
    let (engine, streams) = (engine.clone(), streams.to_vec());
    let resolve = move || {
        let mut starts = Vec::with_capacity(streams.len());
        for (shard, after) in streams {
            let start = match after {
                After::Id(StreamId::MIN) => StreamStart::Retained,
                After::Id(id) => match id.successor() {
                    Some(next) => StreamStart::At(next),
                    // After the last id there can be: only new entries, which have none.
                    None => StreamStart::At(StreamId::MAX),
                },
                After::Last => {
                    let bounds = engine.stream_bounds(shard)?;
                    let next = StreamId { batch_seq: bounds.next_batch, index: 0 };
                    StreamStart::At(bounds.last.and_then(StreamId::successor).unwrap_or(next))
                }
            };
            starts.push((shard, start));
        }
        Ok(starts)
    };
    if reads_store {
        blocking(resolve).await
    } else {
        resolve()
    }
}

/// Runs `read` on the blocking pool.
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(read).await.unwrap_or_else(|error| {
        Err(EngineError::Config(format!("the stream read failed: {error}")))
    })
}

/// True once any of `watches` moved; false if the engine is gone.
async fn any_changed(watches: &mut [watch::Receiver<u64>]) -> bool {
    let mut changes: Vec<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = watches
        .iter_mut()
        .map(|watch| {
            let change: Pin<Box<dyn Future<Output = bool> + Send + '_>> =
                Box::pin(async move { watch.changed().await.is_ok() });
            change
        })
        .collect();
    std::future::poll_fn(|context| {
        for change in &mut changes {
            if let Poll::Ready(alive) = change.as_mut().poll(context) {
                return Poll::Ready(alive);
            }
        }
        Poll::Pending
    })
    .await
}

/// Reads every stream from its start once: the encoded `XREAD` reply, or `None` if no
/// stream has an entry.
async fn read_streams(
    engine: &Arc<Engine>,
    streams: &Arc<Streams>,
    starts: &[(ShardId, StreamStart)],
    count: Option<usize>,
    protocol: Protocol,
) -> Result<Option<Vec<u8>>, EngineError> {
    let (engine, streams, starts) = (engine.clone(), streams.clone(), starts.to_vec());
    blocking(move || {
        // Each stream gets an equal part of the reply, so a busy shard cannot starve the
        // others of a reader that follows them all.
        let parts = starts.len().max(1);
        let entries = (STREAM_REPLY_ENTRIES_MAX / parts).max(1);
        let entries = count.map_or(entries, |count| count.min(entries));
        let limit = Limit { entries, bytes: STREAM_REPLY_BYTES_MAX / parts };
        let mut found = Vec::new();
        let mut total = 0;
        for (shard, start) in starts {
            let mut taken = Vec::new();
            let (read, bytes) =
                streams.encoded.read(&engine, shard, start, StreamId::MAX, limit, &mut taken)?;
            if read > 0 {
                total += bytes;
                found.push((shard, read, taken));
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        let mut reply = Vec::with_capacity(total + 64 * found.len());
        let mut encoder = Encoder { out: &mut reply, protocol };
        // RESP3 clients get the map Redis 7 sends them; RESP2 ones an array of pairs.
        match protocol {
            Protocol::Resp2 => encoder.array(found.len()),
            Protocol::Resp3 => encoder.map(found.len()),
        }
        for (shard, read, taken) in found {
            if protocol == Protocol::Resp2 {
                encoder.array(2);
            }
            encoder.bulk(format!("{STREAM_PREFIX}{shard}").as_bytes());
            encoder.array(read);
            for taken in &taken {
                encoder.out.extend_from_slice(taken.bytes());
            }
        }
        Ok(Some(reply))
    })
    .await
}

/// Answers an `XRANGE`: the entries from start to end, at most the count.
pub async fn xrange(reader: Reader<'_>, range: XRange) -> Reply {
    let permit = reader.replies.clone().acquire_owned().await.ok();
    let (engine, streams, protocol) =
        (reader.engine.clone(), reader.streams.clone(), reader.protocol);
    let reply = blocking(move || {
        let max = STREAM_REPLY_ENTRIES_MAX;
        let limit = Limit {
            entries: range.count.map_or(max, |count| count.min(max)),
            bytes: STREAM_REPLY_BYTES_MAX,
        };
        let mut taken = Vec::new();
        let (read, bytes) = match range.end {
            Some(end) => {
                streams.encoded.read(&engine, range.shard, range.start, end, limit, &mut taken)?
            }
            None => (0, 0),
        };
        let mut out = Vec::with_capacity(bytes + 16);
        Encoder { out: &mut out, protocol }.array(read);
        for taken in &taken {
            out.extend_from_slice(taken.bytes());
        }
        Ok(out)
    })
    .await?;
    Ok((reply, permit))
}

/// Answers `STREAMS.INFO`: for each stream `[name, first-entry-id, last-entry-id]` as the
/// map `{name, first_id, last_id}` (`last_id` `0-0` while the stream has no entry).
pub async fn info(engine: &Arc<Engine>, protocol: Protocol) -> Reply {
    let engine = engine.clone();
    let reply = blocking(move || {
        let mut out = Vec::new();
        let mut encoder = Encoder { out: &mut out, protocol };
        encoder.array(usize::from(engine.shards()));
        for shard in 0..engine.shards() {
            let bounds = engine.stream_bounds(shard)?;
            encoder.map(3);
            encoder.bulk(b"name");
            encoder.bulk(format!("{STREAM_PREFIX}{shard}").as_bytes());
            encoder.bulk(b"first_id");
            encode_id(&mut encoder, bounds.first);
            encoder.bulk(b"last_id");
            encode_id(&mut encoder, bounds.last.unwrap_or(StreamId::MIN));
        }
        Ok(out)
    })
    .await?;
    Ok((reply, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<&[u8]> {
        line.split(' ').map(str::as_bytes).collect()
    }

    #[test]
    fn xread_takes_redis_syntax() {
        let read = parse_xread(&words("COUNT 10 BLOCK 0 STREAMS changes:0 changes:1 0 $")).unwrap();
        assert_eq!(read.count, Some(10));
        assert_eq!(read.block, Some(Duration::ZERO));
        assert_eq!(read.streams, vec![(0, After::Id(StreamId::MIN)), (1, After::Last)]);
        let read = parse_xread(&words("streams changes:3 5-2")).unwrap();
        assert_eq!(read.streams, vec![(3, After::Id(StreamId { batch_seq: 5, index: 2 }))]);
        assert_eq!(read.block, None);
        assert_eq!(parse_xread(&words("COUNT 0 STREAMS changes:0 7")).unwrap().count, None);
        for bad in [
            "STREAMS changes:0",
            "STREAMS changes:0 changes:1 0",
            "STREAMS orders 0",
            "STREAMS changes:0 1-x",
            "STREAMS changes:0 -1",
            "BLOCK -5 STREAMS changes:0 0",
            "COUNT STREAMS changes:0 0",
            "NOACK STREAMS changes:0 0",
            "COUNT 5",
        ] {
            assert!(parse_xread(&words(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn xrange_takes_minus_plus_incomplete_and_exclusive_ids() {
        let range = parse_xrange(&words("changes:1 - +")).unwrap().unwrap();
        assert_eq!(
            (range.shard, range.start, range.end),
            (1, StreamStart::Retained, Some(StreamId::MAX))
        );
        let range = parse_xrange(&words("changes:0 4 4 COUNT 2")).unwrap().unwrap();
        assert_eq!(range.start, StreamStart::At(StreamId { batch_seq: 4, index: 0 }));
        assert_eq!(range.end, Some(StreamId { batch_seq: 4, index: u64::MAX }));
        assert_eq!(range.count, Some(2));
        let range = parse_xrange(&words("changes:0 (4-2 (5-0")).unwrap().unwrap();
        assert_eq!(range.start, StreamStart::At(StreamId { batch_seq: 4, index: 3 }));
        assert_eq!(range.end, Some(StreamId { batch_seq: 4, index: u64::MAX }));
        assert_eq!(parse_xrange(&words("changes:0 - (0-0")).unwrap().unwrap().end, None);
        assert_eq!(parse_xrange(&words("changes:0 -")).unwrap(), None);
        assert!(parse_xrange(&words("changes:0 - + LIMIT 2")).is_err());
    }
}
