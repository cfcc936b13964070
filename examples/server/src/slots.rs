//! Connection slots: how many connections the server serves, and how many of them may be
//! anonymous.
//!
//! A connection is anonymous until it proves itself: with a token, by a successful `AUTH`
//! (or `HELLO ... AUTH`); without one, by sending its first complete request. Anonymous
//! connections may hold at most [`Slots::anonymous_max`] slots (three quarters of all),
//! so the rest stays for authenticated clients: 1,100 idle sockets can no longer lock
//! everyone out (issue 15). A newcomer finding the anonymous slots full evicts the oldest
//! anonymous connection rather than being refused, so a real client that connects to
//! authenticate during a flood of idle sockets still gets its turn; with the auth deadline
//! (`--auth-timeout-ms`) no anonymous connection stays long anyway.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// The part of all slots that anonymous connections may hold, as a fraction
/// `ANONYMOUS_SLOTS_NUMERATOR / ANONYMOUS_SLOTS_DENOMINATOR`: the rest is reserved for
/// authenticated connections.
pub const ANONYMOUS_SLOTS_NUMERATOR: usize = 3;
pub const ANONYMOUS_SLOTS_DENOMINATOR: usize = 4;

/// The slots of one server.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    anonymous_max: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    authenticated: usize,
    /// Anonymous connections by arrival order, each with the sender that evicts it.
    anonymous: BTreeMap<u64, oneshot::Sender<()>>,
    next_id: u64,
}

/// Why a newcomer got no slot.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// A connection's slot; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    /// `Some(id)` while anonymous.
    anonymous: Option<u64>,
}

/// Resolves when the connection is evicted to make room for a newer anonymous one.
pub type Eviction = oneshot::Receiver<()>;

impl Slots {
    /// `max` slots in all (at least 1), of which anonymous connections hold at most
    /// three quarters (at least 1).
    pub fn new(max: usize) -> Arc<Slots> {
        let max = max.max(1);
        let anonymous_max =
            (max * ANONYMOUS_SLOTS_NUMERATOR / ANONYMOUS_SLOTS_DENOMINATOR).clamp(1, max);
        Arc::new(Slots { max, anonymous_max, state: Mutex::default() })
    }

    /// All slots.
    pub fn max(&self) -> usize {
        self.max
    }

    /// The slots anonymous connections may hold.
    pub fn anonymous_max(&self) -> usize {
        self.anonymous_max
    }

    /// A slot for a new, anonymous connection, evicting the oldest anonymous one if they
    /// hold all theirs; `Full` when every slot is held and none anonymously.
    pub fn admit(self: &Arc<Self>) -> Result<(Slot, Eviction), Full> {
        let mut state = lock(&self.state);
        let held = state.authenticated + state.anonymous.len();
        if held >= self.max || state.anonymous.len() >= self.anonymous_max {
            let Some((_, evict)) = state.anonymous.pop_first() else { return Err(Full) };
            // The evicted connection may be gone already: then its slot is free anyway.
            let _ = evict.send(());
        }
        let id = state.next_id;
        state.next_id += 1;
        let (evict, eviction) = oneshot::channel();
        state.anonymous.insert(id, evict);
        Ok((Slot { slots: self.clone(), anonymous: Some(id) }, eviction))
    }

    /// Connections held now: `(authenticated, anonymous)`.
    pub fn held(&self) -> (usize, usize) {
        let state = lock(&self.state);
        (state.authenticated, state.anonymous.len())
    }
}

impl Slot {
    /// Moves the connection to the authenticated slots; false if it was evicted meanwhile
    /// (it must close). Idempotent.
    pub fn authenticate(&mut self) -> bool {
        let Some(id) = self.anonymous else { return true };
        let mut state = lock(&self.slots.state);
        if state.anonymous.remove(&id).is_none() {
            return false;
        }
        state.authenticated += 1;
        self.anonymous = None;
        true
    }

    /// Whether the connection has not proved itself yet.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous.is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = lock(&self.slots.state);
        match self.anonymous {
            // Absent if it was evicted: the newcomer has its place already.
            Some(id) => drop(state.anonymous.remove(&id)),
            None => state.authenticated -= 1,
        }
    }
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    // Held only to count; a panic there leaves counts that are at worst off by one.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_connections_never_take_the_reserved_slots() {
        let slots = Slots::new(8);
        assert_eq!(slots.anonymous_max(), 6);
        let mut held: Vec<(Slot, Eviction)> =
            (0..6).map(|_| slots.admit().expect("a slot")).collect();
        // A seventh anonymous evicts the oldest instead of taking a reserved slot.
        let seventh = slots.admit().expect("a slot, by eviction");
        assert_eq!(slots.held(), (0, 6));
        let (_, mut oldest) = held.remove(0);
        assert!(oldest.try_recv().is_ok(), "the oldest was told to go");
        held.push(seventh);
        // Authenticated ones can fill everything.
        for (slot, _) in held.iter_mut() {
            assert!(slot.authenticate());
        }
        assert_eq!(slots.held(), (6, 0));
        let mut more: Vec<(Slot, Eviction)> = (0..2).map(|_| slots.admit().expect("ok")).collect();
        for (slot, _) in more.iter_mut() {
            assert!(slot.authenticate());
        }
        assert_eq!(slots.admit().err(), Some(Full), "every slot authenticated");
        drop(more);
        assert_eq!(slots.held(), (6, 0));
        assert!(slots.admit().is_ok());
    }

    #[test]
    fn an_evicted_connection_cannot_authenticate() {
        let slots = Slots::new(4);
        let (mut first, _eviction) = slots.admit().expect("a slot");
        let _others: Vec<_> = (0..3).map(|_| slots.admit().expect("a slot")).collect();
        assert!(!first.authenticate(), "evicted by the fourth");
        drop(first);
        assert_eq!(slots.held(), (0, 3));
    }
}
