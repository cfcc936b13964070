//! The nodes under test: real server processes on loopback aliases (127.0.0.11, .12, .13:
//! Linux routes all of 127/8 to lo, no set-up needed), each with its data directory, that
//! the nemesis kills (-9), restarts, pauses (SIGSTOP) and resumes (SIGCONT).
//!
//! One node runs the server without `--cluster`; several get `--node-id` and `--cluster`
//! (SPEC §14). With [`RaftLinks::Proxied`], every node reaches each peer's Raft port
//! through a fault proxy of that ordered pair (listening on the peer's own address, so
//! the nftables partitions still cut it), which the nemesis slows down or cuts.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use plafond_wire::{Client, Value};

use super::limits::{NODES_MAX, NODE_START_TIMEOUT, ROLE_TIMEOUT};
use crate::faultproxy::{Profile, Proxy};

/// The first node's address; node i (from 0) is `.11 + i`.
pub const FIRST_NODE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// What can go wrong with a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {id}: {what}: {source}")]
    Io { id: u32, what: &'static str, source: std::io::Error },
    #[error("node {id} did not print `listening on` within {NODE_START_TIMEOUT:?} (see {log})")]
    NoStart { id: u32, log: String },
    #[error("{0} nodes asked; 1 to {NODES_MAX}")]
    Count(usize),
    #[error("starting the fault proxy on the Raft link {from} -> {to}: {source}")]
    LinkProxy { from: u32, to: u32, source: std::io::Error },
}

/// How the nodes reach each other's Raft ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftLinks {
    /// Straight.
    Direct,
    /// Through a fault proxy per ordered pair of nodes (profile `none` until a fault).
    Proxied,
}

/// The fault proxy that node `from` dials to reach node `to`'s Raft port (indices into
/// [`Cluster::nodes`]): it carries what `from` sends to `to` (and the TCP
/// acknowledgements back; `to` sends on a connection of its own, through the opposite
/// link).
pub struct RaftLink {
    pub from: usize,
    pub to: usize,
    pub proxy: Proxy,
}

impl std::fmt::Debug for RaftLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RaftLink({} -> {} via {})", self.from, self.to, self.proxy.addr())
    }
}

/// Where a node lives and listens.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub id: u32,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub raft_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl NodeSpec {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.port))
    }
}

/// One node: its process while it runs.
#[derive(Debug)]
pub struct Node {
    pub spec: NodeSpec,
    child: Option<Child>,
    paused: bool,
}

/// The node set.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// The proxied Raft links (empty with [`RaftLinks::Direct`]).
    pub links: Vec<RaftLink>,
    binary: PathBuf,
    shards: u16,
    durability: String,
}

/// A free port on `ip` that stays free (the node binds it next, and again after each
/// restart).
fn free_port(ip: Ipv4Addr, id: u32) -> Result<u16, NodeError> {
    crate::ports::stable_port(ip).map_err(|source| NodeError::Io {
        id,
        what: "finding a free port",
        source,
    })
}

impl Cluster {
    /// Places `count` nodes (1 or 3) under `root` and starts them all.
    pub fn start(
        binary: PathBuf,
        root: &std::path::Path,
        count: usize,
        shards: u16,
        durability: &str,
        raft_links: RaftLinks,
    ) -> Result<Cluster, NodeError> {
        if count == 0 || count > NODES_MAX {
            return Err(NodeError::Count(count));
        }
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            let id = index as u32 + 1;
            let ip = Ipv4Addr::from(u32::from(FIRST_NODE_IP) + index as u32);
            let spec = NodeSpec {
                id,
                ip,
                port: free_port(ip, id)?,
                raft_port: free_port(ip, id)?,
                data_dir: root.join(format!("node{id}")),
                log: root.join(format!("node{id}.log")),
            };
            nodes.push(Node { spec, child: None, paused: false });
        }
        let links = match raft_links {
            RaftLinks::Direct => Vec::new(),
            RaftLinks::Proxied => start_links(&nodes)?,
        };
        let mut cluster =
            Cluster { nodes, links, binary, shards, durability: durability.to_owned() };
        for index in 0..count {
            cluster.restart(index)?;
        }
        Ok(cluster)
    }

    /// `--cluster ID=HOST:PORT:RAFT_PORT,...` (SPEC §14) as node `index` sees it, or
    /// nothing for one node. A peer's Raft port is its link proxy's where there is one:
    /// the node binds its own, and dials the proxy (on the peer's address) to reach a peer.
    fn cluster_args(&self, index: usize) -> Vec<String> {
        if self.nodes.len() < 2 {
            return Vec::new();
        }
        let members: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(peer, n)| {
                let link = self.links.iter().find(|l| l.from == index && l.to == peer);
                let raft_port = link.map_or(n.spec.raft_port, |l| l.proxy.addr().port());
                format!("{}={}:{}:{}", n.spec.id, n.spec.ip, n.spec.port, raft_port)
            })
            .collect();
        let id = self.nodes[index].spec.id.to_string();
        vec!["--node-id".into(), id, "--cluster".into(), members.join(",")]
    }

    /// The links between node `index` and the others, both ways; with `peer`, only those
    /// between the two.
    pub fn links_of(&self, index: usize, peer: Option<usize>) -> impl Iterator<Item = &RaftLink> {
        self.links.iter().filter(move |link| {
            let other = if link.from == index { link.to } else { link.from };
            let touches = link.from == index || link.to == index;
            touches && peer.is_none_or(|peer| other == peer)
        })
    }

    /// The node that says it leads (`ROLE`), in the highest term any serving node
    /// reports; `None` during an election.
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&index| self.is_serving(index))
            .filter_map(|index| Some((role(self.nodes[index].spec.addr())?, index)))
            .filter(|((role, _), _)| role == "leader")
            .max_by_key(|((_, term), _)| *term)
            .map(|(_, index)| index)
    }

    /// Whether node `index` runs and is not paused (it can answer).
    pub fn is_serving(&self, index: usize) -> bool {
        let node = &self.nodes[index];
        node.child.is_some() && !node.paused
    }

    /// Starts node `index` (again), on the same address and data directory, and waits
    /// until it listens.
    pub fn restart(&mut self, index: usize) -> Result<(), NodeError> {
        let spec = self.nodes[index].spec.clone();
        let io = |what| move |source| NodeError::Io { id: spec.id, what, source };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .map_err(io("opening its log"))?;
        let mut child = Command::new(&self.binary)
            .args(["--bind", &spec.ip.to_string(), "--port", &spec.port.to_string()])
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--durability", &self.durability, "--shards", &self.shards.to_string()])
            .args(["--snapshot-dir"])
            .arg(spec.data_dir.with_extension("snapshots"))
            .args(self.cluster_args(index))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(io("starting"))?;
        let stdout = child.stdout.take();
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(stdout) = stdout {
                // The first line says it listens; the rest is drained so it never blocks.
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = line_tx.send(line);
                }
            }
        });
        let node = &mut self.nodes[index];
        node.paused = false;
        let started = line_rx.recv_timeout(NODE_START_TIMEOUT);
        node.child = Some(child);
        match started {
            Ok(line) if line.starts_with("listening on") => Ok(()),
            _ => Err(NodeError::NoStart { id: spec.id, log: spec.log.display().to_string() }),
        }
    }

    /// `kill -9`, and waits for the process to be gone.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGSTOP: the process freezes, its sockets stay open (clients time out).
    pub fn pause(&mut self, index: usize) {
        self.signal(index, libc::SIGSTOP);
        self.nodes[index].paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) {
        self.signal(index, libc::SIGCONT);
        self.nodes[index].paused = false;
    }

    fn signal(&self, index: usize, signal: i32) {
        if let Some(child) = &self.nodes[index].child {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on a child we spawned and have not waited for, so the
                // pid is still ours.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Resumes every paused node, restarts every dead one, and makes every Raft link
    /// whole again.
    pub fn heal(&mut self) -> Result<(), NodeError> {
        for link in &self.links {
            heal_link(link);
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].paused {
                self.resume(index);
            }
            if self.nodes[index].child.is_none() {
                self.restart(index)?;
            }
        }
        Ok(())
    }

    /// Every node's client address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.spec.addr()).collect()
    }
}

/// `ROLE` of the node at `addr` (SPEC §14: `[role, term, leader]`): its role and term.
fn role(addr: SocketAddr) -> Option<(String, i64)> {
    let mut client = Client::connect_within(addr, ROLE_TIMEOUT, ROLE_TIMEOUT).ok()?;
    let Value::Array(items) = client.call(&["ROLE"]).ok()? else {
        return None;
    };
    let role = match items.first()? {
        Value::Simple(text) => text.clone(),
        Value::Bulk(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        _ => return None,
    };
    let term = match items.get(1)? {
        Value::Integer(term) => *term,
        _ => return None,
    };
    Some((role, term))
}

/// A fault proxy for every ordered pair of nodes, listening on the far node's address.
fn start_links(nodes: &[Node]) -> Result<Vec<RaftLink>, NodeError> {
    let mut links = Vec::new();
    for (from, near) in nodes.iter().enumerate() {
        for (to, far) in nodes.iter().enumerate().filter(|&(to, _)| to != from) {
            let listen = SocketAddr::from((far.spec.ip, 0));
            let upstream = SocketAddr::from((far.spec.ip, far.spec.raft_port));
            let (from_id, to_id) = (near.spec.id, far.spec.id);
            let proxy = Proxy::start(listen, upstream, Profile::none())
                .map_err(|source| NodeError::LinkProxy { from: from_id, to: to_id, source })?;
            links.push(RaftLink { from, to, proxy });
        }
    }
    Ok(links)
}

/// A link as it was before any fault: no profile, accepting connections.
pub fn heal_link(link: &RaftLink) {
    let control = link.proxy.control();
    // `none` is always valid: the call cannot be refused.
    let _ = control.set_profile(Profile::none());
    control.set_refusing(false);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}
