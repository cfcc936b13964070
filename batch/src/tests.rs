//! The service against a host that only counts: what is recorded, in which order, and
//! whether a reader or a stop waits for an epoch in progress.

use std::sync::atomic::AtomicI64;
use std::sync::mpsc;

use plafond_shards::calendar::business_day_of;

use super::*;

const DAY_MS: i64 = 86_400_000;
/// 2027-01-04T12:00:00Z: noon UTC, the same business day in Paris and New York.
const NOON_MS: i64 = 1_799_064_000_000;
/// How long a test waits for something that must happen at once (a status read, a stop).
const PROMPT: Duration = Duration::from_secs(10);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct FakeHost {
    regions: Regions,
    now_ms: AtomicI64,
    last: Vec<Option<Day>>,
    records: Mutex<Vec<(RegionId, Day)>>,
    /// Each chunk waits for a permit when set (the test holds the sender).
    permits: Option<Mutex<mpsc::Receiver<()>>>,
    /// Hears each chunk as it starts.
    started: Mutex<Option<mpsc::Sender<()>>>,
    /// Time each chunk takes, so a catch-up lasts.
    chunk_time: Duration,
}

impl FakeHost {
    fn new(now_ms: i64, last: Option<Day>) -> FakeHost {
        let regions = Regions::builtin();
        FakeHost {
            last: vec![last; regions.len()],
            regions,
            now_ms: AtomicI64::new(now_ms),
            records: Mutex::new(Vec::new()),
            permits: None,
            started: Mutex::new(None),
            chunk_time: Duration::ZERO,
        }
    }

    fn today(&self) -> Day {
        let region = self.regions.get(0).expect("a region");
        business_day_of(region, self.now_ms.load(Ordering::SeqCst))
    }
}

impl EpochHost for FakeHost {
    fn regions(&self) -> &Regions {
        &self.regions
    }
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
    fn shard_count(&self) -> u16 {
        1
    }
    fn accounts(&self, _shard: ShardId) -> u64 {
        1
    }
    fn send(&self, _shard: ShardId, _input: Input, done: Sender<()>) {
        if let Some(started) = lock(&self.started).as_ref() {
            let _ = started.send(());
        }
        if let Some(permits) = &self.permits {
            // A dropped sender lets every chunk through.
            let _ = lock(permits).recv();
        }
        std::thread::sleep(self.chunk_time);
        let _ = done.send(());
    }
    fn take_pause_max(&self) -> Duration {
        Duration::ZERO
    }
    fn last_epoch(&self, region: RegionId) -> Result<Option<Day>, StoreError> {
        Ok(self.last[usize::from(region)])
    }
    fn record_epoch(&self, region: RegionId, day: Day) -> Result<(), StoreError> {
        lock(&self.records).push((region, day));
        Ok(())
    }
}

#[test]
fn status_is_read_while_an_epoch_runs() {
    let mut host = FakeHost::new(NOON_MS, None);
    let (permit_tx, permit_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    host.permits = Some(Mutex::new(permit_rx));
    host.started = Mutex::new(Some(started_tx));
    let service = Arc::new(BatchService::new(host).expect("opens"));
    let runner = {
        let service = service.clone();
        std::thread::spawn(move || service.run_due())
    };
    started_rx.recv_timeout(PROMPT).expect("the epoch starts");
    // The epoch waits for its permit: a status read must not wait for it.
    let (status_tx, status_rx) = mpsc::channel();
    let reader = {
        let service = service.clone();
        std::thread::spawn(move || status_tx.send(service.status()))
    };
    let status = status_rx.recv_timeout(PROMPT).expect("BATCH.STATUS never waits for an epoch");
    assert_eq!(status, vec![RegionEpochs::default(); 2], "nothing completed yet");
    drop(permit_tx);
    let reports = runner.join().expect("no panic").expect("the epochs complete");
    assert_eq!(reports.len(), 2, "one epoch per region");
    reader.join().expect("no panic").expect("sent");
    assert!(service.status().iter().all(|epochs| epochs.last_day.is_some()));
}

#[test]
fn regions_take_turns_in_a_catch_up() {
    let host = FakeHost::new(NOON_MS, None);
    let today = host.today();
    let host = FakeHost { last: vec![Some(today - 4); 2], ..host };
    let service = BatchService::new(host).expect("opens");
    let reports = service.run_due().expect("runs");
    let order: Vec<(RegionId, Day)> = reports.iter().map(|r| (r.region, r.day)).collect();
    let expected: Vec<(RegionId, Day)> =
        (today - 3..=today).flat_map(|day| [(0, day), (1, day)]).collect();
    assert_eq!(order, expected, "one epoch of each region in turn, oldest first");
    assert_eq!(*lock(&service.host().records), expected);
}

#[test]
fn the_epoch_record_never_goes_back() {
    let host = FakeHost::new(NOON_MS, None);
    let today = host.today();
    let host = FakeHost { last: vec![Some(today); 2], ..host };
    host.now_ms.store(NOON_MS - 10 * DAY_MS, Ordering::SeqCst);
    let service = BatchService::new(host).expect("opens");
    let report = service.run_now("eu-west").expect("runs");
    assert_eq!(report.day, today - 10, "the clock's day is run and reported");
    assert!(lock(&service.host().records).is_empty(), "nothing recorded behind the last epoch");
    assert_eq!(service.status()[0].last_day, Some(today));
    assert_eq!(service.status()[0].last_report.as_ref().map(|r| r.day), Some(today - 10));
    // The clock comes back and moves one day on: one epoch per region, not eleven.
    service.host().now_ms.store(NOON_MS + DAY_MS, Ordering::SeqCst);
    let reports = service.run_due().expect("runs");
    let days: Vec<(RegionId, Day)> = reports.iter().map(|r| (r.region, r.day)).collect();
    assert_eq!(days, vec![(0, today + 1), (1, today + 1)]);
}

#[test]
fn dropping_the_scheduler_stops_a_long_catch_up_promptly() {
    const DAYS_BEHIND: i32 = 10_000;
    let mut host = FakeHost::new(NOON_MS, None);
    let today = host.today();
    host.last = vec![Some(today - DAYS_BEHIND); 2];
    host.chunk_time = Duration::from_millis(1);
    let (started_tx, started_rx) = mpsc::channel();
    host.started = Mutex::new(Some(started_tx));
    let service = Arc::new(BatchService::new(host).expect("opens"));
    let scheduler = Scheduler::start(service.clone(), Duration::from_millis(10)).expect("starts");
    for _ in 0..20 {
        started_rx.recv_timeout(PROMPT).expect("the catch-up runs");
    }
    // Each epoch takes about 4 ms here: the whole catch-up would take more than a minute.
    drop(scheduler);
    let records = lock(&service.host().records).clone();
    assert!(records.len() < 2 * DAYS_BEHIND as usize, "stopped before the end: {}", records.len());
    let resumed_from: Vec<Day> = (0..2).map(|r| service.status()[r].last_day.unwrap()).collect();
    assert!(resumed_from.iter().all(|&day| day < today), "{resumed_from:?}");
    assert!(
        matches!(service.run_due(), Err(BatchError::Stopped)),
        "a stopped service runs nothing"
    );
}

#[test]
fn chunks_cover_fewer_accounts_where_holds_are_dense() {
    let full = u64::from(ROLL_CHUNK_ACCOUNTS);
    assert_eq!(chunk_accounts(10_000_000, 0), full, "no holds: full chunks");
    // One hold in a hundred accounts: a full chunk holds 164 of them, under the budget.
    assert_eq!(chunk_accounts(1_000_000, 10_000), full);
    // One in ten: a chunk of 2,560 accounts holds the budget's 256.
    assert_eq!(chunk_accounts(1_000_000, 100_000), 2_560);
    // Ten holds an account: never fewer than the floor.
    assert_eq!(chunk_accounts(1_000, 10_000), u64::from(ROLL_CHUNK_ACCOUNTS_MIN));
    assert_eq!(chunk_accounts(0, 0), full);
}

/// A host of two shards, one with holds, that records the chunks it is sent.
struct ChunkHost {
    regions: Regions,
    sizes: [u64; 2],
    holds: [u64; 2],
    sent: Mutex<Vec<(ShardId, u32, u32)>>,
}

impl EpochHost for ChunkHost {
    fn regions(&self) -> &Regions {
        &self.regions
    }
    fn now_ms(&self) -> i64 {
        NOON_MS
    }
    fn shard_count(&self) -> u16 {
        2
    }
    fn accounts(&self, shard: ShardId) -> u64 {
        self.sizes[usize::from(shard)]
    }
    fn holds(&self, shard: ShardId) -> u64 {
        self.holds[usize::from(shard)]
    }
    fn send(&self, shard: ShardId, input: Input, done: Sender<()>) {
        if let Input::Roll { start, end, .. } = input {
            lock(&self.sent).push((shard, start, end));
        }
        let _ = done.send(());
    }
    fn take_pause_max(&self) -> Duration {
        Duration::ZERO
    }
    fn last_epoch(&self, _region: RegionId) -> Result<Option<Day>, StoreError> {
        Ok(None)
    }
    fn record_epoch(&self, _region: RegionId, _day: Day) -> Result<(), StoreError> {
        Ok(())
    }
}

#[test]
fn an_epoch_chunks_each_shard_by_its_own_holds_and_covers_every_account_once() {
    let host = ChunkHost {
        regions: Regions::builtin(),
        sizes: [40_000, 20_000],
        holds: [4_000, 0],
        sent: Mutex::new(Vec::new()),
    };
    let service = BatchService::new(host).expect("opens");
    service.run_now("eu-west").expect("the epoch runs");
    let sent = lock(&service.host().sent).clone();
    for (shard, size, step) in [(0, 40_000, 2_560), (1, 20_000, u64::from(ROLL_CHUNK_ACCOUNTS))] {
        let chunks: Vec<(u32, u32)> =
            sent.iter().filter(|c| c.0 == shard).map(|&(_, start, end)| (start, end)).collect();
        let mut next = 0;
        for &(start, end) in &chunks {
            assert_eq!(start, next, "shard {shard}: chunks follow each other");
            assert!(u64::from(end - start) <= step, "shard {shard}: a chunk of {}", end - start);
            next = end;
        }
        assert_eq!(u64::from(next), size, "shard {shard}: every account once");
        assert_eq!(chunks.len() as u64, size.div_ceil(step), "shard {shard}");
    }
}
