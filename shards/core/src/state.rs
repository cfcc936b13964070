//! A shard's state: its profiles, accounts, cards, outgoing transfers and counters. Only
//! [`crate::apply`] changes it. Idempotency records are not in it: they live on disk
//! beside the log (`crate::idempotency`), so the state's size does not grow with history.

use std::collections::{BTreeMap, HashMap};

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use crate::calendar::Day;
use crate::command::{CardStatus, CommandId, Reason, RegionId};
use crate::holds::Holds;
use crate::idempotency::IdempotencyRecord;
use crate::ids::{AccountId, ShardId};
use crate::interest::Savings;
use crate::region::Rules;
use crate::table::Table;
use crate::window::Window;

/// "No account" in the per-profile account lists.
pub const NO_ACCOUNT: u32 = u32::MAX;

/// A profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Profile {
    /// The region it was opened in; its accounts follow that region's rules.
    pub region: RegionId,
    /// Local index of its first and last account, or [`NO_ACCOUNT`].
    pub first_account: u32,
    /// Local index of its newest account, or [`NO_ACCOUNT`]: kept so that opening an
    /// account links it without walking the list.
    pub last_account: u32,
}

/// A debit card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Card {
    /// Whether it accepts payments.
    pub status: CardStatus,
    /// The card's own ceiling, or 0 for the region default.
    pub ceiling_minor: u64,
    /// Its approved spending over the last seven business days.
    pub window: Window,
}

/// What hangs off an account besides its balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Instrument {
    /// A checking account's card.
    Card(Card),
    /// A savings account's interest state.
    Savings(Savings),
}

/// An account. Kept small: a shard holds millions of them (see `docs/BENCHMARKS.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Account {
    /// The balance, in minor units; never negative, as there is no overdraft.
    pub balance_minor: u64,
    /// Local index of the owning profile (profiles live on their accounts' shard).
    pub profile: u32,
    /// Local index of the profile's next account, or [`NO_ACCOUNT`].
    pub next_in_profile: u32,
    /// The owning profile's region, copied here so a command needs no profile lookup.
    pub region: RegionId,
    /// Its card (checking) or interest state (savings).
    pub instrument: Instrument,
}

/// A transfer whose debit is done here and whose credit is on another shard.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PendingTransfer {
    /// Local index of the debited source account, refunded if the credit is refused.
    pub from_local: u32,
    /// The target account, on another shard.
    pub to: AccountId,
    /// The amount debited here, in minor units.
    pub amount_minor: u64,
    /// The source balance right after the debit: what `DONE` reports.
    pub balance_after_minor: u64,
    /// The command's idempotency key, whose record becomes final when the transfer settles.
    pub command_id: Option<CommandId>,
    /// When the debit was applied (Unix ms); a credit resent after a restart carries it.
    pub ts_ms: i64,
}

/// Money totals of one shard: both sides of the conservation equation (§2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Totals {
    /// The sum of the shard's account balances.
    pub balances_minor: u128,
    /// Credited when accounts were opened.
    pub initial_deposits_minor: u128,
    /// Credited by deposits.
    pub deposits_minor: u128,
    /// Posted as savings interest.
    pub interest_minor: u128,
    /// Debited by approved card payments.
    pub card_payments_minor: u128,
    /// Debited here for transfers to other shards.
    pub transfers_out_minor: u128,
    /// Credited here for transfers from other shards.
    pub transfers_in_minor: u128,
    /// Returned here for transfers the other shard refused.
    pub refunds_minor: u128,
}

impl Totals {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &Totals) {
        self.balances_minor += other.balances_minor;
        self.initial_deposits_minor += other.initial_deposits_minor;
        self.deposits_minor += other.deposits_minor;
        self.interest_minor += other.interest_minor;
        self.card_payments_minor += other.card_payments_minor;
        self.transfers_out_minor += other.transfers_out_minor;
        self.transfers_in_minor += other.transfers_in_minor;
        self.refunds_minor += other.refunds_minor;
    }

    /// Money debited for a transfer and not yet credited or refunded. Only meaningful
    /// summed over every shard at one cut.
    pub fn in_flight_minor(&self) -> i128 {
        self.transfers_out_minor as i128
            - self.transfers_in_minor as i128
            - self.refunds_minor as i128
    }
}

/// Counters of one region (or of commands no region could be found for).
///
/// Encoded as its fields in order, with the first [`Reason::COUNTED`] entries of each
/// array (the layout of snapshot format 3, `docs/SNAPSHOT_FORMAT.md`); the later entries
/// (the hold reasons of §12) follow the holds in format 5, which writes them apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionCounters {
    /// Profiles opened.
    pub profiles: u64,
    /// Checking accounts opened.
    pub checking_accounts: u64,
    /// Savings accounts opened.
    pub savings_accounts: u64,
    /// The sum of the region's account balances.
    pub balances_minor: u128,
    /// Card payments approved.
    pub payments_approved: u64,
    /// The amount of the card payments approved.
    pub payments_approved_minor: u128,
    /// Declined commands, by [`Reason::index`].
    pub declined: [u64; Reason::ALL.len()],
    /// The amount the declined commands carried, by [`Reason::index`].
    pub declined_minor: [u128; Reason::ALL.len()],
}

impl RegionCounters {
    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &RegionCounters) {
        self.profiles += other.profiles;
        self.checking_accounts += other.checking_accounts;
        self.savings_accounts += other.savings_accounts;
        self.balances_minor += other.balances_minor;
        self.payments_approved += other.payments_approved;
        self.payments_approved_minor += other.payments_approved_minor;
        for i in 0..Reason::ALL.len() {
            self.declined[i] += other.declined[i];
            self.declined_minor[i] += other.declined_minor[i];
        }
    }
}

impl Encode for RegionCounters {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.profiles.encode(encoder)?;
        self.checking_accounts.encode(encoder)?;
        self.savings_accounts.encode(encoder)?;
        self.balances_minor.encode(encoder)?;
        self.payments_approved.encode(encoder)?;
        self.payments_approved_minor.encode(encoder)?;
        for count in self.declined.iter().take(Reason::COUNTED) {
            count.encode(encoder)?;
        }
        for amount_minor in self.declined_minor.iter().take(Reason::COUNTED) {
            amount_minor.encode(encoder)?;
        }
        Ok(())
    }
}

impl<Context> Decode<Context> for RegionCounters {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let mut counters = RegionCounters {
            profiles: u64::decode(decoder)?,
            checking_accounts: u64::decode(decoder)?,
            savings_accounts: u64::decode(decoder)?,
            balances_minor: u128::decode(decoder)?,
            payments_approved: u64::decode(decoder)?,
            payments_approved_minor: u128::decode(decoder)?,
            ..RegionCounters::default()
        };
        for count in counters.declined.iter_mut().take(Reason::COUNTED) {
            *count = u64::decode(decoder)?;
        }
        for amount_minor in counters.declined_minor.iter_mut().take(Reason::COUNTED) {
            *amount_minor = u128::decode(decoder)?;
        }
        Ok(counters)
    }
}

bincode::impl_borrow_decode!(RegionCounters);

/// The state of one shard. Deterministic: the same inputs give the same state.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ShardState {
    /// This shard's index.
    pub shard: ShardId,
    /// How many shards the engine has: ids are routed by it.
    pub shards: u16,
    /// The profiles this shard owns, by local index.
    pub profiles: Table<Profile>,
    /// The accounts this shard owns, by local index (a card lives in its account).
    pub accounts: Table<Account>,
    /// Outgoing cross-shard transfers by sequence number, oldest first.
    pub pending: BTreeMap<u64, PendingTransfer>,
    /// The sequence number of the next outgoing cross-shard transfer; one sequence for
    /// every target shard.
    pub next_transfer_seq: u64,
    /// Per origin shard, the next credit sequence number not yet seen. Credits from one
    /// origin arrive in sequence order, so everything below it was applied.
    pub credits_seen: Vec<u64>,
    /// Credits this shard refused, by (origin, seq), to answer a resent one the same way.
    pub refused_credits: HashMap<(ShardId, u64), Reason>,
    /// The latest input time seen: time never goes backwards inside a shard.
    pub clock_ms: i64,
    /// Each region's rules as of the latest [`crate::apply::Input::SetRules`].
    pub rules: Vec<Option<Rules>>,
    /// The latest business day each region was rolled to by an epoch.
    pub rolled_day: Vec<Day>,
    /// The shard's side of the conservation audit.
    pub totals: Totals,
    /// Per region; the last entry counts what no region could be found for.
    pub counters: Vec<RegionCounters>,
    /// Idempotency records carried by a snapshot: empty in a running shard and in its
    /// checkpoints (the records live on disk beside the log); a snapshot lists the records
    /// of the shard as of its cut, and opening a restored engine writes them back.
    pub remembered: Vec<(CommandId, IdempotencyRecord)>,
    /// Card holds (§12), their totals and each region's expiry rule.
    pub holds: Holds,
}

impl ShardState {
    /// An empty shard `shard` of `shards`, for `regions` regions.
    pub fn new(shard: ShardId, shards: u16, regions: usize) -> ShardState {
        ShardState {
            shard,
            shards,
            profiles: Table::new(),
            accounts: Table::new(),
            pending: BTreeMap::new(),
            next_transfer_seq: 0,
            credits_seen: vec![0; usize::from(shards)],
            refused_credits: HashMap::new(),
            clock_ms: i64::MIN,
            rules: vec![None; regions],
            rolled_day: vec![Day::MIN; regions],
            totals: Totals::default(),
            counters: vec![RegionCounters::default(); regions + 1],
            remembered: Vec::new(),
            holds: Holds::default(),
        }
    }

    /// The rules of `region`, once set.
    pub fn rules_of(&self, region: RegionId) -> Option<&Rules> {
        self.rules.get(usize::from(region)).and_then(Option::as_ref)
    }

    /// The counters of `region`, or the unattributed ones.
    pub fn counters_of(&mut self, region: Option<RegionId>) -> &mut RegionCounters {
        let unattributed = self.counters.len() - 1;
        let index = region.map_or(unattributed, |r| usize::from(r).min(unattributed));
        &mut self.counters[index]
    }
}

/// A capture of a shard's state in progress (see [`crate::table`]): everything but the
/// two big tables is copied at the instant; the tables are swept by
/// [`ShardState::capture_step`] between batches.
pub struct StateCapture {
    rest: Box<ShardState>,
}

/// Where a capture copies the two tables to: buffers made ahead by the thread that asks
/// for it ([`crate::table::prefaulted`]), or empty ones that grow on the shard's thread.
#[derive(Default)]
pub struct CaptureBuffers {
    /// Room for the profiles.
    pub profiles: Vec<Profile>,
    /// Room for the accounts.
    pub accounts: Vec<Account>,
}

impl CaptureBuffers {
    /// Buffers with room for `profiles` and `accounts` entries, their pages touched.
    pub fn prefaulted(profiles: usize, accounts: usize) -> CaptureBuffers {
        CaptureBuffers {
            profiles: crate::table::prefaulted(profiles),
            accounts: crate::table::prefaulted(accounts),
        }
    }
}

impl ShardState {
    /// Starts capturing the state as it is now. Costs a copy of the small parts only
    /// (transfers in flight, counters, rules): the tables are copied later, in steps.
    pub fn begin_capture(&mut self) -> StateCapture {
        self.begin_capture_into(CaptureBuffers::default())
    }

    /// [`ShardState::begin_capture`], copying the tables into `buffers`.
    pub fn begin_capture_into(&mut self, buffers: CaptureBuffers) -> StateCapture {
        self.profiles.begin_capture_into(buffers.profiles);
        self.accounts.begin_capture_into(buffers.accounts);
        let rest = ShardState {
            shard: self.shard,
            shards: self.shards,
            profiles: Table::new(),
            accounts: Table::new(),
            pending: self.pending.clone(),
            next_transfer_seq: self.next_transfer_seq,
            credits_seen: self.credits_seen.clone(),
            refused_credits: self.refused_credits.clone(),
            clock_ms: self.clock_ms,
            rules: self.rules.clone(),
            rolled_day: self.rolled_day.clone(),
            totals: self.totals,
            counters: self.counters.clone(),
            remembered: Vec::new(),
            // Shared at the instant, not copied: the hold table is persistent maps whose
            // clone is O(1); the shard's later changes copy the paths they touch.
            holds: self.holds.clone(),
        };
        StateCapture { rest: Box::new(rest) }
    }

    /// Copies up to `entries` more entries of each table into the capture; true once it
    /// is complete.
    pub fn capture_step(&mut self, entries: usize) -> bool {
        let profiles = self.profiles.capture_step(entries);
        let accounts = self.accounts.capture_step(entries);
        profiles && accounts
    }

    /// The state as it was when `capture` began, once [`ShardState::capture_step`] said it
    /// is complete; before that, the capture is given back.
    pub fn finish_capture(&mut self, capture: StateCapture) -> Result<ShardState, StateCapture> {
        if !self.capture_step(0) {
            return Err(capture);
        }
        let (Some(profiles), Some(accounts)) =
            (self.profiles.take_capture(), self.accounts.take_capture())
        else {
            return Err(capture);
        };
        let mut state = *capture.rest;
        state.profiles = profiles.into();
        state.accounts = accounts.into();
        Ok(state)
    }
}
