//! The server's per-connection deadlines and its connection limit.
//!
//! A bank's most exposed service must not let sockets that do nothing hold its slots:
//! an anonymous connection has [`AUTH_TIMEOUT_DEFAULT`] to prove itself (AUTH with a
//! token, its first request without), a connection with nothing to do is closed after
//! [`IDLE_TIMEOUT_DEFAULT`] without a complete request, and one whose client stops reading
//! its replies is dropped once a write has made no progress for [`WRITE_TIMEOUT_DEFAULT`].
//! Tests scale them down with the flags (`options`).

use std::time::Duration;

/// How long an anonymous connection has to authenticate (or send its first request).
pub const AUTH_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const AUTH_TIMEOUT_DEFAULT: Duration = Duration::from_millis(AUTH_TIMEOUT_DEFAULT_MS);
/// How long a connection may go without a complete request while nothing of its is in
/// flight. Five minutes: longer than any client pool's idle check, short enough that idle
/// sockets cannot pile up for hours.
pub const IDLE_TIMEOUT_DEFAULT_MS: u64 = 300_000;
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(IDLE_TIMEOUT_DEFAULT_MS);
/// How long one write of replies may make no progress before the client is dropped.
pub const WRITE_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_millis(WRITE_TIMEOUT_DEFAULT_MS);
/// The most connections served at once; the descriptor limit may make it fewer.
pub const CONNECTIONS_MAX: usize = 1024;
/// The range of every `--*-timeout-ms`: from 1 ms (tests) to a day.
pub const TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;

const _: () = assert!(AUTH_TIMEOUT_DEFAULT_MS <= TIMEOUT_MS_MAX);
const _: () = assert!(IDLE_TIMEOUT_DEFAULT_MS <= TIMEOUT_MS_MAX);
const _: () = assert!(WRITE_TIMEOUT_DEFAULT_MS <= TIMEOUT_MS_MAX);

/// The deadlines and the connection limit one server runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            auth_timeout: AUTH_TIMEOUT_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            write_timeout: WRITE_TIMEOUT_DEFAULT,
            max_connections: CONNECTIONS_MAX,
        }
    }
}
