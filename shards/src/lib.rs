//! The shards of plafond.
//!
//! A shard is a single-writer loop that owns a partition of the accounts. This crate holds
//! everything a shard is made of, from the inside out:
//!
//! - [`money`], [`ids`], [`command`]: the vocabulary (amounts, ids, commands, outcomes);
//! - [`region`], [`calendar`]: regions and their business days in their own time zone;
//! - [`window`], [`interest`]: the seven-day card window and the half-month savings rule;
//! - [`state`], [`table`], [`apply`]: a shard's state (its big tables capturable at an
//!   instant without stopping it) and the pure function that decides a command;
//! - [`idempotency`], [`remembered`]: what a command id remembers, and where a shard finds
//!   it (on disk, beside the log);
//! - [`log`], [`store`]: the on-disk changelog and the RocksDB group-commit writer;
//! - [`archive`]: checksummed segment files of old log batches, and their replay;
//! - [`watermark`], [`health`]: the acknowledged-write witness kept outside the WAL, and
//!   whether the storage still takes writes;
//! - [`reply`], [`actor`]: how outcomes travel back, and the loop that ties it together.
//!
//! Nothing here reads a wall clock: every input carries the time it was stamped with at
//! ingress, so replaying the log reproduces the state exactly.

#![warn(missing_docs)]

pub mod actor;
pub mod apply;
pub mod archive;
pub mod calendar;
pub mod command;
pub mod health;
pub mod idempotency;
pub mod ids;
pub mod interest;
pub mod log;
pub mod money;
pub mod region;
pub mod remembered;
pub mod reply;
pub mod state;
pub mod store;
pub mod table;
pub mod watermark;
pub mod window;
