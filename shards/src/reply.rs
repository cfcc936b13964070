//! How outcomes travel back to whoever submitted the commands.
//!
//! A submission of n commands gets one [`Collector`] with n slots and one [`Ticket`]. Each
//! shard fills the slots of its commands in one go when its batch is durable; the last
//! fill completes the ticket. A cross-shard transfer's slot is filled later, when the
//! transfer settles. If the engine stops first, the collector is dropped and the ticket
//! reports [`Stopped`]: with the storage error when a failed write dropped it.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::command::Outcome;
use crate::health::StorageHealth;

/// The engine stopped before the outcomes were known: shut down, or a storage failure (then
/// [`Stopped::storage_reason`] names it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    storage: Option<String>,
}

impl Stopped {
    /// The engine shut down.
    pub const SHUTDOWN: Stopped = Stopped { storage: None };

    /// The storage refused a write, so the outcome was never made durable.
    pub fn storage(reason: impl Into<String>) -> Stopped {
        Stopped { storage: Some(reason.into()) }
    }

    /// The storage error that stopped the engine, if that is why.
    pub fn storage_reason(&self) -> Option<&str> {
        self.storage.as_deref()
    }
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.storage {
            None => out.write_str(
                "the engine stopped before answering; the outcome is unknown (retry with the \
                 same command id)",
            ),
            Some(reason) => write!(
                out,
                "storage failed ({reason}): the outcome was not made durable and is unknown; \
                 free space or fix the disk, restart, then retry with the same command id"
            ),
        }
    }
}

impl std::error::Error for Stopped {}

struct Pending {
    outcomes: Vec<Option<Outcome>>,
    remaining: usize,
    sender: Option<oneshot::Sender<Vec<Outcome>>>,
}

/// The slots of one submission.
pub struct Collector {
    pending: Mutex<Pending>,
}

/// One slot: a collector and an index in it.
#[derive(Clone)]
pub struct Slot {
    /// The submission's collector.
    pub collector: Arc<Collector>,
    /// The command's position in the submission.
    pub index: u32,
}

/// Resolves to a submission's outcomes, in submission order.
pub struct Ticket {
    receiver: oneshot::Receiver<Vec<Outcome>>,
    /// Consulted when the outcomes never come, to say whether a storage failure is why.
    health: Option<Arc<StorageHealth>>,
}

impl Collector {
    /// A collector of `slots` outcomes, and the ticket it completes.
    pub fn new(slots: usize) -> (Arc<Collector>, Ticket) {
        let (sender, receiver) = oneshot::channel();
        let pending =
            Pending { outcomes: vec![None; slots], remaining: slots, sender: Some(sender) };
        let collector = Arc::new(Collector { pending: Mutex::new(pending) });
        if slots == 0 {
            collector.fill(std::iter::empty());
        }
        (collector, Ticket { receiver, health: None })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock cannot leave the slots half-written in a way that
        // matters: they are options, filled one by one.
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Fills slots; completes the ticket when the last one is filled.
    pub fn fill(&self, outcomes: impl IntoIterator<Item = (u32, Outcome)>) {
        let mut pending = self.lock();
        for (index, outcome) in outcomes {
            let Some(slot) = pending.outcomes.get_mut(index as usize) else {
                continue;
            };
            if slot.replace(outcome).is_none() {
                pending.remaining -= 1;
            }
        }
        if pending.remaining == 0 {
            if let Some(sender) = pending.sender.take() {
                // Every slot is filled here. `map_while` collects in place, in the slots'
                // own allocation: `flatten` cannot, and grew a new vector by doubling (a
                // tenth of an embedded submission's instructions, measured with callgrind).
                let outcomes = std::mem::take(&mut pending.outcomes)
                    .into_iter()
                    .map_while(|slot| slot)
                    .collect();
                // The submitter may have given up waiting; that is its right.
                let _ = sender.send(outcomes);
            }
        }
    }
}

impl Slot {
    /// Fills this slot.
    pub fn fill(&self, outcome: Outcome) {
        self.collector.fill([(self.index, outcome)]);
    }
}

impl Ticket {
    /// The ticket, reporting `health`'s failure if its outcomes are dropped.
    pub fn reporting(self, health: Arc<StorageHealth>) -> Ticket {
        Ticket { health: Some(health), ..self }
    }

    /// Blocks until every outcome is known. Must not be called from an async task.
    pub fn wait(self) -> Result<Vec<Outcome>, Stopped> {
        let Ticket { receiver, health } = self;
        receiver.blocking_recv().map_err(|_| stopped(health.as_deref()))
    }

    /// Waits, from async code, until every outcome is known.
    pub async fn outcomes(self) -> Result<Vec<Outcome>, Stopped> {
        let Ticket { receiver, health } = self;
        receiver.await.map_err(|_| stopped(health.as_deref()))
    }
}

fn stopped(health: Option<&StorageHealth>) -> Stopped {
    match health.and_then(StorageHealth::reason) {
        Some(reason) => Stopped::storage(reason),
        None => Stopped::SHUTDOWN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Reason;

    #[test]
    fn completes_in_submission_order_after_the_last_fill() {
        let (collector, ticket) = Collector::new(3);
        collector.fill([(2, Outcome::Updated), (0, Outcome::Declined(Reason::UnknownCard))]);
        Slot { collector: collector.clone(), index: 1 }.fill(Outcome::Done { balance_minor: 5 });
        let outcomes = ticket.wait().unwrap();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Declined(Reason::UnknownCard),
                Outcome::Done { balance_minor: 5 },
                Outcome::Updated
            ]
        );
    }

    #[test]
    fn dropped_collector_reports_stopped() {
        let (collector, ticket) = Collector::new(2);
        collector.fill([(0, Outcome::Updated)]);
        drop(collector);
        assert_eq!(ticket.wait(), Err(Stopped::SHUTDOWN));
    }

    #[test]
    fn a_ticket_dropped_by_a_storage_failure_names_it() {
        let health = Arc::new(StorageHealth::default());
        let (collector, ticket) = Collector::new(1);
        let ticket = ticket.reporting(health.clone());
        health.fail("IO error: No space left on device");
        drop(collector);
        let stopped = ticket.wait().unwrap_err();
        assert_eq!(stopped.storage_reason(), Some("IO error: No space left on device"));
        assert!(stopped.to_string().contains("No space left"), "{stopped}");
    }
}
