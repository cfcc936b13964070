//! Ports for servers that must come back on the same port after a restart (the tests'
//! clusters and the Jepsen harness name every member's port in `--cluster` up front).
//!
//! Asking the kernel for port 0 and closing the listener is not enough: the port comes
//! from the ephemeral range, so until the server binds it (and again while a killed
//! member is down) any outgoing connection of the same machine may take it as its local
//! port, and the member then fails with "Address already in use" (seen in CI). Ports
//! below that range are never handed out implicitly, so a free one stays free unless
//! another listener binds it on purpose; a per-process cursor keeps this process's own
//! picks apart, and a start derived from the pid keeps concurrent processes apart.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out: above the well-known and most registered services.
pub const STABLE_PORT_FIRST: u16 = 10_000;
/// Ports tried before giving up (every one of them was taken).
pub const STABLE_PORT_ATTEMPTS_MAX: u32 = 4_096;
/// Where the kernel's ephemeral range starts when /proc does not say (Linux's default).
const EPHEMERAL_FIRST_DEFAULT: u16 = 32_768;

const _: () = assert!(STABLE_PORT_FIRST < EPHEMERAL_FIRST_DEFAULT);

/// This process's next pick, relative to its pid-derived start.
static CURSOR: AtomicU32 = AtomicU32::new(0);

/// A port on `ip` that is free now and outside the kernel's ephemeral range, so that it
/// stays free for a server that binds it later and rebinds it after each restart.
pub fn stable_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    let last = ephemeral_first().saturating_sub(1).max(STABLE_PORT_FIRST);
    let span = u32::from(last - STABLE_PORT_FIRST) + 1;
    // A large odd stride spreads concurrent processes (consecutive pids) far apart.
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..STABLE_PORT_ATTEMPTS_MAX.min(span) {
        let offset = (start + CURSOR.fetch_add(1, Ordering::Relaxed)) % span;
        let port = STABLE_PORT_FIRST + offset as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port on {ip} in {STABLE_PORT_FIRST}..={last}"),
    ))
}

/// The first port of the kernel's ephemeral range (`ip_local_port_range`).
fn ephemeral_first() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_FIRST_DEFAULT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_distinct_free_and_below_the_ephemeral_range() {
        let picks: Vec<u16> =
            (0..64).map(|_| stable_port(Ipv4Addr::LOCALHOST).expect("a free port")).collect();
        let mut distinct = picks.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), picks.len(), "one process never gets a port twice");
        for port in picks {
            assert!(port >= STABLE_PORT_FIRST && port < ephemeral_first(), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("still free");
        }
    }
}
