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
//!
//! Card networks authorize first and settle later (§12): an authorization holds money
//! (`available = balance - held`), captures debit it, a void or expiry releases it.
//!
//! ```
//! use plafond::{AccountKind, BalanceDetail, Command, Engine, EngineConfig, HoldStatus, Outcome, Reason};
//!
//! let engine = Engine::open(EngineConfig::in_memory())?;
//! let region = engine.region_id("eu-west").expect("a built-in region");
//! let Outcome::ProfileOpened { profile } = engine.run(Command::OpenProfile { region })? else { panic!() };
//! let opened = engine.run(Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None })?;
//! let Outcome::AccountOpened { card: Some(card), .. } = opened else { panic!() };
//!
//! // A hotel holds 30_000 of the 100_000 credited at opening; the balance stays.
//! let Outcome::Authorized { hold, available_minor, spent_7d_minor } =
//!     engine.run(Command::Authorize { card, amount_minor: 30_000 })?
//! else {
//!     panic!("approved")
//! };
//! assert_eq!((available_minor, spent_7d_minor), (70_000, 30_000));
//! let detail = engine.run(Command::ReadBalanceDetail { account: card })?;
//! let expected = BalanceDetail { balance_minor: 100_000, available_minor: 70_000, held_minor: 30_000, open_holds: 1 };
//! assert_eq!(detail, Outcome::BalanceDetail(expected));
//! // Payments spend what is available, never held money.
//! let pay = engine.run(Command::Pay { card, amount_minor: 70_001 })?;
//! assert_eq!(pay, Outcome::Declined(Reason::InsufficientFunds));
//! // The hotel captures 25_000 at checkout and releases the rest.
//! let captured = engine.run(Command::CaptureFinal { hold, amount_minor: 25_000 })?;
//! assert_eq!(captured, Outcome::Captured { balance_minor: 75_000, held_minor: 0 });
//! let Outcome::Hold(view) = engine.run(Command::ReadHold { hold })? else { panic!() };
//! assert_eq!((view.status, view.captured_minor, view.released_minor), (HoldStatus::Closed, 25_000, 5_000));
//! // A second capture finds the hold closed.
//! let again = engine.run(Command::Capture { hold, amount_minor: 1 })?;
//! assert_eq!(again, Outcome::Declined(Reason::HoldClosed));
//! let audit = engine.audit()?;
//! assert!(audit.holds() && audit.captures_minor == 25_000 && audit.held_minor == 0);
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
mod replica;
mod report;
mod retention;
mod snapshot;
pub mod stream;
mod time_guard;

pub use checkpoint::{
    CheckpointPolicy, CheckpointReport, CHECKPOINTS_KEPT, CHECKPOINT_INTERVAL_DEFAULT,
    CHECKPOINT_LOG_BYTES_DEFAULT,
};
pub use clock::{
    Clock, ClockMoveError, ManualClock, SystemClock, CLOCK_MOVE_DAYS_MAX, DAY_MS,
    MANUAL_CLOCK_MAX_MS, MANUAL_CLOCK_MIN_MS,
};
pub use config::{EngineConfig, ReplicationConfig};
pub use engine::Engine;
pub use error::{CheckpointError, EngineError};
pub use plafond_replication::limits::ELECTION_WAIT;
pub use plafond_replication::{Cluster, ClusterError, Member, ReplicaStatus, Role, RoleView};
pub use report::{Audit, RegionStats, ShardStats, Stats, StorageStats};
pub use retention::{
    Archive, LogRetention, Retained, ARCHIVE_DIR_DEFAULT, LOG_RETENTION_DAYS_DEFAULT,
};
pub use time_guard::{ClockGuardReport, ClockJump, TimeGuard, CLOCK_JUMP_DAYS_MAX};

pub use plafond_batch::{BatchError, EpochReport, RegionEpochs};
pub use plafond_mac::{MacKey, MacKeyError, MAC_KEY_BYTES_MIN};
pub use plafond_shards::command::{
    AccountKind, AccountView, BalanceDetail, CardStatus, CardView, Command, CommandId, HoldView,
    Kind, Opening, Outcome, ProfileView, Reason, RegionId, Release, Request,
};
pub use plafond_shards::health::Health;
pub use plafond_shards::histogram::Buckets;
pub use plafond_shards::holds::{
    HoldStatus, HOLDS_PER_ACCOUNT_MAX, HOLDS_PER_SHARD_MAX, HOLD_EXPIRY_DAYS_DEFAULT,
    HOLD_EXPIRY_DAYS_MAX, HOLD_KEPT_DAYS,
};
pub use plafond_shards::ids::{AccountId, CardId, HoldId, ProfileId, ShardId, SHARDS_MAX};
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
