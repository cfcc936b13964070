//! The change stream (SPEC §13): a shard's log, as the durable entries a downstream system
//! follows.
//!
//! Reading never touches a shard: it iterates RocksDB (one implicit snapshot per read), up
//! to the first batch a machine crash could still take away
//! ([`DurableMarks::synced_next_seq`]), so an entry once shown is never reissued with
//! other content. A reader waiting for more watches that mark ([`Engine::stream_watch`]):
//! the writer moves it after each group commit (the `async` syncer after each fsync).
//!
//! Entry ids are `<batch_seq>-<index>`: the batch's sequence number in the shard's log and
//! the entry's position in it counted from 1, increasing in the shard's order (a roll's
//! logged entry counts as itself and the `INTEREST` and `EXPIRE` entries after it,
//! [`fields::parts`]). Counted from
//! 1 so that `0-0` lies before every entry, as in Redis: "after `0-0`" is "from the start". What an entry says is
//! decided in [`fields`](mod@fields), the one mapping from logged inputs to field/value
//! pairs.

mod decoded;
pub mod fields;

use std::fmt;

use tokio::sync::watch;

use plafond_shards::ids::ShardId;
use plafond_shards::log::log_key;
use plafond_shards::store::{Store, StoreError};

use crate::engine::Engine;
use crate::error::EngineError;
pub use crate::limits::STREAM_READ_ENTRIES_MAX;
pub(crate) use decoded::DecodedBatches;
pub use fields::{Field, FieldValue};

/// An entry's id: its batch in the shard's log and its index in the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// The batch's sequence number in the shard's log.
    pub batch_seq: u64,
    /// The entry's position in the batch, from 1.
    pub index: u64,
}

impl StreamId {
    /// `0-0`: before every entry (the first entry of batch 0 is `0-1`).
    pub const MIN: StreamId = StreamId { batch_seq: 0, index: 0 };
    /// After every entry.
    pub const MAX: StreamId = StreamId { batch_seq: u64::MAX, index: u64::MAX };

    /// The least id after this one, or `None` after [`StreamId::MAX`].
    pub fn successor(self) -> Option<StreamId> {
        match self.index.checked_add(1) {
            Some(index) => Some(StreamId { index, ..self }),
            None => Some(StreamId { batch_seq: self.batch_seq.checked_add(1)?, index: 0 }),
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.batch_seq, self.index)
    }
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStart {
    /// At the first entry retained, whatever retention has deleted (`0`, `0-0`, `-`).
    Retained,
    /// At this id or the first after it. A start in a batch retention deleted is refused
    /// ([`EngineError::StreamTrimmed`]): entries the reader never saw are gone.
    At(StreamId),
}

/// What a shard's stream holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamBounds {
    /// The id of the first entry retained (of the first retained batch, even if that batch
    /// is not durable yet).
    pub first: StreamId,
    /// The id of the last durable entry, or `None` if no entry is both durable and
    /// retained.
    pub last: Option<StreamId>,
    /// The first batch not shown yet: every batch before it is durable.
    pub next_batch: u64,
}

/// The batches a reader may read now: `first_batch .. next_batch` (none when equal).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSpan {
    /// The first batch retained.
    pub first_batch: u64,
    /// The first batch not shown yet: every batch before it is durable.
    pub next_batch: u64,
}

/// What a read visited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamRead {
    /// Entries given to the visitor.
    pub entries: usize,
    /// Whether the read stopped at the end of what is durable (rather than at `count`, at
    /// the end id or because the visitor stopped it).
    pub reached_end: bool,
}

/// Why a read over the store stopped early.
enum Stop {
    /// Enough: the count, the end id or the visitor.
    Enough,
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Stop {
        Stop::Store(error)
    }
}

/// The refusal of a start before `log_start`, the first batch retained.
pub fn trimmed(shard: ShardId, log_start: u64) -> EngineError {
    EngineError::StreamTrimmed { shard, first: StreamId { batch_seq: log_start, index: 1 } }
}

impl Engine {
    /// The store, and `shard` checked, for a stream read.
    fn stream_store(&self, shard: ShardId) -> Result<&Store, EngineError> {
        if shard >= self.shards() {
            return Err(EngineError::NoSuchStream { shard, shards: self.shards() });
        }
        self.store().map(|store| &**store).ok_or_else(|| {
            EngineError::Config(
                "the change stream needs a durable engine (durability sync or async)".into(),
            )
        })
    }

    /// The first retained and the last durable id of `shard`'s stream.
    pub fn stream_bounds(&self, shard: ShardId) -> Result<StreamBounds, EngineError> {
        let store = self.stream_store(shard)?;
        let next_batch = self.marks().synced_next_seq(shard);
        let log_start = store.log_start(shard)?;
        let first = StreamId { batch_seq: log_start, index: 1 };
        let last = match next_batch.checked_sub(1).filter(|&seq| seq >= log_start) {
            None => None,
            Some(seq) => {
                let value = store.db().get(log_key(shard, seq)).map_err(StoreError::from)?;
                // A batch is written with at least one entry; a roll's entry may give more
                // than one stream entry, so the batch is decoded (and kept) to count them.
                match value {
                    None => None,
                    Some(value) => {
                        let batch = self.stream_decoded.get(shard, seq, &value);
                        let count = batch.map_err(StoreError::from)?.parts;
                        (count > 0).then_some(StreamId { batch_seq: seq, index: count })
                    }
                }
            }
        };
        Ok(StreamBounds { first, last, next_batch })
    }

    /// Which batches of `shard` are retained and durable, without reading any: what a
    /// reader that keeps batches it read (the server's encoded entries) checks first.
    pub fn stream_span(&self, shard: ShardId) -> Result<StreamSpan, EngineError> {
        let store = self.stream_store(shard)?;
        let next_batch = self.marks().synced_next_seq(shard);
        Ok(StreamSpan { first_batch: store.log_start(shard)?, next_batch })
    }

    /// Gives `visit` the durable entries of `shard` from `start` up to `end` (inclusive),
    /// at most `count` (itself at most [`STREAM_READ_ENTRIES_MAX`]), in order, each as its
    /// id and its fields; `visit` returns false to stop after that entry. Never waits:
    /// nothing past the durable end is read (see [`Engine::stream_watch`] to wait).
    pub fn stream_read(
        &self,
        shard: ShardId,
        start: StreamStart,
        end: StreamId,
        count: usize,
        mut visit: impl FnMut(StreamId, &[Field]) -> bool,
    ) -> Result<StreamRead, EngineError> {
        let store = self.stream_store(shard)?;
        let count = count.min(STREAM_READ_ENTRIES_MAX);
        let durable = self.marks().synced_next_seq(shard);
        let log_start = store.log_start(shard)?;
        let start = match start {
            StreamStart::Retained => StreamId { batch_seq: log_start, index: 0 },
            StreamStart::At(id) if id.batch_seq < log_start => {
                return Err(trimmed(shard, log_start));
            }
            StreamStart::At(id) => id,
        };
        let mut read = StreamRead::default();
        if count == 0 || start > end {
            return Ok(read);
        }
        let to_seq = durable.min(end.batch_seq.saturating_add(1));
        let mut fields = Vec::new();
        let visited = store.read_log_raw(shard, start.batch_seq, to_seq, |seq, value| {
            let batch = self.stream_decoded.get(shard, seq, value).map_err(StoreError::from)?;
            // The stream's index of the first entry wanted in this batch, from 1.
            let first = if seq == start.batch_seq { start.index.max(1) } else { 1 };
            // The entry holding it, and the stream's index of the last part before it.
            let (at, mut index) = batch.locate(first);
            for entry in &batch.entries[at..] {
                for part in 0..fields::parts(entry) {
                    index += 1;
                    if index < first {
                        continue;
                    }
                    let id = StreamId { batch_seq: seq, index };
                    if id > end {
                        return Err(Stop::Enough);
                    }
                    fields.clear();
                    fields::fields(entry, part, &mut fields);
                    read.entries += 1;
                    if !visit(id, &fields) || read.entries >= count {
                        return Err(Stop::Enough);
                    }
                }
            }
            Ok(())
        });
        match visited {
            Err(Stop::Enough) => Ok(read),
            Err(Stop::Store(error)) => Err(error.into()),
            Ok(next_seq) if next_seq < to_seq => {
                // A gap: retention deleted the batches while this read began.
                let log_start = store.log_start(shard)?;
                if next_seq < log_start {
                    return Err(trimmed(shard, log_start));
                }
                let (expected, found) = (next_seq, to_seq);
                Err(StoreError::LogHole { shard, expected, found }.into())
            }
            Ok(_) => {
                read.reached_end = to_seq == durable;
                Ok(read)
            }
        }
    }

    /// A receiver of `shard`'s durable end (the first batch not shown yet), which changes
    /// whenever new entries become readable: wait on it instead of polling.
    pub fn stream_watch(&self, shard: ShardId) -> Result<watch::Receiver<u64>, EngineError> {
        self.stream_store(shard)?;
        let shards = self.shards();
        self.marks().watch_synced(shard).ok_or(EngineError::NoSuchStream { shard, shards })
    }
}
