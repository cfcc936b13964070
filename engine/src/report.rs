//! What the engine reports about itself: the conservation audit and the statistics
//! behind the pretty dump (§2, §10).

use std::sync::atomic::Ordering;

use plafond_shards::apply::ceiling_of;
use plafond_shards::calendar::Calendar;
use plafond_shards::command::Reason;
use plafond_shards::histogram::Buckets;
use plafond_shards::outcomes::CommandCounts;
use plafond_shards::region::Regions;
use plafond_shards::state::{Instrument, RegionCounters, ShardState, Totals};
use plafond_shards::store::StoreSizes;

use crate::engine::Engine;
use crate::error::EngineError;

/// Both sides of the conservation equation at one consistent cut (§2):
/// `balances + in_flight = initial_deposits + deposits + interest + refunds - card_payments
/// - captures`, and the money held (§12) beside it: holds move no money.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Audit {
    /// The sum of every account's balance.
    pub balances_minor: u128,
    /// Debited for cross-shard transfers and not yet credited or refunded.
    pub in_flight_minor: i128,
    /// Credited when accounts were opened.
    pub initial_deposits_minor: u128,
    /// Credited by deposits.
    pub deposits_minor: u128,
    /// Posted as savings interest.
    pub interest_minor: u128,
    /// Debited by approved card payments.
    pub card_payments_minor: u128,
    /// Credited by card refunds (§12).
    pub refunds_minor: u128,
    /// Debited by captures of holds (§12).
    pub captures_minor: u128,
    /// What the open holds hold: part of the balances, reserved (never more than them).
    pub held_minor: u128,
}

impl Audit {
    /// The left side: money in accounts and in flight.
    pub fn present_minor(&self) -> i128 {
        self.balances_minor as i128 + self.in_flight_minor
    }

    /// The right side: money that came in less money that went out.
    pub fn owed_minor(&self) -> i128 {
        self.initial_deposits_minor as i128
            + self.deposits_minor as i128
            + self.interest_minor as i128
            + self.refunds_minor as i128
            - self.card_payments_minor as i128
            - self.captures_minor as i128
    }

    /// Whether the equation holds (and no more is held than the accounts hold).
    pub fn holds(&self) -> bool {
        self.present_minor() == self.owed_minor() && self.held_minor <= self.balances_minor
    }
}

/// Statistics of one region (or, for [`Stats::total`], of all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// The region's counters, summed over the shards.
    pub counters: RegionCounters,
    /// Cards whose seven-day spending is above 90 % of their ceiling.
    pub cards_near_ceiling: u64,
    /// The latest business day an epoch rolled this region to (days since 1970-01-01).
    pub rolled_day: Option<i32>,
    /// What the region's open holds hold (§12).
    pub held_minor: u128,
    /// The region's open holds.
    pub open_holds: u64,
    /// Of them, those that expire at the region's next roll (as of the cut).
    pub holds_expiring: u64,
}

/// Per-shard figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Accounts the shard holds.
    pub accounts: u64,
    /// Submissions waiting in the shard's ingress mailbox.
    pub queue_depth: usize,
    /// Mail waiting in the shard's internal mailbox (transfer legs, epoch chunks, cuts).
    pub internal_depth: usize,
    /// Client commands handled since start.
    pub commands: u64,
    /// Batches that held client commands, since start: `commands / batches` is the mean
    /// batch size. Batches of transfer legs or epoch chunks alone are not counted.
    pub batches: u64,
    /// Of those, the batches a submitter applied on its own thread (the shard was idle).
    pub inline_batches: u64,
    /// Time spent handling batches since start, in nanoseconds.
    pub busy_ns: u64,
    /// Batch service time percentiles since start, in µs (power-of-two bucket bounds).
    pub service_us_p50: u64,
    /// See [`ShardStats::service_us_p50`].
    pub service_us_p99: u64,
    /// See [`ShardStats::service_us_p50`].
    pub service_us_p999: u64,
    /// Batch service times since start, by power-of-two µs bucket; the sum in ns.
    pub service: Buckets,
    /// Client commands per batch since start, by power-of-two bucket.
    pub batch_commands: Buckets,
}

/// What the store and its group-commit writer report (a durable engine only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Shard batches per group commit, by power-of-two bucket.
    pub group_batches: Buckets,
    /// Group commit times (gathered to released), by power-of-two µs bucket; sum in ns.
    pub group_commit: Buckets,
    /// WAL fsync waits, by power-of-two µs bucket; sum in ns (see
    /// [`plafond_shards::store::WriterMetrics::wal_sync`]).
    pub wal_sync: Buckets,
    /// Changelog bytes written since start.
    pub log_written_bytes: u64,
    /// Archive segment bytes written since start.
    pub archived_bytes: u64,
    /// What RocksDB holds: table bytes, remembered ids on disk (an estimate).
    pub sizes: StoreSizes,
}

/// Everything the pretty dump shows.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Each region's name and statistics, by region id.
    pub regions: Vec<(String, RegionStats)>,
    /// Declined before reaching a shard, or for an id no region owns.
    pub unattributed: RegionCounters,
    /// All regions and the unattributed counters together (`rolled_day` is the earliest region's, none if one never rolled).
    pub total: RegionStats,
    /// The conservation audit, at the same cut.
    pub audit: Audit,
    /// Each shard's figures, by shard id.
    pub shards: Vec<ShardStats>,
    /// Idempotency records held in memory (§6): those of batches in flight, or with
    /// durability `none` every one within retention. The others are on disk.
    pub remembered_in_memory: u64,
    /// Command ids submitted and not yet durable, claimed across shards.
    pub ids_in_flight: u64,
    /// Commands answered since start, by kind and outcome: the shards' and the declines
    /// at the door.
    pub commands: CommandCounts,
    /// Per region, by id: epochs this process completed.
    pub epochs_completed: Vec<u64>,
    /// The store's and the writer's figures; `None` with durability `none`.
    pub storage: Option<StorageStats>,
    /// What the last checkpoint did.
    pub checkpoint: crate::CheckpointReport,
    /// What the guard against jumps of the host's clock refused (how many, and the one
    /// refused now with how far ahead the host is), or `None` when the engine's clock is
    /// not guarded (a manual clock, or the bare system clock).
    pub clock_guard: Option<crate::ClockGuardReport>,
}

/// One shard's side of the money, for the audit.
struct ShardMoney {
    totals: Totals,
    captured_minor: u128,
    refunded_minor: u128,
    held_minor: u128,
}

impl ShardMoney {
    fn of(state: &ShardState) -> ShardMoney {
        ShardMoney {
            totals: state.totals,
            captured_minor: state.holds.captured_minor(),
            refunded_minor: state.holds.refunded_minor(),
            held_minor: state.holds.held_minor(),
        }
    }
}

/// One region's holds on one shard, as of the cut.
#[derive(Clone, Copy, Default)]
struct HoldsCut {
    held_minor: u128,
    open: u64,
    expiring: u64,
}

struct ShardCut {
    money: ShardMoney,
    holds: Vec<HoldsCut>,
    counters: Vec<RegionCounters>,
    near_ceiling: Vec<u64>,
    rolled_day: Vec<i32>,
    accounts: u64,
}

fn cut_of(state: &ShardState, regions: &Regions) -> ShardCut {
    let mut near_ceiling = vec![0u64; regions.len()];
    let mut calendar = Calendar::new(regions);
    for account in &state.accounts {
        let Instrument::Card(card) = &account.instrument else {
            continue;
        };
        // As a card read sees it: a copy of the window rolled to the shard's latest time.
        let mut window = card.window;
        window.roll_to(calendar.business_day(regions, account.region, state.clock_ms));
        let ceiling = ceiling_of(card, &state.rules, account.region);
        // spent > 90 % of ceiling, in integers.
        if u128::from(window.spent_minor()) * 10 > u128::from(ceiling) * 9 {
            if let Some(count) = near_ceiling.get_mut(usize::from(account.region)) {
                *count += 1;
            }
        }
    }
    let mut holds = vec![HoldsCut::default(); regions.len()];
    for (&local, open) in state.holds.open() {
        let Some(account) = state.accounts.get(local as usize) else { continue };
        let Some(cut) = holds.get_mut(usize::from(account.region)) else { continue };
        let today = calendar.business_day(regions, account.region, state.clock_ms);
        for hold in open.holds.iter().filter_map(|seq| state.holds.get_open(*seq)) {
            if hold.open_on(today) {
                cut.held_minor += u128::from(hold.held_minor());
                cut.open += 1;
                cut.expiring += u64::from(hold.expires_day == today + 1);
            }
        }
    }
    ShardCut {
        money: ShardMoney::of(state),
        holds,
        counters: state.counters.clone(),
        near_ceiling,
        rolled_day: state.rolled_day.clone(),
        accounts: state.accounts.len() as u64,
    }
}

impl Engine {
    /// The conservation equation's two sides, at a consistent cut.
    pub fn audit(&self) -> Result<Audit, EngineError> {
        let money = self.cut(ShardMoney::of)?;
        Ok(audit_of(money.iter()))
    }

    /// Statistics for the pretty dump, at a consistent cut. Scans every card (for the
    /// cards near their ceiling), so it costs a pause proportional to the accounts.
    pub fn stats(&self) -> Result<Stats, EngineError> {
        let regions = self.regions.clone();
        let cuts = self.cut(move |state| cut_of(state, &regions))?;
        let region_count = self.regions().len();
        let mut regions: Vec<(String, RegionStats)> =
            self.regions().iter().map(|r| (r.name.clone(), RegionStats::default())).collect();
        let mut unattributed = RegionCounters::default();
        let mut commands = self.ingress_declines.snapshot();
        for reason in Reason::ALL {
            unattributed.declined[reason.index()] += commands.declined_for(reason);
        }
        let queue_depths = self.queue_depths();
        let internal_depths = self.internal_depths();
        let mut shards = Vec::new();
        for (shard, cut) in cuts.iter().enumerate() {
            for (region, stats) in regions.iter_mut().enumerate() {
                let stats = &mut stats.1;
                stats.counters.add(&cut.counters[region]);
                stats.cards_near_ceiling += cut.near_ceiling[region];
                stats.held_minor += cut.holds[region].held_minor;
                stats.open_holds += cut.holds[region].open;
                stats.holds_expiring += cut.holds[region].expiring;
                let rolled = cut.rolled_day[region];
                if rolled != i32::MIN {
                    stats.rolled_day =
                        Some(stats.rolled_day.map_or(rolled, |day: i32| day.min(rolled)));
                }
            }
            unattributed.add(&cut.counters[region_count]);
            let metrics = &self.metrics[shard];
            commands.add(&metrics.outcomes.snapshot());
            let service = metrics.service.snapshot();
            let batch_commands = metrics.batch_commands.snapshot();
            shards.push(ShardStats {
                accounts: cut.accounts,
                queue_depth: queue_depths[shard],
                internal_depth: internal_depths[shard],
                commands: batch_commands.sum,
                batches: batch_commands.count(),
                inline_batches: metrics.inline_batches.load(Ordering::Relaxed),
                busy_ns: service.sum,
                service_us_p50: service.quantile_bound(0.5),
                service_us_p99: service.quantile_bound(0.99),
                service_us_p999: service.quantile_bound(0.999),
                service,
                batch_commands,
            });
        }
        let mut total = RegionStats::default();
        for (_, stats) in &regions {
            total.counters.add(&stats.counters);
            total.cards_near_ceiling += stats.cards_near_ceiling;
            total.held_minor += stats.held_minor;
            total.open_holds += stats.open_holds;
            total.holds_expiring += stats.holds_expiring;
        }
        // Every region has rolled at least to the earliest of their days.
        total.rolled_day = regions.iter().map(|(_, stats)| stats.rolled_day).min().flatten();
        total.counters.add(&unattributed);
        let audit = audit_of(cuts.iter().map(|cut| &cut.money));
        let remembered_in_memory = self.remembered_in_memory();
        Ok(Stats {
            regions,
            unattributed,
            total,
            audit,
            shards,
            remembered_in_memory,
            ids_in_flight: self.ids_in_flight() as u64,
            commands,
            epochs_completed: self.batch.status().iter().map(|epochs| epochs.completed).collect(),
            storage: self.storage_stats(),
            checkpoint: self.checkpoint_report(),
            clock_guard: self.clock().guard().map(crate::TimeGuard::report),
        })
    }
}

impl Engine {
    fn storage_stats(&self) -> Option<StorageStats> {
        let store = self.store()?;
        let writer = store.writer_metrics();
        Some(StorageStats {
            group_batches: writer.group_batches.snapshot(),
            group_commit: writer.group_commit.snapshot(),
            wal_sync: writer.wal_sync.snapshot(),
            log_written_bytes: store.log_bytes_written(),
            archived_bytes: self.archived_bytes.load(Ordering::Relaxed),
            sizes: store.sizes(),
        })
    }
}

fn audit_of<'a>(shards: impl Iterator<Item = &'a ShardMoney>) -> Audit {
    let mut sum = Totals::default();
    let (mut captures_minor, mut refunds_minor, mut held_minor) = (0, 0, 0);
    for shard in shards {
        sum.add(&shard.totals);
        captures_minor += shard.captured_minor;
        refunds_minor += shard.refunded_minor;
        held_minor += shard.held_minor;
    }
    Audit {
        balances_minor: sum.balances_minor,
        in_flight_minor: sum.in_flight_minor(),
        initial_deposits_minor: sum.initial_deposits_minor,
        deposits_minor: sum.deposits_minor,
        interest_minor: sum.interest_minor,
        card_payments_minor: sum.card_payments_minor,
        refunds_minor,
        captures_minor,
        held_minor,
    }
}
