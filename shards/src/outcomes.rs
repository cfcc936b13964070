//! Commands answered, by kind and outcome: what `/metrics` reports as
//! `plafond_commands_total` and `plafond_command_declines_total`.
//!
//! A shard counts a submission's outcomes in a plain [`OutcomeTally`] while it decides
//! them and adds the few slots that moved to its atomic [`OutcomeCounters`] once per
//! submission, so the hot path pays no atomic per command.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::command::{Kind, Outcome, Reason};

/// Slots per kind: the first counts the outcomes that are not declines, then one per
/// [`Reason`] by its index.
pub const OUTCOME_SLOTS: usize = 1 + Reason::ALL.len();

const KINDS: usize = Kind::ALL.len();

fn slot(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Declined(reason) => 1 + reason.index(),
        _ => 0,
    }
}

/// One submission's outcomes, counted on the deciding thread.
pub struct OutcomeTally {
    counts: [[u32; OUTCOME_SLOTS]; KINDS],
}

impl Default for OutcomeTally {
    fn default() -> OutcomeTally {
        OutcomeTally { counts: [[0; OUTCOME_SLOTS]; KINDS] }
    }
}

impl OutcomeTally {
    /// Counts one answer of a command of `kind`. A tally covers one submission, which
    /// holds far fewer than `u32::MAX` commands.
    pub fn count(&mut self, kind: Kind, outcome: &Outcome) {
        self.counts[kind.index()][slot(outcome)] += 1;
    }
}

/// Answers since start, by kind and outcome, readable while they are counted.
pub struct OutcomeCounters {
    counts: [[AtomicU64; OUTCOME_SLOTS]; KINDS],
}

impl Default for OutcomeCounters {
    fn default() -> OutcomeCounters {
        OutcomeCounters {
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl OutcomeCounters {
    /// Counts one answer (a settled transfer, a decline at the door).
    pub fn count(&self, kind: Kind, outcome: &Outcome) {
        self.counts[kind.index()][slot(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds a submission's tally: one atomic add per slot that moved.
    pub fn add(&self, tally: &OutcomeTally) {
        for (counters, counts) in self.counts.iter().zip(&tally.counts) {
            for (counter, &count) in counters.iter().zip(counts) {
                if count > 0 {
                    counter.fetch_add(u64::from(count), Ordering::Relaxed);
                }
            }
        }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> CommandCounts {
        let counts = self
            .counts
            .each_ref()
            .map(|slots| slots.each_ref().map(|count| count.load(Ordering::Relaxed)));
        CommandCounts { counts }
    }
}

/// Answers by kind and outcome at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandCounts {
    counts: [[u64; OUTCOME_SLOTS]; KINDS],
}

impl Default for CommandCounts {
    fn default() -> CommandCounts {
        CommandCounts { counts: [[0; OUTCOME_SLOTS]; KINDS] }
    }
}

impl CommandCounts {
    /// Commands of `kind` answered with anything but a decline.
    pub fn done(&self, kind: Kind) -> u64 {
        self.counts[kind.index()][0]
    }

    /// Commands of `kind` declined for `reason`.
    pub fn declined(&self, kind: Kind, reason: Reason) -> u64 {
        self.counts[kind.index()][1 + reason.index()]
    }

    /// Declines for `reason`, whatever the kind.
    pub fn declined_for(&self, reason: Reason) -> u64 {
        Kind::ALL.iter().map(|&kind| self.declined(kind, reason)).sum()
    }

    /// Adds `other`'s counts (another shard's) to these.
    pub fn add(&mut self, other: &CommandCounts) {
        for (counts, more) in self.counts.iter_mut().zip(&other.counts) {
            for (count, more) in counts.iter_mut().zip(more) {
                *count += more;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_reasons_sit_at_their_index() {
        for (index, kind) in Kind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), index, "{kind:?}");
        }
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index, "{reason:?}");
        }
    }

    #[test]
    fn a_tally_adds_to_the_counters_by_kind_and_outcome() {
        let counters = OutcomeCounters::default();
        let mut tally = OutcomeTally::default();
        let approved = Outcome::Approved { balance_minor: 1, spent_7d_minor: 1 };
        tally.count(Kind::Pay, &approved);
        tally.count(Kind::Pay, &approved);
        tally.count(Kind::Pay, &Outcome::Declined(Reason::CeilingExceeded));
        counters.add(&tally);
        counters.count(Kind::Transfer, &Outcome::Declined(Reason::InsufficientFunds));
        let mut counts = counters.snapshot();
        assert_eq!(counts.done(Kind::Pay), 2);
        assert_eq!(counts.declined(Kind::Pay, Reason::CeilingExceeded), 1);
        assert_eq!(counts.declined(Kind::Pay, Reason::InsufficientFunds), 0);
        assert_eq!(counts.declined(Kind::Transfer, Reason::InsufficientFunds), 1);
        assert_eq!(counts.done(Kind::Transfer), 0);
        counts.add(&counters.snapshot());
        assert_eq!(counts.done(Kind::Pay), 4);
        assert_eq!(counts.declined_for(Reason::InsufficientFunds), 2);
    }
}
