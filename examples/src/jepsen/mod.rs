//! A Jepsen-style test of plafond (issue 14, item 5): clients send `DEPOSIT`, `PAY`,
//! `TRANSFER` (across shards too) and `BALANCE`, each write with a unique command id,
//! recording the history; a nemesis kills (-9) and restarts nodes, pauses them, cuts the
//! clients' connections at fault proxies, partitions nodes with nftables, and slows or
//! cuts the Raft links between them at fault proxies on their Raft ports; once healed,
//! every write is re-sent with its id, the balances, audits and digests are read, and the
//! [`checker`] says whether anything acknowledged was lost or doubled, any balance went
//! below zero or out of order, money was made or lost, or replicas disagree.
//!
//! [`run`] does all of it for a [`RunConfig`]: three nodes (127.0.0.11-13,
//! `--node-id`/`--cluster`, SPEC §14), or one (no `--cluster`: the single node's own
//! writer and recovery). docs/JEPSEN.md says how to run the CI run and the long one.

pub mod checker;
pub mod client;
pub mod cluster;
pub mod history;
pub mod limits;
pub mod nemesis;
pub mod partition;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plafond_wire::{Client, Value};

use crate::faultproxy::{Profile, Proxy};
use crate::sample::Rng;
use checker::{Audit, FinalState, Report};
use client::{micros_since, Answer, Routes, Session, WAIT_STEP};
use cluster::{Cluster, NodeError, RaftLinks};
use history::{Account, FaultRecord, Op, OpKind, Outcome};
use limits::{
    ACCOUNTS_MAX, CLIENTS_MAX, CONNECT_TIMEOUT, FAULTS_MAX, HEALED_TIMEOUT, OPS_PER_CLIENT_MAX,
    OP_DEADLINE, RESEND_PIPELINE,
};
use nemesis::{FaultKind, Nemesis, NemesisError, Pacing};
use partition::{PartitionError, Partitioner};

/// What a run is made of.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The built `server` example.
    pub server_binary: PathBuf,
    /// Data directories, node logs and `history.jsonl` go here.
    pub root: PathBuf,
    /// 1, or 3.
    pub nodes: usize,
    pub shards: u16,
    /// The nodes' `--durability`: `sync` for the test; `none` (memory only) shows the
    /// checker catching what a kill loses.
    pub durability: String,
    pub clients: usize,
    pub accounts: usize,
    pub faults: usize,
    /// Injected in turn.
    pub kinds: Vec<FaultKind>,
    /// Clients reach each node through a fault proxy of this profile (needed for
    /// [`FaultKind::CutClients`]).
    pub proxy: Option<Profile>,
    /// What [`FaultKind::SlowLinks`] makes of a node's Raft links for the hold.
    pub slow_link: Profile,
    /// Each client's pause between two operations.
    pub think: Duration,
    pub pacing: Pacing,
    pub seed: u64,
}

impl RunConfig {
    /// The CI run: three nodes, 42 faults (every kind of [`FaultKind::ALL`] six times,
    /// on the leader and on a follower in turn), about a minute on two cores.
    pub fn three_nodes(server_binary: PathBuf, root: PathBuf) -> RunConfig {
        RunConfig {
            server_binary,
            root,
            nodes: 3,
            shards: 2,
            durability: "sync".into(),
            clients: 6,
            accounts: 12,
            faults: 42,
            kinds: FaultKind::ALL.to_vec(),
            proxy: Some(Profile::none()),
            slow_link: slow_link(),
            think: Duration::from_millis(5),
            pacing: Pacing {
                hold_min: Duration::from_millis(50),
                hold_max: Duration::from_millis(400),
                rest_min: Duration::from_millis(150),
                rest_max: Duration::from_millis(600),
            },
            seed: 14,
        }
    }

    /// One node without `--cluster` (its own writer, its own recovery from its log after
    /// a kill -9, nothing to catch up from): kill -9, pause and cut in turn, 15 faults.
    pub fn one_node(server_binary: PathBuf, root: PathBuf) -> RunConfig {
        RunConfig {
            nodes: 1,
            faults: 15,
            kinds: vec![FaultKind::Kill, FaultKind::Pause, FaultKind::CutClients],
            ..RunConfig::three_nodes(server_binary, root)
        }
    }
}

/// The profile of a slowed Raft link: the harshest named one (`2g`: 800 ms of round trip,
/// 150 ms of jitter, 1 % of segments a retransmission late, about 32 KB/s each way), so
/// that a slowed leader's heartbeats arrive late and its appends queue behind the cap.
fn slow_link() -> Profile {
    // A name of PROFILE_NAMES: the fallback is never taken.
    Profile::named("2g").unwrap_or_else(|_| Profile::none())
}

/// What stopped a run before its check (a violation is no error: it is in the report).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("the run's configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Partition(#[from] PartitionError),
    #[error(transparent)]
    Nemesis(#[from] NemesisError),
    #[error("starting a fault proxy: {0}")]
    Proxy(std::io::Error),
    #[error("setting up the accounts: {0}")]
    Setup(String),
    #[error("the cluster did not serve within {HEALED_TIMEOUT:?}: {0}")]
    NotServing(String),
    #[error("a client thread panicked: its history is lost, the run cannot be checked")]
    ClientPanicked,
    #[error("writing the history: {0}")]
    History(std::io::Error),
}

/// A finished run: the checker's report and what it was run on.
#[derive(Debug)]
pub struct RunOutcome {
    pub report: Report,
    pub faults: Vec<FaultRecord>,
    pub accounts: Vec<Account>,
    /// Acknowledged transfers between accounts of different shards.
    pub cross_shard_transfers: usize,
    pub history: PathBuf,
    pub took: Duration,
}

/// Runs the whole test: nodes, clients, faults, healing, final reads, check.
pub fn run(config: &RunConfig) -> Result<RunOutcome, HarnessError> {
    validate(config)?;
    let started = Instant::now();
    let raft_links = match config.kinds.iter().any(|kind| kind.needs_raft_links()) {
        true => RaftLinks::Proxied,
        false => RaftLinks::Direct,
    };
    let needs_partitions = config.kinds.iter().any(|kind| kind.needs_nftables());
    let partitioner = if needs_partitions { Some(Partitioner::new()?) } else { None };
    let mut cluster = Cluster::start(
        config.server_binary.clone(),
        &config.root,
        config.nodes,
        config.shards,
        &config.durability,
        raft_links,
    )?;
    let proxies = start_proxies(config, &cluster)?;
    let routes = Routes {
        nodes: cluster.addrs(),
        dial: match proxies.is_empty() {
            true => cluster.addrs(),
            false => proxies.iter().map(Proxy::addr).collect(),
        },
    };
    let mut session = Session::new(routes.clone(), 0);
    wait_until_served(&mut session)?;
    let accounts = open_accounts(&mut session, config.accounts)?;
    let initial = read_balances(&mut session, &accounts)?;
    if initial.len() < accounts.len() {
        return Err(HarnessError::Setup("an account just opened cannot be read".into()));
    }

    let origin = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_clients(config, &routes, &accounts, origin, &stop);
    let mut nemesis = Nemesis {
        cluster: &mut cluster,
        proxies: &proxies,
        partitioner: partitioner.as_ref(),
        rng: Rng::new(config.seed),
        origin,
        pacing: config.pacing,
        slow_link: config.slow_link.clone(),
        injected: BTreeMap::new(),
    };
    let faults = inject_faults(config, &mut nemesis);
    // Let the clients see the service whole again for a moment before they stop.
    std::thread::sleep(config.pacing.rest_max);
    stop.store(true, Ordering::Relaxed);
    let ops = collect(workers)?;
    let faults = faults?;

    cluster.heal()?;
    if let Some(partitioner) = &partitioner {
        partitioner.heal()?;
    }
    wait_until_served(&mut session)?;
    let nodes: Vec<(u32, SocketAddr)> =
        cluster.nodes.iter().map(|n| (n.spec.id, n.spec.addr())).collect();
    let last = FinalState {
        initial,
        retries: resend_writes(&mut session, &ops),
        balances: read_balances(&mut session, &accounts)?,
        audits: nodes.iter().filter_map(|&(id, addr)| audit(addr, id)).collect(),
        digests: settled_digests(&nodes),
    };
    let report = checker::check(&ops, &faults, &last);
    let history = config.root.join("history.jsonl");
    history::write_jsonl(&history, &ops, &faults).map_err(HarnessError::History)?;
    Ok(RunOutcome {
        report,
        cross_shard_transfers: cross_shard_transfers(&ops, config.shards),
        faults,
        accounts,
        history,
        took: started.elapsed(),
    })
}

/// Every node's digests, read again until they agree or [`HEALED_TIMEOUT`] passes: a
/// follower healed a moment ago may still be applying what it missed.
fn settled_digests(nodes: &[(u32, SocketAddr)]) -> Vec<(u32, Vec<String>)> {
    let deadline = Instant::now() + HEALED_TIMEOUT;
    loop {
        let read: Vec<(u32, Vec<String>)> =
            nodes.iter().map(|&(id, addr)| (id, digests(addr))).collect();
        let reported: Vec<&Vec<String>> =
            read.iter().map(|(_, d)| d).filter(|d| !d.is_empty()).collect();
        let agree = reported.windows(2).all(|pair| pair[0] == pair[1]);
        if agree || Instant::now() >= deadline {
            return read;
        }
        std::thread::sleep(WAIT_STEP);
    }
}

/// One thread per client process, each running until `stop`.
fn spawn_clients(
    config: &RunConfig,
    routes: &Routes,
    accounts: &[Account],
    origin: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Op>>> {
    let accounts = Arc::new(accounts.to_vec());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    (0..config.clients)
        .map(|process| {
            let worker = Worker {
                process: process as u32,
                session: Session::new(routes.clone(), process),
                accounts: accounts.clone(),
                rng: Rng::new(config.seed ^ (process as u64 + 1).wrapping_mul(0x9e37_79b9)),
                nonce,
                think: config.think,
                origin,
            };
            let stop = stop.clone();
            std::thread::spawn(move || worker.run(&stop))
        })
        .collect()
}

/// The configured faults, kinds in turn; stops at the first the nemesis cannot inject
/// (or heal).
fn inject_faults(
    config: &RunConfig,
    nemesis: &mut Nemesis<'_>,
) -> Result<Vec<FaultRecord>, HarnessError> {
    let mut faults = Vec::with_capacity(config.faults);
    for index in 0..config.faults {
        faults.push(nemesis.fault(config.kinds[index % config.kinds.len()])?);
    }
    Ok(faults)
}

/// Every client's operations, in invocation order. A client that panicked lost its
/// history, so the run cannot be checked.
fn collect(workers: Vec<std::thread::JoinHandle<Vec<Op>>>) -> Result<Vec<Op>, HarnessError> {
    let mut ops = Vec::new();
    for worker in workers {
        ops.extend(worker.join().map_err(|_| HarnessError::ClientPanicked)?);
    }
    ops.sort_by_key(|op| op.invoke_us);
    Ok(ops)
}

/// Acknowledged transfers between accounts on different shards (`id % shards`).
fn cross_shard_transfers(ops: &[Op], shards: u16) -> usize {
    let shards = u64::from(shards.max(1));
    let crosses = |op: &&Op| match op.kind {
        OpKind::Transfer { from, to, .. } => from % shards != to % shards,
        _ => false,
    };
    ops.iter().filter(|op| op.is_ok()).filter(crosses).count()
}

fn validate(config: &RunConfig) -> Result<(), HarnessError> {
    let refuse = |what: &str| Err(HarnessError::Config(what.to_owned()));
    if config.clients == 0 || config.clients > CLIENTS_MAX {
        return refuse("clients: 1 to CLIENTS_MAX");
    }
    if config.accounts < 2 || config.accounts > ACCOUNTS_MAX {
        return refuse("accounts: 2 (a transfer needs two) to ACCOUNTS_MAX");
    }
    if config.faults > FAULTS_MAX || (config.faults > 0 && config.kinds.is_empty()) {
        return refuse("faults: at most FAULTS_MAX, of at least one kind");
    }
    if config.nodes < 2 && config.kinds.iter().any(|kind| kind.needs_peers()) {
        return refuse("a partition or a Raft link's fault needs at least two nodes");
    }
    if config.slow_link.clone().validated().is_err() {
        return refuse("slow_link: a profile out of range");
    }
    if config.proxy.is_none() && config.kinds.contains(&FaultKind::CutClients) {
        return refuse("cutting clients' connections needs the fault proxy (proxy: Some)");
    }
    Ok(())
}

fn start_proxies(config: &RunConfig, cluster: &Cluster) -> Result<Vec<Proxy>, HarnessError> {
    let Some(profile) = &config.proxy else {
        return Ok(Vec::new());
    };
    let listen: SocketAddr = (std::net::Ipv4Addr::LOCALHOST, 0).into();
    cluster
        .addrs()
        .into_iter()
        .map(|node| Proxy::start(listen, node, profile.clone()).map_err(HarnessError::Proxy))
        .collect()
}

fn words(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| part.to_string()).collect()
}

/// Waits until a write reaches a node that decides it (the leader, or the one node): a
/// read of an account that may not exist gets a definite answer only from there.
fn wait_until_served(session: &mut Session) -> Result<(), HarnessError> {
    let deadline = Instant::now() + HEALED_TIMEOUT;
    match session.run(&words(&["BALANCE", "0"]), deadline).0 {
        Outcome::Info { error } => Err(HarnessError::NotServing(error)),
        _ => Ok(()),
    }
}

/// Opens `count` checking accounts, each in a profile of its own (profiles are spread over
/// the shards in turn, so transfers cross shards). Before any fault: an opening carries no
/// command id, so it is sent once.
fn open_accounts(session: &mut Session, count: usize) -> Result<Vec<Account>, HarnessError> {
    let setup = |what: &str, reply: &Result<Value, String>| {
        HarnessError::Setup(format!("{what}: {reply:?}"))
    };
    let mut accounts = Vec::with_capacity(count);
    for _ in 0..count {
        let reply = session.call_once(&words(&["PROFILE.OPEN", "eu-west"]));
        let Ok(Value::Integer(profile)) = reply else {
            return Err(setup("PROFILE.OPEN", &reply));
        };
        let reply = session.call_once(&words(&["ACCOUNT.OPEN", &profile.to_string(), "CHECKING"]));
        let account = match &reply {
            Ok(Value::Array(items)) => match items.first() {
                Some(Value::Integer(account)) => u64::try_from(*account).ok(),
                _ => None,
            },
            _ => None,
        };
        let account = account.ok_or_else(|| setup("ACCOUNT.OPEN", &reply))?;
        // The card's seven-day ceiling out of the way: the clock does not move in a run,
        // so the default would decline most payments after the first minute.
        let ceiling = CARD_CEILING_MINOR.to_string();
        let reply = session.call_once(&words(&["CARD.CEILING", &account.to_string(), &ceiling]));
        if !matches!(&reply, Ok(Value::Simple(ok)) if ok == "OK") {
            return Err(setup("CARD.CEILING", &reply));
        }
        accounts.push(account);
    }
    Ok(accounts)
}

/// Each card's seven-day ceiling in a run (SPEC §1: amounts up to 10^15).
const CARD_CEILING_MINOR: u64 = 1_000_000_000_000;

/// Sends `commands` pipelined in rounds, each round again until answered whole or
/// `deadline`: the answers in order, `None` where none came.
fn pipelined(
    session: &mut Session,
    commands: &[Vec<String>],
    deadline: Instant,
) -> Vec<Option<Answer>> {
    let mut answers = Vec::with_capacity(commands.len());
    for round in commands.chunks(RESEND_PIPELINE) {
        loop {
            match session.pipeline(round) {
                Ok(replies) => {
                    answers.extend(replies.into_iter().map(Some));
                    break;
                }
                Err(_) if Instant::now() < deadline => std::thread::sleep(WAIT_STEP),
                Err(_) => {
                    answers.extend(round.iter().map(|_| None));
                    break;
                }
            }
        }
    }
    answers
}

fn read_balances(
    session: &mut Session,
    accounts: &[Account],
) -> Result<BTreeMap<Account, i64>, HarnessError> {
    let reads: Vec<Vec<String>> =
        accounts.iter().map(|a| OpKind::Balance { account: *a }.command("")).collect();
    let answers = pipelined(session, &reads, Instant::now() + HEALED_TIMEOUT);
    let mut balances = BTreeMap::new();
    for (&account, answer) in accounts.iter().zip(answers) {
        match answer {
            Some(Answer::Balance(balance)) => {
                balances.insert(account, balance);
            }
            // An account the node forgot: the checker reports it missing.
            Some(Answer::Declined(_)) => {}
            None => return Err(HarnessError::NotServing(format!("BALANCE {account}"))),
        }
    }
    Ok(balances)
}

/// Every write of the history again, with its own command id: what the server answers
/// now (an `info` write's resolution; the first answer again for the others).
fn resend_writes(session: &mut Session, ops: &[Op]) -> std::collections::HashMap<String, Outcome> {
    let writes: Vec<(&String, Vec<String>)> =
        ops.iter().filter_map(|op| op.id.as_ref().map(|id| (id, op.kind.command(id)))).collect();
    let commands: Vec<Vec<String>> = writes.iter().map(|(_, command)| command.clone()).collect();
    let answers = pipelined(session, &commands, Instant::now() + HEALED_TIMEOUT);
    writes
        .into_iter()
        .zip(answers)
        .map(|((id, _), answer)| {
            let outcome = answer
                .map_or(Outcome::Info { error: "no answer once healed".into() }, Answer::outcome);
            (id.clone(), outcome)
        })
        .collect()
}

/// `STATS JSON` of the node at `addr` (straight, not through a proxy), if it answers.
fn stats(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut client = Client::connect_within(addr, CONNECT_TIMEOUT, HEALED_TIMEOUT).ok()?;
    match client.call(&["STATS", "JSON"]).ok()? {
        Value::Bulk(json) => serde_json::from_slice(&json).ok(),
        _ => None,
    }
}

/// The node's audit (SPEC §2), read from `STATS JSON`'s `audit` object.
fn audit(addr: SocketAddr, node: u32) -> Option<(u32, Audit)> {
    let stats = stats(addr)?;
    let audit = &stats["audit"];
    let field = |name: &str| -> Option<i128> {
        let value = &audit[name];
        value.as_i64().map(i128::from).or_else(|| value.as_u64().map(i128::from))
    };
    Some((
        node,
        Audit {
            balances: field("balances_minor")?,
            in_flight: field("in_flight_minor")?,
            initial_deposits: field("initial_deposits_minor")?,
            deposits: field("deposits_minor")?,
            interest: field("interest_minor")?,
            refunds: field("refunds_minor")?,
            card_payments: field("card_payments_minor")?,
            captures: field("captures_minor")?,
        },
    ))
}

/// Each shard's state digest from `STATS JSON` (`shards[i].digest`, SPEC §14), empty
/// where the node reports none (a single node on main does not).
fn digests(addr: SocketAddr) -> Vec<String> {
    let Some(stats) = stats(addr) else {
        return Vec::new();
    };
    let shards = stats["shards"].as_array().cloned().unwrap_or_default();
    shards
        .iter()
        .filter_map(|shard| match &shard["digest"] {
            serde_json::Value::Null => None,
            serde_json::Value::String(text) => Some(text.clone()),
            other => Some(other.to_string()),
        })
        .collect()
}

/// One client process: one operation at a time, as Jepsen's are.
struct Worker {
    process: u32,
    session: Session,
    accounts: Arc<Vec<Account>>,
    rng: Rng,
    nonce: u128,
    think: Duration,
    origin: Instant,
}

impl Worker {
    fn run(mut self, stop: &AtomicBool) -> Vec<Op> {
        let mut ops = Vec::new();
        while !stop.load(Ordering::Relaxed) && ops.len() < OPS_PER_CLIENT_MAX {
            let kind = self.next_kind();
            let id =
                kind.is_write().then(|| format!("j{}-{}-{}", self.nonce, self.process, ops.len()));
            let command = kind.command(id.as_deref().unwrap_or_default());
            let invoked = Instant::now();
            let (outcome, attempts, last_attempt) =
                self.session.run(&command, invoked + OP_DEADLINE);
            let complete = Instant::now();
            ops.push(Op {
                process: self.process,
                id,
                kind,
                invoke_us: micros_since(self.origin, invoked),
                complete_us: micros_since(self.origin, complete),
                last_attempt_us: micros_since(self.origin, last_attempt),
                attempts,
                outcome,
            });
            std::thread::sleep(self.think);
        }
        ops
    }

    /// A quarter deposits, a third payments, a quarter transfers, the rest reads. Deposits
    /// bring in about what payments take out, and payments and transfers are large enough
    /// that some are declined for want of funds.
    fn next_kind(&mut self) -> OpKind {
        let count = self.accounts.len() as u64;
        let account = self.accounts[self.rng.below(count) as usize];
        let amount = |rng: &mut Rng, max: u64| 1 + rng.below(max) as i64;
        match self.rng.below(100) {
            0..25 => OpKind::Deposit { account, amount: amount(&mut self.rng, 15_000) },
            25..60 => OpKind::Pay { account, amount: amount(&mut self.rng, 10_000) },
            60..85 => {
                let offset = 1 + self.rng.below(count - 1) as usize;
                let index = self.accounts.iter().position(|&a| a == account).unwrap_or(0);
                let to = self.accounts[(index + offset) % self.accounts.len()];
                OpKind::Transfer { from: account, to, amount: amount(&mut self.rng, 30_000) }
            }
            _ => OpKind::Balance { account },
        }
    }
}
