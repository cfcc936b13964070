//! Progress of long snapshot and restore runs (§8: they show progress).
//!
//! The library only reports [`Progress`] to a callback; [`Terminal`] draws it as one `\r`
//! line on stderr when stderr is a terminal, and does nothing otherwise (tests, CI, pipes).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often [`Terminal`] redraws at most: often enough to look alive, rarely enough to
/// cost nothing.
const REDRAW_INTERVAL: Duration = Duration::from_millis(100);

/// Where a run is: `done` of `total` `unit`s in `phase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// What is being done ("encode", "write", "read", "decode", "checkpoint", "copy log").
    pub phase: &'static str,
    /// How much is done.
    pub done: u64,
    /// Of how much.
    pub total: u64,
    /// What `done` and `total` count ("accounts", "bytes", "batches").
    pub unit: &'static str,
}

/// Draws progress on stderr when it is a terminal.
pub struct Terminal {
    label: &'static str,
    enabled: bool,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Terminal {
    /// A progress line prefixed with `label` ("snapshot", "restore").
    pub fn new(label: &'static str) -> Terminal {
        Terminal { label, enabled: std::io::stderr().is_terminal(), last_draw: None, drawn: false }
    }

    /// Shows `progress` (throttled; the last step of a phase is always drawn).
    pub fn show(&mut self, progress: Progress) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let due = self.last_draw.is_none_or(|last| now.duration_since(last) >= REDRAW_INTERVAL);
        if !due && progress.done < progress.total {
            return;
        }
        self.last_draw = Some(now);
        self.drawn = true;
        let percent = (progress.done as f64 / progress.total.max(1) as f64 * 100.0).min(100.0);
        // Drawing is best effort: a closed stderr must not fail the run.
        let _ = write!(
            std::io::stderr(),
            "\r{}: {:<10} {:>14} / {:<14} {:<8} {:>5.1}%\x1b[K",
            self.label,
            progress.phase,
            progress.done,
            progress.total,
            progress.unit,
            percent
        );
    }

    /// Ends the line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.finish();
    }
}
