//! The shards of plafond: the runtime around the pure core (`plafond-core`).
//!
//! A shard is a single-writer loop that owns a partition of the accounts. The core
//! decides; this crate stores, schedules and answers:
//!
//! - [`remembered`]: where a shard finds what a command id remembers (on disk, beside the
//!   log, and the ids in flight);
//! - [`log`], [`store`]: the on-disk changelog and the RocksDB group-commit writer;
//! - [`archive`]: checksummed segment files of old log batches, and their replay;
//! - [`digest`]: a shard's state digest, equal on replicas that applied the same batches;
//! - [`watermark`], [`health`]: the acknowledged-write witness kept outside the WAL, and
//!   whether the storage still takes writes;
//! - [`reply`], [`actor`]: how outcomes travel back, and the loop that ties it together;
//! - [`histogram`], [`outcomes`]: what the shards and the writer count for `/metrics`
//!   (power-of-two histograms, answers by kind and outcome);
//! - [`limits`]: the runtime's limits, and how they relate to the core's.
//!
//! The core's modules are re-exported under their old paths (`plafond_shards::money`,
//! `plafond_shards::apply`, ...), so one path names each item whichever crate holds it.
//!
//! Nothing here reads a wall clock: every input carries the time it was stamped with at
//! ingress, so replaying the log reproduces the state exactly.

#![warn(missing_docs)]

pub use plafond_core::{
    apply, authorization, calendar, check, command, holds, idempotency, ids, interest, money,
    region, state, table, window,
};

pub mod actor;
pub mod archive;
pub mod digest;
pub mod health;
pub mod histogram;
pub mod limits;
pub mod log;
pub mod outcomes;
pub mod remembered;
pub mod reply;
pub mod store;
pub mod watermark;
