//! The history of a run, as Jepsen records one: every operation a client invoked, when,
//! and how it completed: `ok` (the server acknowledged it), `fail` (it declined: no
//! effect), or `info` (no definite answer: it may or may not have happened).

use serde::Serialize;

/// An account id (a checking account's card has the same id, SPEC §9 and ARCHITECTURE).
pub type Account = u64;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum OpKind {
    Deposit {
        account: Account,
        amount: i64,
    },
    /// A card payment; the card is the checking account's own.
    Pay {
        account: Account,
        amount: i64,
    },
    Transfer {
        from: Account,
        to: Account,
        amount: i64,
    },
    Balance {
        account: Account,
    },
}

impl OpKind {
    /// Whether it changes state (and so carries a command id).
    pub fn is_write(&self) -> bool {
        !matches!(self, OpKind::Balance { .. })
    }

    /// The account whose balance the reply reports: a deposit's, a payment's, a
    /// transfer's source (`[DONE, from_balance]`), a read's.
    pub fn reported_account(&self) -> Account {
        match *self {
            OpKind::Deposit { account, .. }
            | OpKind::Pay { account, .. }
            | OpKind::Balance { account } => account,
            OpKind::Transfer { from, .. } => from,
        }
    }

    /// What the command does to each account if it is applied.
    pub fn effects(&self) -> Vec<(Account, i64)> {
        match *self {
            OpKind::Deposit { account, amount } => vec![(account, amount)],
            OpKind::Pay { account, amount } => vec![(account, -amount)],
            OpKind::Transfer { from, to, amount } => vec![(from, -amount), (to, amount)],
            OpKind::Balance { .. } => Vec::new(),
        }
    }

    /// The RESP command, with `id` as its command id for a write.
    pub fn command(&self, id: &str) -> Vec<String> {
        let text = |n: &dyn ToString| n.to_string();
        match self {
            OpKind::Deposit { account, amount } => {
                vec!["DEPOSIT".into(), text(account), text(amount), id.into()]
            }
            OpKind::Pay { account, amount } => {
                vec!["PAY".into(), text(account), text(amount), id.into()]
            }
            OpKind::Transfer { from, to, amount } => {
                vec!["TRANSFER".into(), text(from), text(to), text(amount), id.into()]
            }
            OpKind::Balance { account } => vec!["BALANCE".into(), text(account)],
        }
    }
}

/// How an operation completed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged (`DONE`, `APPROVED`, or a read's value): the balance the reply reports.
    Ok { balance: i64 },
    /// Declined, with the reason: nothing was applied.
    Fail { reason: String },
    /// No definite answer before the client gave up: what went wrong last.
    Info { error: String },
}

/// One operation of the history: its invocation and its completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Op {
    /// The client (Jepsen's "process") that ran it; one operation at a time each.
    pub process: u32,
    /// The command id of a write (unique in the run); `None` for a read.
    pub id: Option<String>,
    #[serde(flatten)]
    pub kind: OpKind,
    /// Microseconds since the run began.
    pub invoke_us: u64,
    pub complete_us: u64,
    /// When its last attempt (the one answered) was sent.
    pub last_attempt_us: u64,
    /// Attempts sent (retries with the same id after a connection error or timeout).
    pub attempts: u32,
    pub outcome: Outcome,
}

impl Op {
    pub fn is_ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. })
    }
}

/// What a fault did and when (microseconds since the run began).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FaultRecord {
    pub kind: String,
    /// The nodes it hit (their ids).
    pub nodes: Vec<u32>,
    /// Whom it hit: the leader, a follower, `unknown` (no leader at the time) or `all`
    /// (`nemesis::target`).
    pub target: String,
    /// When it was in force (the process gone, the rules installed, the link slowed).
    pub start_us: u64,
    pub healed_us: u64,
}

/// Whom a fault hit, as recorded (and as the checker groups the failover times).
pub mod target {
    pub const LEADER: &str = "leader";
    pub const FOLLOWER: &str = "follower";
    /// No node said it led (an election outlasted `limits::LEADER_WAIT`).
    pub const UNKNOWN: &str = "unknown";
    /// Every node (the clients' connections to all of them).
    pub const ALL: &str = "all";
}

/// Writes `ops` and `faults` as JSON lines, for a person to read after a failed run.
pub fn write_jsonl(
    path: &std::path::Path,
    ops: &[Op],
    faults: &[FaultRecord],
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for fault in faults {
        serde_json::to_writer(&mut out, &serde_json::json!({ "nemesis": fault }))?;
        out.write_all(b"\n")?;
    }
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}
