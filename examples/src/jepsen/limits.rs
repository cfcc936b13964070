//! Every bound of the Jepsen harness, named.

use std::time::Duration;

/// Nodes a run may have (1 or 3; 5 at most, SPEC §14).
pub const NODES_MAX: usize = 5;
/// Client processes a run may have.
pub const CLIENTS_MAX: usize = 64;
/// Accounts a run may use.
pub const ACCOUNTS_MAX: usize = 1024;
/// Faults a run may inject.
pub const FAULTS_MAX: usize = 100_000;
/// Operations one client records at most: a run longer than that stops the client.
pub const OPS_PER_CLIENT_MAX: usize = 1_000_000;
/// How long a node may take to print `listening on` after a (re)start.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client waits for one reply before it counts the attempt lost and retries
/// the same command id elsewhere (or on a new connection).
pub const REPLY_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a connection attempt may take (a partitioned node never answers).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a client keeps retrying one operation before it records it `info`.
pub const OP_DEADLINE: Duration = Duration::from_secs(20);
/// The pause between two attempts: a dead node refuses at once, and a client must not spin.
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long the final phase waits for a leader (or the node) to serve again.
pub const HEALED_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands sent in one pipelined round when every write is re-sent at the end.
pub const RESEND_PIPELINE: usize = 256;
/// How long the nemesis waits for a node to say it leads before a fault meant for the
/// leader (or a follower) is injected on a node drawn at random: an election after the
/// previous fault takes 1-2 s (engine/replication's `ELECTION_TICKS`), a slow one longer.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long the nemesis's `ROLE` may take to connect and to be answered.
pub const ROLE_TIMEOUT: Duration = Duration::from_millis(300);
/// The most leader redirections (`-READONLY leader ...`) followed for one attempt.
pub const REDIRECTS_MAX: u32 = 8;

const _: () = assert!(CONNECT_TIMEOUT.as_millis() <= REPLY_TIMEOUT.as_millis());
const _: () = assert!(REPLY_TIMEOUT.as_millis() < OP_DEADLINE.as_millis());
const _: () = assert!(ROLE_TIMEOUT.as_millis() < LEADER_WAIT.as_millis());
