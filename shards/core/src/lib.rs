//! The pure core of plafond: what a shard decides, and nothing about how it is stored or
//! scheduled.
//!
//! - [`money`], [`ids`], [`command`]: the vocabulary (amounts, ids, commands, outcomes);
//! - [`region`], [`calendar`]: regions and their business days in their own time zone;
//! - [`window`], [`interest`]: the seven-day card window and the half-month savings rule;
//! - [`holds`], [`authorization`]: card holds (§12), their table and the decisions on them;
//! - [`state`], [`table`], [`apply`]: a shard's state (its big tables capturable at an
//!   instant without stopping it) and the pure function that decides a command;
//! - [`check`]: the state's invariants ([`state::ShardState::check`]), checked on every
//!   state read from a file;
//! - [`idempotency`]: what a command id remembers, and what a retry gets;
//! - [`limits`]: every limit of the core, with its unit and its relations to the others.
//!
//! This crate does no I/O: it depends on no storage, thread or channel crate, reads no
//! clock and spawns nothing, so the compiler (not a convention) keeps [`apply::apply`] a
//! function of its arguments. The runtime around it (log, store, shard loop, replies)
//! is `plafond-shards`.

#![warn(missing_docs)]

pub mod apply;
pub mod authorization;
pub mod calendar;
pub mod check;
pub mod command;
pub mod holds;
pub mod idempotency;
pub mod ids;
pub mod interest;
pub mod limits;
pub mod money;
pub mod region;
pub mod state;
pub mod table;
pub mod window;
