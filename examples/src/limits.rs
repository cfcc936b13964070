//! The server's per-connection deadlines and its connection limit, and their flags.
//!
//! A bank's most exposed service must not let sockets that do nothing hold its slots:
//! an anonymous connection has [`AUTH_TIMEOUT_DEFAULT`] to prove itself (AUTH with a
//! token, its first request without), a connection with nothing to do is closed after
//! [`IDLE_TIMEOUT_DEFAULT`] without a complete request, and one whose client stops reading
//! its replies is dropped once a write has made no progress for [`WRITE_TIMEOUT_DEFAULT`].
//! Tests scale them down with the flags.

use std::time::Duration;

use crate::flags::Flags;

/// The flags this module reads.
pub const FLAGS: &[&str] =
    &["auth-timeout-ms", "idle-timeout-ms", "write-timeout-ms", "max-connections"];

/// How long an anonymous connection has to authenticate (or send its first request).
pub const AUTH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// How long a connection may go without a complete request while nothing of its is in
/// flight. Five minutes: longer than any client pool's idle check, short enough that idle
/// sockets cannot pile up for hours.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(300);
/// How long one write of replies may make no progress before the client is dropped.
pub const WRITE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// The most connections served at once; the descriptor limit may make it fewer.
pub const CONNECTIONS_MAX: usize = 1024;
/// The range of every `--*-timeout-ms`: from 1 ms (tests) to a day.
pub const TIMEOUT_MS_MAX: u64 = 24 * 60 * 60 * 1000;

/// The help text of these flags, for the server's `--help`.
pub const HELP: &str = "\
  --auth-timeout-ms MS
                    an unauthenticated connection (with --token: until AUTH; without: until
                    its first request) is closed after MS (default 10000)
  --idle-timeout-ms MS
                    a connection with nothing in flight and no request for MS is closed
                    (default 300000)
  --write-timeout-ms MS
                    a client that reads none of its replies for MS is dropped (default 10000)
  --max-connections N
                    at most N connections (default and most 1024, fewer if the descriptor
                    limit, `ulimit -n`, allows fewer); a quarter is kept for authenticated ones
";

/// What the flags asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub auth_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// Reads the flags of [`FLAGS`].
    pub fn from_flags(flags: &Flags) -> Result<ConnectionLimits, String> {
        let max_connections = flags.get("max-connections", CONNECTIONS_MAX)?;
        if !(1..=CONNECTIONS_MAX).contains(&max_connections) {
            return Err(format!("--max-connections {max_connections}: use 1 to {CONNECTIONS_MAX}"));
        }
        Ok(ConnectionLimits {
            auth_timeout: timeout(flags, "auth-timeout-ms", AUTH_TIMEOUT_DEFAULT)?,
            idle_timeout: timeout(flags, "idle-timeout-ms", IDLE_TIMEOUT_DEFAULT)?,
            write_timeout: timeout(flags, "write-timeout-ms", WRITE_TIMEOUT_DEFAULT)?,
            max_connections,
        })
    }
}

fn timeout(flags: &Flags, name: &str, default: Duration) -> Result<Duration, String> {
    let default_ms = u64::try_from(default.as_millis()).unwrap_or(TIMEOUT_MS_MAX);
    let ms: u64 = flags.get(name, default_ms)?;
    if !(1..=TIMEOUT_MS_MAX).contains(&ms) {
        return Err(format!("--{name} {ms}: use 1 to {TIMEOUT_MS_MAX}"));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<ConnectionLimits, String> {
        let flags = Flags::parse(words.iter().map(|w| w.to_string()), FLAGS)?;
        ConnectionLimits::from_flags(&flags)
    }

    #[test]
    fn defaults_and_flags() {
        let limits = parse(&[]).expect("defaults");
        assert_eq!(limits.auth_timeout, AUTH_TIMEOUT_DEFAULT);
        assert_eq!(limits.max_connections, CONNECTIONS_MAX);
        let limits = parse(&["--idle-timeout-ms", "250", "--max-connections", "8"]).expect("ok");
        assert_eq!(limits.idle_timeout, Duration::from_millis(250));
        assert_eq!(limits.max_connections, 8);
        assert!(parse(&["--auth-timeout-ms", "0"]).is_err());
        assert!(parse(&["--max-connections", "5000"]).is_err());
    }
}
