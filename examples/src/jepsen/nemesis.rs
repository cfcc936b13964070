//! The nemesis: faults injected one after another while the clients run, each held for a
//! while and then healed, each recorded with its start and heal times and whether it hit
//! the leader or a follower. Each kind of fault that hits one node hits the leader and a
//! follower in turn (the leader as `ROLE` names it, waited for a while after a fault that
//! left none), so that both are covered and failovers are timed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::cluster::{heal_link, Cluster, NodeError};
use super::history::{target, FaultRecord};
use super::limits::LEADER_WAIT;
use super::partition::{PartitionError, Partitioner};
use crate::faultproxy::{Profile, Proxy};
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
    /// Every Raft link to and from one node slowed and made lossy (the fault proxies
    /// between the nodes take the run's slow-link profile for the hold).
    SlowLinks,
    /// The Raft links between one node and one other, both ways, cut (every connection
    /// reset, new ones refused for the hold): the two cannot talk, each still talks to
    /// the third.
    CutLink,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::CutClients => "cut-clients",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::PartitionMinority => "partition-minority",
            FaultKind::SlowLinks => "slow-links",
            FaultKind::CutLink => "cut-link",
        }
    }

    /// Every kind, in the order a three-node run injects them.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::CutClients,
        FaultKind::PartitionOneWay,
        FaultKind::PartitionMinority,
        FaultKind::SlowLinks,
        FaultKind::CutLink,
    ];

    /// Whether it needs several nodes (a partition of one node from nothing is none).
    pub fn needs_peers(self) -> bool {
        self.needs_nftables() || self.needs_raft_links()
    }

    /// Whether it is made of nftables rules (root).
    pub fn needs_nftables(self) -> bool {
        matches!(self, FaultKind::PartitionOneWay | FaultKind::PartitionMinority)
    }

    /// Whether it acts on the fault proxies between the nodes' Raft ports.
    pub fn needs_raft_links(self) -> bool {
        matches!(self, FaultKind::SlowLinks | FaultKind::CutLink)
    }

    /// Whether it hits one node (or a link of one), so the leader or a follower.
    fn has_victim(self) -> bool {
        self != FaultKind::CutClients
    }
}

/// What can stop the nemesis.
#[derive(Debug, thiserror::Error)]
pub enum NemesisError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error("a {0} fault needs the run's Raft links proxied (RaftLinks::Proxied)")]
    NoRaftLinks(&'static str),
    #[error("a partition needs nftables (a Partitioner)")]
    NoPartitioner,
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
    /// What [`FaultKind::SlowLinks`] gives the links.
    pub slow_link: Profile,
    /// Faults of each kind injected so far (the leader and a follower take turns).
    pub injected: BTreeMap<&'static str, u64>,
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
        if kind.needs_raft_links() && self.cluster.links.is_empty() {
            return Err(NemesisError::NoRaftLinks(kind.name()));
        }
        let rest = self.draw(self.pacing.rest_min, self.pacing.rest_max);
        std::thread::sleep(rest);
        let hold = self.draw(self.pacing.hold_min, self.pacing.hold_max);
        let count = self.cluster.nodes.len();
        let turn = self.injected.entry(kind.name()).or_default();
        let wants_leader = turn.is_multiple_of(2);
        *turn += 1;
        let (victim, target) = match kind.has_victim() {
            true => self.pick(wants_leader),
            false => (0, target::ALL),
        };
        // The far end of a one-way partition or a cut link (one node has none).
        let other = match count {
            1 => victim,
            _ => (victim + 1 + self.rng.below(count as u64 - 1) as usize) % count,
        };
        let node_id = |index: usize| self.cluster.nodes[index].spec.id;
        let mut nodes = vec![node_id(victim)];
        // When the fault is in force (a kill waited for, the rules installed): what it
        // costs the clients is timed from there.
        let start_us;
        match kind {
            FaultKind::Kill => {
                self.cluster.kill(victim);
                start_us = self.now_us();
                std::thread::sleep(hold);
                self.cluster.restart(victim)?;
            }
            FaultKind::Pause => {
                self.cluster.pause(victim);
                start_us = self.now_us();
                std::thread::sleep(hold);
                self.cluster.resume(victim);
            }
            FaultKind::CutClients => {
                nodes.clear();
                for proxy in self.proxies {
                    proxy.control().set_refusing(true);
                    proxy.control().cut_all();
                }
                start_us = self.now_us();
                std::thread::sleep(hold);
                for proxy in self.proxies {
                    proxy.control().set_refusing(false);
                }
            }
            FaultKind::PartitionOneWay | FaultKind::PartitionMinority => {
                let ip = |index: usize| self.cluster.nodes[index].spec.ip;
                let partitioner = self.partitioner.ok_or(NemesisError::NoPartitioner)?;
                if kind == FaultKind::PartitionOneWay {
                    nodes.push(node_id(other));
                    partitioner.drop_one_way(ip(victim), ip(other))?;
                } else {
                    let rest: Vec<_> = (0..count).filter(|&i| i != victim).map(ip).collect();
                    partitioner.split(&[ip(victim)], &rest)?;
                }
                start_us = self.now_us();
                std::thread::sleep(hold);
                partitioner.heal()?;
            }
            FaultKind::SlowLinks => {
                for link in self.cluster.links_of(victim, None) {
                    // Validated when the run's configuration was.
                    let _ = link.proxy.control().set_profile(self.slow_link.clone());
                }
                start_us = self.now_us();
                std::thread::sleep(hold);
                self.cluster.links_of(victim, None).for_each(heal_link);
            }
            FaultKind::CutLink => {
                nodes.push(node_id(other));
                for link in self.cluster.links_of(victim, Some(other)) {
                    link.proxy.control().set_refusing(true);
                    link.proxy.control().cut_all();
                }
                start_us = self.now_us();
                std::thread::sleep(hold);
                self.cluster.links_of(victim, Some(other)).for_each(heal_link);
            }
        }
        Ok(FaultRecord {
            kind: kind.name().into(),
            nodes,
            target: target.into(),
            start_us,
            healed_us: self.now_us(),
        })
    }

    /// The node to hit: the leader if `wants_leader`, else a follower (at random), and
    /// which it was. One node is its own leader.
    fn pick(&mut self, wants_leader: bool) -> (usize, &'static str) {
        let count = self.cluster.nodes.len();
        if count == 1 {
            return (0, target::LEADER);
        }
        let Some(leader) = self.wait_for_leader() else {
            return (self.rng.below(count as u64) as usize, target::UNKNOWN);
        };
        if wants_leader {
            return (leader, target::LEADER);
        }
        let follower = (leader + 1 + self.rng.below(count as u64 - 1) as usize) % count;
        (follower, target::FOLLOWER)
    }

    /// The node that says it leads, polled until [`LEADER_WAIT`] passes (an election
    /// after the last fault may still be running).
    fn wait_for_leader(&self) -> Option<usize> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let leader = self.cluster.leader();
            if leader.is_some() || Instant::now() >= deadline {
                return leader;
            }
            std::thread::sleep(super::client::WAIT_STEP);
        }
    }
}
