//! The server's global budget of queued work: commands parsed and not yet answered, and
//! bytes held in connection buffers.
//!
//! Without it, each connection bounds only itself, and a thousand pipelining clients queue
//! a thousand times that: 1,000 connections × 8 batches × 4,096 commands took the server
//! from 45 MB to 3.6 GB, and a fresh client's command waited behind all of it (issue 15).
//!
//! Every connection may always have [`CONNECTION_COMMANDS_FLOOR`] commands in flight, so
//! an interactive client is never refused. Beyond that, commands come from a shared pool
//! of [`QUEUED_COMMANDS_MAX`], and one connection takes at most its fair share of it: the
//! pool divided by the connections that have work queued. A connection over its share, or
//! facing an empty pool, simply parses no more until its own oldest batch is answered:
//! that answer is what wakes it, so nothing here has to. Fair shares are what keep one
//! client's queue short behind many others: the combiner serves batches in arrival order,
//! and with shares no connection has more than `pool / busy` commands in front of a
//! fresh one's.
//!
//! The same accounting bounds buffered bytes: a connection reads more only while the sum
//! of all connections' buffers is under [`BUFFERED_BYTES_MAX`], or its own buffers are
//! under [`CONNECTION_BUFFER_FLOOR_BYTES`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use crate::limits::{
    BUFFERED_BYTES_MAX, CONNECTION_BUFFER_FLOOR_BYTES, CONNECTION_COMMANDS_FLOOR,
    QUEUED_COMMANDS_MAX,
};

/// The shared counters; one per server.
#[derive(Debug, Default)]
pub struct Budget {
    /// Commands queued beyond the connections' floors.
    pooled: AtomicUsize,
    /// Connections with at least one command queued.
    busy: AtomicUsize,
    /// Bytes in all connections' buffers.
    buffered: AtomicUsize,
}

/// One connection's share of the [`Budget`]; gives everything back when dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Budget>,
    /// Commands queued (parsed, not yet answered).
    queued: usize,
    /// Of those, the ones taken from the pool (the rest are within the floor).
    pooled: usize,
    /// Bytes this connection last reported holding.
    buffered: usize,
}

impl Budget {
    /// A connection's share, holding nothing yet.
    pub fn share(self: &Arc<Self>) -> Share {
        Share { budget: self.clone(), queued: 0, pooled: 0, buffered: 0 }
    }

    /// Commands queued from the pool now (for tests and stats).
    pub fn pooled(&self) -> usize {
        self.pooled.load(Ordering::Relaxed)
    }

    /// Bytes buffered by all connections now.
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }
}

impl Share {
    /// How many more commands this connection may queue now (0: wait for an answer).
    pub fn allowance(&self) -> usize {
        let budget = &self.budget;
        // Counting ourselves if we are not busy yet: we are about to be.
        let busy = budget.busy.load(Ordering::Relaxed) + usize::from(self.queued == 0);
        let fair = (QUEUED_COMMANDS_MAX / busy.max(1)).max(CONNECTION_COMMANDS_FLOOR);
        let free_in_pool =
            QUEUED_COMMANDS_MAX.saturating_sub(budget.pooled.load(Ordering::Relaxed));
        let ceiling = fair.min(CONNECTION_COMMANDS_FLOOR + self.pooled + free_in_pool);
        ceiling.saturating_sub(self.queued)
    }

    /// Records `commands` more queued (at most the last [`Share::allowance`]).
    pub fn take(&mut self, commands: usize) {
        if commands == 0 {
            return;
        }
        if self.queued == 0 {
            self.budget.busy.fetch_add(1, Ordering::Relaxed);
        }
        self.queued += commands;
        let pooled = self.queued.saturating_sub(CONNECTION_COMMANDS_FLOOR);
        if pooled > self.pooled {
            self.budget.pooled.fetch_add(pooled - self.pooled, Ordering::Relaxed);
            self.pooled = pooled;
        }
    }

    /// Records `commands` answered (or dropped).
    pub fn give_back(&mut self, commands: usize) {
        let commands = commands.min(self.queued);
        if commands == 0 {
            return;
        }
        self.queued -= commands;
        let pooled = self.queued.saturating_sub(CONNECTION_COMMANDS_FLOOR);
        if pooled < self.pooled {
            self.budget.pooled.fetch_sub(self.pooled - pooled, Ordering::Relaxed);
            self.pooled = pooled;
        }
        if self.queued == 0 {
            self.budget.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Commands this connection has queued.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Records that this connection's buffers now hold `bytes`.
    pub fn set_buffered(&mut self, bytes: usize) {
        if bytes > self.buffered {
            self.budget.buffered.fetch_add(bytes - self.buffered, Ordering::Relaxed);
        } else {
            self.budget.buffered.fetch_sub(self.buffered - bytes, Ordering::Relaxed);
        }
        self.buffered = bytes;
    }

    /// Whether this connection may read more bytes now.
    pub fn may_buffer_more(&self) -> bool {
        self.buffered < CONNECTION_BUFFER_FLOOR_BYTES
            || self.budget.buffered.load(Ordering::Relaxed) < BUFFERED_BYTES_MAX
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.give_back(self.queued);
        self.set_buffered(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_connection_may_queue_the_whole_pool_and_many_share_it_fairly() {
        let budget = Arc::new(Budget::default());
        let mut alone = budget.share();
        assert_eq!(alone.allowance(), QUEUED_COMMANDS_MAX);
        alone.take(4096);
        assert_eq!(alone.allowance(), QUEUED_COMMANDS_MAX - 4096);
        let mut shares: Vec<Share> = (0..999).map(|_| budget.share()).collect();
        for share in &mut shares {
            let allowed = share.allowance();
            share.take(allowed);
        }
        // However many pipeline, the pool holds at most its size beyond the floors.
        assert!(budget.pooled() <= QUEUED_COMMANDS_MAX, "{}", budget.pooled());
        // A newcomer still gets its floor.
        let fresh = budget.share();
        assert_eq!(fresh.allowance(), CONNECTION_COMMANDS_FLOOR);
        // Answers give the pool back.
        drop(shares);
        alone.give_back(4096);
        assert_eq!(budget.pooled(), 0);
        assert_eq!(budget.busy.load(Ordering::Relaxed), 0);
        assert_eq!(fresh.allowance(), QUEUED_COMMANDS_MAX);
    }

    #[test]
    fn with_many_busy_no_connection_takes_more_than_its_fair_share() {
        let budget = Arc::new(Budget::default());
        let mut shares: Vec<Share> = (0..64).map(|_| budget.share()).collect();
        for share in &mut shares {
            share.take(1);
        }
        let fair = QUEUED_COMMANDS_MAX / 64;
        for share in &mut shares {
            assert_eq!(share.allowance(), fair - 1);
        }
    }

    #[test]
    fn buffered_bytes_are_counted_and_released() {
        let budget = Arc::new(Budget::default());
        let mut big = budget.share();
        big.set_buffered(BUFFERED_BYTES_MAX);
        assert!(!big.may_buffer_more());
        let small = budget.share();
        assert!(small.may_buffer_more(), "under its floor");
        drop(big);
        assert_eq!(budget.buffered(), 0);
    }
}
