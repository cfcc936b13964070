//! The engine's side of the UpdateBatchingService: how epochs reach the shards and where
//! their completion is recorded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use plafond_batch::{BatchError, EpochHost, EpochReport, RegionEpochs};
use plafond_shards::actor::{Mail, Router, ShardMetrics};
use plafond_shards::apply::Input;
use plafond_shards::calendar::Day;
use plafond_shards::command::RegionId;
use plafond_shards::ids::ShardId;
use plafond_shards::region::Regions;
use plafond_shards::store::{Store, StoreError};

use crate::clock::Clock;
use crate::engine::Engine;

/// The handles the batch service holds: shared with the engine, never the engine itself,
/// so the service's thread does not keep the engine alive.
pub(crate) struct EngineHost {
    pub regions: Arc<Regions>,
    pub clock: Arc<dyn Clock>,
    pub router: Arc<Router>,
    pub metrics: Vec<Arc<ShardMetrics>>,
    pub store: Option<Arc<Store>>,
    /// Without a store (durability `none`), completed epochs are remembered in memory.
    pub memory: std::sync::Mutex<Vec<Option<Day>>>,
    /// A replica's status: only its leader runs epochs.
    pub replica: Option<Arc<plafond_replication::ReplicaStatus>>,
}

impl EngineHost {
    /// The epochs remembered in memory; a panic elsewhere while holding the lock left the
    /// days whole (each is one store), so a poisoned lock is taken over.
    fn memory(&self) -> std::sync::MutexGuard<'_, Vec<Option<Day>>> {
        self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl EpochHost for EngineHost {
    fn regions(&self) -> &Regions {
        &self.regions
    }

    fn leads(&self) -> bool {
        self.replica.as_ref().is_none_or(|status| status.serving())
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn shard_count(&self) -> u16 {
        self.metrics.len() as u16
    }

    fn accounts(&self, shard: ShardId) -> u64 {
        self.metrics.get(usize::from(shard)).map_or(0, |m| m.accounts.load(Ordering::Relaxed))
    }

    fn holds(&self, shard: ShardId) -> u64 {
        self.metrics.get(usize::from(shard)).map_or(0, |m| m.holds.load(Ordering::Relaxed))
    }

    fn send(&self, shard: ShardId, input: Input, done: Sender<()>) {
        let mail = Mail::Input { ts_ms: self.clock.now_ms(), input, done: Some(done) };
        self.router.send_internal(shard, mail);
    }

    fn take_pause_max(&self) -> Duration {
        let pause_ns =
            self.metrics.iter().map(|m| m.roll_pause_max_ns.swap(0, Ordering::Relaxed)).max();
        Duration::from_nanos(pause_ns.unwrap_or(0))
    }

    fn last_epoch(&self, region: RegionId) -> Result<Option<Day>, StoreError> {
        match &self.store {
            Some(store) => store.last_epoch(region),
            None => Ok(self.memory().get(usize::from(region)).copied().flatten()),
        }
    }

    fn record_epoch(&self, region: RegionId, day: Day) -> Result<(), StoreError> {
        match &self.store {
            Some(store) => {
                store.record_epoch(region, day)?;
                set_ids_horizon(store, &self.regions, region, day);
                Ok(())
            }
            None => {
                let mut memory = self.memory();
                if let Some(slot) = memory.get_mut(usize::from(region)) {
                    *slot = Some(day);
                }
                Ok(())
            }
        }
    }
}

/// Step 3 of §4: once `region`'s epoch of `day` is done, its idempotency records of days
/// past retention may go (the compaction filter drops them). A record of day D answers
/// through day `D + retention - 1`, so days before `day - retention + 1` are past.
pub(crate) fn set_ids_horizon(store: &Store, regions: &Regions, region: RegionId, day: Day) {
    let retention = regions.get(region).map_or(0, |r| i32::from(r.idempotency_retention_days));
    store.set_ids_horizon(region, day.saturating_sub(retention).saturating_add(1));
}

impl Engine {
    /// Runs every epoch that is due now (what the scheduler does at each poll): those
    /// after each region's last completed one, up to its current business day.
    pub fn run_due_epochs(&self) -> Result<Vec<EpochReport>, BatchError> {
        self.batch.run_due()
    }

    /// Runs `region`'s epoch for its current business day now (`BATCH.RUN`).
    pub fn run_epoch(&self, region: &str) -> Result<EpochReport, BatchError> {
        self.batch.run_now(region)
    }

    /// Stops every epoch run at its next chunk and refuses later ones (shutdown begins):
    /// what completed is recorded, the rest runs after a restart.
    pub fn stop_epochs(&self) {
        self.batch.stop();
    }

    /// Per region: the last completed epoch, its duration and longest pause
    /// (`BATCH.STATUS`), with the region's name. Never waits for an epoch in progress.
    pub fn epoch_status(&self) -> Vec<(String, RegionEpochs)> {
        let names = self.regions().iter().map(|r| r.name.clone());
        names.zip(self.batch.status()).collect()
    }
}
