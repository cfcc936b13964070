//! Replication of plafond on Raft (SPEC §14): three (or five) replicas, one leader that
//! decides, followers that apply the same committed batches through the same `apply`.
//!
//! The only crate that knows the consensus library (TiKV's raft-rs, `docs/DECISIONS.md`):
//!
//! - [`cluster`]: the members, as `--node-id`/`--cluster` give them;
//! - [`group`]: one Raft entry, one group commit (the disk and wire format of its data);
//! - [`disk`]: the Raft log and hard state in the engine's RocksDB;
//! - [`transport`]: Raft messages over TCP between the members;
//! - [`driver`]: the replica's writer thread, which takes the single node's writer's place;
//! - [`status`]: role, term and leader, for `ROLE`, `-READONLY` and `STATS`;
//! - [`limits`]: every bound of the above.

#![warn(missing_docs)]

pub mod cluster;
pub mod disk;
pub mod driver;
pub mod group;
pub mod limits;
pub mod status;
pub mod transport;

pub use cluster::{Cluster, ClusterError, Member};
pub use driver::{Host, Replica, ReplicaError, ReplicaSetup};
pub use status::{ReplicaStatus, Role, RoleView};
