//! The batches the change stream decoded last, kept for the next read.
//!
//! A batch holds up to a combined submission's commands (tens of thousands of entries), and
//! a reader takes a few thousand per `XREAD`: without this, each read of a big batch would
//! decode it again from its first entry, and following it would cost the square of its size.
//! Readers following the streams read the same few batches, so a handful kept is enough;
//! the whole is bounded by [`STREAM_DECODED_ENTRIES_MAX`] entries.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use plafond_shards::ids::ShardId;
use plafond_shards::log::{decode_batch, Entry, LogError};

use super::fields;

pub use crate::limits::STREAM_DECODED_ENTRIES_MAX;

/// One decoded batch.
struct Decoded {
    shard: ShardId,
    seq: u64,
    entries: Arc<Batch>,
}

/// A batch's entries, and where each one's stream entries start: a read from the middle
/// of a big batch finds its entry at once instead of counting the parts of every entry
/// before it (which `perf` put at a third of serving a batch read piece by piece).
pub(crate) struct Batch {
    /// The logged entries, in order.
    pub(crate) entries: Vec<Entry>,
    /// The stream index (from 1) of each entry's first part, when some entry gives more
    /// than one ([`fields::parts`]); empty when each gives one, entry `i` being index `i + 1`.
    first_parts: Vec<u64>,
    /// How many stream entries the batch gives.
    pub(crate) parts: u64,
}

impl Batch {
    fn new(entries: Vec<Entry>) -> Batch {
        let mut first_parts = Vec::new();
        let mut parts = 0u64;
        if entries.iter().any(|entry| fields::parts(entry) != 1) {
            first_parts.reserve_exact(entries.len());
            for entry in &entries {
                first_parts.push(parts + 1);
                parts += fields::parts(entry) as u64;
            }
        } else {
            parts = entries.len() as u64;
        }
        Batch { entries, first_parts, parts }
    }

    /// The position of the entry holding stream index `first` (from 1), and the index of
    /// the last part before that entry; past the end, the batch's length and its parts.
    pub(crate) fn locate(&self, first: u64) -> (usize, u64) {
        if first > self.parts {
            return (self.entries.len(), self.parts);
        }
        if self.first_parts.is_empty() {
            let at = first.saturating_sub(1);
            return (at as usize, at);
        }
        let at = self.first_parts.partition_point(|&start| start <= first).saturating_sub(1);
        (at, self.first_parts[at] - 1)
    }
}

/// Decoded batches, oldest first, [`STREAM_DECODED_ENTRIES_MAX`] entries at most.
#[derive(Default)]
pub(crate) struct DecodedBatches {
    batches: Mutex<VecDeque<Decoded>>,
}

impl DecodedBatches {
    /// Batch `seq` of `shard`, whose stored value is `value`: decoded now, or as decoded by
    /// an earlier read (a batch's value never changes once written).
    pub(crate) fn get(
        &self,
        shard: ShardId,
        seq: u64,
        value: &[u8],
    ) -> Result<Arc<Batch>, LogError> {
        let found = self
            .lock()
            .iter()
            .find(|d| d.shard == shard && d.seq == seq)
            .map(|d| d.entries.clone());
        if let Some(entries) = found {
            return Ok(entries);
        }
        // Decoded outside the lock: another reader's hit need not wait for it.
        let entries = Arc::new(Batch::new(decode_batch(shard, seq, value)?));
        if entries.entries.len() <= STREAM_DECODED_ENTRIES_MAX {
            let mut batches = self.lock();
            let mut kept: usize = batches.iter().map(|d| d.entries.entries.len()).sum();
            while kept + entries.entries.len() > STREAM_DECODED_ENTRIES_MAX {
                let Some(oldest) = batches.pop_front() else { break };
                kept -= oldest.entries.entries.len();
            }
            batches.push_back(Decoded { shard, seq, entries: entries.clone() });
        }
        Ok(entries)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Decoded>> {
        // A panic while holding it leaves a consistent list: each push or pop is whole.
        self.batches.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plafond_shards::apply::Input;
    use plafond_shards::command::{Command, Request};
    use plafond_shards::log::BatchEncoder;

    fn batch(entries: usize) -> Vec<u8> {
        let mut encoder = BatchEncoder::new();
        for card in 0..entries as u64 {
            let pay = Input::Client(Request::new(Command::Pay { card, amount_minor: 1 }));
            encoder.push(0, &pay, None, &Default::default());
        }
        encoder.finish()
    }

    #[test]
    fn an_entry_of_several_parts_is_found_by_any_of_its_indices() {
        use plafond_shards::command::{ExpiredHold, Rolled};
        let pay = Input::Client(Request::new(Command::Pay { card: 1, amount_minor: 1 }));
        let expired = vec![ExpiredHold { hold: 3, card: 1, released_minor: 5 }; 2];
        let lazy = Some(Rolled { interest: Vec::new(), expired });
        let entry = |lazy| Entry { ts_ms: 0, input: pay.clone(), outcome: None, lazy };
        let batch = Batch::new(vec![entry(lazy), entry(None), entry(None)]);
        assert_eq!(batch.parts, 5, "two expiries before the first pay, then two pays");
        let found: Vec<_> = (1..=6).map(|index| batch.locate(index)).collect();
        assert_eq!(found, [(0, 0), (0, 0), (0, 0), (1, 3), (2, 4), (3, 5)]);
    }

    #[test]
    fn a_batch_read_again_is_not_decoded_again_and_the_total_stays_bounded() {
        let decoded = DecodedBatches::default();
        let half = STREAM_DECODED_ENTRIES_MAX / 2;
        let value = batch(half);
        let first = decoded.get(0, 7, &value).unwrap();
        assert!(Arc::ptr_eq(&first, &decoded.get(0, 7, &value).unwrap()), "kept");
        assert_eq!((first.entries.len(), first.parts), (half, half as u64));
        assert_eq!(first.locate(1), (0, 0));
        assert_eq!(first.locate(7), (6, 6));
        assert_eq!(first.locate(half as u64 + 1), (half, half as u64), "past the end");
        decoded.get(1, 7, &value).unwrap();
        // A third half-sized batch pushes the oldest out.
        decoded.get(0, 8, &value).unwrap();
        assert!(!Arc::ptr_eq(&first, &decoded.get(0, 7, &value).unwrap()), "evicted");
        let kept: usize = decoded.lock().iter().map(|d| d.entries.entries.len()).sum();
        assert!(kept <= STREAM_DECODED_ENTRIES_MAX);
        assert!(decoded.get(0, 9, &value[..value.len() - 1]).is_err(), "a bad value is refused");
    }
}
