//! The change stream as Redis Streams (SPEC §13): `XREAD`, `XRANGE` and `STREAMS.INFO` on
//! the streams `changes:<shard>`, with Redis's argument syntax and reply shapes, so that any
//! Redis client's stream consumer works unchanged.
//!
//! Reading runs on the blocking pool (it iterates RocksDB and decodes batches, never on a
//! shard's thread nor an I/O thread); `BLOCK` waits on the engine's durable marks, woken by
//! the writer, not by polling. A reply holds at most [`STREAM_REPLY_ENTRIES_MAX`] entries
//! and about [`STREAM_REPLY_BYTES_MAX`] bytes (`COUNT` asks for fewer, never more; without
//! `COUNT` the cap applies and the client reads on from the last id, as it does anyway), and
//! at most [`STREAM_REPLIES_IN_FLIGHT_MAX`] are being read or written at once, so readers
//! that never read their sockets cannot grow the server's memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use plafond::stream::{Field, FieldValue, StreamId, StreamStart};
use plafond::{Engine, EngineError, ShardId};
use plafond_wire::{Encoder, Protocol};

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

/// How much of a reply one stream may fill.
#[derive(Clone, Copy)]
struct Limit {
    entries: usize,
    bytes: usize,
}

/// The reply bytes of an engine error (`-ERR TRIMMED <first_id>`, ...).
pub fn render_error(encoder: &mut Encoder<'_>, error: &EngineError) {
    encoder.error(&format!("ERR {error}"));
}

/// Answers an `XREAD`: at once if any stream has entries after its id, else after waiting
/// up to `BLOCK` for one (nil if none came, or `shutdown` fired).
pub async fn xread(
    engine: &Arc<Engine>,
    read: XRead,
    protocol: Protocol,
    replies: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
) -> Reply {
    let mut watches = Vec::with_capacity(read.streams.len());
    for &(shard, _) in &read.streams {
        let mut watch = engine.stream_watch(shard)?;
        // Subscribed before the first read: a batch made durable after it wakes the wait.
        watch.mark_unchanged();
        watches.push(watch);
    }
    let starts = resolve(engine, &read.streams).await?;
    let deadline =
        read.block.filter(|block| !block.is_zero()).map(|b| tokio::time::Instant::now() + b);
    loop {
        let permit = replies.clone().acquire_owned().await.ok();
        if let Some(reply) = read_streams(engine, &starts, read.count, protocol).await? {
            return Ok((reply, permit));
        }
        drop(permit);
        if read.block.is_none() || *shutdown.borrow() {
            return Ok((null(protocol), None));
        }
        let woken = async {
            tokio::select! {
                woken = any_changed(&mut watches) => woken,
                _ = shutdown.changed() => false,
            }
        };
        let woken = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, woken).await.unwrap_or(false),
            None => woken.await,
        };
        if !woken {
            return Ok((null(protocol), None));
        }
    }
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
    starts: &[(ShardId, StreamStart)],
    count: Option<usize>,
    protocol: Protocol,
) -> Result<Option<Vec<u8>>, EngineError> {
    let (engine, starts) = (engine.clone(), starts.to_vec());
    blocking(move || {
        // Each stream gets an equal part of the reply, so a busy shard cannot starve the
        // others of a reader that follows them all.
        let streams = starts.len().max(1);
        let entries = (STREAM_REPLY_ENTRIES_MAX / streams).max(1);
        let entries = count.map_or(entries, |count| count.min(entries));
        let limit = Limit { entries, bytes: STREAM_REPLY_BYTES_MAX / streams };
        let mut found = Vec::new();
        for (shard, start) in starts {
            let mut out = Vec::new();
            let mut encoder = Encoder { out: &mut out, protocol };
            let read = read_entries(&engine, shard, start, StreamId::MAX, limit, &mut encoder)?;
            if read > 0 {
                found.push((shard, read, out));
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut encoder = Encoder { out: &mut out, protocol };
        // RESP3 clients get the map Redis 7 sends them; RESP2 ones an array of pairs.
        match protocol {
            Protocol::Resp2 => encoder.array(found.len()),
            Protocol::Resp3 => encoder.map(found.len()),
        }
        for (shard, read, entries) in found {
            if protocol == Protocol::Resp2 {
                encoder.array(2);
            }
            encoder.bulk(format!("{STREAM_PREFIX}{shard}").as_bytes());
            encoder.array(read);
            encoder.out.extend_from_slice(&entries);
        }
        Ok(Some(out))
    })
    .await
}

/// Encodes the entries of one read (each `[id, [field, value, ...]]`), at most `limit`
/// (its bytes overshot by one entry at most), and returns how many.
fn read_entries(
    engine: &Engine,
    shard: ShardId,
    start: StreamStart,
    end: StreamId,
    limit: Limit,
    encoder: &mut Encoder<'_>,
) -> Result<usize, EngineError> {
    let read = engine.stream_read(shard, start, end, limit.entries, |id, fields| {
        encode_entry(encoder, id, fields);
        encoder.out.len() < limit.bytes
    })?;
    Ok(read.entries)
}

/// `[id, [field, value, ...]]`, every value a bulk string as Redis stores them.
fn encode_entry(encoder: &mut Encoder<'_>, id: StreamId, fields: &[Field]) {
    encoder.array(2);
    encode_id(encoder, id);
    encoder.array(fields.len() * 2);
    for field in fields {
        encoder.bulk(field.name.as_bytes());
        match &field.value {
            FieldValue::Number(n) => encoder.bulk_decimal(i128::from(*n)),
            FieldValue::Signed(n) => encoder.bulk_decimal(i128::from(*n)),
            FieldValue::Word(word) => encoder.bulk(word.as_bytes()),
            FieldValue::Id(id) => encoder.bulk(id.as_bytes()),
        }
    }
}

/// `<batch>-<index>` as a bulk string, formatted on the stack: every entry has one.
fn encode_id(encoder: &mut Encoder<'_>, id: StreamId) {
    use std::io::Write as _;
    // Two u64s of at most 20 digits each and the dash.
    let mut text = [0u8; 41];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    // The buffer holds the longest id, so the write cannot fail.
    let _ = write!(cursor, "{}-{}", id.batch_seq, id.index);
    let len = cursor.position() as usize;
    encoder.bulk(&text[..len]);
}

/// Answers an `XRANGE`: the entries from start to end, at most the count.
pub async fn xrange(
    engine: &Arc<Engine>,
    range: XRange,
    protocol: Protocol,
    replies: &Arc<Semaphore>,
) -> Reply {
    let permit = replies.clone().acquire_owned().await.ok();
    let engine = engine.clone();
    let reply = blocking(move || {
        let mut entries = Vec::new();
        let max = STREAM_REPLY_ENTRIES_MAX;
        let limit = Limit {
            entries: range.count.map_or(max, |count| count.min(max)),
            bytes: STREAM_REPLY_BYTES_MAX,
        };
        let mut encoder = Encoder { out: &mut entries, protocol };
        let read = match range.end {
            Some(end) => read_entries(&engine, range.shard, range.start, end, limit, &mut encoder)?,
            None => 0,
        };
        let mut out = Vec::with_capacity(entries.len() + 16);
        Encoder { out: &mut out, protocol }.array(read);
        out.extend_from_slice(&entries);
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
