//! Checkpoints (§7): every shard's state at a log position, written periodically while
//! commands go on, so that a restart loads the newest one and replays only the log after
//! it, and the log before it can be archived.
//!
//! A checkpoint is a snapshot file (`docs/SNAPSHOT_FORMAT.md`) in
//! `<data-dir>/checkpoints/`, one section per shard, each at that shard's own log
//! position: shards recover independently (a transfer half-way between two shards is
//! finished by resending its credit), so checkpoints need no cut across shards. Each
//! shard's part is captured without stopping it (`plafond_shards::table`): the capture
//! begins between two batches and copies the tables in steps between later ones.
//!
//! A checkpoint replaces the previous one only once it is on disk, fsynced, read back
//! whole (every checksum and the states' invariants) and equal to what was captured; the
//! newest [`CHECKPOINTS_KEPT`] are kept, so a damaged newest one falls back to the one
//! before (the log is kept from the oldest kept checkpoint on).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;

use plafond_shards::actor::{Captured, Mail, Router, ShardMetrics};
use plafond_shards::state::CaptureBuffers;
use plafond_shards::store::Store;

use crate::error::{CheckpointError, EngineError};

use plafond_mac::MacKey;
use plafond_snapshots::format::WriteOptions;
use plafond_snapshots::{checkpoint_file_name, generation_of, CHECKPOINT_DIR};

pub use crate::limits::CHECKPOINTS_KEPT;
/// A checkpoint is taken at least this often while the log grows.
pub const CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// A checkpoint is also taken once this many changelog bytes were written since the last
/// one: at about 20 bytes a payment, some 13M payments, which replay in about 2 s.
pub const CHECKPOINT_LOG_BYTES_DEFAULT: u64 = 256 << 20;
pub use crate::limits::CHECKPOINT_WRITE_BYTES_PER_S;
/// After a checkpoint, the next one waits at least this many times as long as it took:
/// whatever the policy, checkpoints take at most half of the time (and of a core).
const CHECKPOINT_REST_PER_DURATION: u32 = 1;
/// How often the checkpointer looks at the clock and the log volume.
const CHECKPOINT_POLL: Duration = Duration::from_millis(100);

/// When checkpoints are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// The longest time between two checkpoints while the log grows.
    pub interval: Duration,
    /// The most changelog bytes written between two checkpoints.
    pub log_bytes: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> CheckpointPolicy {
        CheckpointPolicy {
            interval: CHECKPOINT_INTERVAL_DEFAULT,
            log_bytes: CHECKPOINT_LOG_BYTES_DEFAULT,
        }
    }
}

/// What the last checkpoint did, for the pretty dump and the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckpointReport {
    /// Checkpoints written since the engine opened.
    pub written: u64,
    /// The newest checkpoint file, once one exists.
    pub path: Option<PathBuf>,
    /// Each shard's log position in it.
    pub positions: Vec<u64>,
    /// When it was completed (Unix ms, engine clock).
    pub completed_ms: Option<i64>,
    /// How long it took, capture to verified file.
    pub duration: Duration,
    /// Bytes of the file.
    pub bytes: u64,
    /// The longest pause one step of its capture added on a shard between two batches
    /// (wall time, including any time the shard's thread waited for a core meanwhile).
    pub longest_step: Duration,
    /// The most CPU time one step of its capture took on a shard's thread: the step's own
    /// work, which the scheduler's delays do not inflate.
    pub longest_step_cpu: Duration,
    /// The last failure, if the last attempt failed (it is retried at the next one).
    pub last_error: Option<String>,
}

/// Captures every shard's state without stopping it; with `consistent`, all at one cut
/// (each shard waits for the others between two batches, then goes on while it is
/// copied). Each state comes once every batch before its position is durable.
pub(crate) fn capture(
    router: &Router,
    metrics: &[Arc<ShardMetrics>],
    consistent: bool,
) -> Result<Vec<Captured>, EngineError> {
    let shards = u16::try_from(metrics.len()).unwrap_or(u16::MAX);
    let barrier = consistent.then(|| Arc::new(Barrier::new(usize::from(shards))));
    let (reply, replies) = unbounded();
    for (shard, metrics) in (0..shards).zip(metrics) {
        let buffers = capture_buffers(metrics);
        let mail = Mail::Capture { barrier: barrier.clone(), reply: reply.clone(), buffers };
        router.send_internal(shard, mail);
    }
    drop(reply);
    let mut captured: Vec<Captured> = replies.iter().take(usize::from(shards)).collect();
    if captured.len() != usize::from(shards) {
        return Err(EngineError::Stopped(plafond_shards::reply::Stopped::SHUTDOWN));
    }
    captured.sort_by_key(|(state, _)| state.shard);
    Ok(captured)
}

use crate::limits::CAPTURE_ROOM_ENTRIES;
use crate::limits::CAPTURE_ROOM_PER_MILLE;

/// Buffers for a shard's capture, sized from what the shard published at its last batch,
/// their pages touched here rather than on the shard's thread.
fn capture_buffers(metrics: &ShardMetrics) -> CaptureBuffers {
    let room = |entries: u64| {
        let entries = usize::try_from(entries).unwrap_or(usize::MAX);
        entries.saturating_add(entries / 1000 * CAPTURE_ROOM_PER_MILLE + CAPTURE_ROOM_ENTRIES)
    };
    let profiles = room(metrics.profiles.load(Ordering::Relaxed));
    let accounts = room(metrics.accounts.load(Ordering::Relaxed));
    CaptureBuffers::prefaulted(profiles, accounts)
}

/// The checkpoint files of `data_dir`, newest first.
fn files(data_dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let dir = data_dir.join(CHECKPOINT_DIR);
    let listing = |error| CheckpointError::Io { what: "listing", path: dir.clone(), error };
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(listing(error)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(listing)?;
        if entry.path().extension().is_some_and(|extension| extension == "tmp") {
            // Half written when the process died (files are renamed into place once
            // complete): garbage.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        if let Some(generation) = entry.file_name().to_str().and_then(generation_of) {
            files.push((generation, entry.path()));
        }
    }
    files.sort_by_key(|(generation, _)| std::cmp::Reverse(*generation));
    Ok(files)
}

/// The newest checkpoint of `data_dir` that reads back whole, as each shard's state and
/// log position; a damaged one is reported on stderr and the previous one is tried.
/// `None` when there is no checkpoint: the log is replayed from its start.
pub(crate) fn load_newest(
    data_dir: &Path,
    shards: u16,
    regions: usize,
    key: Option<&MacKey>,
) -> Result<Option<Vec<Captured>>, EngineError> {
    let found = files(data_dir)?;
    for (index, (_, path)) in found.iter().enumerate() {
        let started = Instant::now();
        match read_checkpoint(path, shards, regions, key) {
            Ok(states) => {
                let accounts: usize = states.iter().map(|(state, _)| state.accounts.len()).sum();
                let seconds = started.elapsed().as_secs_f64();
                eprintln!(
                    "plafond: loaded checkpoint {} ({accounts} accounts) in {seconds:.2} s",
                    path.display()
                );
                return Ok(Some(states));
            }
            Err(error) => {
                let next = match found.get(index + 1) {
                    Some((_, previous)) => format!("falling back to {}", previous.display()),
                    None => "no older checkpoint is left".to_owned(),
                };
                eprintln!("plafond: checkpoint {} is unusable ({error}); {next}", path.display());
            }
        }
    }
    if !found.is_empty() {
        return Err(EngineError::NoCheckpoint { dir: data_dir.join(CHECKPOINT_DIR) });
    }
    Ok(None)
}

fn read_checkpoint(
    path: &Path,
    shards: u16,
    regions: usize,
    key: Option<&MacKey>,
) -> Result<Vec<Captured>, CheckpointError> {
    let snapshot = plafond_snapshots::read_keyed(path, key, |_| {}).map_err(Box::new)?;
    let header = &snapshot.header;
    if header.shards != shards || usize::from(header.regions) != regions {
        return Err(CheckpointError::Shape {
            shards: header.shards,
            regions: header.regions,
            engine_shards: shards,
            engine_regions: regions,
        });
    }
    for (shard, state) in snapshot.states.iter().enumerate() {
        plafond_snapshots::format::check_money(state).map_err(|problem| {
            let shard = u16::try_from(shard).unwrap_or(u16::MAX);
            CheckpointError::Money { shard, problem }
        })?;
    }
    let positions = header.sections.iter().map(|section| section.log_position);
    Ok(snapshot.states.into_iter().zip(positions.collect::<Vec<_>>()).collect())
}

/// Writes `captured` as the next checkpoint of `data_dir`, verifies it, and removes the
/// checkpoints beyond the newest [`CHECKPOINTS_KEPT`]. Returns its path and size. With
/// `key`, the file carries the key's MAC and is read back with it.
pub(crate) fn write(
    data_dir: &Path,
    captured: &[Captured],
    key: Option<&MacKey>,
) -> Result<(PathBuf, u64), CheckpointError> {
    let dir = data_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&dir).map_err(|error| CheckpointError::Io {
        what: "creating",
        path: dir.clone(),
        error,
    })?;
    let existing = files(data_dir)?;
    let generation = existing.first().map_or(0, |(generation, _)| generation + 1);
    let path = dir.join(checkpoint_file_name(generation));
    let options = WriteOptions::now(Some(CHECKPOINT_WRITE_BYTES_PER_S));
    let report = plafond_snapshots::write_keyed(&path, captured, options, key, &mut |_| {})
        .map_err(Box::new)?;
    // Read back whole before it replaces anything: every checksum, the invariants, and
    // the very states that were captured.
    let shards = u16::try_from(captured.len()).unwrap_or(u16::MAX);
    let regions = captured.first().map_or(0, |(state, _)| state.rolled_day.len());
    let verified = read_checkpoint(&path, shards, regions, key).and_then(|read| {
        if read.as_slice() == captured {
            Ok(())
        } else {
            Err(CheckpointError::ReadBackDiffers)
        }
    });
    if let Err(problem) = verified {
        let _ = std::fs::remove_file(&path);
        return Err(CheckpointError::Verification { path, problem: Box::new(problem) });
    }
    for (_, old) in existing.iter().skip(CHECKPOINTS_KEPT - 1) {
        if let Err(error) = std::fs::remove_file(old) {
            eprintln!("plafond: removing old checkpoint {}: {error}", old.display());
        }
    }
    Ok((path, report.bytes))
}

/// The log positions from which every shard's log must be kept for recovery: those of
/// the oldest checkpoint kept (a damaged newest one falls back to it), or `None` while
/// fewer than [`CHECKPOINTS_KEPT`] exist (the whole log is then needed).
pub(crate) fn oldest_kept_positions(data_dir: &Path) -> Result<Option<Vec<u64>>, CheckpointError> {
    let found = files(data_dir)?;
    if found.len() < CHECKPOINTS_KEPT {
        return Ok(None);
    }
    let Some((_, oldest)) = found.get(CHECKPOINTS_KEPT - 1) else { return Ok(None) };
    let header = plafond_snapshots::format::read_header_of(oldest).map_err(Box::new)?;
    Ok(Some(header.sections.iter().map(|section| section.log_position).collect()))
}

/// What the checkpointer thread needs.
pub(crate) struct CheckpointerSetup {
    pub router: Arc<Router>,
    pub store: Arc<Store>,
    pub data_dir: PathBuf,
    pub policy: CheckpointPolicy,
    /// Held while capturing: one capture at a time per shard.
    pub capture_lock: Arc<Mutex<()>>,
    pub report: Arc<Mutex<CheckpointReport>>,
    /// Each shard's counters (the longest capture step).
    pub metrics: Vec<Arc<ShardMetrics>>,
    /// Unix ms now, for the report.
    pub now_ms: Box<dyn Fn() -> i64 + Send>,
    /// Run after each checkpoint written (log retention and archiving).
    pub after: Box<dyn FnMut(&Path) + Send>,
    /// The operator's key, for the MAC of every checkpoint written.
    pub mac_key: Option<MacKey>,
}

/// The thread that takes checkpoints by time and by log volume.
pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(setup: CheckpointerSetup) -> std::io::Result<Checkpointer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("plafond-checkpoint".into())
            .spawn(move || run(setup, &stopping))?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The checkpointer's nice value: a checkpoint is seconds of encoding, writing and
/// verifying, which must take the cores the shards leave, not share them evenly (on two
/// cores, at the default nice, a checkpoint of 10M accounts raised the p99 of a paced load
/// to 0.8 s; docs/BENCHMARKS.md §7).
const CHECKPOINT_NICE: i32 = 19;

/// Lowers the calling thread's scheduling priority to [`CHECKPOINT_NICE`] (threads it
/// starts, such as the snapshot writer's and reader's, inherit it). Best effort.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` takes no arguments and only returns the caller's thread id;
        // `setpriority` only changes that thread's nice value (on Linux a per-thread
        // attribute), and both report failure through their return value, ignored here:
        // running at the normal priority is slower for the shards, not wrong.
        unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, thread, CHECKPOINT_NICE);
        }
    }
}

fn run(mut setup: CheckpointerSetup, stop: &AtomicBool) {
    lower_priority();
    let mut last = Instant::now();
    let mut log_bytes_at_last = setup.store.log_bytes_written();
    let (mut finished, mut took) = (Instant::now(), Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(CHECKPOINT_POLL);
        let log_bytes = setup.store.log_bytes_written();
        let grown = log_bytes.saturating_sub(log_bytes_at_last);
        let due = grown >= setup.policy.log_bytes
            || (grown > 0 && last.elapsed() >= setup.policy.interval);
        let rested = finished.elapsed() >= took * CHECKPOINT_REST_PER_DURATION;
        if !due || !rested || stop.load(Ordering::Relaxed) {
            continue;
        }
        last = Instant::now();
        log_bytes_at_last = log_bytes;
        // A failure is logged and reported; the next checkpoint is the retry.
        let _ = checkpoint_once(&mut setup);
        (finished, took) = (Instant::now(), last.elapsed());
    }
}

/// The largest of one duration counter over every shard.
fn longest(metrics: &[Arc<ShardMetrics>], counter: fn(&ShardMetrics) -> &AtomicU64) -> Duration {
    let most = metrics.iter().map(|m| counter(m).load(Ordering::Relaxed)).max();
    Duration::from_nanos(most.unwrap_or(0))
}

/// Takes one checkpoint now and records how it went.
pub(crate) fn checkpoint_once(setup: &mut CheckpointerSetup) -> Result<(), CheckpointError> {
    let started = Instant::now();
    // Held through the write too: two checkpoints at once would pick one file name.
    let one_at_a_time = setup.capture_lock.clone();
    let _one_capture = one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
    for metrics in &setup.metrics {
        metrics.capture_step_max_ns.store(0, Ordering::Relaxed);
        metrics.capture_step_max_cpu_ns.store(0, Ordering::Relaxed);
    }
    let captured = capture(&setup.router, &setup.metrics, false)
        .map_err(|error| CheckpointError::Capture(Box::new(error)));
    let written = captured.and_then(|captured| {
        let positions: Vec<u64> = captured.iter().map(|(_, position)| *position).collect();
        let key = setup.mac_key.as_ref();
        write(&setup.data_dir, &captured, key).map(|(path, bytes)| (path, bytes, positions))
    });
    let mut report = setup.report.lock().unwrap_or_else(|p| p.into_inner());
    match written {
        Ok((path, bytes, positions)) => {
            *report = CheckpointReport {
                written: report.written + 1,
                path: Some(path),
                positions,
                completed_ms: Some((setup.now_ms)()),
                duration: started.elapsed(),
                bytes,
                longest_step: longest(&setup.metrics, |m| &m.capture_step_max_ns),
                longest_step_cpu: longest(&setup.metrics, |m| &m.capture_step_max_cpu_ns),
                last_error: None,
            };
            drop(report);
            (setup.after)(&setup.data_dir);
            Ok(())
        }
        Err(error) => {
            eprintln!("plafond: checkpoint failed ({error}); retrying at the next one");
            report.last_error = Some(error.to_string());
            Err(error)
        }
    }
}
