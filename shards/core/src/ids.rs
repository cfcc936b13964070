//! Ids and routing.
//!
//! Ids are dense per shard: the `n`-th profile or account created on shard `s` of `S`
//! gets id `n * S + s`. Routing is therefore `id % S`, with no table and no lock, and a
//! shard finds its own entry at index `id / S`. A checking account's card has the
//! account's id, so a card routes like its account.

/// Index of a shard, `0 .. shards`.
pub type ShardId = u16;
/// A profile id.
pub type ProfileId = u64;
/// An account id.
pub type AccountId = u64;
/// A card id (equal to the id of the checking account it belongs to).
pub type CardId = u64;
/// A hold id (§12): dense per shard like an account id (the n-th hold of shard s is
/// `n * S + s`), so it routes to the shard of the account it holds money of.
pub type HoldId = u64;

pub use crate::limits::SHARDS_MAX;

/// Which shard owns `id`, for `shards` shards.
pub fn shard_of(id: u64, shards: u16) -> ShardId {
    debug_assert!(shards > 0);
    (id % u64::from(shards)) as ShardId
}

/// The index of `id` inside its shard.
pub fn local_of(id: u64, shards: u16) -> u64 {
    id / u64::from(shards)
}

/// The global id of the `local`-th entry of `shard`, or `None` past `u64`.
pub fn global_of(local: u64, shard: ShardId, shards: u16) -> Option<u64> {
    local.checked_mul(u64::from(shards))?.checked_add(u64::from(shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_round_trips() {
        for shards in [1u16, 2, 3, 7] {
            for id in 0..100u64 {
                let (s, l) = (shard_of(id, shards), local_of(id, shards));
                assert_eq!(global_of(l, s, shards), Some(id));
            }
        }
        assert_eq!(global_of(u64::MAX, 1, 2), None);
    }
}
