//! The replication's limits, each named with its unit, and how they relate.

use std::time::Duration;

use plafond_shards::limits::GROUP_BYTES_MAX;

/// One Raft tick: the unit of the election timeout and the heartbeat.
pub const TICK: Duration = Duration::from_millis(100);

/// Ticks without a word from the leader before a follower stands (raft-rs randomises the
/// timeout in `[ELECTION_TICKS, 2 * ELECTION_TICKS)`): 1-2 s, so that a new leader serves
/// well inside the 5 s SPEC §14 allows, and a heartbeat late by a loaded core (two cores
/// shared by three replicas) does not depose a live leader.
pub const ELECTION_TICKS: usize = 10;

/// Ticks between two heartbeats of the leader.
pub const HEARTBEAT_TICKS: usize = 2;

/// The most members a cluster has (SPEC §14: three or five).
pub const MEMBERS_MAX: usize = 7;

/// The most bytes of entries one append message carries.
pub const APPEND_BYTES_MAX: u64 = 8 << 20;

/// The most append messages in flight to one follower before the leader waits for its
/// acknowledgements.
pub const APPENDS_IN_FLIGHT_MAX: usize = 256;

/// The most proposals (group commits) the leader has waiting for their commit; past it the
/// writer stops taking shard batches, which pushes back on the shards as a slow disk does.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 128;

/// The largest frame the Raft transport reads: a larger length is a broken or hostile
/// peer, and the connection is closed.
pub const FRAME_BYTES_MAX: usize = 64 << 20;

/// The most messages waiting to be sent to one peer; past it, messages are dropped (Raft
/// sends again what was lost).
pub const OUTBOX_MESSAGES_MAX: usize = 4096;

/// The most messages received and not yet stepped into Raft; past it the readers wait,
/// which pushes back on the peers through TCP.
pub const INBOX_MESSAGES_MAX: usize = 4096;

/// The most Raft connections accepted at once (each peer holds one; the rest are
/// reconnections racing the close of the old one).
pub const CONNECTIONS_MAX: usize = 4 * MEMBERS_MAX;

/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// How long a write to a peer may block before the connection is dropped (a peer that
/// stopped reading, or a partition).
pub const SEND_TIMEOUT: Duration = Duration::from_millis(1000);

/// After a failed connection attempt, the next one waits at least this long.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(100);

/// Entries of the Raft log kept behind the applied index on every replica, so that a
/// follower a little behind catches up from the log.
pub const LOG_ENTRIES_KEPT: u64 = 1024;

/// The most entries of the Raft log kept at all: past it, a follower still behind is
/// left to be rebuilt from a snapshot (the log's disk and the restart time stay bounded).
pub const LOG_ENTRIES_MAX: u64 = 65_536;

/// Entries applied between two compactions of the Raft log.
pub const COMPACT_EVERY_ENTRIES: u64 = 256;

/// How long a node waits for the cluster to elect a leader before `--populate` gives up.
pub const ELECTION_WAIT: Duration = Duration::from_secs(30);

// A frame holds an append of the most entry bytes plus its framing.
const _: () = assert!(APPEND_BYTES_MAX as usize * 2 <= FRAME_BYTES_MAX);
// One entry (a whole group commit) fits in a frame.
const _: () = assert!(GROUP_BYTES_MAX * 2 <= FRAME_BYTES_MAX);
const _: () = assert!(HEARTBEAT_TICKS < ELECTION_TICKS);
const _: () = assert!(LOG_ENTRIES_KEPT < LOG_ENTRIES_MAX);
const _: () = assert!(COMPACT_EVERY_ENTRIES <= LOG_ENTRIES_KEPT);
