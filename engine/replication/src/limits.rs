//! The replication's limits, each named with its unit, and how they relate.

use std::time::Duration;

use plafond_shards::limits::GROUP_BYTES_MAX;

/// One Raft tick: the unit of the election timeout and the heartbeat.
pub const TICK: Duration = Duration::from_millis(100);

/// The leader's lease, in ticks: a follower that heard the leader less than this long ago
/// ignores a (pre-)vote request (raft-rs's `check_quorum`), and a leader that heard no
/// majority for this long steps down. 1 s: a heartbeat late by a loaded core (two cores
/// shared by three replicas) does not depose a live leader.
pub const ELECTION_TICKS: usize = 10;

/// The fewest ticks without a word from the leader before a follower stands: two ticks
/// (a heartbeat interval) past the lease. When the first follower stands, the other has
/// heard the same last heartbeat (give or take a tick of phase and a late delivery), so
/// its lease has run out and it answers the pre-vote. With the campaign at the lease
/// itself (raft-rs's default), the first candidate was often ignored and stood again only
/// after a second random timeout: 2-4 s elections, failovers past SPEC §14's 5 s.
pub const CAMPAIGN_TICKS_MIN: usize = ELECTION_TICKS + HEARTBEAT_TICKS;

/// One past the most ticks before a follower stands (raft-rs draws the timeout in
/// `[CAMPAIGN_TICKS_MIN, CAMPAIGN_TICKS_END)` after each heartbeat): 1.2-2 s, a spread of
/// 800 ms, several round trips, so that two followers rarely stand together.
pub const CAMPAIGN_TICKS_END: usize = 2 * ELECTION_TICKS;

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

/// A connection to a peer unused for this long is checked for a close by the peer before
/// it is written to again (a cut link, a restarted peer): the first message written into
/// a closed socket is lost without an error. Shorter than a heartbeat interval, so that
/// every heartbeat to an idle peer is checked, and far longer than the gap between the
/// writes of a loaded leader, which are never checked.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_millis(10);

/// Entries of the Raft log kept behind the applied index on every replica, so that a
/// follower a little behind catches up from the log.
pub const LOG_ENTRIES_KEPT: u64 = 1024;

/// The most entries of the Raft log kept at all: past it, a follower still behind is
/// left to be rebuilt from a snapshot (the log's disk and the restart time stay bounded).
pub const LOG_ENTRIES_MAX: u64 = 65_536;

/// Entries applied between two compactions of the Raft log.
pub const COMPACT_EVERY_ENTRIES: u64 = 256;

/// The hidden environment variable that lowers [`LOG_ENTRIES_MAX`] (and with it the kept
/// tail, to half of it) so that a test reaches a follower behind the log in seconds; read
/// once at start, clamped to [`LOG_ENTRIES_MAX_FLOOR`]`..=`[`LOG_ENTRIES_MAX`].
pub const LOG_ENTRIES_MAX_ENV: &str = "PLAFOND_RAFT_LOG_ENTRIES_MAX";

/// The smallest [`LOG_ENTRIES_MAX_ENV`] accepted: two compactions' worth.
pub const LOG_ENTRIES_MAX_FLOOR: u64 = 2 * COMPACT_EVERY_ENTRIES;

/// How many entries of the Raft log are kept: behind the applied index, and at most
/// behind it while a follower still needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// Kept behind the applied index on every replica.
    pub kept: u64,
    /// Kept at most; a follower further behind is sent a snapshot.
    pub max: u64,
}

impl LogBounds {
    /// [`LOG_ENTRIES_KEPT`] and [`LOG_ENTRIES_MAX`], or what [`LOG_ENTRIES_MAX_ENV`] asks.
    pub fn from_env() -> LogBounds {
        let asked = std::env::var(LOG_ENTRIES_MAX_ENV).ok().and_then(|text| text.parse().ok());
        LogBounds::with_max(asked)
    }

    /// The bounds for a maximum of `max` entries (clamped), the defaults for `None`.
    pub fn with_max(max: Option<u64>) -> LogBounds {
        match max {
            None => LogBounds { kept: LOG_ENTRIES_KEPT, max: LOG_ENTRIES_MAX },
            Some(max) => {
                let max = max.clamp(LOG_ENTRIES_MAX_FLOOR, LOG_ENTRIES_MAX);
                LogBounds { kept: LOG_ENTRIES_KEPT.min(max / 2), max }
            }
        }
    }
}

/// The most bytes one pull of a snapshot's file carries (one request, one reply).
pub const SNAPSHOT_CHUNK_BYTES: u32 = 4 << 20;

/// The most files a snapshot has (the checkpoint and the log after it).
pub const SNAPSHOT_FILES_MAX: usize = 2;

/// The largest snapshot file a follower accepts: a checkpoint of 10M accounts is some
/// hundreds of MB; past this the descriptor is refused rather than the disk filled.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 64 << 30;

/// How many times a follower asks again for one chunk (each time on a new connection)
/// before it gives up the transfer and restarts, to be offered a snapshot again.
pub const SNAPSHOT_PULL_ATTEMPTS: u32 = 8;

/// The pause before asking again for a chunk that failed.
pub const SNAPSHOT_PULL_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// How long a read or a write of a snapshot pull may block.
pub const SNAPSHOT_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a leader waits for a follower it offered a snapshot to pull its next chunk
/// before it reports the transfer failed to Raft (which offers it again).
pub const SNAPSHOT_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a prepared snapshot is offered to new followers before a fresher one is made
/// (a follower installing an old one would find the log past it compacted).
pub const SNAPSHOT_REUSE_AGE: Duration = Duration::from_secs(60);

/// The most bytes of records one RocksDB write of an install carries.
pub const INSTALL_BATCH_BYTES: usize = 8 << 20;

/// The largest key of a record in a snapshot's log file (a log key or a command id).
pub const SNAPSHOT_KEY_BYTES_MAX: usize = 256;

/// How long a node waits for the cluster to elect a leader before `--populate` gives up.
pub const ELECTION_WAIT: Duration = Duration::from_secs(30);

// A frame holds an append of the most entry bytes plus its framing.
const _: () = assert!(APPEND_BYTES_MAX as usize * 2 <= FRAME_BYTES_MAX);
// One entry (a whole group commit) fits in a frame.
const _: () = assert!(GROUP_BYTES_MAX * 2 <= FRAME_BYTES_MAX);
const _: () = assert!(HEARTBEAT_TICKS < ELECTION_TICKS);
const _: () =
    assert!(ELECTION_TICKS < CAMPAIGN_TICKS_MIN && CAMPAIGN_TICKS_MIN < CAMPAIGN_TICKS_END);
const _: () = assert!(LOG_ENTRIES_KEPT < LOG_ENTRIES_MAX);
const _: () = assert!(COMPACT_EVERY_ENTRIES <= LOG_ENTRIES_KEPT);
// A pull's reply (the chunk and its header) fits in a frame.
const _: () = assert!(SNAPSHOT_CHUNK_BYTES as usize * 2 <= FRAME_BYTES_MAX);
const _: () = assert!(LOG_ENTRIES_MAX_FLOOR <= LOG_ENTRIES_MAX);
const _: () = assert!(SNAPSHOT_IO_TIMEOUT.as_millis() < SNAPSHOT_IDLE_TIMEOUT.as_millis());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_bounds_a_test_asks_for_are_clamped_and_keep_half() {
        assert_eq!(
            LogBounds::with_max(None),
            LogBounds { kept: LOG_ENTRIES_KEPT, max: LOG_ENTRIES_MAX }
        );
        assert_eq!(LogBounds::with_max(Some(1000)), LogBounds { kept: 500, max: 1000 });
        assert_eq!(
            LogBounds::with_max(Some(1)).max,
            LOG_ENTRIES_MAX_FLOOR,
            "never below the floor"
        );
        assert_eq!(
            LogBounds::with_max(Some(u64::MAX)).max,
            LOG_ENTRIES_MAX,
            "never above the default"
        );
        assert_eq!(LogBounds::with_max(Some(u64::MAX)).kept, LOG_ENTRIES_KEPT);
    }
}
