//! The server's command line (SPEC §9), parsed by clap: every flag typed, its default and
//! its range said once, `--help` generated from these comments.

use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use plafond::{CheckpointPolicy, Durability, LogRetention, LOG_RETENTION_DAYS_DEFAULT};

use crate::limits::{self, ConnectionLimits};
use crate::snapshot_dir::{SNAPSHOTS_KEPT_DEFAULT, SNAPSHOTS_KEPT_MAX};

pub use crate::limits::{CHECKPOINT_LOG_MB_MAX, IO_THREADS_MAX};

const PORT_DEFAULT: u16 = 7379;
const DATA_DIR_DEFAULT: &str = "./plafond-data";
const SNAPSHOT_DIR_DEFAULT: &str = "./plafond-snapshots";
/// `CheckpointPolicy::default()`'s, as flag defaults.
const CHECKPOINT_INTERVAL_S_DEFAULT: u64 = 60;
const CHECKPOINT_LOG_MB_DEFAULT: u64 = 256;

/// plafond server: the Redis protocol in front of a plafond engine.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "server",
    version,
    after_help = "Prints `listening on ADDR` once it accepts connections, then `health: ok` (and \
                  on stderr how many connections the descriptor limit allows); SIGTERM or SIGINT \
                  stop it cleanly. If the disk refuses a write, it says so on stderr and every \
                  command gets `-ERR STORAGE ...` until a restart."
)]
// Numbers allow a leading `-` (`allow_negative_numbers`) so that `--io-threads -1` is
// refused by the flag's own parser, naming the flag, rather than read as an unknown flag.
pub struct ServerArgs {
    /// TCP port (0 picks a free one).
    #[arg(long, default_value_t = PORT_DEFAULT,
          allow_negative_numbers = true, value_parser = number::<u16>)]
    pub port: u16,
    /// Serve GET /metrics (Prometheus text format) on 127.0.0.1 at this port (0 picks a
    /// free one).
    #[arg(long, value_name = "P", allow_negative_numbers = true, value_parser = number::<u16>)]
    pub metrics_port: Option<u16>,
    /// Address to listen on; an address other machines reach needs a token, or
    /// --allow-no-token.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// RocksDB data directory (unused with --durability none).
    #[arg(long, value_name = "DIR", default_value = DATA_DIR_DEFAULT)]
    pub data_dir: PathBuf,
    /// sync: reply after the WAL fsync; async: after the write to the OS; none: memory only.
    #[arg(long, value_name = "MODE", default_value = "sync", value_parser = durability)]
    pub durability: Durability,
    /// Shard threads, fixed for a data directory (default: the directory's own count, or
    /// for a new one the cores the I/O threads leave, at least 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = number::<u16>)]
    pub shards: Option<u16>,
    /// Regions TOML (default: built-in eu-west and us-east).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The token clients must AUTH with; shows in the process list, so prefer
    /// --token-file or PLAFOND_TOKEN.
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Clients must AUTH with the token on the file's first line before anything but AUTH,
    /// HELLO, PING; or set it in the PLAFOND_TOKEN environment variable. Either keeps it
    /// out of the process list, where --token T shows it to every local user. Give the
    /// token one way only.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The operator's key (32+ bytes, a file only its owner can read): snapshots,
    /// checkpoints and archive segments are written with an HMAC-SHA-256 under it, and
    /// any without one, or with another key's, is refused (restore included).
    #[arg(long, value_name = "FILE")]
    pub mac_key_file: Option<PathBuf>,
    /// Serve a non-loopback --bind without a token (refused otherwise).
    #[arg(long)]
    pub allow_no_token: bool,
    /// system, or manual: starts at 2027-01-04T12:00:00Z and moves only by CLOCK.SET /
    /// CLOCK.ADVANCE, at most 400 days a move, within the years 2000 to 2199. The system
    /// clock is guarded: a jump of more than 40 days past the last time used is refused
    /// (logged, shown by CLOCK.STATUS) and time goes on from before it until CLOCK.ACCEPT.
    #[arg(long, value_enum, default_value_t = ClockKind::System)]
    pub clock: ClockKind,
    /// Before listening, open N checking accounts in the first region (balance 20000,
    /// ceiling 10000), card ids 0..N-1; refused on a non-empty data dir.
    // An `Option`, not a default of 0: `--restore` refuses `--populate` given at all, even 0.
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = number::<u64>)]
    pub populate: Option<u64>,
    /// Where SNAPSHOT writes (created 0700, files 0600, one snapshot at a time).
    #[arg(long, value_name = "DIR", default_value = SNAPSHOT_DIR_DEFAULT)]
    pub snapshot_dir: PathBuf,
    /// The newest N snapshots are kept there, older ones removed.
    #[arg(long, value_name = "N", default_value_t = SNAPSHOTS_KEPT_DEFAULT,
          allow_negative_numbers = true,
          value_parser = in_range::<usize>(1, SNAPSHOTS_KEPT_MAX as u64))]
    pub snapshots_keep: usize,
    /// Threads serving the connections (default: half the cores, at least 1).
    #[arg(long, value_name = "N",
          allow_negative_numbers = true,
          value_parser = in_range::<usize>(1, IO_THREADS_MAX as u64))]
    pub io_threads: Option<usize>,
    /// A checkpoint (restart replays only the log after it) at least every S seconds while
    /// the log grows.
    #[arg(long, value_name = "S", default_value_t = CHECKPOINT_INTERVAL_S_DEFAULT,
          allow_negative_numbers = true, value_parser = in_range::<u64>(1, u64::MAX))]
    pub checkpoint_interval_s: u64,
    /// A checkpoint after every M MiB of log.
    #[arg(long, value_name = "M", default_value_t = CHECKPOINT_LOG_MB_DEFAULT,
          allow_negative_numbers = true, value_parser = in_range::<u64>(1, CHECKPOINT_LOG_MB_MAX))]
    pub checkpoint_log_mb: u64,
    /// Keep at least D days of log in the data directory; older batches before the oldest
    /// kept checkpoint move to the archive.
    #[arg(long, value_name = "D", default_value_t = LOG_RETENTION_DAYS_DEFAULT,
          allow_negative_numbers = true, value_parser = number::<u32>)]
    pub log_retention_days: u32,
    /// Where archived log segments go (default <data-dir>/archive); verify and replay them
    /// with the audit example.
    #[arg(long, value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,
    /// keep: archive old log batches; none: delete them.
    #[arg(long, value_enum, default_value_t = ArchiveKind::Keep)]
    pub archive: ArchiveKind,
    /// Before serving, restore the snapshot FILE into --data-dir (absent or empty): the
    /// file is read and checked whole (checksums, invariants, and every shard's balances
    /// recomputed from its accounts), and on any error nothing is left in --data-dir. Give
    /// the regions (--config) it was taken with; its shard count is kept.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// With --restore: also replay the log the old engine wrote after the snapshot, from
    /// its stopped data directory DIR.
    #[arg(long, value_name = "DIR")]
    pub restore_log_from: Option<PathBuf>,
    /// An unauthenticated connection (with a token: until AUTH; without: until its first
    /// request) is closed after MS.
    #[arg(long, value_name = "MS", default_value_t = limits::AUTH_TIMEOUT_DEFAULT_MS,
          allow_negative_numbers = true, value_parser = in_range::<u64>(1, limits::TIMEOUT_MS_MAX))]
    pub auth_timeout_ms: u64,
    /// A connection with nothing in flight and no request for MS is closed.
    #[arg(long, value_name = "MS", default_value_t = limits::IDLE_TIMEOUT_DEFAULT_MS,
          allow_negative_numbers = true, value_parser = in_range::<u64>(1, limits::TIMEOUT_MS_MAX))]
    pub idle_timeout_ms: u64,
    /// A client that reads none of its replies for MS is dropped.
    #[arg(long, value_name = "MS", default_value_t = limits::WRITE_TIMEOUT_DEFAULT_MS,
          allow_negative_numbers = true, value_parser = in_range::<u64>(1, limits::TIMEOUT_MS_MAX))]
    pub write_timeout_ms: u64,
    /// At most N connections (fewer if the descriptor limit, `ulimit -n`, allows fewer); a
    /// quarter is kept for authenticated ones.
    #[arg(long, value_name = "N", default_value_t = limits::CONNECTIONS_MAX,
          allow_negative_numbers = true,
          value_parser = in_range::<usize>(1, limits::CONNECTIONS_MAX as u64))]
    pub max_connections: usize,
    /// This replica's id in --cluster (SPEC §14).
    #[arg(long, value_name = "ID", requires = "cluster", value_parser = number::<u64>)]
    pub node_id: Option<u64>,
    /// Every member of the cluster, this one included: ID=HOST:PORT:RAFT_PORT,... The node
    /// serves RESP on its own HOST:PORT (which replace --bind and --port) and Raft on
    /// HOST:RAFT_PORT.
    #[arg(long, value_name = "MEMBERS", requires = "node_id")]
    pub cluster: Option<String>,
}

/// `--clock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClockKind {
    System,
    Manual,
}

/// `--archive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ArchiveKind {
    Keep,
    None,
}

/// A combination of flags that cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagsError {
    #[error("--archive none deletes old log batches: drop --archive-dir")]
    ArchiveDirWithoutArchive,
    #[error("--restore-log-from needs --restore SNAPSHOT")]
    RestoreLogWithoutRestore,
    #[error("--restore fills the data directory from a snapshot: drop --populate")]
    RestoreWithPopulate,
    #[error(transparent)]
    Cluster(#[from] plafond::ClusterError),
    #[error("a replica needs --durability sync: its leader answers once a majority fsynced")]
    ClusterDurability,
    #[error("--restore builds a single node's data directory: restore, then start the replica")]
    ClusterRestore,
}

/// `--restore` and `--restore-log-from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub snapshot: PathBuf,
    pub log_from: Option<PathBuf>,
}

impl ServerArgs {
    /// `--auth-timeout-ms`, `--idle-timeout-ms`, `--write-timeout-ms`, `--max-connections`.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            auth_timeout: Duration::from_millis(self.auth_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            max_connections: self.max_connections,
        }
    }

    /// `--checkpoint-interval-s` and `--checkpoint-log-mb`.
    pub fn checkpoints(&self) -> CheckpointPolicy {
        CheckpointPolicy {
            interval: Duration::from_secs(self.checkpoint_interval_s),
            log_bytes: self.checkpoint_log_mb << 20,
        }
    }

    /// `--log-retention-days`, `--archive-dir` and `--archive`.
    pub fn log_retention(&self) -> Result<LogRetention, FlagsError> {
        let archive = match (self.archive, &self.archive_dir) {
            (ArchiveKind::None, None) => plafond::Archive::Delete,
            (ArchiveKind::None, Some(_)) => return Err(FlagsError::ArchiveDirWithoutArchive),
            (ArchiveKind::Keep, Some(dir)) => plafond::Archive::Dir(dir.clone()),
            (ArchiveKind::Keep, None) => plafond::Archive::InDataDir,
        };
        Ok(LogRetention { days: self.log_retention_days, archive })
    }

    /// `--node-id` and `--cluster`: the cluster this node is a member of, if any.
    pub fn cluster(&self) -> Result<Option<plafond::Cluster>, FlagsError> {
        let (Some(node_id), Some(members)) = (self.node_id, &self.cluster) else {
            return Ok(None);
        };
        if self.durability != Durability::Sync {
            return Err(FlagsError::ClusterDurability);
        }
        if self.restore.is_some() {
            return Err(FlagsError::ClusterRestore);
        }
        Ok(Some(plafond::Cluster::parse(node_id, members)?))
    }

    /// Where RESP is served: this member's HOST:PORT in a cluster, --bind and --port
    /// otherwise.
    pub fn listen_addr(&self) -> Result<std::net::SocketAddr, FlagsError> {
        Ok(match self.cluster()? {
            Some(cluster) => cluster.me().client_addr(),
            None => std::net::SocketAddr::new(self.bind, self.port),
        })
    }

    /// `--restore` and `--restore-log-from`.
    pub fn restore(&self) -> Result<Option<Restore>, FlagsError> {
        let Some(snapshot) = self.restore.clone() else {
            if self.restore_log_from.is_some() {
                return Err(FlagsError::RestoreLogWithoutRestore);
            }
            return Ok(None);
        };
        if self.populate.is_some() {
            return Err(FlagsError::RestoreWithPopulate);
        }
        Ok(Some(Restore { snapshot, log_from: self.restore_log_from.clone() }))
    }

    /// `--io-threads`: by default half the cores, because the other half runs the writer
    /// and the shards' threads (an idle shard is decided for on the I/O thread itself). On
    /// two cores one I/O thread served `redis-benchmark -P 64` PAY at 2.27M/s and 2.30M/s
    /// where two served 2.00M/s and 2.04M/s: a second thread only added wake-ups and
    /// context switches (docs/BENCHMARKS.md §4); with the I/O thread deciding for idle
    /// shards, two were within noise of one (2.0–2.3M/s, four pairs).
    pub fn io_threads(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        self.io_threads.unwrap_or((cores / 2).max(1))
    }
}

/// A decimal number; `_` may group its digits (`--populate 1_000_000`). Every program's
/// numeric flags are read with it (and [`in_range`]).
pub fn number<T: FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.replace('_', "").parse().map_err(|e: T::Err| e.to_string())
}

/// A [`number`] in `low..=high`.
pub fn in_range<T>(low: u64, high: u64) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: FromStr + TryInto<u64> + Copy,
    T::Err: std::fmt::Display,
{
    move |text| {
        let value: T = number(text)?;
        let wide: Option<u64> = value.try_into().ok();
        if wide.is_some_and(|wide| (low..=high).contains(&wide)) {
            Ok(value)
        } else {
            Err(format!("use {low} to {high}"))
        }
    }
}

fn durability(text: &str) -> Result<Durability, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<ServerArgs, clap::Error> {
        ServerArgs::try_parse_from(std::iter::once("server").chain(words.iter().copied()))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = parse(&[]).expect("defaults");
        assert_eq!(args.port, 7379);
        assert_eq!(args.bind, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(args.durability, Durability::Sync);
        assert_eq!(args.snapshots_keep, SNAPSHOTS_KEPT_DEFAULT);
        assert_eq!(args.checkpoints(), CheckpointPolicy::default());
        let limits = args.limits();
        assert_eq!(limits.auth_timeout, limits::AUTH_TIMEOUT_DEFAULT);
        assert_eq!(limits.idle_timeout, limits::IDLE_TIMEOUT_DEFAULT);
        assert_eq!(limits.write_timeout, limits::WRITE_TIMEOUT_DEFAULT);
        assert_eq!(limits.max_connections, limits::CONNECTIONS_MAX);
    }

    #[test]
    fn values_are_typed_and_ranged() {
        let args = parse(&["--populate", "1_000", "--idle-timeout-ms=250", "--clock", "manual"])
            .expect("valid");
        assert_eq!(args.populate, Some(1000));
        assert_eq!(args.limits().idle_timeout, Duration::from_millis(250));
        assert_eq!(args.clock, ClockKind::Manual);
        for bad in [
            &["--auth-timeout-ms", "0"][..],
            &["--max-connections", "5000"],
            &["--io-threads", "0"],
            &["--io-threads", "-1"],
            &["--port", "-1"],
            &["--io-threads", "many"],
            &["--snapshots-keep", "0"],
            &["--checkpoint-log-mb", "2000000"],
            &["--durability", "maybe"],
            &["--clock", "sundial"],
            &["--nope", "1"],
            &["--port"],
            &["stray"],
        ] {
            let error = parse(bad).expect_err("refused");
            assert!(error.to_string().contains(bad[0]), "{bad:?}: {error}");
        }
    }

    #[test]
    fn combinations_that_cannot_work_are_refused() {
        let args = parse(&["--archive", "none", "--archive-dir", "x"]).expect("parses");
        assert_eq!(args.log_retention(), Err(FlagsError::ArchiveDirWithoutArchive));
        let args = parse(&["--restore-log-from", "old"]).expect("parses");
        assert_eq!(args.restore(), Err(FlagsError::RestoreLogWithoutRestore));
        for populate in ["1", "0"] {
            let args = parse(&["--restore", "s", "--populate", populate]).expect("parses");
            assert_eq!(args.restore(), Err(FlagsError::RestoreWithPopulate), "{populate}");
        }
    }
}
