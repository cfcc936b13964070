//! A client of the cluster: finds and follows the leader (`-READONLY leader HOST:PORT`),
//! waits out an election (`-CLUSTERDOWN`), and retries an operation with the SAME command
//! id after a connection error or a timeout until it gets a definite answer (SPEC §6), so
//! an outcome is unknown only if no attempt was ever answered.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use plafond_wire::{Client, Value};

use super::history::Outcome;
use super::limits::{CONNECT_TIMEOUT, REDIRECTS_MAX, REPLY_TIMEOUT, RETRY_PAUSE};

/// Where each node is, and where a client dials to reach it (the node itself, or a fault
/// proxy in front of it).
#[derive(Clone, Debug)]
pub struct Routes {
    /// Each node's own address (what `-READONLY leader HOST:PORT` names).
    pub nodes: Vec<SocketAddr>,
    /// Where to connect for each node.
    pub dial: Vec<SocketAddr>,
}

impl Routes {
    /// Straight to the nodes.
    pub fn direct(nodes: Vec<SocketAddr>) -> Routes {
        Routes { dial: nodes.clone(), nodes }
    }
}

/// A definite answer to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `[DONE, balance]`, `[APPROVED, balance, spent]`, or a read's integer.
    Balance(i64),
    /// `[DECLINED, REASON]`.
    Declined(String),
}

impl Answer {
    pub fn outcome(self) -> Outcome {
        match self {
            Answer::Balance(balance) => Outcome::Ok { balance },
            Answer::Declined(reason) => Outcome::Fail { reason },
        }
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::Simple(text) => Some(text),
        Value::Bulk(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// Reads a reply as an [`Answer`], or says what else it was (an error, an odd shape).
pub fn answer(reply: &Value) -> Result<Answer, String> {
    match reply {
        Value::Integer(balance) => Ok(Answer::Balance(*balance)),
        Value::Array(items) => match (items.first().and_then(text), items.get(1)) {
            (Some("DONE" | "APPROVED"), Some(Value::Integer(balance))) => {
                Ok(Answer::Balance(*balance))
            }
            (Some("DECLINED"), Some(reason)) => {
                Ok(Answer::Declined(text(reason).unwrap_or("?").to_owned()))
            }
            _ => Err(format!("unexpected reply {reply:?}")),
        },
        Value::Error(error) => Err(error.clone()),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// One client's connection and its idea of who leads.
#[derive(Debug)]
pub struct Session {
    routes: Routes,
    target: usize,
    conn: Option<Client>,
}

/// How one attempt went wrong.
enum Miss {
    /// The connection failed or timed out: try another node (or the same, reconnected).
    Connection(String),
    /// The cluster is electing, or the node refused for a while: wait, try again.
    Busy(String),
}

impl Session {
    pub fn new(routes: Routes, first: usize) -> Session {
        let target = first % routes.nodes.len().max(1);
        Session { routes, target, conn: None }
    }

    /// Runs `command` until it gets a definite answer or `deadline` passes: the outcome
    /// (`info` with the last error if never answered), the attempts, and when the last
    /// one was sent.
    pub fn run(&mut self, command: &[String], deadline: Instant) -> (Outcome, u32, Instant) {
        let mut attempts = 0;
        loop {
            let sent = Instant::now();
            attempts += 1;
            let error = match self.attempt(command) {
                Ok(answer) => return (answer.outcome(), attempts, sent),
                Err(Miss::Connection(error)) => {
                    self.conn = None;
                    self.target = (self.target + 1) % self.routes.nodes.len().max(1);
                    error
                }
                Err(Miss::Busy(error)) => error,
            };
            if Instant::now() + RETRY_PAUSE >= deadline {
                return (Outcome::Info { error }, attempts, sent);
            }
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    /// Sends every command of `commands` pipelined on one connection and reads every
    /// reply; any miss fails the whole round (the caller resends it: each is a retry).
    pub fn pipeline(&mut self, commands: &[Vec<String>]) -> Result<Vec<Answer>, String> {
        let result = self.pipeline_once(commands);
        if result.is_err() {
            self.conn = None;
            self.target = (self.target + 1) % self.routes.nodes.len().max(1);
        }
        result
    }

    fn pipeline_once(&mut self, commands: &[Vec<String>]) -> Result<Vec<Answer>, String> {
        let conn = self.connection().map_err(|m| m.text())?;
        for command in commands {
            conn.send_command(command).map_err(|e| e.to_string())?;
        }
        let mut answers = Vec::with_capacity(commands.len());
        for _ in commands {
            let reply = conn.read().map_err(|e| e.to_string())?;
            answers.push(answer(&reply)?);
        }
        Ok(answers)
    }

    fn connection(&mut self) -> Result<&mut Client, Miss> {
        if self.conn.is_none() {
            let addr = self.routes.dial[self.target];
            let client = Client::connect_within(addr, CONNECT_TIMEOUT, REPLY_TIMEOUT)
                .map_err(|e| Miss::Connection(e.to_string()))?;
            self.conn = Some(client);
        }
        self.conn.as_mut().ok_or_else(|| Miss::Connection("no connection".into()))
    }

    fn attempt(&mut self, command: &[String]) -> Result<Answer, Miss> {
        let reply = self.exchange(command)?;
        answer(&reply).map_err(Miss::Busy)
    }

    /// Sends `command` once (following the leader): its reply, or what went wrong. For
    /// commands that must not be retried blindly (openings carry no command id).
    pub fn call_once(&mut self, command: &[String]) -> Result<Value, String> {
        let result = self.exchange(command);
        if let Err(Miss::Connection(_)) = result {
            self.conn = None;
        }
        result.map_err(Miss::text)
    }

    /// One attempt, following `-READONLY leader HOST:PORT` redirections: the first reply
    /// that is not an error.
    fn exchange(&mut self, command: &[String]) -> Result<Value, Miss> {
        for _ in 0..REDIRECTS_MAX {
            let conn = self.connection()?;
            let reply = conn.call(command).map_err(|e| Miss::Connection(e.to_string()))?;
            match &reply {
                Value::Error(error) if error.starts_with("READONLY") => {
                    match self.leader_named(error) {
                        Some(index) => {
                            self.target = index;
                            self.conn = None;
                        }
                        None => return Err(Miss::Connection(error.clone())),
                    }
                }
                Value::Error(error) => return Err(Miss::Busy(error.clone())),
                _ => return Ok(reply),
            }
        }
        Err(Miss::Busy("too many leader redirections".into()))
    }

    /// The node `-READONLY leader HOST:PORT` names, if it is one of ours.
    fn leader_named(&self, error: &str) -> Option<usize> {
        let named: SocketAddr = error.split_whitespace().last()?.parse().ok()?;
        self.routes.nodes.iter().position(|&node| node == named)
    }
}

impl Miss {
    fn text(self) -> String {
        match self {
            Miss::Connection(text) | Miss::Busy(text) => text,
        }
    }
}

/// How long ago `origin` was, in microseconds.
pub fn micros_since(origin: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(origin).as_micros().min(u128::from(u64::MAX)) as u64
}

/// A short pause, for the final phase's waits.
pub const WAIT_STEP: Duration = Duration::from_millis(50);
