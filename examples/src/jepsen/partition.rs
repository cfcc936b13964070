//! Network partitions between loopback addresses, with nftables: rules in a table of its
//! own (`inet plafond_jepsen_<pid>_<n>`), removed when the [`Partitioner`] is
//! dropped (a panic unwinds through that too), and a dead run's table removed by the
//! next one. Needs root and `nft` (scripts/setup.sh installs nftables).
//!
//! A rule drops every packet from one address to another in the `output` hook: on
//! loopback a packet passes it once, so `drop_one_way(a, b)` stops what `a` sends to `b`
//! (data and acknowledgements alike) and nothing of what `b` sends to `a`.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The prefix of every table this harness makes.
const TABLE_PREFIX: &str = "plafond_jepsen_";
/// Numbers the tables of one process (tests make several at once).
static TABLES_MADE: AtomicU32 = AtomicU32::new(0);
/// The chain holding the rules.
const CHAIN: &str = "partition";

/// What can go wrong driving nftables.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("cannot run nft (install nftables: scripts/setup.sh does): {0}")]
    Spawn(std::io::Error),
    #[error("nft {args:?} failed (root is needed): {stderr}")]
    Refused { args: Vec<String>, stderr: String },
}

/// A partition table of this process; dropped, it is deleted with every rule in it.
#[derive(Debug)]
pub struct Partitioner {
    table: String,
}

impl Partitioner {
    /// Creates the table and its chain (and deletes tables left by runs that died).
    pub fn new() -> Result<Partitioner, PartitionError> {
        remove_stale_tables()?;
        let number = TABLES_MADE.fetch_add(1, Ordering::Relaxed);
        let table = format!("{TABLE_PREFIX}{}_{number}", std::process::id());
        nft(&["add", "table", "inet", &table])?;
        let hook = "{ type filter hook output priority 0; policy accept; }";
        nft(&["add", "chain", "inet", &table, CHAIN, hook])?;
        Ok(Partitioner { table })
    }

    /// Drops every packet `from` sends to `to`.
    pub fn drop_one_way(&self, from: Ipv4Addr, to: Ipv4Addr) -> Result<(), PartitionError> {
        let (from, to) = (from.to_string(), to.to_string());
        nft(&[
            "add",
            "rule",
            "inet",
            &self.table,
            CHAIN,
            "ip",
            "saddr",
            &from,
            "ip",
            "daddr",
            &to,
            "drop",
        ])
    }

    /// Cuts every address of `side` from every address of `other`, both ways (a
    /// majority/minority split: `side` the minority, `other` the rest).
    pub fn split(&self, side: &[Ipv4Addr], other: &[Ipv4Addr]) -> Result<(), PartitionError> {
        for &a in side {
            for &b in other {
                self.drop_one_way(a, b)?;
                self.drop_one_way(b, a)?;
            }
        }
        Ok(())
    }

    /// Removes every rule: the network is whole again.
    pub fn heal(&self) -> Result<(), PartitionError> {
        nft(&["flush", "chain", "inet", &self.table, CHAIN])
    }

    /// The table's name (for an operator's `nft list table inet NAME`).
    pub fn table(&self) -> &str {
        &self.table
    }
}

impl Drop for Partitioner {
    fn drop(&mut self) {
        if let Err(error) = nft(&["delete", "table", "inet", &self.table]) {
            eprintln!("jepsen: could not remove nft table {}: {error}", self.table);
        }
    }
}

/// Deletes the harness's tables whose process is gone (a run killed before its drop).
fn remove_stale_tables() -> Result<(), PartitionError> {
    let listed = run_nft(&["list", "tables"])?;
    for line in listed.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name.strip_prefix(TABLE_PREFIX).and_then(|n| n.split('_').next()) else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = nft(&["delete", "table", "inet", name]);
        }
    }
    Ok(())
}

fn nft(args: &[&str]) -> Result<(), PartitionError> {
    run_nft(args).map(drop)
}

fn run_nft(args: &[&str]) -> Result<String, PartitionError> {
    let output = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(PartitionError::Spawn)?;
    if !output.status.success() {
        return Err(PartitionError::Refused {
            args: args.iter().map(|a| a.to_string()).collect(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
