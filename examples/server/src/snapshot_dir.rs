//! Where the server's `SNAPSHOT` writes: one private directory (`0700`, files `0600`: a
//! snapshot holds every balance), names that sort by age, and only the newest
//! `--snapshots-keep` kept, so a client cannot fill the disk with them.

use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use plafond::Engine;

pub use crate::limits::{SNAPSHOTS_KEPT_DEFAULT, SNAPSHOTS_KEPT_MAX};
/// Mode of the snapshot directory when the server creates it.
const DIR_MODE: u32 = 0o700;

const PREFIX: &str = "plafond-";
const SUFFIX: &str = ".snapshot";

/// Why a snapshot was not written or old ones not removed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotDirError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] plafond::EngineError),
}

/// An I/O error of `what` on `path`.
fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotDirError {
    let path = path.to_path_buf();
    move |source| SnapshotDirError::Io { what, path, source }
}

/// The snapshot directory and its retention.
pub struct SnapshotDir {
    dir: PathBuf,
    keep: usize,
    /// Tells apart snapshots of the same millisecond.
    sequence: AtomicU64,
}

impl SnapshotDir {
    /// Snapshots in `dir`, the newest `keep` kept (at least one).
    pub fn new(dir: PathBuf, keep: usize) -> SnapshotDir {
        SnapshotDir { dir, keep: keep.clamp(1, SNAPSHOTS_KEPT_MAX), sequence: AtomicU64::new(0) }
    }

    /// Writes a snapshot of `engine` and removes the oldest beyond the count kept; returns
    /// the new snapshot's path. Blocks for as long as the snapshot takes.
    pub fn take(&self, engine: &Engine) -> Result<PathBuf, SnapshotDirError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&self.dir)
            .map_err(io("create", &self.dir))?;
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let stamp_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        // Zero-padded, so that names sort by time.
        let name = format!("{PREFIX}{stamp_ms:015}-{sequence:06}{SUFFIX}");
        let report = engine.snapshot_with_progress(self.dir.join(name), |_| {})?;
        eprintln!(
            "snapshot {}: {} accounts, {} bytes in {:.3} s",
            report.path.display(),
            report.accounts,
            report.bytes,
            report.seconds
        );
        // The engine writes it 0600; a file put there by an older version may be wider.
        let private = std::fs::Permissions::from_mode(0o600);
        std::fs::set_permissions(&report.path, private)
            .map_err(io("make private", &report.path))?;
        if let Err(error) = self.prune() {
            eprintln!("server: removing old snapshots failed ({error}); retried after the next");
        }
        Ok(std::fs::canonicalize(&report.path).unwrap_or(report.path))
    }

    /// Removes the oldest snapshots beyond the count kept.
    fn prune(&self) -> Result<(), SnapshotDirError> {
        let mut snapshots = snapshots_in(&self.dir)?;
        snapshots.sort_by_key(|(age, _)| *age);
        let excess = snapshots.len().saturating_sub(self.keep);
        for (_, path) in snapshots.into_iter().take(excess) {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
        Ok(())
    }
}

/// A snapshot's age from its name: (milliseconds since the epoch, sequence).
type Age = (u128, u64);

/// The server's snapshots in `dir` (by name), each with its age.
fn snapshots_in(dir: &Path) -> Result<Vec<(Age, PathBuf)>, SnapshotDirError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(age) = name.to_str().and_then(age_of) else { continue };
        found.push((age, entry.path()));
    }
    Ok(found)
}

/// `plafond-<ms>-<sequence>.snapshot` → `(ms, sequence)`; `None` for any other name.
fn age_of(name: &str) -> Option<Age> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (stamp, sequence) = middle.split_once('-')?;
    Some((stamp.parse().ok()?, sequence.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_age_and_others_are_ignored() {
        assert_eq!(age_of("plafond-001799064000000-000002.snapshot"), Some((1_799_064_000_000, 2)));
        // Written by the versions before padding: still recognised.
        assert_eq!(age_of("plafond-1799064000000-12.snapshot"), Some((1_799_064_000_000, 12)));
        assert_eq!(age_of("plafond-1-2.snapshot.tmp"), None);
        assert_eq!(age_of("notes.txt"), None);
    }
}
