//! The UpdateBatchingService (SPEC §4): for each region, at its roll time, one epoch
//! (region, business day) that rolls the seven-day windows of the region's cards and
//! brings its savings accounts' interest up to date (closing half-months, posting on the
//! first epoch of a year), on every shard, then records the epoch durably.
//!
//! An epoch never stops a shard for long: it is sent as chunks of
//! [`ROLL_CHUNK_ACCOUNTS`] accounts, one chunk per shard at a time, each applied between
//! two ordinary commands, so payments (in that region too) go on throughout, and every
//! command sees a card entirely before or entirely after its roll.
//!
//! Correctness never depends on this service: a shard rolls a card lazily when a command
//! of a later business day touches it, with the same function. Rolling is idempotent, so
//! an epoch interrupted by a crash is simply run again after restart (it is recorded only
//! once complete), and missed epochs run in order on catch-up.

#![warn(missing_docs)]

mod limits;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use plafond_shards::apply::Input;
use plafond_shards::calendar::{business_day_of, Day};
use plafond_shards::command::RegionId;
use plafond_shards::ids::ShardId;
use plafond_shards::region::Regions;
use plafond_shards::store::StoreError;

pub use crate::limits::EPOCH_DUTY_PERCENT;
pub use crate::limits::{ROLL_CHUNK_ACCOUNTS, ROLL_CHUNK_ACCOUNTS_MIN, ROLL_CHUNK_HOLDS};
/// How often the scheduler looks at the clock.
pub const SCHEDULER_POLL: Duration = Duration::from_millis(200);

/// What the service needs from the engine.
pub trait EpochHost: Send + Sync + 'static {
    /// The engine's regions: their zones and roll times say when epochs are due.
    fn regions(&self) -> &Regions;
    /// The engine clock's current time, in Unix milliseconds.
    fn now_ms(&self) -> i64;
    /// How many shards the engine has.
    fn shard_count(&self) -> u16;
    /// Accounts shard `shard` holds now.
    fn accounts(&self, shard: ShardId) -> u64;
    /// Holds in shard `shard`'s hold table now (open, and closed ones kept): its chunks
    /// cover fewer accounts when they are many ([`chunk_accounts`]).
    fn holds(&self, _shard: ShardId) -> u64 {
        0
    }
    /// Queues `input` on `shard`; `done` hears once it is durable.
    fn send(&self, shard: ShardId, input: Input, done: Sender<()>);
    /// The longest epoch chunk any shard applied since the last call, and resets it.
    fn take_pause_max(&self) -> Duration;
    /// The last completed epoch of `region`, from durable storage.
    fn last_epoch(&self, region: RegionId) -> Result<Option<Day>, StoreError>;
    /// Records durably that `region`'s epoch for `day` completed.
    fn record_epoch(&self, region: RegionId, day: Day) -> Result<(), StoreError>;
    /// Whether this node may run epochs: a replica's follower does not (SPEC §14, epochs
    /// run on the leader only; its shards replay the leader's rolls).
    fn leads(&self) -> bool {
        true
    }
}

/// Why an epoch did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A shard stopped before a chunk was durable; the epoch was not recorded.
    #[error("the engine stopped during the epoch; it runs again after restart")]
    Stopped,
    /// No region has this name.
    #[error("unknown region {0}")]
    UnknownRegion(String),
    /// Reading or recording a completed epoch failed; an epoch not recorded runs again
    /// after the storage is fixed and the engine restarted.
    #[error("epoch storage: {0}")]
    Storage(#[from] StoreError),
}

/// One completed epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochReport {
    /// The region rolled.
    pub region: RegionId,
    /// The business day (days since 1970-01-01 of its local date).
    pub day: Day,
    /// Accounts scanned on all shards (of every region: chunks cover whole shards).
    pub accounts: u64,
    /// Wall time the epoch took, its durable record included.
    pub duration: Duration,
    /// The longest time one shard spent on one chunk: the pause a command could see.
    pub max_pause: Duration,
}

/// Per region: the last completed epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionEpochs {
    /// The business day of the last completed epoch; `None` before the first.
    pub last_day: Option<Day>,
    /// The report of the last epoch this process ran for the region.
    pub last_report: Option<EpochReport>,
    /// Epochs this process completed for the region (a catch-up counts each day).
    pub completed: u64,
}

/// The service. Epochs run one at a time; their status is readable at any moment.
pub struct BatchService<H: EpochHost> {
    host: H,
    /// Each region's epochs as last published. Held only to copy or replace it, never
    /// across an epoch: `BATCH.STATUS` runs on an I/O thread and must not wait for a
    /// catch-up of years (it did, and froze every connection of that thread).
    status: Mutex<Vec<RegionEpochs>>,
    /// Held across a run of epochs (scheduler or operator), so that epochs run one at a
    /// time and in order.
    running: Mutex<()>,
    /// Set once the engine stops: a run returns [`BatchError::Stopped`] at the next chunk
    /// boundary instead of finishing a catch-up that may be millions of epochs long.
    stop: Arc<AtomicBool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<H: EpochHost> BatchService<H> {
    /// Loads each region's last completed epoch.
    pub fn new(host: H) -> Result<BatchService<H>, BatchError> {
        let count = host.regions().len();
        let mut regions = Vec::with_capacity(count);
        for region in 0..count as RegionId {
            let last_day = host.last_epoch(region)?;
            regions.push(RegionEpochs { last_day, last_report: None, completed: 0 });
        }
        Ok(BatchService {
            host,
            status: Mutex::new(regions),
            running: Mutex::new(()),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The host the service drives.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Each region's epochs, by region id. Never waits for an epoch in progress.
    pub fn status(&self) -> Vec<RegionEpochs> {
        lock(&self.status).clone()
    }

    /// Stops every run in progress at its next chunk boundary, and refuses later ones: what
    /// completed is recorded, the rest runs after a restart.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn check_running(&self) -> Result<(), BatchError> {
        match self.stop.load(Ordering::SeqCst) {
            true => Err(BatchError::Stopped),
            false => Ok(()),
        }
    }

    fn last_day(&self, region: RegionId) -> Option<Day> {
        lock(&self.status).get(usize::from(region)).and_then(|epochs| epochs.last_day)
    }

    /// Records `report`'s epoch durably and publishes it. The record never goes back: an
    /// epoch for a day at or before the last completed one (the clock was set back) is
    /// reported but not recorded, or the next run would repeat every day in between.
    fn complete(&self, report: &EpochReport) -> Result<(), BatchError> {
        let last = self.last_day(report.region);
        let advances = last.is_none_or(|last| report.day > last);
        if advances {
            self.host.record_epoch(report.region, report.day)?;
        }
        let mut status = lock(&self.status);
        if let Some(epochs) = status.get_mut(usize::from(report.region)) {
            if advances {
                epochs.last_day = Some(report.day);
            }
            epochs.last_report = Some(report.clone());
            epochs.completed += 1;
        }
        Ok(())
    }

    /// Runs every epoch that is due, oldest first per region: those after the last
    /// completed one up to the current business day (all of them, after downtime).
    ///
    /// Regions take turns, one epoch each, so that a region years behind does not keep
    /// one that is a day behind waiting. A stop ([`BatchService::stop`]) ends the run at
    /// the next chunk; the epochs completed so far are recorded.
    pub fn run_due(&self) -> Result<Vec<EpochReport>, BatchError> {
        if !self.host.leads() {
            return Ok(Vec::new());
        }
        let _one_run = lock(&self.running);
        let now_ms = self.host.now_ms();
        let regions = self.host.regions();
        let mut due: Vec<(Day, Day)> = Vec::with_capacity(regions.len());
        for (index, region) in regions.iter().enumerate() {
            let today = business_day_of(region, now_ms);
            let first = self.last_day(index as RegionId).map_or(today, |last| last + 1);
            due.push((first, today));
        }
        let mut reports = Vec::new();
        loop {
            let mut ran = false;
            for (index, (next, today)) in due.iter_mut().enumerate() {
                if *next > *today {
                    continue;
                }
                self.check_running()?;
                let report = self.run_epoch(index as RegionId, *next)?;
                self.complete(&report)?;
                reports.push(report);
                *next += 1;
                ran = true;
            }
            if !ran {
                return Ok(reports);
            }
        }
    }

    /// Runs `region`'s epoch for its current business day now (an operator's request).
    /// Running it again is a no-op for the state; it is reported again. With the clock
    /// behind the last completed epoch, the epoch of the clock's day is run (a no-op) and
    /// reported, and the durable record stays where it was.
    pub fn run_now(&self, region_name: &str) -> Result<EpochReport, BatchError> {
        let region = self
            .host
            .regions()
            .id_of(region_name)
            .ok_or_else(|| BatchError::UnknownRegion(region_name.to_owned()))?;
        let _one_run = lock(&self.running);
        let Some(rules) = self.host.regions().get(region) else {
            return Err(BatchError::UnknownRegion(region_name.to_owned()));
        };
        let today = business_day_of(rules, self.host.now_ms());
        // Missed epochs first, so that the on-demand one is not run out of order.
        let first = self.last_day(region).map_or(today, |last| (last + 1).min(today));
        let mut last = None;
        for day in first..=today {
            self.check_running()?;
            let report = self.run_epoch(region, day)?;
            self.complete(&report)?;
            last = Some(report);
        }
        match last {
            Some(report) => Ok(report),
            None => {
                let report = self.run_epoch(region, today)?;
                self.complete(&report)?;
                Ok(report)
            }
        }
    }

    /// Has every shard log the end of `region`'s epoch to `day` (`Input::Epoch`, the
    /// change stream's `EPOCH`), after all its chunks, and waits until they are durable.
    /// An epoch run again after a crash logs it again: the stream is at least once.
    fn mark_end(&self, region: RegionId, day: Day) -> Result<(), BatchError> {
        let waiting: Vec<Receiver<()>> = (0..self.host.shard_count())
            .map(|shard| {
                let (done_tx, done_rx) = bounded(1);
                self.host.send(shard, Input::Epoch { region, day }, done_tx);
                done_rx
            })
            .collect();
        for done in waiting {
            done.recv().map_err(|_| BatchError::Stopped)?;
        }
        Ok(())
    }

    fn run_epoch(&self, region: RegionId, day: Day) -> Result<EpochReport, BatchError> {
        let started = Instant::now();
        self.host.take_pause_max();
        let shards = self.host.shard_count();
        let sizes: Vec<u64> = (0..shards).map(|shard| self.host.accounts(shard)).collect();
        let steps: Vec<u64> = (0..shards)
            .zip(&sizes)
            .map(|(shard, &size)| chunk_accounts(size, self.host.holds(shard)))
            .collect();
        // Where each shard's next chunk starts; a shard is done once it reaches its size
        // (a shard without accounts still gets one empty chunk, which rolls its day).
        let mut starts: Vec<Option<u64>> = vec![Some(0); sizes.len()];
        // One chunk per shard in flight: each shard interleaves it with its commands, and
        // the shards work in parallel.
        while starts.iter().any(Option::is_some) {
            // An epoch over millions of accounts has hundreds of chunks: a stop must not
            // wait for all of them (the epoch is not recorded and runs again).
            self.check_running()?;
            let round = Instant::now();
            let mut waiting: Vec<Receiver<()>> = Vec::new();
            for (shard, next) in starts.iter_mut().enumerate() {
                let Some(start) = *next else { continue };
                let (size, step) = (sizes[shard], steps[shard]);
                let end = (start + step).min(size);
                *next = (end < size).then_some(end);
                let (done_tx, done_rx) = bounded(1);
                let input = Input::Roll { region, day, start: start as u32, end: end as u32 };
                self.host.send(shard as ShardId, input, done_tx);
                waiting.push(done_rx);
            }
            for done in waiting {
                done.recv().map_err(|_| BatchError::Stopped)?;
            }
            // Leave the shards most of their time for payments: an epoch has the whole
            // low-traffic window, a payment has milliseconds.
            std::thread::sleep(round.elapsed() * (100 - EPOCH_DUTY_PERCENT) / EPOCH_DUTY_PERCENT);
        }
        self.mark_end(region, day)?;
        // Step 3 of §4, compacting what expired, has nothing to do: idempotency records of
        // money-moving commands are kept without time limit (§6).
        Ok(EpochReport {
            region,
            day,
            accounts: sizes.iter().sum(),
            duration: started.elapsed(),
            max_pause: self.host.take_pause_max(),
        })
    }
}

/// Accounts one chunk of a shard with `accounts` accounts and `holds` holds covers:
/// [`ROLL_CHUNK_ACCOUNTS`], fewer where the holds are dense enough that a chunk would
/// hold more than [`ROLL_CHUNK_HOLDS`] of them on average, never fewer than
/// [`ROLL_CHUNK_ACCOUNTS_MIN`].
pub fn chunk_accounts(accounts: u64, holds: u64) -> u64 {
    let full = u64::from(ROLL_CHUNK_ACCOUNTS);
    let by_holds = match holds {
        0 => full,
        holds => accounts.saturating_mul(ROLL_CHUNK_HOLDS) / holds,
    };
    by_holds.clamp(u64::from(ROLL_CHUNK_ACCOUNTS_MIN), full)
}

/// A thread that runs due epochs as the clock passes each region's roll time.
pub struct Scheduler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts polling `service` every `poll`. Dropping the scheduler stops `service`
    /// ([`BatchService::stop`]) and waits for the thread, which ends at the next chunk.
    pub fn start<H: EpochHost>(
        service: Arc<BatchService<H>>,
        poll: Duration,
    ) -> std::io::Result<Scheduler> {
        let stop = service.stop.clone();
        let thread =
            std::thread::Builder::new().name("plafond-epochs".into()).spawn(move || {
                while service.check_running().is_ok() {
                    // A failed epoch is retried at the next poll; it is recorded only when done.
                    let _ = service.run_due();
                    std::thread::sleep(poll);
                }
            })?;
        Ok(Scheduler { stop, thread: Some(thread) })
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
