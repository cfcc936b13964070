//! The checker: given a history and what the cluster holds once healed, says whether every
//! acknowledged command is in the final state exactly once, no balance went below zero,
//! every balance a client saw fits the order of acknowledgements, money is conserved, the
//! replicas agree, and how long the clients waited for the service after each fault.
//!
//! Pure: it reads its arguments only, so a fabricated bad history can prove it fails
//! (tests/jepsen.rs feeds it a lost ack, a double apply, a negative balance).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::history::{target, Account, FaultRecord, Op, OpKind, Outcome};

/// One node's audit from `STATS JSON` (SPEC §2: both sides of the equation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    pub balances: i128,
    pub in_flight: i128,
    pub initial_deposits: i128,
    pub deposits: i128,
    pub interest: i128,
    pub refunds: i128,
    pub card_payments: i128,
    pub captures: i128,
}

impl Audit {
    /// `sum(balances) + in_flight`.
    pub fn left(&self) -> i128 {
        self.balances + self.in_flight
    }

    /// `initial deposits + deposits + interest + refunds − card payments − captures`.
    pub fn right(&self) -> i128 {
        self.initial_deposits + self.deposits + self.interest + self.refunds
            - self.card_payments
            - self.captures
    }
}

/// What the cluster holds after the faults were healed.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    /// Each account's balance before the first operation.
    pub initial: BTreeMap<Account, i64>,
    /// Each account's balance at the end.
    pub balances: BTreeMap<Account, i64>,
    /// Every write re-sent with its command id once healed: the server's answer (an
    /// `info` one's resolution; for the others, it must repeat the first answer).
    pub retries: HashMap<String, Outcome>,
    /// Each node's audit (node id, audit).
    pub audits: Vec<(u32, Audit)>,
    /// Each node's state digest per shard, where the node reports one.
    pub digests: Vec<(u32, Vec<String>)>,
}

/// Something the history and the final state show that must never happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A retry with the same command id answered otherwise than the first time.
    RetryChanged { id: String, first: Outcome, retry: Outcome },
    /// A write whose outcome stayed unknown even once healed.
    Unresolved { id: String },
    /// The final balance is not the initial one plus every applied command once.
    FinalBalance { account: Account, observed: i64, expected: i64, suspects: Vec<String> },
    /// A balance below zero, seen in a reply (`at`: the op's id or read) or at the end.
    NegativeBalance { account: Account, balance: i64, at: String },
    /// A balance a reply showed that no order of the commands allowed by the
    /// acknowledgements (what completed before it was sent, what overlapped it) gives.
    OutOfOrder { at: String, account: Account, observed: i64, low: i64, high: i64 },
    /// A node's audit: `balances + in_flight != initial + deposits + ... − captures`.
    Conservation { node: u32, left: i128, right: i128 },
    /// The accounts of the run: their final sum is not the initial sum plus the applied
    /// deposits minus the applied payments (transfers move money, never make it).
    RunConservation { observed: i128, expected: i128 },
    /// Two replicas report different state digests.
    DigestsDiffer { digests: Vec<(u32, Vec<String>)> },
    /// An account of the run whose final balance could not be read.
    MissingBalance { account: Account },
}

/// What the checker found, and what it measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    /// Declines by reason.
    pub fail_reasons: BTreeMap<String, usize>,
    pub info: usize,
    /// `info` writes that turned out applied once healed.
    pub info_applied: usize,
    /// Operations that needed more than one attempt.
    pub retried: usize,
    pub faults: usize,
    /// Per fault: from its start to the first acknowledgement of an attempt sent after it.
    pub unavailable_ms: Vec<u64>,
    /// The same, by the fault's kind and whom it hit (`kill on the leader`).
    pub unavailable_ms_by_kind: BTreeMap<String, Vec<u64>>,
    /// The same for the faults that hit the leader: how long the clients waited for a
    /// leader to serve again (a new one, or the old one back).
    pub failover_ms: Vec<u64>,
    /// The longest time with no acknowledgement at all.
    pub longest_gap_ms: u64,
    /// Whether at least two replicas' digests were compared.
    pub digests_compared: bool,
}

impl Report {
    pub fn unavailable_max_ms(&self) -> u64 {
        self.unavailable_ms.iter().copied().max().unwrap_or(0)
    }

    pub fn unavailable_p99_ms(&self) -> u64 {
        percentile(&self.unavailable_ms, 0.99)
    }

    pub fn failover_max_ms(&self) -> u64 {
        self.failover_ms.iter().copied().max().unwrap_or(0)
    }

    pub fn failover_p99_ms(&self) -> u64 {
        percentile(&self.failover_ms, 0.99)
    }
}

fn percentile(values: &[u64], q: f64) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => 0,
        n => sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1],
    }
}

/// A command's effect on one account, and when it may have happened.
#[derive(Clone, Copy, Debug)]
struct Effect {
    op: usize,
    delta: i64,
    invoke_us: u64,
    /// `u64::MAX` for an `info` resolved at the end: it may have happened any time after
    /// it was sent.
    complete_us: u64,
}

/// Checks `ops` (and times `faults`) against `last`.
pub fn check(ops: &[Op], faults: &[FaultRecord], last: &FinalState) -> Report {
    let mut report = Report { ops: ops.len(), faults: faults.len(), ..Report::default() };
    for op in ops {
        match op.outcome {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Fail { ref reason } => {
                report.fail += 1;
                *report.fail_reasons.entry(reason.clone()).or_default() += 1;
            }
            Outcome::Info { .. } => report.info += 1,
        }
        report.retried += usize::from(op.attempts > 1);
    }
    let applied = resolve(ops, last, &mut report);
    let effects = effects_by_account(ops, &applied);
    // Accounts touched by a write whose outcome stayed unknown: no exact balance to expect.
    let ambiguous: BTreeSet<Account> = ops
        .iter()
        .zip(&applied)
        .filter(|(_, state)| **state == Applied::Unknown)
        .flat_map(|(op, _)| op.kind.effects().into_iter().map(|(account, _)| account))
        .collect();
    check_final_balances(ops, &effects, &ambiguous, last, &mut report.violations);
    check_windows(ops, &effects, &ambiguous, last, &mut report.violations);
    check_conservation(ops, &applied, last, &mut report.violations);
    check_digests(last, &mut report);
    time_faults(ops, faults, &mut report);
    report
}

/// Whether each op was applied (`Some(true)`), not (`Some(false)`) or is unknown, and
/// whether it is certain when: the first answer for `ok`/`fail`, the retry for `info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Applied {
    Yes { resolved_late: bool },
    No,
    Unknown,
}

fn resolve(ops: &[Op], last: &FinalState, report: &mut Report) -> Vec<Applied> {
    let mut applied = Vec::with_capacity(ops.len());
    for op in ops {
        let Some(id) = op.id.as_ref().filter(|_| op.kind.is_write()) else {
            applied.push(Applied::No);
            continue;
        };
        let retry = last.retries.get(id);
        let state = match (&op.outcome, retry) {
            (Outcome::Info { .. }, Some(Outcome::Ok { .. })) => {
                report.info_applied += 1;
                Applied::Yes { resolved_late: true }
            }
            (Outcome::Info { .. }, Some(Outcome::Fail { .. })) => Applied::No,
            (Outcome::Info { .. }, _) => {
                report.violations.push(Violation::Unresolved { id: id.clone() });
                Applied::Unknown
            }
            (first, retry) => {
                match retry {
                    Some(retry) if retry == first => {}
                    Some(Outcome::Info { .. }) | None => {
                        report.violations.push(Violation::Unresolved { id: id.clone() })
                    }
                    Some(retry) => report.violations.push(Violation::RetryChanged {
                        id: id.clone(),
                        first: first.clone(),
                        retry: retry.clone(),
                    }),
                }
                match first {
                    Outcome::Ok { .. } => Applied::Yes { resolved_late: false },
                    _ => Applied::No,
                }
            }
        };
        applied.push(state);
    }
    applied
}

fn effects_by_account(ops: &[Op], applied: &[Applied]) -> BTreeMap<Account, Vec<Effect>> {
    let mut effects: BTreeMap<Account, Vec<Effect>> = BTreeMap::new();
    for (index, (op, state)) in ops.iter().zip(applied).enumerate() {
        let Applied::Yes { resolved_late } = *state else {
            continue;
        };
        let complete_us = if resolved_late { u64::MAX } else { op.complete_us };
        for (account, delta) in op.kind.effects() {
            let effect = Effect { op: index, delta, invoke_us: op.invoke_us, complete_us };
            effects.entry(account).or_default().push(effect);
        }
    }
    effects
}

fn describe(op: &Op) -> String {
    op.id.clone().unwrap_or_else(|| format!("read by {} at {} us", op.process, op.invoke_us))
}

fn check_final_balances(
    ops: &[Op],
    effects: &BTreeMap<Account, Vec<Effect>>,
    ambiguous: &BTreeSet<Account>,
    last: &FinalState,
    violations: &mut Vec<Violation>,
) {
    for (&account, &initial) in &last.initial {
        let Some(&observed) = last.balances.get(&account) else {
            violations.push(Violation::MissingBalance { account });
            continue;
        };
        if observed < 0 {
            violations.push(Violation::NegativeBalance {
                account,
                balance: observed,
                at: "final".into(),
            });
        }
        let unknown = ambiguous.contains(&account);
        let applied_sum: i64 = effects.get(&account).map_or(0, |e| e.iter().map(|e| e.delta).sum());
        let expected = initial + applied_sum;
        if observed != expected && !unknown {
            let diff = observed - expected;
            // Lower: an applied command is missing; higher: one counted twice, or a
            // declined one applied after all.
            let suspects = ops
                .iter()
                .filter(|op| op.kind.is_write())
                .filter(|op| {
                    op.kind.effects().iter().any(|&(a, delta)| {
                        a == account && (delta == -diff && op.is_ok() || delta == diff)
                    })
                })
                .map(describe)
                .collect();
            violations.push(Violation::FinalBalance { account, observed, expected, suspects });
        }
    }
}

/// One account's applied effects, indexed for [`check_windows`]: by completion (with
/// running sums: what surely preceded an op is a prefix) and by invocation (what may
/// have overlapped it is a short run, no effect lasting longer than `longest_us`).
struct Timeline {
    /// (completion, sum of the deltas of this and every earlier-completed effect).
    completed: Vec<(u64, i64)>,
    by_invoke: Vec<Effect>,
    longest_us: u64,
    /// Effects resolved at the end (`info`): they may fall anywhere after their invocation.
    late: Vec<Effect>,
}

impl Timeline {
    fn new(effects: &[Effect]) -> Timeline {
        let (late, mut timed): (Vec<Effect>, Vec<Effect>) =
            effects.iter().partition(|e| e.complete_us == u64::MAX);
        timed.sort_by_key(|e| e.complete_us);
        let mut sum = 0;
        let completed = timed
            .iter()
            .map(|e| {
                sum += e.delta;
                (e.complete_us, sum)
            })
            .collect();
        let longest_us = timed.iter().map(|e| e.complete_us - e.invoke_us).max().unwrap_or(0);
        timed.sort_by_key(|e| e.invoke_us);
        Timeline { completed, by_invoke: timed, longest_us, late }
    }

    /// The least and the most the account's balance can have moved, by the effects of
    /// other ops, for an op invoked at `invoke_us` and answered at `complete_us`.
    fn bounds(&self, op: usize, invoke_us: u64, complete_us: u64) -> (i64, i64) {
        let before = self.completed.partition_point(|&(at, _)| at < invoke_us);
        let must = if before == 0 { 0 } else { self.completed[before - 1].1 };
        let (mut low, mut high) = (must, must);
        let first = self.by_invoke.partition_point(|e| e.invoke_us + self.longest_us < invoke_us);
        let overlapping = self.by_invoke[first..]
            .iter()
            .take_while(|e| e.invoke_us < complete_us)
            .filter(|e| e.complete_us >= invoke_us);
        let late = self.late.iter().filter(|e| e.invoke_us < complete_us);
        for effect in overlapping.chain(late).filter(|e| e.op != op) {
            if effect.delta < 0 {
                low += effect.delta;
            } else {
                high += effect.delta;
            }
        }
        (low, high)
    }
}

/// Every balance a reply reported must be the initial one plus the op's own effect, plus
/// every effect acknowledged before the op was sent, plus some of the effects that
/// overlapped it (those not yet acknowledged when it was answered).
fn check_windows(
    ops: &[Op],
    effects: &BTreeMap<Account, Vec<Effect>>,
    ambiguous: &BTreeSet<Account>,
    last: &FinalState,
    violations: &mut Vec<Violation>,
) {
    let timelines: BTreeMap<Account, Timeline> =
        effects.iter().map(|(&account, effects)| (account, Timeline::new(effects))).collect();
    for (index, op) in ops.iter().enumerate() {
        let Outcome::Ok { balance } = op.outcome else {
            continue;
        };
        let account = op.kind.reported_account();
        if balance < 0 {
            violations.push(Violation::NegativeBalance { account, balance, at: describe(op) });
        }
        let Some(&initial) = last.initial.get(&account) else {
            continue;
        };
        let own: i64 = op.kind.effects().iter().find(|(a, _)| *a == account).map_or(0, |e| e.1);
        let (low, high) = timelines
            .get(&account)
            .map_or((0, 0), |timeline| timeline.bounds(index, op.invoke_us, op.complete_us));
        let (low, high) = (initial + own + low, initial + own + high);
        if !(low..=high).contains(&balance) && !ambiguous.contains(&account) {
            violations.push(Violation::OutOfOrder {
                at: describe(op),
                account,
                observed: balance,
                low,
                high,
            });
        }
    }
}

fn check_conservation(
    ops: &[Op],
    applied: &[Applied],
    last: &FinalState,
    violations: &mut Vec<Violation>,
) {
    for (node, audit) in &last.audits {
        if audit.left() != audit.right() {
            violations.push(Violation::Conservation {
                node: *node,
                left: audit.left(),
                right: audit.right(),
            });
        }
    }
    if applied.contains(&Applied::Unknown) || last.balances.len() < last.initial.len() {
        return; // reported as such already
    }
    let mut expected: i128 = last.initial.values().map(|&b| i128::from(b)).sum();
    for (op, state) in ops.iter().zip(applied) {
        if matches!(state, Applied::Yes { .. }) {
            expected += match op.kind {
                OpKind::Deposit { amount, .. } => i128::from(amount),
                OpKind::Pay { amount, .. } => -i128::from(amount),
                OpKind::Transfer { .. } | OpKind::Balance { .. } => 0,
            };
        }
    }
    let observed: i128 = last
        .initial
        .keys()
        .filter_map(|account| last.balances.get(account))
        .map(|&b| i128::from(b))
        .sum();
    if observed != expected {
        violations.push(Violation::RunConservation { observed, expected });
    }
}

fn check_digests(last: &FinalState, report: &mut Report) {
    let reported: Vec<&(u32, Vec<String>)> =
        last.digests.iter().filter(|(_, d)| !d.is_empty()).collect();
    report.digests_compared = reported.len() >= 2;
    if reported.windows(2).any(|pair| pair[0].1 != pair[1].1) {
        report.violations.push(Violation::DigestsDiffer { digests: last.digests.clone() });
    }
}

fn time_faults(ops: &[Op], faults: &[FaultRecord], report: &mut Report) {
    let mut acked: Vec<(u64, u64)> =
        ops.iter().filter(|op| op.is_ok()).map(|op| (op.last_attempt_us, op.complete_us)).collect();
    acked.sort_unstable_by_key(|&(_, complete)| complete);
    for fault in faults {
        let first = acked
            .iter()
            .filter(|&&(sent, _)| sent >= fault.start_us)
            .map(|&(_, complete)| complete)
            .min();
        if let Some(complete) = first {
            let unavailable_ms = (complete - fault.start_us) / 1000;
            report.unavailable_ms.push(unavailable_ms);
            let kind = match fault.target.as_str() {
                target::ALL => fault.kind.clone(),
                hit => format!("{} on the {hit}", fault.kind),
            };
            report.unavailable_ms_by_kind.entry(kind).or_default().push(unavailable_ms);
            if fault.target == target::LEADER {
                report.failover_ms.push(unavailable_ms);
            }
        }
    }
    report.longest_gap_ms =
        acked.windows(2).map(|pair| (pair[1].1 - pair[0].1) / 1000).max().unwrap_or(0);
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ops {} (ok {}, fail {} {:?}, info {} of which applied {}), retried {}, faults {}",
            self.ops,
            self.ok,
            self.fail,
            self.fail_reasons,
            self.info,
            self.info_applied,
            self.retried,
            self.faults
        )?;
        writeln!(
            f,
            "unavailable after a fault: max {} ms, p99 {} ms (over {}); longest gap without an \
             acknowledgement {} ms; digests compared: {}",
            self.unavailable_max_ms(),
            self.unavailable_p99_ms(),
            self.unavailable_ms.len(),
            self.longest_gap_ms,
            self.digests_compared
        )?;
        writeln!(
            f,
            "failover (a fault on the leader to the next acknowledgement): max {} ms, p99 {} ms \
             (over {})",
            self.failover_max_ms(),
            self.failover_p99_ms(),
            self.failover_ms.len()
        )?;
        for (kind, values) in &self.unavailable_ms_by_kind {
            let max = values.iter().copied().max().unwrap_or(0);
            let (p50, p99) = (percentile(values, 0.5), percentile(values, 0.99));
            writeln!(
                f,
                "  {kind}: {} faults, p50 {p50} ms, p99 {p99} ms, max {max} ms",
                values.len()
            )?;
        }
        match self.violations.len() {
            0 => write!(f, "no violation"),
            n => {
                write!(f, "{n} violations:")?;
                for violation in self.violations.iter().take(20) {
                    write!(f, "\n  {violation:?}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;

    /// The bounds by a scan of every effect: what [`Timeline::bounds`] must equal.
    fn scanned(effects: &[Effect], op: usize, invoke_us: u64, complete_us: u64) -> (i64, i64) {
        let (mut low, mut high) = (0, 0);
        for effect in effects.iter().filter(|e| e.op != op) {
            if effect.complete_us < invoke_us {
                low += effect.delta;
                high += effect.delta;
            } else if effect.invoke_us < complete_us {
                if effect.delta < 0 {
                    low += effect.delta;
                } else {
                    high += effect.delta;
                }
            }
        }
        (low, high)
    }

    #[test]
    fn the_indexed_timeline_bounds_equal_a_full_scan() {
        let mut rng = Rng::new(5);
        for _ in 0..50 {
            let effects: Vec<Effect> = (0..200)
                .map(|op| {
                    let invoke_us = rng.below(10_000);
                    let complete_us = match rng.below(20) {
                        0 => u64::MAX,
                        1 => invoke_us + rng.below(3_000),
                        _ => invoke_us + rng.below(50),
                    };
                    let delta = rng.below(1_000) as i64 - 500;
                    Effect { op, delta, invoke_us, complete_us }
                })
                .collect();
            let timeline = Timeline::new(&effects);
            for effect in effects.iter().filter(|e| e.complete_us != u64::MAX) {
                let (op, invoke, complete) = (effect.op, effect.invoke_us, effect.complete_us);
                assert_eq!(
                    timeline.bounds(op, invoke, complete),
                    scanned(&effects, op, invoke, complete)
                );
            }
        }
    }
}
