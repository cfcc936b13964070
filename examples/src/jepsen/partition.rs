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
        self.drop_all(&[(from, to)])
    }

    /// Cuts every address of `side` from every address of `other`, both ways (a
    /// majority/minority split: `side` the minority, `other` the rest).
    pub fn split(&self, side: &[Ipv4Addr], other: &[Ipv4Addr]) -> Result<(), PartitionError> {
        let pairs: Vec<(Ipv4Addr, Ipv4Addr)> =
            side.iter().flat_map(|&a| other.iter().flat_map(move |&b| [(a, b), (b, a)])).collect();
        self.drop_all(&pairs)
    }

    /// Drops every packet from each pair's first address to its second: every rule in
    /// one `nft -f` transaction, so that a split is in force all at once (rule by rule,
    /// it would be a run of one-way partitions, each an `nft` process apart).
    fn drop_all(&self, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Result<(), PartitionError> {
        let script: String = pairs
            .iter()
            .map(|(from, to)| {
                format!("add rule inet {} {CHAIN} ip saddr {from} ip daddr {to} drop\n", self.table)
            })
            .collect();
        nft_script(&script)
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

/// Runs `script` (nft's own syntax, one command a line) as one transaction.
fn nft_script(script: &str) -> Result<(), PartitionError> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(PartitionError::Spawn)?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(script.as_bytes()),
        None => Ok(()),
    };
    let output = child.wait_with_output().map_err(PartitionError::Spawn)?;
    if let Err(error) = written {
        return Err(PartitionError::Spawn(error));
    }
    if !output.status.success() {
        return Err(PartitionError::Refused {
            args: vec!["-f".into(), "-".into(), script.trim().to_owned()],
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
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
