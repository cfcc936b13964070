//! plafond: an in-memory, sharded, durable payment-authorization engine.
//!
//! Accounts live in shards; each shard is a single-writer loop that decides every
//! command against its in-memory state (no overdraft, a sliding seven-day card ceiling),
//! logs the decision to RocksDB, and only then answers. See `ARCHITECTURE.md` for how a
//! command flows, and `SPEC.md` for what it must do.
//!
//! ```
//! use plafond::{AccountKind, Command, Engine, EngineConfig, Outcome, Reason, Request, CommandId};
//!
//! let engine = Engine::open(EngineConfig::in_memory().with_shards(2))?;
//! let region = engine.region_id("eu-west").expect("a built-in region");
//! let Outcome::ProfileOpened { profile } = engine.run(Command::OpenProfile { region })? else {
//!     panic!("a profile opens in a known region")
//! };
//! let opened = engine.run(Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None })?;
//! let Outcome::AccountOpened { card: Some(card), .. } = opened else { panic!("checking has a card") };
//!
//! // The region credits 100_000 at opening; a payment of 2_500 is approved.
//! let pay = Request::with_id(Command::Pay { card, amount_minor: 2_500 }, CommandId::new("order-1")?);
//! let approved = engine.execute(pay.clone())?;
//! assert_eq!(approved, Outcome::Approved { balance_minor: 97_500, spent_7d_minor: 2_500 });
//! // A retry with the same command id gets the same outcome and pays nothing twice.
//! assert_eq!(engine.execute(pay)?, approved);
//! // More than the balance is declined, and changes nothing.
//! let too_much = engine.run(Command::Pay { card, amount_minor: 200_000 })?;
//! assert_eq!(too_much, Outcome::Declined(Reason::InsufficientFunds));
//! // More than the seven-day ceiling (300_000 by default) too.
//! engine.run(Command::Deposit { account: card, amount_minor: 500_000 })?;
//! let over = engine.run(Command::Pay { card, amount_minor: 298_000 })?;
//! assert_eq!(over, Outcome::Declined(Reason::CeilingExceeded));
//! assert!(engine.audit()?.holds());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod checkpoint;
mod clock;
mod config;
mod engine;
mod epochs;
mod error;
mod limits;
mod populate;
mod report;
mod retention;
mod snapshot;
mod time_guard;

pub use checkpoint::{
    CheckpointPolicy, CheckpointReport, CHECKPOINTS_KEPT, CHECKPOINT_INTERVAL_DEFAULT,
    CHECKPOINT_LOG_BYTES_DEFAULT,
};
pub use clock::{
    Clock, ClockMoveError, ManualClock, SystemClock, CLOCK_MOVE_DAYS_MAX, DAY_MS,
    MANUAL_CLOCK_MAX_MS, MANUAL_CLOCK_MIN_MS,
};
pub use config::EngineConfig;
pub use engine::Engine;
pub use error::EngineError;
pub use report::{Audit, RegionStats, ShardStats, Stats, StorageStats};
pub use retention::{
    Archive, LogRetention, Retained, ARCHIVE_DIR_DEFAULT, LOG_RETENTION_DAYS_DEFAULT,
};
pub use time_guard::{ClockGuardReport, ClockJump, TimeGuard, CLOCK_JUMP_DAYS_MAX};

pub use plafond_batch::{BatchError, EpochReport, RegionEpochs};
pub use plafond_mac::{MacKey, MacKeyError, MAC_KEY_BYTES_MIN};
pub use plafond_shards::command::{
    AccountKind, AccountView, CardStatus, CardView, Command, CommandId, Kind, Opening, Outcome,
    ProfileView, Reason, RegionId, Request,
};
pub use plafond_shards::health::Health;
pub use plafond_shards::histogram::Buckets;
pub use plafond_shards::ids::{AccountId, CardId, ProfileId, ShardId, SHARDS_MAX};
/// The most commands one shard decides in one batch (and one log write).
pub use plafond_shards::limits::BATCH_COMMANDS_MAX;
pub use plafond_shards::money::AMOUNT_MAX_MINOR;
pub use plafond_shards::outcomes::CommandCounts;
pub use plafond_shards::region::{Region, RegionError, Regions, Rules};
pub use plafond_shards::reply::{Stopped, Ticket};
pub use plafond_shards::state::RegionCounters;
pub use plafond_shards::store::Durability;
pub use plafond_shards::store::StoreSizes;
pub use plafond_snapshots::{Progress, RestoreReport, SnapshotError, SnapshotReport};

/// Lower-level pieces, for the batch service, snapshots and tools.
pub mod internals {
    pub use plafond_shards::*;
}
