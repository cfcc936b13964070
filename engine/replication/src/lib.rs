//! Replication of plafond on Raft (SPEC §14): three (or five) replicas, one leader that
//! decides, followers that apply the same committed batches through the same `apply`.
//!
//! The only crate that knows the consensus library (TiKV's raft-rs, `docs/DECISIONS.md`):
//!
//! - [`cluster`]: the members, as `--node-id`/`--cluster` give them;
//! - [`group`]: one Raft entry, one group commit (the disk and wire format of its data);
//! - [`disk`]: the Raft log and hard state in the engine's RocksDB;
//! - [`transport`]: Raft messages over TCP between the members;
//! - [`snapshot`], [`dump`], [`pull`], [`install`]: a Raft snapshot (the newest checkpoint
//!   and the log after it), made by the leader, pulled in chunks and installed by a follower
//!   too far behind the leader's log;
//! - [`driver`]: the replica's writer thread, which takes the single node's writer's place;
//! - [`status`]: role, term and leader, for `ROLE`, `-READONLY` and `STATS`;
//! - [`limits`]: every bound of the above.

#![warn(missing_docs)]

pub mod cluster;
pub mod disk;
pub mod driver;
pub mod dump;
pub mod group;
pub mod install;
pub mod limits;
pub mod pull;
pub mod snapshot;
pub mod status;
pub mod transport;

pub use cluster::{Cluster, ClusterError, Member};
pub use driver::{Host, Replica, ReplicaError, ReplicaSetup};
pub use install::{finish_pending, InstallError};
pub use status::{ReplicaStatus, Role, RoleView};
