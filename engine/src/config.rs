//! How an engine is set up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plafond_shards::ids::SHARDS_MAX;
use plafond_shards::region::Regions;
use plafond_shards::store::Durability;

use plafond_mac::MacKey;

use crate::checkpoint::CheckpointPolicy;
use crate::clock::{Clock, SystemClock};
use crate::error::EngineError;
use crate::retention::LogRetention;
use crate::time_guard::TimeGuard;

/// Everything [`crate::Engine::open`] needs.
#[derive(Clone)]
pub struct EngineConfig {
    /// The RocksDB data directory; required unless `durability` is [`Durability::None`].
    pub data_dir: Option<PathBuf>,
    /// How an outcome is made durable before it is answered.
    pub durability: Durability,
    /// How many shards (threads); fixed for the life of a data directory.
    pub shards: u16,
    /// The regions, checked for daylight-saving trouble at open.
    pub regions: Regions,
    /// Stamps every input at ingress. By default the system clock behind a [`TimeGuard`]
    /// (a jump forward of more than [`crate::CLOCK_JUMP_DAYS_MAX`] days is refused until
    /// accepted); a manual clock makes tests deterministic.
    pub clock: Arc<dyn Clock>,
    /// How often the batch service looks for due epochs; `None` runs them only on
    /// request ([`crate::Engine::run_due_epochs`], [`crate::Engine::run_epoch`]).
    pub epoch_poll: Option<Duration>,
    /// When checkpoints are taken (durable engines only).
    pub checkpoints: CheckpointPolicy,
    /// How much log the data directory keeps, and where older batches go.
    pub log_retention: LogRetention,
    /// The operator's key: with one, every snapshot, checkpoint and archive segment
    /// written carries its MAC, and every one read (restore, checkpoint load) must. `None`
    /// writes and reads the files without a MAC.
    pub mac_key: Option<MacKey>,
    /// One replica of a cluster (SPEC §14), or `None` for a single node.
    pub replication: Option<ReplicationConfig>,
}

/// What a replica needs beyond a single node's settings.
#[derive(Clone)]
pub struct ReplicationConfig {
    /// This node and every member.
    pub cluster: plafond_replication::Cluster,
    /// Called once if this node led and lost its lead: its shards may hold batches that
    /// never committed, so the node must rebuild from its checkpoint and the committed log.
    /// The server restarts itself in place; by default the engine only stops acknowledging.
    pub on_deposed: Arc<dyn Fn() + Send + Sync>,
}

impl ReplicationConfig {
    /// A replica of `cluster` that, once deposed, acknowledges nothing more.
    pub fn new(cluster: plafond_replication::Cluster) -> ReplicationConfig {
        ReplicationConfig { cluster, on_deposed: Arc::new(|| {}) }
    }
}

impl EngineConfig {
    /// Memory only (durability `none`), built-in regions, the system clock behind a
    /// [`TimeGuard`], one shard per core, no MAC key.
    pub fn in_memory() -> EngineConfig {
        EngineConfig {
            data_dir: None,
            durability: Durability::None,
            shards: default_shards(),
            regions: Regions::builtin(),
            clock: Arc::new(TimeGuard::new(Arc::new(SystemClock))),
            epoch_poll: Some(plafond_batch::SCHEDULER_POLL),
            checkpoints: CheckpointPolicy::default(),
            log_retention: LogRetention::default(),
            mac_key: None,
            replication: None,
        }
    }

    /// Durable in `data_dir` (durability `sync`), otherwise as [`EngineConfig::in_memory`].
    pub fn durable(data_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            data_dir: Some(data_dir.into()),
            durability: Durability::Sync,
            ..EngineConfig::in_memory()
        }
    }

    /// With `shards` shards.
    pub fn with_shards(mut self, shards: u16) -> EngineConfig {
        self.shards = shards;
        self
    }

    /// With this clock, as it is: a manual clock, or the bare [`SystemClock`] to run
    /// without the guard against jumps.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> EngineConfig {
        self.clock = clock;
        self
    }

    /// With this host clock behind a [`TimeGuard`], as the default system clock is.
    pub fn with_host_clock(self, host: Arc<dyn Clock>) -> EngineConfig {
        self.with_clock(Arc::new(TimeGuard::new(host)))
    }

    /// With this MAC key for the files written and read (snapshots, checkpoints, archive
    /// segments).
    pub fn with_mac_key(mut self, key: MacKey) -> EngineConfig {
        self.mac_key = Some(key);
        self
    }

    /// With this durability.
    pub fn with_durability(mut self, durability: Durability) -> EngineConfig {
        self.durability = durability;
        self
    }

    /// With the batch service polling every `poll`, or only on request (`None`).
    pub fn with_epoch_poll(mut self, poll: Option<Duration>) -> EngineConfig {
        self.epoch_poll = poll;
        self
    }

    /// With checkpoints taken by this policy.
    pub fn with_checkpoints(mut self, checkpoints: CheckpointPolicy) -> EngineConfig {
        self.checkpoints = checkpoints;
        self
    }

    /// With this log retention and archive.
    pub fn with_log_retention(mut self, log_retention: LogRetention) -> EngineConfig {
        self.log_retention = log_retention;
        self
    }

    /// As one replica of a cluster.
    pub fn with_replication(mut self, replication: ReplicationConfig) -> EngineConfig {
        self.replication = Some(replication);
        self
    }

    /// With these regions.
    pub fn with_regions(mut self, regions: Regions) -> EngineConfig {
        self.regions = regions;
        self
    }

    pub(crate) fn check(&self) -> Result<(), EngineError> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(EngineError::Config(format!("shards must be 1 ..= {SHARDS_MAX}")));
        }
        if self.durability != Durability::None && self.data_dir.is_none() {
            return Err(EngineError::Config(
                "durability sync and async need a data directory".into(),
            ));
        }
        if self.replication.is_some() && self.durability != Durability::Sync {
            return Err(EngineError::Config(
                "a replica needs durability sync: its leader answers once a majority has \
                 fsynced the batch"
                    .into(),
            ));
        }
        Ok(())
    }
}

fn default_shards() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(usize::from(SHARDS_MAX)) as u16)
}
