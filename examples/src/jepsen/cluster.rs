//! The nodes under test: real server processes on loopback aliases (127.0.0.11, .12, .13:
//! Linux routes all of 127/8 to lo, no set-up needed), each with its data directory, that
//! the nemesis kills (-9), restarts, pauses (SIGSTOP) and resumes (SIGCONT).
//!
//! One node runs the server as main has it; three get `--node-id` and `--cluster`
//! (SPEC §14), the interface of the replication branch.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::limits::{NODES_MAX, NODE_START_TIMEOUT};

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
    binary: PathBuf,
    shards: u16,
    durability: String,
}

/// A free port on `ip` now (the node binds it next, and again after each restart).
fn free_port(ip: Ipv4Addr, id: u32) -> Result<u16, NodeError> {
    let io = |source| NodeError::Io { id, what: "finding a free port", source };
    let listener = TcpListener::bind((ip, 0)).map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

impl Cluster {
    /// Places `count` nodes (1 or 3) under `root` and starts them all.
    pub fn start(
        binary: PathBuf,
        root: &std::path::Path,
        count: usize,
        shards: u16,
        durability: &str,
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
        let mut cluster = Cluster { nodes, binary, shards, durability: durability.to_owned() };
        for index in 0..count {
            cluster.restart(index)?;
        }
        Ok(cluster)
    }

    /// `--cluster ID=HOST:PORT:RAFT_PORT,...` (SPEC §14), or nothing for one node.
    fn cluster_args(&self, spec: &NodeSpec) -> Vec<String> {
        if self.nodes.len() < 2 {
            return Vec::new();
        }
        let members: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}={}:{}:{}", n.spec.id, n.spec.ip, n.spec.port, n.spec.raft_port))
            .collect();
        vec!["--node-id".into(), spec.id.to_string(), "--cluster".into(), members.join(",")]
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
            .args(self.cluster_args(&spec))
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

    /// Resumes every paused node and restarts every dead one.
    pub fn heal(&mut self) -> Result<(), NodeError> {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}
