//! Stream entries encoded as RESP once and kept, shared by every reader: a follower at the
//! tail of a stream, or a second reader of the same range, costs a copy of the bytes, not
//! a decode and the formatting of every number again.
//!
//! Kept by piece: [`PIECE_ENTRIES`] entries of one batch (the last piece of a batch may
//! hold fewer), keyed by `(shard, batch, piece)`. A piece holds only durable entries and a
//! durable batch never changes, so a piece is never stale; retention only deletes batches,
//! and a read checks the first retained batch before it takes a piece. At most
//! [`STREAM_ENCODED_BYTES_MAX`] bytes are kept, the oldest pieces going first.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use plafond::stream::{Field, FieldValue, StreamId, StreamStart};
use plafond::{Engine, EngineError, ShardId};
use plafond_wire::{Encoder, Protocol};

pub use crate::limits::{STREAM_ENCODED_BYTES_MAX, STREAM_PIECE_ENTRIES as PIECE_ENTRIES};

/// What an entry of a payment takes, about: a piece's first allocation.
const ENTRY_BYTES_TYPICAL: usize = 256;

/// A piece's place: shard, batch, and the piece's number in the batch.
type Key = (ShardId, u64, u64);

/// Consecutive entries of one batch, each `[id, [field, value, ...]]` in RESP.
pub struct Piece {
    bytes: Vec<u8>,
    /// Where each entry ends in `bytes`.
    ends: Vec<usize>,
}

impl Piece {
    /// How many entries it holds.
    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Where entries `from .. to` are in `bytes`.
    fn entries(&self, from: usize, to: usize) -> Range<usize> {
        let start = if from == 0 { 0 } else { self.ends[from - 1] };
        start..self.ends[to - 1]
    }

    /// Where entry `at` ends, counted from the start of entry `from`.
    fn span(&self, from: usize, at: usize) -> usize {
        let start = if from == 0 { 0 } else { self.ends[from - 1] };
        self.ends[at] - start
    }
}

/// The pieces kept, oldest first.
#[derive(Default)]
pub struct EncodedEntries {
    kept: Mutex<Kept>,
}

#[derive(Default)]
struct Kept {
    pieces: VecDeque<(Key, Arc<Piece>)>,
    bytes: usize,
}

/// Entries a read took: bytes of a kept piece, copied once, into the reply.
pub struct Taken {
    piece: Arc<Piece>,
    bytes: Range<usize>,
}

impl Taken {
    /// The entries' bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.piece.bytes[self.bytes.clone()]
    }
}

/// How much one read may take.
#[derive(Clone, Copy)]
pub struct Limit {
    pub entries: usize,
    /// Past this many bytes no entry is added (so a reply overshoots it by one entry).
    pub bytes: usize,
}

impl EncodedEntries {
    /// Appends to `out` the entries of `shard` from `start` up to `end` (inclusive) within
    /// `limit`, and returns how many and their bytes. Only durable entries; a start in a
    /// batch retention deleted is refused with `TRIMMED`.
    pub fn read(
        &self,
        engine: &Engine,
        shard: ShardId,
        start: StreamStart,
        end: StreamId,
        limit: Limit,
        out: &mut Vec<Taken>,
    ) -> Result<(usize, usize), EngineError> {
        let span = engine.stream_span(shard)?;
        let mut at = match start {
            StreamStart::Retained => StreamId { batch_seq: span.first_batch, index: 1 },
            StreamStart::At(id) if id.batch_seq < span.first_batch => {
                return Err(plafond::stream::trimmed(shard, span.first_batch));
            }
            StreamStart::At(id) => StreamId { index: id.index.max(1), ..id },
        };
        let (mut entries, mut bytes) = (0, 0);
        while at.batch_seq < span.next_batch
            && at <= end
            && entries < limit.entries
            && bytes < limit.bytes
        {
            let number = (at.index - 1) / PIECE_ENTRIES as u64;
            let piece = self.piece(engine, (shard, at.batch_seq, number))?;
            let from =
                usize::try_from(at.index - 1 - number * PIECE_ENTRIES as u64).unwrap_or(usize::MAX);
            if from >= piece.len() {
                // Past this piece: on to the next piece of the batch, or the next batch.
                at = if piece.len() < PIECE_ENTRIES {
                    StreamId { batch_seq: at.batch_seq + 1, index: 1 }
                } else {
                    StreamId { index: (number + 1) * PIECE_ENTRIES as u64 + 1, ..at }
                };
                continue;
            }
            let mut to = from;
            let room = limit.bytes - bytes;
            while to < piece.len() && entries < limit.entries {
                let id = StreamId { index: at.index + (to - from) as u64, ..at };
                let taken = if to == from { 0 } else { piece.span(from, to - 1) };
                if id > end || taken >= room {
                    break;
                }
                entries += 1;
                to += 1;
            }
            if to == from {
                break;
            }
            let taken = piece.entries(from, to);
            bytes += taken.len();
            out.push(Taken { piece, bytes: taken });
            at.index += (to - from) as u64;
        }
        Ok((entries, bytes))
    }

    /// Piece `key`, kept or encoded now.
    fn piece(&self, engine: &Engine, key: Key) -> Result<Arc<Piece>, EngineError> {
        let found = self.lock().pieces.iter().find(|(k, _)| *k == key).map(|(_, p)| p.clone());
        if let Some(piece) = found {
            return Ok(piece);
        }
        // Encoded outside the lock: another reader's hit need not wait for it. Two readers
        // missing the same piece at once both encode it, and the second copy is not kept.
        let mut piece = encode_piece(engine, key)?;
        // A short last piece of a batch (a follower's, typically) gives its room back.
        piece.bytes.shrink_to_fit();
        let piece = Arc::new(piece);
        let mut kept = self.lock();
        if piece.bytes.len() <= STREAM_ENCODED_BYTES_MAX
            && !kept.pieces.iter().any(|(k, _)| *k == key)
        {
            while kept.bytes + piece.bytes.len() > STREAM_ENCODED_BYTES_MAX {
                let Some((_, oldest)) = kept.pieces.pop_front() else { break };
                kept.bytes -= oldest.bytes.len();
            }
            kept.bytes += piece.bytes.len();
            kept.pieces.push_back((key, piece.clone()));
        }
        Ok(piece)
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        // A panic while holding it leaves a consistent list: each push or pop is whole,
        // and `bytes` is updated beside it.
        self.kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads and encodes piece `key` (of a durable batch: the caller checked).
fn encode_piece(engine: &Engine, (shard, batch_seq, number): Key) -> Result<Piece, EngineError> {
    let first = number * PIECE_ENTRIES as u64 + 1;
    let start = StreamStart::At(StreamId { batch_seq, index: first });
    let end = StreamId { batch_seq, index: first + PIECE_ENTRIES as u64 - 1 };
    // Room for a full piece of typical entries at once: growing it by doubling copied it
    // again and again (a tenth of the server's time while following).
    let bytes = Vec::with_capacity(PIECE_ENTRIES * ENTRY_BYTES_TYPICAL);
    let mut piece = Piece { bytes, ends: Vec::with_capacity(PIECE_ENTRIES) };
    // Entries are arrays of bulk strings, the same bytes in RESP2 and RESP3.
    let mut encoder = Encoder { out: &mut piece.bytes, protocol: Protocol::Resp2 };
    engine.stream_read(shard, start, end, PIECE_ENTRIES, |id, fields| {
        encode_entry(&mut encoder, id, fields);
        piece.ends.push(encoder.out.len());
        true
    })?;
    Ok(piece)
}

/// `[id, [field, value, ...]]`, every value a bulk string as Redis stores them.
fn encode_entry(encoder: &mut Encoder<'_>, id: StreamId, fields: &[Field]) {
    encoder.array(2);
    encode_id(encoder, id);
    encoder.array(fields.len() * 2);
    for field in fields {
        encoder.bulk(field.name.as_bytes());
        match &field.value {
            FieldValue::Number(n) => encoder.bulk_decimal(*n),
            FieldValue::Signed(n) => encoder.bulk_decimal(*n),
            FieldValue::Word(word) => encoder.bulk(word.as_bytes()),
            FieldValue::Id(id) => encoder.bulk(id.as_bytes()),
        }
    }
}

/// `<batch>-<index>` as a bulk string, formatted on the stack: every entry has one.
pub fn encode_id(encoder: &mut Encoder<'_>, id: StreamId) {
    let mut batch = itoa::Buffer::new();
    let mut index = itoa::Buffer::new();
    let (batch, index) = (batch.format(id.batch_seq).as_bytes(), index.format(id.index).as_bytes());
    // Two u64s of at most 20 digits each and the dash.
    let mut text = [0u8; 41];
    text[..batch.len()].copy_from_slice(batch);
    text[batch.len()] = b'-';
    text[batch.len() + 1..batch.len() + 1 + index.len()].copy_from_slice(index);
    encoder.bulk(&text[..batch.len() + 1 + index.len()]);
}
