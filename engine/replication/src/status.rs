//! What a replica tells the rest of the node: its role, term and leader, and whether it
//! decides commands now.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::cluster::Cluster;

/// A replica's Raft role (SPEC §14's `ROLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It follows a leader (or has not heard of one yet).
    Follower,
    /// It stands for election.
    Candidate,
    /// It leads.
    Leader,
}

impl Role {
    /// The word `ROLE` answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// The replica's published state, read by the server on every read of a connection.
#[derive(Debug)]
pub struct ReplicaStatus {
    cluster: Cluster,
    role: AtomicU8,
    term: AtomicU64,
    /// The leader's Raft id, 0 when none is known.
    leader: AtomicU64,
    /// Set once this node leads and its shards hold every committed batch: it decides
    /// commands only then.
    serving: AtomicBool,
    /// Set once this node led and lost the lead: it acknowledges nothing more.
    deposed: AtomicBool,
    applied: AtomicU64,
    commit: AtomicU64,
    /// Snapshots this replica installed, over its whole life (kept on disk).
    snapshots_installed: AtomicU64,
    /// Snapshots offered to followers since this process started.
    snapshots_sent: AtomicU64,
}

/// A consistent reading of [`ReplicaStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleView {
    /// This node's Raft id.
    pub node_id: u64,
    /// The role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader's client address, if one is known.
    pub leader: Option<SocketAddr>,
    /// The leader's Raft id, if one is known.
    pub leader_id: Option<u64>,
    /// Whether this node decides commands.
    pub serving: bool,
    /// The last Raft index applied here.
    pub applied: u64,
    /// The last Raft index known committed.
    pub commit: u64,
    /// Snapshots this replica installed, over its whole life.
    pub snapshots_installed: u64,
    /// Snapshots offered to followers since this process started.
    pub snapshots_sent: u64,
}

impl ReplicaStatus {
    /// A follower of no known leader, in term 0.
    pub fn new(cluster: Cluster) -> ReplicaStatus {
        ReplicaStatus {
            cluster,
            role: AtomicU8::new(0),
            term: AtomicU64::new(0),
            leader: AtomicU64::new(0),
            serving: AtomicBool::new(false),
            deposed: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            snapshots_sent: AtomicU64::new(0),
        }
    }

    /// The cluster this replica belongs to.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Whether this node decides commands now.
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.deposed.load(Ordering::Acquire)
    }

    /// Whether this node led and lost its lead (it then acknowledges nothing).
    pub fn deposed(&self) -> bool {
        self.deposed.load(Ordering::Acquire)
    }

    /// The state now.
    pub fn view(&self) -> RoleView {
        let role = match self.role.load(Ordering::Acquire) {
            2 => Role::Leader,
            1 => Role::Candidate,
            _ => Role::Follower,
        };
        let leader_id = Some(self.leader.load(Ordering::Acquire)).filter(|&id| id != 0);
        RoleView {
            node_id: self.cluster.node_id,
            role,
            term: self.term.load(Ordering::Acquire),
            leader: leader_id.and_then(|id| self.cluster.member(id)).map(|m| m.client_addr()),
            leader_id,
            serving: self.serving(),
            applied: self.applied.load(Ordering::Relaxed),
            commit: self.commit.load(Ordering::Relaxed),
            snapshots_installed: self.snapshots_installed.load(Ordering::Relaxed),
            snapshots_sent: self.snapshots_sent.load(Ordering::Relaxed),
        }
    }

    /// The error a command this node may not decide gets: `READONLY leader HOST:PORT`, or
    /// `CLUSTERDOWN no leader` while there is none (SPEC §14); `None` when it serves.
    pub fn refusal(&self) -> Option<String> {
        if self.serving() {
            return None;
        }
        let view = self.view();
        match view.leader.filter(|_| view.leader_id != Some(self.cluster.node_id)) {
            Some(leader) => Some(format!("READONLY leader {leader}")),
            None => Some("CLUSTERDOWN no leader".to_owned()),
        }
    }

    pub(crate) fn set_role(&self, role: Role, leader: u64) {
        let code = match role {
            Role::Follower => 0,
            Role::Candidate => 1,
            Role::Leader => 2,
        };
        self.role.store(code, Ordering::Release);
        self.leader.store(leader, Ordering::Release);
    }

    pub(crate) fn set_term(&self, term: u64) {
        self.term.store(term, Ordering::Release);
    }

    pub(crate) fn set_progress(&self, applied: u64, commit: u64) {
        self.applied.store(applied, Ordering::Relaxed);
        self.commit.store(commit, Ordering::Relaxed);
    }

    pub(crate) fn set_snapshots(&self, installed: u64, sent: u64) {
        self.snapshots_installed.store(installed, Ordering::Relaxed);
        self.snapshots_sent.store(sent, Ordering::Relaxed);
    }

    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    pub(crate) fn set_deposed(&self) {
        self.deposed.store(true, Ordering::Release);
        self.serving.store(false, Ordering::Release);
    }
}
