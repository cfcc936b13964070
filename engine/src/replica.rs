//! The engine's side of a replica (SPEC §14): what the Raft writer asks of the shards.

use std::sync::Arc;

use crossbeam_channel::bounded;

use plafond_replication::Host;
use plafond_shards::actor::{Mail, Router};
use plafond_shards::ids::ShardId;

use crate::clock::Clock;

/// The handles the replica's writer holds: shared with the engine, never the engine.
pub(crate) struct ReplicaHost {
    pub router: Arc<Router>,
    pub shards: u16,
    pub clock: Arc<dyn Clock>,
    /// Restarts the node in place (a deposed leader, or a follower that was sent a
    /// snapshot): it rebuilds from what is on disk.
    pub on_deposed: Arc<dyn Fn() + Send + Sync>,
}

impl Host for ReplicaHost {
    fn follow(&self, shard: ShardId) {
        self.router.send_internal(shard, Mail::Follow);
    }

    fn lead(&self) {
        // A shard may read its `Lead` and resend its unsettled credits before this loop has
        // told the next shard: a shard still following holds such a credit until its own
        // `Lead` (`plafond_shards::actor`), so the order here does not matter.
        let (done_tx, done_rx) = bounded(usize::from(self.shards));
        for shard in 0..self.shards {
            self.router.send_internal(shard, Mail::Lead { done: done_tx.clone() });
        }
        drop(done_tx);
        // Time stamped from now on never goes behind what the log holds (each shard's
        // `apply` also keeps its own time from going backwards).
        if let Some(latest_ms) = done_rx.iter().max().filter(|&ms| ms != i64::MIN) {
            self.clock.resume_from(latest_ms);
        }
    }

    fn deposed(&self) {
        eprintln!(
            "plafond: this replica lost its lead; it acknowledges nothing more and must be \
             rebuilt from its checkpoint and the committed log"
        );
        (self.on_deposed)();
    }

    fn restart(&self) {
        eprintln!(
            "plafond: this replica was sent a snapshot; it restarts to rebuild its shards from \
             the checkpoint and changelog now on disk"
        );
        (self.on_deposed)();
    }
}
