//! The nemesis: faults injected one after another while the clients run, each held for a
//! while and then healed, each recorded with its start and heal times.

use std::time::{Duration, Instant};

use super::cluster::{Cluster, NodeError};
use super::history::FaultRecord;
use super::partition::{PartitionError, Partitioner};
use crate::faultproxy::Proxy;
use crate::sample::Rng;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `kill -9` a node, then restart it on the same data directory.
    Kill,
    /// SIGSTOP a node, then SIGCONT it.
    Pause,
    /// Reset every client connection at the fault proxies, and refuse new ones a while.
    CutClients,
    /// One node stops hearing another (nftables, one way).
    PartitionOneWay,
    /// One node cut from the rest both ways: a minority of one, a majority of the others.
    PartitionMinority,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::CutClients => "cut-clients",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::PartitionMinority => "partition-minority",
        }
    }

    /// Whether it needs several nodes (a partition of one node from nothing is none).
    pub fn needs_peers(self) -> bool {
        matches!(self, FaultKind::PartitionOneWay | FaultKind::PartitionMinority)
    }
}

/// What can stop the nemesis.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Partition(#[from] PartitionError),
}

/// How long faults are held and how long the cluster rests between them.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    pub hold_min: Duration,
    pub hold_max: Duration,
    pub rest_min: Duration,
    pub rest_max: Duration,
}

/// Drives the faults against a cluster (and the proxies in front of it).
pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub proxies: &'a [Proxy],
    pub partitioner: Option<&'a Partitioner>,
    pub rng: Rng,
    pub origin: Instant,
    pub pacing: Pacing,
}

impl Nemesis<'_> {
    fn draw(&mut self, min: Duration, max: Duration) -> Duration {
        min + (max.saturating_sub(min)).mul_f64(self.rng.unit())
    }

    fn now_us(&self) -> u64 {
        super::client::micros_since(self.origin, Instant::now())
    }

    /// Rests, then injects `kind`, holds it, heals it: the record of what was done.
    pub fn fault(&mut self, kind: FaultKind) -> Result<FaultRecord, NemesisError> {
        let rest = self.draw(self.pacing.rest_min, self.pacing.rest_max);
        std::thread::sleep(rest);
        let hold = self.draw(self.pacing.hold_min, self.pacing.hold_max);
        let count = self.cluster.nodes.len();
        let victim = self.rng.below(count as u64) as usize;
        let node_id = |index: usize| self.cluster.nodes[index].spec.id;
        let mut nodes = vec![node_id(victim)];
        let start_us = self.now_us();
        match kind {
            FaultKind::Kill => {
                self.cluster.kill(victim);
                std::thread::sleep(hold);
                self.cluster.restart(victim)?;
            }
            FaultKind::Pause => {
                self.cluster.pause(victim);
                std::thread::sleep(hold);
                self.cluster.resume(victim);
            }
            FaultKind::CutClients => {
                nodes.clear();
                for proxy in self.proxies {
                    proxy.control().set_refusing(true);
                    proxy.control().cut_all();
                }
                std::thread::sleep(hold);
                for proxy in self.proxies {
                    proxy.control().set_refusing(false);
                }
            }
            FaultKind::PartitionOneWay | FaultKind::PartitionMinority => {
                let other = (victim + 1 + self.rng.below(count as u64 - 1) as usize) % count;
                let ip = |index: usize| self.cluster.nodes[index].spec.ip;
                if let Some(partitioner) = self.partitioner {
                    if kind == FaultKind::PartitionOneWay {
                        nodes.push(node_id(other));
                        partitioner.drop_one_way(ip(victim), ip(other))?;
                    } else {
                        let rest: Vec<_> = (0..count).filter(|&i| i != victim).map(ip).collect();
                        partitioner.split(&[ip(victim)], &rest)?;
                    }
                    std::thread::sleep(hold);
                    partitioner.heal()?;
                }
            }
        }
        Ok(FaultRecord { kind: kind.name().into(), nodes, start_us, healed_us: self.now_us() })
    }
}
