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

pub use crate::limits::STREAM_DECODED_ENTRIES_MAX;

/// One decoded batch.
struct Decoded {
    shard: ShardId,
    seq: u64,
    entries: Arc<Vec<Entry>>,
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
    ) -> Result<Arc<Vec<Entry>>, LogError> {
        let found = self
            .lock()
            .iter()
            .find(|d| d.shard == shard && d.seq == seq)
            .map(|d| d.entries.clone());
        if let Some(entries) = found {
            return Ok(entries);
        }
        // Decoded outside the lock: another reader's hit need not wait for it.
        let entries = Arc::new(decode_batch(shard, seq, value)?);
        if entries.len() <= STREAM_DECODED_ENTRIES_MAX {
            let mut batches = self.lock();
            let mut kept: usize = batches.iter().map(|d| d.entries.len()).sum();
            while kept + entries.len() > STREAM_DECODED_ENTRIES_MAX {
                let Some(oldest) = batches.pop_front() else { break };
                kept -= oldest.entries.len();
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
    fn a_batch_read_again_is_not_decoded_again_and_the_total_stays_bounded() {
        let decoded = DecodedBatches::default();
        let half = STREAM_DECODED_ENTRIES_MAX / 2;
        let value = batch(half);
        let first = decoded.get(0, 7, &value).unwrap();
        assert!(Arc::ptr_eq(&first, &decoded.get(0, 7, &value).unwrap()), "kept");
        assert_eq!(first.len(), half);
        decoded.get(1, 7, &value).unwrap();
        // A third half-sized batch pushes the oldest out.
        decoded.get(0, 8, &value).unwrap();
        assert!(!Arc::ptr_eq(&first, &decoded.get(0, 7, &value).unwrap()), "evicted");
        let kept: usize = decoded.lock().iter().map(|d| d.entries.len()).sum();
        assert!(kept <= STREAM_DECODED_ENTRIES_MAX);
        assert!(decoded.get(0, 9, &value[..value.len() - 1]).is_err(), "a bad value is refused");
    }
}
