//! Snapshots of a running engine, and restore into a new one (§8). The file format and
//! the restore itself live in `plafond-snapshots`; this is the engine's side: taking a
//! consistent cut and opening what a restore built.

use std::path::Path;
use std::time::Instant;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use plafond_shards::actor::Captured;
use plafond_shards::idempotency::{IdempotencyRecord, Remembered};
use plafond_shards::store::Durability;
use plafond_snapshots::{Progress, RestoreReport, SnapshotError, SnapshotReport, Terminal};

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::error::EngineError;

impl Engine {
    /// Writes a snapshot of the engine to `path` while commands keep flowing, showing
    /// progress on stderr when it is a terminal.
    ///
    /// With a MAC key configured ([`EngineConfig::mac_key`]), the file carries its MAC.
    ///
    /// Every shard is captured at one consistent cut (every command acknowledged before
    /// the call is in it, no transfer is half in it) without stopping it: the shards meet
    /// between two batches, then copy their tables in steps between later batches
    /// (`plafond_shards::table`); encoding and writing happen after that.
    pub fn snapshot(&self, path: impl AsRef<Path>) -> Result<SnapshotReport, EngineError> {
        let mut terminal = Terminal::new("snapshot");
        let report = self.snapshot_with_progress(path, |progress| terminal.show(progress));
        terminal.finish();
        report
    }

    /// [`Engine::snapshot`], telling `progress` how far it is instead of drawing it.
    ///
    /// One snapshot at a time: while one is written, another is refused with
    /// [`EngineError::SnapshotInProgress`]. The file is readable by its owner only.
    pub fn snapshot_with_progress(
        &self,
        path: impl AsRef<Path>,
        mut progress: impl FnMut(Progress),
    ) -> Result<SnapshotReport, EngineError> {
        let _one = OneSnapshot::claim(&self.snapshotting)?;
        let started = Instant::now();
        let mut shards = self.capture(true)?;
        self.attach_records(&mut shards)?;
        let accounts = shards.iter().map(|(state, _)| state.accounts.len() as u64).sum();
        progress(Progress { phase: "cut", done: accounts, total: accounts, unit: "accounts" });
        let options = plafond_snapshots::format::WriteOptions::now(None);
        let key = self.mac_key.as_ref();
        let mut report =
            plafond_snapshots::write_keyed(path.as_ref(), &shards, options, key, &mut progress)?;
        // The cut is part of the cost.
        report.seconds = started.elapsed().as_secs_f64();
        report.accounts_per_second = report.accounts as f64 / report.seconds.max(f64::EPSILON);
        Ok(report)
    }

    /// Restores the snapshot at `snapshot` into `config`'s data directory (absent or
    /// empty), with the log written after the snapshot copied from `source` (the data
    /// directory of the engine that took it, stopped) when given, and opens the engine.
    ///
    /// The shard count comes from the snapshot (ids are routed by it); the regions must be
    /// as many as when the snapshot was taken. Shows progress on stderr when it is a
    /// terminal. The report's time includes opening the engine. With a MAC key configured,
    /// a snapshot without its MAC, or with another key's, is refused and nothing is left
    /// in the data directory.
    pub fn restore(
        snapshot: impl AsRef<Path>,
        source: Option<&Path>,
        config: EngineConfig,
    ) -> Result<(Engine, RestoreReport), EngineError> {
        let mut terminal = Terminal::new("restore");
        let restored =
            Engine::restore_with_progress(snapshot, source, config, |p| terminal.show(p));
        terminal.finish();
        restored
    }

    /// [`Engine::restore`], telling `progress` how far it is instead of drawing it.
    pub fn restore_with_progress(
        snapshot: impl AsRef<Path>,
        source: Option<&Path>,
        config: EngineConfig,
        mut progress: impl FnMut(Progress),
    ) -> Result<(Engine, RestoreReport), EngineError> {
        let started = Instant::now();
        let snapshot = snapshot.as_ref();
        let target = config.data_dir.clone().filter(|_| config.durability != Durability::None);
        let Some(target) = target else {
            return Err(EngineError::Config(
                "restore needs a durable configuration with a data directory".into(),
            ));
        };
        let header = plafond_snapshots::format::read_header_of(snapshot)?;
        if usize::from(header.regions) != config.regions.len() {
            return Err(EngineError::Config(format!(
                "the snapshot has {} regions and the configuration {}: restore with the \
                 regions it was taken with",
                header.regions,
                config.regions.len()
            )));
        }
        let key = config.mac_key.as_ref();
        let mut report =
            plafond_snapshots::restore_keyed(snapshot, source, &target, key, &mut progress)?;
        let opening = Instant::now();
        let engine = Engine::open(config.with_shards(report.shards))?;
        report.open_seconds = opening.elapsed().as_secs_f64();
        let accounts = report.accounts;
        progress(Progress { phase: "open", done: accounts, total: accounts, unit: "accounts" });
        report.seconds = started.elapsed().as_secs_f64();
        report.accounts_per_second = report.accounts as f64 / report.seconds.max(f64::EPSILON);
        Ok((engine, report))
    }
}

impl Engine {
    /// Lists in each captured state the idempotency records as of its cut (§6 holds across a
    /// restore): the durable versions written before the shard's position, and for each
    /// transfer still in flight at the cut its pending record (a later version, written
    /// when it settled, is past the cut).
    fn attach_records(&self, shards: &mut [Captured]) -> Result<(), EngineError> {
        let mut pending_ids = HashSet::new();
        for (state, _) in shards.iter_mut() {
            let synthesized: Vec<_> = state
                .pending
                .iter()
                .filter_map(|(&seq, pending)| {
                    let id = pending.command_id.clone()?;
                    let remembered = Remembered::Pending { seq };
                    let record =
                        IdempotencyRecord::of_transfer(state, &self.regions, pending, remembered);
                    Some((id, record))
                })
                .collect();
            pending_ids.extend(synthesized.iter().map(|(id, _)| id.clone()));
            state.remembered = synthesized;
        }
        self.ids.for_each(|id, record| {
            if pending_ids.contains(&id) {
                return;
            }
            if let Some((state, position)) = shards.get_mut(usize::from(record.shard)) {
                if record.batch_seq < *position {
                    state.remembered.push((id, record));
                }
            }
        })?;
        Ok(())
    }
}

/// The claim on writing the one snapshot in progress; released when dropped.
struct OneSnapshot<'a>(&'a AtomicBool);

impl<'a> OneSnapshot<'a> {
    fn claim(flag: &'a AtomicBool) -> Result<OneSnapshot<'a>, EngineError> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| EngineError::SnapshotInProgress)?;
        Ok(OneSnapshot(flag))
    }
}

impl Drop for OneSnapshot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl From<SnapshotError> for EngineError {
    fn from(error: SnapshotError) -> EngineError {
        EngineError::Snapshot(Box::new(error))
    }
}
