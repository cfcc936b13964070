//! From the command line to what [`crate::run`] serves: the engine (opened, restored or
//! populated) and the server's own settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use plafond::{Durability, Engine, EngineConfig, EngineError, Opening, Regions, SHARDS_MAX};

use crate::access::{self, TokenError};
use crate::clock::ServerClock;
use crate::options::{ClockKind, FlagsError, Restore, ServerArgs};
use crate::snapshot_dir::SnapshotDir;
use crate::ServerConfig;

/// Why the server cannot start; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Flags(#[from] FlagsError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot read --config {}: {source}", path.display())]
    ConfigUnreadable { path: PathBuf, source: std::io::Error },
    #[error("--config {}: {error}", path.display())]
    Config { path: PathBuf, error: plafond::RegionError },
    #[error("cannot read {}: {error}", path.display())]
    RecordedShards { path: PathBuf, error: EngineError },
    // The engine's errors print their cause themselves: a chain would say it twice.
    #[error("cannot open the engine: {0}")]
    Engine(EngineError),
    #[error("cannot restore {}: {error}", path.display())]
    Restore { path: PathBuf, error: EngineError },
    #[error("--mac-key-file {}: {error}", path.display())]
    MacKey { path: PathBuf, error: plafond::MacKeyError },
    #[error("no region to populate")]
    NoRegion,
    #[error(
        "--populate needs an empty engine, but the data directory already holds {0} \
         profiles: use a fresh --data-dir (or drop --populate to serve it)"
    )]
    PopulateNotEmpty(u64),
    #[error("populate failed: {0}")]
    Populate(EngineError),
}

/// The engine and the settings `args` ask for: the engine restored (`--restore`) or opened,
/// then populated (`--populate`). Progress goes to stderr.
pub fn open(args: &ServerArgs) -> Result<(Arc<Engine>, ServerConfig), OpenError> {
    let token = access::token(
        args.token.as_deref(),
        args.token_file.as_deref(),
        access::token_from_env()?,
    )?;
    access::check_bind(args.listen_addr()?.ip(), token.is_some(), args.allow_no_token)?;
    let restore = args.restore()?;
    let clock = ServerClock::new(args.clock == ClockKind::Manual);
    let config = engine_config(args, &clock)?;
    let engine = match &restore {
        Some(restore) => restore_engine(restore, config)?,
        None => Engine::open(config).map_err(OpenError::Engine)?,
    };
    if let Some(accounts) = args.populate.filter(|&accounts| accounts > 0) {
        // In a cluster, the leader populates and the followers replay what it logged.
        if leads_once_elected(&engine) {
            populate(&engine, accounts)?;
        }
    }
    let settings = ServerConfig {
        clock,
        token,
        snapshots: SnapshotDir::new(args.snapshot_dir.clone(), args.snapshots_keep),
        limits: args.limits(),
        metrics: None,
    };
    Ok((Arc::new(engine), settings))
}

fn engine_config(args: &ServerArgs, clock: &ServerClock) -> Result<EngineConfig, OpenError> {
    let mut config = EngineConfig::in_memory().with_durability(args.durability);
    if let Some(cluster) = args.cluster()? {
        let replication = plafond::ReplicationConfig {
            cluster,
            on_deposed: std::sync::Arc::new(crate::rejoin::restart_in_place),
        };
        config = config.with_replication(replication);
    }
    if args.durability != Durability::None {
        config.data_dir = Some(args.data_dir.clone());
    }
    let shards = shard_count(args, config.data_dir.as_deref())?;
    config = config
        .with_shards(shards)
        .with_checkpoints(args.checkpoints())
        .with_log_retention(args.log_retention()?);
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .map_err(|source| OpenError::ConfigUnreadable { path: path.clone(), source })?;
        let regions = Regions::from_toml(&text)
            .map_err(|error| OpenError::Config { path: path.clone(), error })?;
        config = config.with_regions(regions);
    }
    if let Some(path) = &args.mac_key_file {
        let key = plafond::MacKey::from_file(path)
            .map_err(|error| OpenError::MacKey { path: path.clone(), error })?;
        config = config.with_mac_key(key);
    }
    Ok(config.with_clock(clock.clock()))
}

/// `--shards`, or the data directory's own count, or the cores the I/O threads leave:
/// the shards, the writer and the connections then do not queue for the same cores.
/// On two cores one shard served `redis-benchmark -P 64` PAY with 0.41 us of server CPU
/// per pay where two shards took 0.44-0.47 us (each submission woke both).
fn shard_count(args: &ServerArgs, data_dir: Option<&Path>) -> Result<u16, OpenError> {
    if let Some(shards) = args.shards {
        return Ok(shards);
    }
    if let Some(dir) = data_dir {
        let recorded = Engine::recorded_shards(dir)
            .map_err(|error| OpenError::RecordedShards { path: dir.to_path_buf(), error })?;
        if let Some(shards) = recorded {
            return Ok(shards);
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let shards = cores.saturating_sub(args.io_threads()).max(1);
    Ok(u16::try_from(shards).unwrap_or(SHARDS_MAX).min(SHARDS_MAX))
}

/// Restores `--restore` into the data directory and opens the engine on it.
fn restore_engine(restore: &Restore, config: EngineConfig) -> Result<Engine, OpenError> {
    let (engine, report) = Engine::restore(&restore.snapshot, restore.log_from.as_deref(), config)
        .map_err(|error| OpenError::Restore { path: restore.snapshot.clone(), error })?;
    eprintln!(
        "server: restored {} into {}: {} accounts on {} shards, {} log batches replayed, {:.1} s",
        restore.snapshot.display(),
        report.target.display(),
        report.accounts,
        report.shards,
        report.log_batches,
        report.seconds
    );
    Ok(engine)
}

/// Whether this node is the one to populate: a single node always; a replica once the
/// cluster has a leader, if it is that leader (the others skip, and replay its log).
fn leads_once_elected(engine: &Engine) -> bool {
    let Some(status) = engine.replication() else { return true };
    let deadline = std::time::Instant::now() + plafond::ELECTION_WAIT;
    while std::time::Instant::now() < deadline {
        if status.serving() {
            return true;
        }
        if status.view().leader_id.is_some_and(|id| id != status.cluster().node_id) {
            eprintln!("server: --populate: the leader populates, this replica follows");
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!("server: --populate: no leader after {:?}; not populated", plafond::ELECTION_WAIT);
    false
}

fn populate(engine: &Engine, accounts: u64) -> Result<(), OpenError> {
    let Some(region) = engine.regions().iter().next().map(|r| r.name.clone()) else {
        return Err(OpenError::NoRegion);
    };
    let region_id = engine.region_id(&region).ok_or(OpenError::NoRegion)?;
    let started = std::time::Instant::now();
    let progress = |done: u64| eprint!("\rpopulating {region}: {done}/{accounts} accounts");
    match engine.populate(region_id, accounts, Opening::REFERENCE, progress) {
        Ok(()) => {}
        Err(EngineError::NotEmpty(profiles)) => return Err(OpenError::PopulateNotEmpty(profiles)),
        Err(error) => return Err(OpenError::Populate(error)),
    }
    eprintln!(" in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
