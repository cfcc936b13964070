//! Where a shard finds what a command id remembers (§6), without holding every id ever
//! used in memory.
//!
//! - **On disk** (durability `sync` and `async`): a record is written to RocksDB's `ids`
//!   column family in the same write as the log batch holding its command
//!   (`crate::store`), so the two are durable together. Until the writer reports that
//!   batch durable, the record also sits in [`RememberedIds`]'s table of unwritten
//!   records, so a retry arriving meanwhile finds it; after, the table forgets it and a
//!   lookup reads the disk. Memory thus holds the records of the batches in flight only
//!   (bounded by the mailboxes and the writer's queue), however many ids are remembered.
//! - **In memory** (durability `none`, for benchmarks): there is no disk, so records stay
//!   in memory until their retention ends; that bounds them by the rate times the
//!   retention, and no more.
//!
//! The in-flight claims at the engine's door ([`Claims`]) cover the one case the disk
//! cannot: two uses of one id on two shards at the same time, before either is written.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use foldhash::fast::RandomState;

use crate::calendar::Day;
use crate::command::{Command, CommandId, RegionId};
use crate::idempotency::IdempotencyRecord;
use crate::store::{Store, StoreError};

pub use crate::limits::EXPIRE_RECORDS_PER_CALL_MAX;

/// Command ids submitted and not yet durable in their shard, across all shards: a second
/// use of one on another shard meanwhile is refused as a conflict at the door, since
/// neither shard could see the other's record yet.
pub struct Claims {
    /// Per id: the command it was submitted with, and how many submissions of it are in
    /// flight (a retry may be submitted while the first attempt is).
    in_flight: DashMap<CommandId, (Command, u32), RandomState>,
    /// Whether there is another shard to guard against. One shard sees every use of an id
    /// in order and finds the first in its own table of records in flight, so a claim
    /// would only repeat that table's answer, at a hash-map insert and removal per command
    /// (about a tenth of what an id costs the server's I/O thread).
    needed: bool,
}

/// A command id already in flight with another command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimConflict;

impl Claims {
    /// Claims for an engine of `shards` shards.
    pub fn new(shards: u16) -> Claims {
        Claims { in_flight: DashMap::default(), needed: shards > 1 }
    }

    /// Claims `id` for `command`, or refuses it if it is in flight with another command.
    pub fn claim(&self, id: &CommandId, command: &Command) -> Result<(), ClaimConflict> {
        if !self.needed {
            return Ok(());
        }
        match self.in_flight.entry(id.clone()) {
            Entry::Occupied(mut claimed) => {
                let (first, count) = claimed.get_mut();
                if first != command {
                    return Err(ClaimConflict);
                }
                *count += 1;
            }
            Entry::Vacant(vacant) => {
                vacant.insert((command.clone(), 1));
            }
        }
        Ok(())
    }

    /// Ends one claim of `id`: its command is durable (or will never be).
    pub fn release(&self, id: &CommandId) {
        if !self.needed {
            return;
        }
        if let Entry::Occupied(mut claimed) = self.in_flight.entry(id.clone()) {
            let count = &mut claimed.get_mut().1;
            *count -= 1;
            if *count == 0 {
                claimed.remove();
            }
        }
    }

    /// Ids in flight now.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no id is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

/// The ids whose records one batch wrote.
struct BatchIds {
    /// The batch's log sequence number.
    seq: u64,
    written: Vec<CommandId>,
}

/// Where records live once durable, shared by every shard (a shard must find another
/// shard's record to refuse a conflicting use of its id).
#[derive(Clone)]
pub enum IdsHome {
    /// RocksDB's `ids` column family.
    Disk(Arc<Store>),
    /// Memory, for durability `none`.
    Memory(Arc<Mutex<MemoryRecords>>),
}

impl IdsHome {
    /// Records in memory, for an engine without a store.
    pub fn memory() -> IdsHome {
        IdsHome::Memory(Arc::new(Mutex::new(MemoryRecords::default())))
    }
}

/// The records of an engine with durability `none`, and their ids by the first business
/// day they are past retention.
#[derive(Default)]
pub struct MemoryRecords {
    records: HashMap<CommandId, IdempotencyRecord, RandomState>,
    by_day: BTreeMap<Day, Vec<CommandId>>,
}

impl MemoryRecords {
    fn lock(records: &Mutex<MemoryRecords>) -> MutexGuard<'_, MemoryRecords> {
        // Each change is one insert or one remove: a panic cannot leave it half done.
        records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One shard's view of its remembered command ids (see the module doc).
pub struct RememberedIds {
    /// Records of batches not known durable yet, with the batch that last wrote each.
    unwritten: HashMap<CommandId, (u64, IdempotencyRecord), RandomState>,
    /// The batches not known durable yet, oldest first.
    batches: VecDeque<BatchIds>,
    durable: IdsHome,
}

impl RememberedIds {
    /// A shard's view of the records in `durable`.
    pub fn new(durable: IdsHome) -> RememberedIds {
        RememberedIds { unwritten: HashMap::default(), batches: VecDeque::new(), durable }
    }

    /// Looks up every id of `ids` (`None` entries are skipped) in one disk read; the
    /// records of unwritten batches are not read here but in [`RememberedIds::get`].
    pub fn prefetch(
        &self,
        ids: &[Option<&CommandId>],
    ) -> Result<Vec<Option<IdempotencyRecord>>, StoreError> {
        match &self.durable {
            IdsHome::Disk(store) => {
                let wanted = ids.iter().map(|id| id.filter(|id| !self.unwritten.contains_key(*id)));
                store.read_records(wanted)
            }
            IdsHome::Memory(memory) => {
                let memory = MemoryRecords::lock(memory);
                Ok(ids.iter().map(|id| id.and_then(|id| memory.records.get(id).cloned())).collect())
            }
        }
    }

    /// What `id` remembers: an unwritten record first (it is newer), else `prefetched`.
    pub fn get<'a>(
        &'a self,
        id: &CommandId,
        prefetched: Option<&'a IdempotencyRecord>,
    ) -> Option<&'a IdempotencyRecord> {
        self.unwritten.get(id).map(|(_, record)| record).or(prefetched)
    }

    /// Keeps `record` as written by batch `seq` (the one being built).
    pub fn remember(&mut self, seq: u64, id: CommandId, record: IdempotencyRecord) {
        if self.batches.back().is_none_or(|batch| batch.seq != seq) {
            self.batches.push_back(BatchIds { seq, written: Vec::new() });
        }
        if let Some(batch) = self.batches.back_mut() {
            batch.written.push(id.clone());
        }
        self.unwritten.insert(id, (seq, record));
    }

    /// Forgets what batches before `durable_seq` kept in memory (they are on disk now);
    /// in memory, moves their records to the durable table, to expire on the day
    /// `expiry_of` gives.
    pub fn durable_before(
        &mut self,
        durable_seq: u64,
        expiry_of: impl Fn(&IdempotencyRecord) -> Day,
    ) {
        while self.batches.front().is_some_and(|batch| batch.seq < durable_seq) {
            let Some(batch) = self.batches.pop_front() else { break };
            for id in batch.written {
                let Some((seq, _)) = self.unwritten.get(&id) else { continue };
                // A later batch rewrote it (a transfer's record made final): keep that one.
                if *seq != batch.seq {
                    continue;
                }
                let Some((_, record)) = self.unwritten.remove(&id) else { continue };
                if let IdsHome::Memory(memory) = &self.durable {
                    let mut memory = MemoryRecords::lock(memory);
                    memory.by_day.entry(expiry_of(&record)).or_default().push(id.clone());
                    memory.records.insert(id, record);
                }
            }
        }
    }

    /// In memory, drops up to [`EXPIRE_RECORDS_PER_CALL_MAX`] records that are past
    /// retention: `expiry_of` gives a record's first day past retention, `today_of` a
    /// region's business day now. On disk the compaction filter does it (`crate::store`).
    pub fn expire(
        &mut self,
        today_of: impl Fn(RegionId) -> Day,
        expiry_of: impl Fn(&IdempotencyRecord) -> Day,
    ) {
        let IdsHome::Memory(memory) = &self.durable else { return };
        let mut memory = MemoryRecords::lock(memory);
        let MemoryRecords { records, by_day } = &mut *memory;
        let mut budget = EXPIRE_RECORDS_PER_CALL_MAX;
        while budget > 0 {
            let Some(mut entry) = by_day.first_entry() else { return };
            let expiry = *entry.key();
            let ids = entry.get_mut();
            while budget > 0 {
                let Some(id) = ids.pop() else { break };
                budget -= 1;
                let Some(record) = records.get(&id) else { continue };
                if expiry_of(record) != expiry {
                    // The id was used again after it expired: its new record is filed
                    // under its own day.
                    continue;
                }
                if today_of(record.region) < expiry {
                    // Not due yet in its region (regions' days differ): keep it for later.
                    ids.push(id);
                    return;
                }
                records.remove(&id);
            }
            if ids.is_empty() {
                entry.remove();
            }
        }
    }

    /// Records this shard holds in memory: those of its batches in flight.
    pub fn unwritten(&self) -> usize {
        self.unwritten.len()
    }
}

impl IdsHome {
    /// Calls `visit` with every durable record (for a snapshot).
    pub fn for_each(
        &self,
        mut visit: impl FnMut(CommandId, IdempotencyRecord),
    ) -> Result<(), StoreError> {
        match self {
            IdsHome::Disk(store) => store.for_each_record(visit),
            IdsHome::Memory(memory) => {
                let memory = MemoryRecords::lock(memory);
                for (id, record) in &memory.records {
                    visit(id.clone(), record.clone());
                }
                Ok(())
            }
        }
    }

    /// Keeps `records` (a restored snapshot's) where their id has no record yet; in memory
    /// they expire on the day `expiry_of` gives.
    pub fn restore(
        &self,
        records: Vec<(CommandId, IdempotencyRecord)>,
        expiry_of: impl Fn(&IdempotencyRecord) -> Day,
    ) -> Result<u64, StoreError> {
        match self {
            IdsHome::Disk(store) => store.restore_records(&records),
            IdsHome::Memory(memory) => {
                let mut memory = MemoryRecords::lock(memory);
                let mut written = 0;
                for (id, record) in records {
                    if memory.records.contains_key(&id) {
                        continue;
                    }
                    memory.by_day.entry(expiry_of(&record)).or_default().push(id.clone());
                    memory.records.insert(id, record);
                    written += 1;
                }
                Ok(written)
            }
        }
    }

    /// Records held in memory for every shard (durability `none`), 0 on disk.
    pub fn in_memory(&self) -> usize {
        match self {
            IdsHome::Disk(_) => 0,
            IdsHome::Memory(memory) => MemoryRecords::lock(memory).records.len(),
        }
    }
}
