//! A shard's state digest (SPEC §14): equal on every replica that applied the same
//! batches, so `STATS JSON` shows at a glance whether the replicas agree.

use bincode::enc::write::Writer;
use bincode::error::EncodeError;

use crate::state::ShardState;

/// CRC-32C of the state's canonical encoding in the low 32 bits, the encoding's length in
/// bytes (mod 2^32) in the high 32. The encoding is bincode 2 of every field that a logged
/// input changes (not the latest time seen, which reads move too), with the one hash map
/// (refused credits) in key order, so two replicas with equal states encode equal bytes
/// whatever their maps' iteration order.
pub fn state_digest(state: &ShardState) -> u64 {
    // Named one by one, so a field added to the state does not compile until it is here.
    let ShardState {
        shard,
        shards,
        profiles,
        accounts,
        pending,
        next_transfer_seq,
        credits_seen,
        refused_credits,
        // Reads move a leader's clock without being logged (they change nothing else): a
        // follower's is behind by the reads since the last write. Not part of the digest.
        clock_ms: _,
        rules,
        rolled_day,
        totals,
        counters,
        // Empty in a running shard: the records live on disk beside the log.
        remembered: _,
        holds,
    } = state;
    let mut refused: Vec<_> = refused_credits.iter().collect();
    refused.sort_unstable_by_key(|(key, _)| **key);
    let mut writer = CrcWriter { crc: 0, length: 0 };
    let fields = (shard, shards, profiles, accounts, pending, next_transfer_seq, credits_seen);
    let rest = (refused, rules, rolled_day, totals, counters, holds);
    // The writer never fails: an error could only come from an encoder refusing a value,
    // and then the digest of what was encoded still differs from a whole one's.
    let _ = bincode::encode_into_writer((fields, rest), &mut writer, bincode::config::standard());
    (u64::from(writer.length) << 32) | u64::from(writer.crc)
}

struct CrcWriter {
    crc: u32,
    length: u32,
}

impl Writer for CrcWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.length = self.length.wrapping_add(bytes.len() as u32);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Reason;

    #[test]
    fn equal_states_have_equal_digests_and_a_change_shows() {
        let mut first = ShardState::new(0, 2, 2);
        let mut second = ShardState::new(0, 2, 2);
        for origin in 0..50u16 {
            first.refused_credits.insert((origin % 2, u64::from(origin)), Reason::UnknownAccount);
        }
        for origin in (0..50u16).rev() {
            second.refused_credits.insert((origin % 2, u64::from(origin)), Reason::UnknownAccount);
        }
        assert_eq!(state_digest(&first), state_digest(&second));
        second.clock_ms += 1;
        assert_eq!(state_digest(&first), state_digest(&second), "reads move the clock alone");
        second.next_transfer_seq += 1;
        assert_ne!(state_digest(&first), state_digest(&second));
    }
}
