//! File descriptors: the connection limit derived from the process's descriptor limit,
//! and what `accept` does when they run out anyway.
//!
//! With `ulimit -n 256` and a fixed limit of 1,024 connections, `accept` failed with
//! `EMFILE`: new clients hung in the backlog with no answer while the server logged the
//! error 20 times a second (issue 15). The limit is now what the descriptors allow, less
//! what the engine holds and a reserve for the files it opens later, so a client past it
//! is accepted, told so and closed; and if `accept` fails regardless, the server backs off
//! exponentially and says so at most once per [`ACCEPT_ERROR_LOG_INTERVAL`].

use std::time::{Duration, Instant};

pub use crate::limits::{
    ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, ACCEPT_ERROR_LOG_INTERVAL, DESCRIPTORS_RESERVED,
};

/// The descriptor limit as start-up found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft limit (`ulimit -n`), after raising it toward the hard one.
    pub limit: u64,
    /// Descriptors open when it was read.
    pub open: u64,
}

impl Descriptors {
    /// Raises the soft limit to the hard one (at most `wanted`) and reads what is open.
    pub fn probe(wanted: u64) -> Descriptors {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
        let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
        if got && limit.rlim_cur < wanted.min(limit.rlim_max) {
            let raised = libc::rlimit { rlim_cur: wanted.min(limit.rlim_max), ..limit };
            // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the
            // hard one is always allowed, and if refused the old limit stays.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        let open = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
        let limit = if got { limit.rlim_cur } else { u64::MAX };
        Descriptors { limit, open }
    }

    /// The most connections these descriptors allow, at most `max`.
    pub fn connections(&self, max: usize) -> usize {
        let free = self.limit.saturating_sub(self.open).saturating_sub(DESCRIPTORS_RESERVED);
        usize::try_from(free).unwrap_or(usize::MAX).min(max)
    }
}

/// The state of failed `accept`s in a row: how long to pause, when to log.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    failures_in_a_row: u32,
    /// Failures since the last log line.
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl AcceptBackoff {
    /// After a failed `accept`: how long to pause, and the line to log if one is due.
    pub fn failed(&mut self, error: &std::io::Error, now: Instant) -> (Duration, Option<String>) {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.unlogged += 1;
        let doublings = self.failures_in_a_row.saturating_sub(1).min(16);
        let pause = ACCEPT_BACKOFF_MIN.saturating_mul(1 << doublings).min(ACCEPT_BACKOFF_MAX);
        let due =
            self.logged_at.is_none_or(|at| now.duration_since(at) >= ACCEPT_ERROR_LOG_INTERVAL);
        if !due {
            return (pause, None);
        }
        let line = format!(
            "server: accept: {error} ({} time(s) since the last report; pausing {} ms; \
             raise `ulimit -n` or lower the load)",
            self.unlogged,
            pause.as_millis()
        );
        self.unlogged = 0;
        self.logged_at = Some(now);
        (pause, Some(line))
    }

    /// After a successful `accept`.
    pub fn succeeded(&mut self) {
        self.failures_in_a_row = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_follows_the_descriptors() {
        let few = Descriptors { limit: 256, open: 40 };
        assert_eq!(few.connections(1024), 256 - 40 - DESCRIPTORS_RESERVED as usize);
        let many = Descriptors { limit: 1 << 20, open: 40 };
        assert_eq!(many.connections(1024), 1024);
        let none = Descriptors { limit: 50, open: 40 };
        assert_eq!(none.connections(1024), 0);
    }

    #[test]
    fn failures_back_off_and_log_once_per_interval() {
        let mut backoff = AcceptBackoff::default();
        let error = std::io::Error::from_raw_os_error(libc::EMFILE);
        let start = Instant::now();
        let (first, line) = backoff.failed(&error, start);
        assert_eq!(first, ACCEPT_BACKOFF_MIN);
        assert!(line.is_some_and(|line| line.contains("1 time(s)")));
        let mut pauses = Vec::new();
        for n in 1..100u32 {
            let (pause, line) = backoff.failed(&error, start + Duration::from_millis(n.into()));
            assert!(line.is_none(), "one line per interval");
            pauses.push(pause);
        }
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN * 2);
        assert_eq!(pauses.last(), Some(&ACCEPT_BACKOFF_MAX));
        let (_, line) = backoff.failed(&error, start + ACCEPT_ERROR_LOG_INTERVAL);
        assert!(line.is_some_and(|line| line.contains("100 time(s)")));
        backoff.succeeded();
        assert_eq!(backoff.failed(&error, start).0, ACCEPT_BACKOFF_MIN);
    }
}
