//! The decision function: `apply(state, input, time) -> Applied`.
//!
//! Pure: it reads and changes only the shard's state and returns what must happen next
//! (reply, park, send a message to another shard). No I/O, no clock, no allocation beyond
//! the state's own growth, so the log replays to the same state and tests drive it
//! directly.
//!
//! A transfer between shards is three inputs: the debit here (the source shard), a
//! [`Input::Credit`] on the target shard, and a [`Input::Settle`] back here, which either
//! completes it or refunds the source. Each is durable before the next is sent; the
//! sequence numbers make a resent credit or settle a no-op.

use bincode::{Decode, Encode};

use crate::authorization;
use crate::calendar::{half_month_of, Calendar, Day};
use crate::command::{
    AccountKind, AccountView, CardStatus, CardView, Command, CommandId, Opening, Outcome, Posted,
    ProfileView, Reason, RegionId, Request, Rolled,
};
use crate::idempotency::{IdempotencyRecord, Remembered};
use crate::ids::{global_of, local_of, shard_of, AccountId, ProfileId, ShardId};
use crate::interest::Savings;
use crate::region::{Regions, Rules};
use crate::state::{Account, Card, Instrument, PendingTransfer, Profile, ShardState, NO_ACCOUNT};
use crate::window::Window;

pub use crate::limits::SHARD_ENTRIES_MAX;

/// Anything a shard applies.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Input {
    /// A client's command.
    Client(Request),
    /// The credit leg of a transfer from shard `origin`.
    Credit {
        /// The source shard, which debited the source account.
        origin: ShardId,
        /// The transfer's sequence number on `origin`: resent credits are recognised by it.
        seq: u64,
        /// The account to credit, on this shard.
        to: AccountId,
        /// The amount debited on `origin`, in minor units.
        amount_minor: u64,
    },
    /// The target shard's answer to credit `seq`: `refused` is `None` when credited.
    Settle {
        /// The transfer's sequence number on this (the source) shard.
        seq: u64,
        /// Why the target refused the credit (the source is refunded), or `None`.
        refused: Option<Reason>,
    },
    /// Part of an epoch: roll accounts `start .. end` of `region` to business day `day`.
    Roll {
        /// The region whose accounts are rolled; the others in the range are skipped.
        region: RegionId,
        /// The business day rolled to (days since 1970-01-01 of its local date).
        day: Day,
        /// The first local account index of the chunk.
        start: u32,
        /// One past the last local account index of the chunk.
        end: u32,
    },
    /// The region's rules from now on (logged at start-up when the configuration changed).
    SetRules {
        /// The region whose rules change.
        region: RegionId,
        /// Its rules from this input on.
        rules: Rules,
    },
    /// The region's `hold_expiry_days` (§12) for holds authorized from now on (logged at
    /// start-up when the configuration changed). An input of its own, not a field of
    /// [`Rules`], so that logs and snapshots written before holds existed still decode.
    SetHoldExpiry {
        /// The region whose rule changes.
        region: RegionId,
        /// Business days an open hold lives, `1 ..= HOLD_EXPIRY_DAYS_MAX`.
        days: u16,
    },
    /// The end of `region`'s epoch to `day`: every chunk of it was durable on every shard.
    /// Changes nothing; logged so that a change-stream reader sees the epoch end after its
    /// last roll, in the shard's order (§13's `EPOCH`). Last, so that older logs decode.
    Epoch {
        /// The region whose epoch completed.
        region: RegionId,
        /// The business day it rolled to.
        day: Day,
    },
}

/// What the caller must do once the input's effects are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Nobody waits for an answer.
    Nothing,
    /// Answer the client with this outcome.
    Now(Outcome),
    /// Answer when outgoing transfer `seq` settles.
    Parked {
        /// The transfer's sequence number on this shard.
        seq: u64,
    },
    /// Transfer `seq` settled: answer everyone parked on it.
    Settled {
        /// The transfer's sequence number on this shard.
        seq: u64,
        /// Its final outcome: `Done`, or the target's decline after the refund.
        outcome: Outcome,
    },
    /// Logged for the auditor; nobody on this shard waits for it (a credit leg).
    Recorded(Outcome),
}

/// The result of applying one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Who to answer, and with what, once the input is durable.
    pub reply: Reply,
    /// Whether the state changed, so the input must be logged.
    pub changed: bool,
    /// An input for another shard, to send once this one is durable.
    pub message: Option<(ShardId, Input)>,
    /// A command id's record, made or completed by this input, to write with its batch.
    pub remember: Option<(CommandId, IdempotencyRecord)>,
    /// What a command changed lazily before deciding, which its outcome does not say: the
    /// savings interest due on the accounts it touched and the holds due on the account it
    /// spends from (§5, §12). Logged with the input, so that the change stream shows them
    /// as `INTEREST` and `EXPIRE` entries before it (§13); replay must find them again.
    pub lazy: Rolled,
}

impl Applied {
    fn new(reply: Reply, changed: bool, message: Option<(ShardId, Input)>) -> Applied {
        Applied { reply, changed, message, remember: None, lazy: Rolled::default() }
    }

    fn read(outcome: Outcome) -> Applied {
        Applied::new(Reply::Now(outcome), false, None)
    }

    pub(crate) fn changed(outcome: Outcome) -> Applied {
        Applied::new(Reply::Now(outcome), true, None)
    }

    fn unchanged() -> Applied {
        Applied::new(Reply::Nothing, false, None)
    }

    /// The outcome written to the log for this input, if any.
    pub fn logged_outcome(&self) -> Option<&Outcome> {
        match &self.reply {
            Reply::Now(outcome) | Reply::Settled { outcome, .. } | Reply::Recorded(outcome) => {
                Some(outcome)
            }
            Reply::Nothing | Reply::Parked { .. } => None,
        }
    }
}

/// What `apply` reads besides the state, and where it notes what it changed lazily.
pub struct Env<'a> {
    /// The engine's regions: their zones and roll times give each input's business day.
    pub regions: &'a Regions,
    /// This shard's cache of each region's current business day.
    pub calendar: &'a mut Calendar,
    /// What the input being applied changed lazily so far ([`Applied::lazy`]); empty
    /// between inputs.
    pub(crate) lazy: Rolled,
}

impl<'a> Env<'a> {
    /// The environment of a shard's inputs under `regions`, with its `calendar`.
    pub fn new(regions: &'a Regions, calendar: &'a mut Calendar) -> Env<'a> {
        Env { regions, calendar, lazy: Rolled::default() }
    }
}

/// Applies `input`, stamped `ts_ms` at ingress, to `state`.
pub fn apply(state: &mut ShardState, env: &mut Env<'_>, ts_ms: i64, input: &Input) -> Applied {
    // A shard's time never goes backwards, whatever order stamps arrive in.
    let now_ms = state.clock_ms.max(ts_ms);
    state.clock_ms = now_ms;
    env.lazy = Rolled::default();
    let mut applied = decide_input(state, env, now_ms, input);
    // Only a changed (so logged) input may have changed something lazily.
    debug_assert!(applied.changed || env.lazy.is_empty(), "{input:?}");
    applied.lazy = std::mem::take(&mut env.lazy);
    applied
}

fn decide_input(state: &mut ShardState, env: &mut Env<'_>, now_ms: i64, input: &Input) -> Applied {
    match input {
        Input::Client(request) => apply_request(state, env, now_ms, request),
        Input::Credit { origin, seq, to, amount_minor } => {
            apply_credit(state, env, now_ms, *origin, *seq, *to, *amount_minor)
        }
        Input::Settle { seq, refused } => apply_settle(state, env, *seq, *refused),
        Input::Roll { region, day, start, end } => {
            let rolled = roll(state, *region, *day, *start, *end);
            // Logged with what it changed, for the change stream; a roll that changed no
            // balance and no hold logs nothing more, as rolls did before (§13).
            let reply = match rolled.is_empty() {
                true => Reply::Nothing,
                false => Reply::Recorded(Outcome::Rolled(rolled)),
            };
            Applied::new(reply, true, None)
        }
        Input::SetRules { region, rules } => {
            let index = usize::from(*region);
            if state.rules.len() <= index {
                state.rules.resize(index + 1, None);
            }
            state.rules[index] = Some(rules.clone());
            Applied::new(Reply::Nothing, true, None)
        }
        Input::SetHoldExpiry { region, days } => {
            state.holds.set_expiry_days(*region, *days);
            Applied::new(Reply::Nothing, true, None)
        }
        // Logged as a mark (so "changed"): replaying it changes nothing either.
        Input::Epoch { .. } => Applied::new(Reply::Nothing, true, None),
    }
}

fn apply_request(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    request: &Request,
) -> Applied {
    let command = &request.command;
    let mut applied = decide(state, env, now_ms, command);
    // The shard looked the id up before applying (`crate::idempotency::check`): a command
    // that reaches here with an id is its first use, and its record is made now.
    let Some(command_id) = request.command_id.as_ref().filter(|_| !command.is_read()) else {
        return applied;
    };
    let remembered = match &applied.reply {
        Reply::Parked { seq } => {
            if let Some(pending) = state.pending.get_mut(seq) {
                pending.command_id = Some(command_id.clone());
            }
            Remembered::Pending { seq: *seq }
        }
        Reply::Now(outcome) => Remembered::Final(outcome.clone()),
        Reply::Nothing | Reply::Settled { .. } | Reply::Recorded(_) => return applied,
    };
    let region = region_of(state, env, command);
    let day = env.calendar.business_day(env.regions, region, now_ms);
    let shard = state.shard;
    let record = IdempotencyRecord {
        command: command.clone(),
        remembered,
        region,
        day,
        shard,
        batch_seq: 0,
    };
    applied.remember = Some((command_id.clone(), record));
    applied
}

/// The region whose idempotency retention applies to `command` (§6): its account's (a
/// transfer's source's), or the first region when the command names nothing known.
fn region_of(state: &ShardState, env: &Env<'_>, command: &Command) -> RegionId {
    known_region_of(state, env, command).unwrap_or(0)
}

/// The region of the profile or account `command` names, if this shard knows it.
fn known_region_of(state: &ShardState, env: &Env<'_>, command: &Command) -> Option<RegionId> {
    match *command {
        Command::OpenProfile { region } => env.regions.get(region).map(|_| region),
        Command::OpenAccount { profile, .. } => {
            local_profile(state, profile).map(|local| state.profiles[local].region)
        }
        Command::AuthorizeIncrement { hold, .. }
        | Command::Capture { hold, .. }
        | Command::CaptureFinal { hold, .. }
        | Command::Void { hold, .. }
        | Command::ReadHold { hold } => authorization::region_of_hold(state, hold),
        _ => command
            .routing_id()
            .and_then(|id| local_account(state, id))
            .map(|local| state.accounts[local].region),
    }
}

fn decide(state: &mut ShardState, env: &mut Env<'_>, now_ms: i64, command: &Command) -> Applied {
    if !command.amounts_are_valid() {
        // Declined here rather than at the engine's door, so that it counts in the region
        // of the account it names, like every other decline (§10).
        let region = known_region_of(state, env, command);
        return decline(state, region, Reason::InvalidAmount, command.amount_minor());
    }
    match *command {
        Command::OpenProfile { region } => open_profile(state, env, region),
        Command::OpenAccount { profile, kind, opening } => {
            open_account(state, env, now_ms, profile, kind, opening)
        }
        Command::Pay { card, amount_minor } => pay(state, env, now_ms, card, amount_minor),
        Command::Transfer { from, to, amount_minor } => {
            transfer(state, env, now_ms, from, to, amount_minor)
        }
        Command::Deposit { account, amount_minor } => {
            deposit(state, env, now_ms, account, amount_minor)
        }
        Command::SetCeiling { card, ceiling_minor } => {
            change_card(state, card, |c| c.ceiling_minor = ceiling_minor)
        }
        Command::Block { card } => change_card(state, card, |c| c.status = CardStatus::Blocked),
        Command::Unblock { card } => change_card(state, card, |c| c.status = CardStatus::Active),
        Command::ReadAccount { account } => Applied::read(read_account(state, account)),
        Command::ReadCard { card } => Applied::read(read_card(state, env, now_ms, card)),
        Command::ReadProfile { profile } => Applied::read(read_profile(state, profile)),
        Command::Authorize { card, amount_minor } => {
            authorization::authorize(state, env, now_ms, card, amount_minor)
        }
        Command::AuthorizeIncrement { hold, amount_minor } => {
            authorization::increment(state, env, now_ms, hold, amount_minor)
        }
        Command::Capture { hold, amount_minor } => {
            authorization::capture(state, env, now_ms, hold, amount_minor, false)
        }
        Command::CaptureFinal { hold, amount_minor } => {
            authorization::capture(state, env, now_ms, hold, amount_minor, true)
        }
        Command::Void { hold, amount_minor } => {
            authorization::void(state, env, now_ms, hold, amount_minor)
        }
        Command::Refund { card, amount_minor } => {
            authorization::refund(state, env, now_ms, card, amount_minor)
        }
        Command::ReadHold { hold } => {
            Applied::read(authorization::read_hold(state, env, now_ms, hold))
        }
        Command::ReadBalanceDetail { account } => {
            Applied::read(authorization::read_balance_detail(state, env, now_ms, account))
        }
        Command::ReadReleases { card } => {
            Applied::read(authorization::read_releases(state, env, now_ms, card))
        }
    }
}

/// Counts a declined command and returns its outcome.
pub(crate) fn decline(
    state: &mut ShardState,
    region: Option<RegionId>,
    reason: Reason,
    amount_minor: u64,
) -> Applied {
    if reason.counted() {
        let counters = state.counters_of(region);
        counters.declined[reason.index()] += 1;
        counters.declined_minor[reason.index()] += u128::from(amount_minor);
    }
    Applied::changed(Outcome::Declined(reason))
}

/// How many client commands ahead of the one being applied a shard prefetches: far enough
/// to cover a miss to memory, near enough that the lines are still cached when used (the
/// `pay` bench's baseline sweeps 0, 4, 8, 16 and 32: 8 and 16 cut a pay on a shard of a
/// million accounts from about 140 ns to about 40 ns; 32 is worse than 8).
pub const PREFETCH_AHEAD: usize = 16;

/// Asks the CPU to start loading the account `request` will touch, without waiting for it.
/// A shard of millions of accounts misses the cache on nearly every command (the account
/// table is far larger than the cache); hinting a few commands ahead overlaps those misses
/// instead of paying them one after another. Only a hint: it reads and changes nothing, so
/// `apply` stays pure and decisions do not depend on it.
pub fn prefetch(state: &ShardState, request: &Request) {
    // A profile's id is not an account's: only commands routed by an account are hinted.
    let by_profile =
        matches!(request.command, Command::OpenAccount { .. } | Command::ReadProfile { .. });
    let Some(id) = request.command.routing_id().filter(|_| !by_profile) else { return };
    if let Some(local) = local_account(state, id) {
        prefetch_value(&state.accounts[local]);
    }
}

/// Hints the cache lines holding `value` (an account spans two lines at most).
fn prefetch_value<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let first = (value as *const T).cast::<i8>();
        let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
        // SAFETY: a prefetch never dereferences its address, cannot fault and changes no
        // memory; SSE, the only feature it needs, is part of the x86_64 baseline. Both
        // addresses are inside `value` anyway.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            _mm_prefetch::<_MM_HINT_T0>(last);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The local index of `id` if this shard owns it and it exists.
pub(crate) fn local_account(state: &ShardState, id: AccountId) -> Option<usize> {
    local_index(state, id, state.accounts.len())
}

/// The local index of profile `id` if this shard owns it and it exists.
fn local_profile(state: &ShardState, id: ProfileId) -> Option<usize> {
    local_index(state, id, state.profiles.len())
}

/// The index of `id` in a table of `len` entries of this shard, if it is there.
fn local_index(state: &ShardState, id: u64, len: usize) -> Option<usize> {
    if shard_of(id, state.shards) != state.shard {
        return None;
    }
    let local = usize::try_from(local_of(id, state.shards)).ok()?;
    (local < len).then_some(local)
}

fn open_profile(state: &mut ShardState, env: &mut Env<'_>, region: RegionId) -> Applied {
    if env.regions.get(region).is_none() {
        return decline(state, None, Reason::UnknownRegion, 0);
    }
    if state.profiles.len() >= SHARD_ENTRIES_MAX {
        return decline(state, Some(region), Reason::ShardFull, 0);
    }
    let local = state.profiles.len() as u64;
    let Some(profile) = global_of(local, state.shard, state.shards) else {
        return decline(state, Some(region), Reason::UnknownProfile, 0);
    };
    state.profiles.push(Profile { region, first_account: NO_ACCOUNT, last_account: NO_ACCOUNT });
    state.counters_of(Some(region)).profiles += 1;
    Applied::changed(Outcome::ProfileOpened { profile })
}

fn open_account(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    profile: u64,
    kind: AccountKind,
    opening: Option<Opening>,
) -> Applied {
    let Some(profile_local) = local_profile(state, profile) else {
        return decline(state, None, Reason::UnknownProfile, 0);
    };
    let region_id = state.profiles[profile_local].region;
    let Some(initial_deposit_minor) = state.rules_of(region_id).map(|r| r.initial_deposit_minor)
    else {
        return decline(state, None, Reason::UnknownRegion, 0);
    };
    if state.accounts.len() >= SHARD_ENTRIES_MAX {
        return decline(state, Some(region_id), Reason::ShardFull, 0);
    }
    let local = state.accounts.len() as u32;
    let Some(account) = global_of(u64::from(local), state.shard, state.shards) else {
        return decline(state, Some(region_id), Reason::UnknownProfile, 0);
    };
    let deposit_minor = opening.map_or(initial_deposit_minor, |o| o.deposit_minor);
    let day = env.calendar.business_day(env.regions, region_id, now_ms);
    let instrument = match kind {
        AccountKind::Checking => Instrument::Card(Card {
            status: CardStatus::Active,
            ceiling_minor: opening.map_or(0, |o| o.ceiling_minor),
            window: Window::new(day),
        }),
        AccountKind::Savings => Instrument::Savings(Savings::opened(half_month_of(day))),
    };
    state.accounts.push(Account {
        balance_minor: deposit_minor,
        profile: profile_local as u32,
        next_in_profile: NO_ACCOUNT,
        region: region_id,
        instrument,
    });
    let owner = &mut state.profiles[profile_local];
    match owner.last_account {
        NO_ACCOUNT => owner.first_account = local,
        last => state.accounts[last as usize].next_in_profile = local,
    }
    state.profiles[profile_local].last_account = local;
    state.totals.balances_minor += u128::from(deposit_minor);
    state.totals.initial_deposits_minor += u128::from(deposit_minor);
    let counters = state.counters_of(Some(region_id));
    counters.balances_minor += u128::from(deposit_minor);
    let card = match kind {
        AccountKind::Checking => {
            counters.checking_accounts += 1;
            Some(account)
        }
        AccountKind::Savings => {
            counters.savings_accounts += 1;
            None
        }
    };
    Applied::changed(Outcome::AccountOpened { account, card })
}

/// A card's seven-day ceiling: its own, or its region's default under `rules`.
pub fn ceiling_of(card: &Card, rules: &[Option<Rules>], region: RegionId) -> u64 {
    match card.ceiling_minor {
        0 => rules
            .get(usize::from(region))
            .and_then(Option::as_ref)
            .map_or(0, |r| r.default_card_ceiling_minor),
        own => own,
    }
}

fn pay(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    card: u64,
    amount_minor: u64,
) -> Applied {
    let Some(local) = local_account(state, card) else {
        return decline(state, None, Reason::UnknownCard, amount_minor);
    };
    let account = &mut state.accounts[local];
    let region = account.region;
    let Instrument::Card(card) = &mut account.instrument else {
        return decline(state, Some(region), Reason::UnknownCard, amount_minor);
    };
    if card.status == CardStatus::Blocked {
        return decline(state, Some(region), Reason::CardBlocked, amount_minor);
    }
    card.window.roll_to(env.calendar.business_day(env.regions, region, now_ms));
    // Due expiries first (§12): they release money and may give room back.
    authorization::expire_account(state, env, now_ms, local);
    let held_minor = state.holds.held_of(local as u32);
    let account = &mut state.accounts[local];
    let Instrument::Card(card) = &mut account.instrument else {
        return decline(state, Some(region), Reason::UnknownCard, amount_minor);
    };
    let spent_minor = card.window.spent_minor();
    if spent_minor + amount_minor > ceiling_of(card, &state.rules, region) {
        return decline(state, Some(region), Reason::CeilingExceeded, amount_minor);
    }
    // Payments spend what is available: held money is reserved (§12).
    let available_minor = account.balance_minor.saturating_sub(held_minor);
    if available_minor < amount_minor {
        return decline(state, Some(region), Reason::InsufficientFunds, amount_minor);
    }
    let balance_minor = account.balance_minor - amount_minor;
    card.window.record(amount_minor);
    account.balance_minor = balance_minor;
    state.totals.balances_minor -= u128::from(amount_minor);
    state.totals.card_payments_minor += u128::from(amount_minor);
    let counters = state.counters_of(Some(region));
    counters.balances_minor -= u128::from(amount_minor);
    counters.payments_approved += 1;
    counters.payments_approved_minor += u128::from(amount_minor);
    Applied::changed(Outcome::Approved {
        balance_minor,
        spent_7d_minor: spent_minor + amount_minor,
    })
}

/// Brings a savings account's interest up to `now_ms`, crediting any posting, which it
/// notes in `env.lazy` (the command's outcome does not say it).
fn touch_savings(state: &mut ShardState, env: &mut Env<'_>, now_ms: i64, local: usize) {
    let region = state.accounts[local].region;
    if !matches!(state.accounts[local].instrument, Instrument::Savings(_)) {
        return;
    }
    let day = env.calendar.business_day(env.regions, region, now_ms);
    let posted_minor = advance_savings(state, local, half_month_of(day));
    if posted_minor > 0 {
        env.lazy.interest.push(posted(state, local, posted_minor));
    }
}

/// `posted_minor` of interest just posted to savings account `local`, as logged.
fn posted(state: &ShardState, local: usize, posted_minor: u64) -> Posted {
    Posted {
        account: global_of(local as u64, state.shard, state.shards).unwrap_or(u64::MAX),
        amount_minor: posted_minor,
        balance_minor: state.accounts[local].balance_minor,
        region: Some(state.accounts[local].region),
    }
}

/// Posts the interest savings account `local` earned up to `half_month`; returns it.
fn advance_savings(state: &mut ShardState, local: usize, half_month: i32) -> u64 {
    let region = state.accounts[local].region;
    let rate_bp = state.rules_of(region).map_or(0, |r| r.savings_rate_bp);
    let account = &mut state.accounts[local];
    let Instrument::Savings(savings) = &mut account.instrument else {
        return 0;
    };
    if savings.half_month() >= half_month {
        return 0;
    }
    let posted_minor = savings.advance_to(half_month, account.balance_minor, rate_bp);
    if posted_minor > 0 {
        account.balance_minor += posted_minor;
        state.totals.balances_minor += u128::from(posted_minor);
        state.totals.interest_minor += u128::from(posted_minor);
        state.counters_of(Some(region)).balances_minor += u128::from(posted_minor);
    }
    posted_minor
}

/// Takes `amount_minor` from account `local`, or says why not.
pub(crate) fn debit(
    state: &mut ShardState,
    local: usize,
    amount_minor: u64,
) -> Result<u64, Reason> {
    let account = &mut state.accounts[local];
    let balance =
        account.balance_minor.checked_sub(amount_minor).ok_or(Reason::InsufficientFunds)?;
    account.balance_minor = balance;
    if let Instrument::Savings(savings) = &mut account.instrument {
        savings.record_debit(amount_minor);
    }
    let region = account.region;
    state.totals.balances_minor -= u128::from(amount_minor);
    state.counters_of(Some(region)).balances_minor -= u128::from(amount_minor);
    Ok(balance)
}

/// Adds `amount_minor` to account `local`, or says why not (it would overflow).
pub(crate) fn credit(
    state: &mut ShardState,
    local: usize,
    amount_minor: u64,
) -> Result<u64, Reason> {
    let account = &mut state.accounts[local];
    let balance = account.balance_minor.checked_add(amount_minor).ok_or(Reason::InvalidAmount)?;
    account.balance_minor = balance;
    let region = account.region;
    state.totals.balances_minor += u128::from(amount_minor);
    state.counters_of(Some(region)).balances_minor += u128::from(amount_minor);
    Ok(balance)
}

fn transfer(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    from: AccountId,
    to: AccountId,
    amount_minor: u64,
) -> Applied {
    let Some(from_local) = local_account(state, from) else {
        return decline(state, None, Reason::UnknownAccount, amount_minor);
    };
    let region = Some(state.accounts[from_local].region);
    if from == to {
        return decline(state, region, Reason::SameAccount, amount_minor);
    }
    // Funds are checked before the target exists: for a target on another shard only that
    // shard knows, and the order must not depend on where the target lives.
    touch_savings(state, env, now_ms, from_local);
    authorization::expire_account(state, env, now_ms, from_local);
    if authorization::available_of(state, from_local) < amount_minor {
        return decline(state, region, Reason::InsufficientFunds, amount_minor);
    }
    if shard_of(to, state.shards) != state.shard {
        return transfer_out(state, from_local, to, amount_minor, now_ms);
    }
    let Some(to_local) = local_account(state, to) else {
        return decline(state, region, Reason::UnknownAccount, amount_minor);
    };
    touch_savings(state, env, now_ms, to_local);
    if state.accounts[to_local].balance_minor.checked_add(amount_minor).is_none() {
        return decline(state, region, Reason::InvalidAmount, amount_minor);
    }
    let result = debit(state, from_local, amount_minor)
        .and_then(|balance| credit(state, to_local, amount_minor).map(|_| balance));
    match result {
        Ok(balance_minor) => Applied::changed(Outcome::Done { balance_minor }),
        Err(_) => unreachable!("funds and room were checked above"),
    }
}

/// The first leg of a transfer to another shard: debit and remember it as in flight.
fn transfer_out(
    state: &mut ShardState,
    from_local: usize,
    to: AccountId,
    amount_minor: u64,
    now_ms: i64,
) -> Applied {
    let Ok(balance_after_minor) = debit(state, from_local, amount_minor) else {
        unreachable!("funds were checked by the caller")
    };
    let seq = state.next_transfer_seq;
    state.next_transfer_seq += 1;
    state.totals.transfers_out_minor += u128::from(amount_minor);
    state.pending.insert(
        seq,
        PendingTransfer {
            from_local: from_local as u32,
            to,
            amount_minor,
            balance_after_minor,
            command_id: None,
            ts_ms: now_ms,
        },
    );
    let credit = Input::Credit { origin: state.shard, seq, to, amount_minor };
    Applied::new(Reply::Parked { seq }, true, Some((shard_of(to, state.shards), credit)))
}

fn apply_credit(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    origin: ShardId,
    seq: u64,
    to: AccountId,
    amount_minor: u64,
) -> Applied {
    let Some(seen) = state.credits_seen.get_mut(usize::from(origin)) else {
        return Applied::unchanged();
    };
    // Credits from one origin arrive in increasing sequence order (with gaps: the origin
    // numbers its transfers to every shard in one sequence), so a number below the next
    // expected one was applied already.
    if seq < *seen {
        // A credit resent after a restart: answer as the first time, change nothing.
        let refused = state.refused_credits.get(&(origin, seq)).copied();
        let settle = Input::Settle { seq, refused };
        return Applied::new(Reply::Nothing, false, Some((origin, settle)));
    }
    *seen = seq + 1;
    let result = match local_account(state, to) {
        None => Err(Reason::UnknownAccount),
        Some(local) => {
            touch_savings(state, env, now_ms, local);
            credit(state, local, amount_minor)
        }
    };
    let outcome = match result {
        Ok(balance_minor) => {
            state.totals.transfers_in_minor += u128::from(amount_minor);
            Outcome::Done { balance_minor }
        }
        Err(reason) => {
            state.refused_credits.insert((origin, seq), reason);
            Outcome::Declined(reason)
        }
    };
    let settle = Input::Settle { seq, refused: outcome.declined() };
    Applied::new(Reply::Recorded(outcome), true, Some((origin, settle)))
}

fn apply_settle(
    state: &mut ShardState,
    env: &mut Env<'_>,
    seq: u64,
    refused: Option<Reason>,
) -> Applied {
    let Some(pending) = state.pending.get(&seq) else {
        // Settled already: a settle resent after a restart.
        return Applied::unchanged();
    };
    let local = pending.from_local as usize;
    let amount_minor = pending.amount_minor;
    let outcome = match refused {
        None => Outcome::Done { balance_minor: pending.balance_after_minor },
        Some(reason) => {
            if credit(state, local, amount_minor).is_err() {
                // The source cannot take its money back without overflowing: it stays in
                // flight (conservation holds) until a later settle can refund it.
                return Applied::unchanged();
            }
            state.totals.refunds_minor += u128::from(amount_minor);
            let region = Some(state.accounts[local].region);
            if reason.counted() {
                let counters = state.counters_of(region);
                counters.declined[reason.index()] += 1;
                counters.declined_minor[reason.index()] += u128::from(amount_minor);
            }
            Outcome::Declined(reason)
        }
    };
    let mut applied = Applied::new(Reply::Settled { seq, outcome: outcome.clone() }, true, None);
    if let Some(pending) = state.pending.remove(&seq) {
        // The command's record, pending until now, becomes final: retries get the outcome.
        if let Some(command_id) = pending.command_id.clone() {
            let final_outcome = Remembered::Final(outcome);
            let record =
                IdempotencyRecord::of_transfer(state, env.regions, &pending, final_outcome);
            applied.remember = Some((command_id, record));
        }
    }
    applied
}

fn deposit(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    account: AccountId,
    amount_minor: u64,
) -> Applied {
    let Some(local) = local_account(state, account) else {
        return decline(state, None, Reason::UnknownAccount, amount_minor);
    };
    touch_savings(state, env, now_ms, local);
    match credit(state, local, amount_minor) {
        Ok(balance_minor) => {
            state.totals.deposits_minor += u128::from(amount_minor);
            Applied::changed(Outcome::Done { balance_minor })
        }
        Err(reason) => {
            let region = Some(state.accounts[local].region);
            decline(state, region, reason, amount_minor)
        }
    }
}

fn change_card(state: &mut ShardState, card: u64, change: impl FnOnce(&mut Card)) -> Applied {
    let found =
        local_account(state, card).and_then(|local| match &mut state.accounts[local].instrument {
            Instrument::Card(card) => Some(card),
            Instrument::Savings(_) => None,
        });
    match found {
        Some(card) => {
            change(card);
            Applied::changed(Outcome::Updated)
        }
        None => decline(state, None, Reason::UnknownCard, 0),
    }
}

fn read_account(state: &ShardState, account: AccountId) -> Outcome {
    let Some(local) = local_account(state, account) else {
        return Outcome::Declined(Reason::UnknownAccount);
    };
    let entry = &state.accounts[local];
    let profile =
        global_of(u64::from(entry.profile), state.shard, state.shards).unwrap_or(u64::MAX);
    let (kind, card) = match entry.instrument {
        Instrument::Card(_) => (AccountKind::Checking, Some(account)),
        Instrument::Savings(_) => (AccountKind::Savings, None),
    };
    Outcome::Account(AccountView {
        account,
        profile,
        kind,
        balance_minor: entry.balance_minor,
        card,
    })
}

fn read_card(state: &ShardState, env: &mut Env<'_>, now_ms: i64, card_id: u64) -> Outcome {
    let Some(local) = local_account(state, card_id) else {
        return Outcome::Declined(Reason::UnknownCard);
    };
    let entry = &state.accounts[local];
    let Instrument::Card(card) = &entry.instrument else {
        return Outcome::Declined(Reason::UnknownCard);
    };
    // A read does not change state: roll a copy of the window (and expire copies of the
    // holds due, §12).
    let day = env.calendar.business_day(env.regions, entry.region, now_ms);
    let window = authorization::window_as_of(state, local, &card.window, day);
    let ceiling_minor = ceiling_of(card, &state.rules, entry.region);
    let spent_7d_minor = window.spent_minor();
    Outcome::Card(CardView {
        card: card_id,
        account: card_id,
        status: card.status,
        ceiling_minor,
        spent_7d_minor,
        remaining_minor: ceiling_minor.saturating_sub(spent_7d_minor),
    })
}

fn read_profile(state: &ShardState, profile: u64) -> Outcome {
    let Some(local) = local_profile(state, profile) else {
        return Outcome::Declined(Reason::UnknownProfile);
    };
    let entry = &state.profiles[local];
    let mut accounts = Vec::new();
    let mut next = entry.first_account;
    while next != NO_ACCOUNT {
        accounts.push(global_of(u64::from(next), state.shard, state.shards).unwrap_or(u64::MAX));
        next = state.accounts[next as usize].next_in_profile;
    }
    Outcome::Profile(ProfileView { profile, region: entry.region, accounts })
}

/// Rolls accounts `start .. end` of `region` to `day`: card windows, savings interest and
/// hold expiry; returns the interest posted and the holds expired.
fn roll(state: &mut ShardState, region: RegionId, day: Day, start: u32, end: u32) -> Rolled {
    let end = (end as usize).min(state.accounts.len());
    let half_month = half_month_of(day);
    let mut rolled = Rolled::default();
    for local in (start as usize)..end {
        if state.accounts[local].region != region {
            continue;
        }
        match &mut state.accounts[local].instrument {
            Instrument::Card(card) => card.window.roll_to(day),
            Instrument::Savings(_) => {
                let posted_minor = advance_savings(state, local, half_month);
                if posted_minor > 0 {
                    rolled.interest.push(posted(state, local, posted_minor));
                }
            }
        }
    }
    let range = (start, end as u32);
    authorization::expire_chunk(state, region, day, range, &mut rolled.expired);
    if let Some(rolled) = state.rolled_day.get_mut(usize::from(region)) {
        *rolled = (*rolled).max(day);
    }
    rolled
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty shard that has logged eu-west's rules, as every shard does at start-up.
    fn eu_west_shard() -> (Regions, RegionId, ShardState, Calendar) {
        let regions = Regions::builtin();
        let region = regions.id_of("eu-west").unwrap();
        let mut state = ShardState::new(0, 1, regions.len());
        let mut calendar = Calendar::new(&regions);
        let rules = regions.get(region).unwrap().rules.clone();
        let mut env = Env::new(&regions, &mut calendar);
        apply(&mut state, &mut env, 0, &Input::SetRules { region, rules });
        (regions, region, state, calendar)
    }

    #[test]
    fn prefetch_is_only_a_hint() {
        let (regions, region, mut state, mut calendar) = eu_west_shard();
        let mut env = Env::new(&regions, &mut calendar);
        let open = Request::new(Command::OpenProfile { region });
        apply(&mut state, &mut env, 0, &Input::Client(open));
        let kind = AccountKind::Checking;
        let open = Request::new(Command::OpenAccount { profile: 0, kind, opening: None });
        apply(&mut state, &mut env, 0, &Input::Client(open));
        assert_eq!(state.accounts.len(), 1);
        let before = state.clone();
        for card in [0, 1, u64::MAX] {
            prefetch(&state, &Request::new(Command::Pay { card, amount_minor: 1 }));
        }
        prefetch(&state, &Request::new(Command::ReadProfile { profile: 0 }));
        assert_eq!(state, before);
    }

    #[test]
    fn interest_a_command_posts_first_is_told_with_its_balance_after() {
        let (regions, region, mut state, mut calendar) = eu_west_shard();
        let mut env = Env::new(&regions, &mut calendar);
        let start_ms = 1_799_064_000_000; // 2027-01-04T12:00Z
        let mut client = |state: &mut ShardState, ts_ms: i64, command: Command| {
            apply(state, &mut env, ts_ms, &Input::Client(Request::new(command)))
        };
        client(&mut state, start_ms, Command::OpenProfile { region });
        let kind = AccountKind::Savings;
        let open = Command::OpenAccount { profile: 0, kind, opening: None };
        assert!(client(&mut state, start_ms, open).lazy.is_empty());
        let opened_minor = state.accounts[0].balance_minor;
        // Past the next 1 January: the year's interest is due at the account's next command.
        let later_ms = start_ms + 370 * 86_400_000;
        let deposit = Command::Deposit { account: 0, amount_minor: 1 };
        let applied = client(&mut state, later_ms, deposit.clone());
        let [posted] = applied.lazy.interest[..] else { panic!("{:?}", applied.lazy) };
        assert!(posted.amount_minor > 0 && applied.lazy.expired.is_empty());
        assert_eq!((posted.account, posted.balance_minor), (0, opened_minor + posted.amount_minor));
        let done = Outcome::Done { balance_minor: posted.balance_minor + 1 };
        assert_eq!(applied.reply, Reply::Now(done));
        assert!(client(&mut state, later_ms, deposit).lazy.is_empty(), "posted once");
    }

    #[test]
    fn a_full_shard_declines_opens_and_changes_nothing() {
        // SHARD_ENTRIES_MAX is 8 in this crate's tests (crate::limits).
        let (regions, region, mut state, mut calendar) = eu_west_shard();
        let mut env = Env::new(&regions, &mut calendar);
        let mut client = |state: &mut ShardState, command: Command| {
            apply(state, &mut env, 0, &Input::Client(Request::new(command))).reply
        };
        for profile in 0..SHARD_ENTRIES_MAX as u64 {
            let opened = client(&mut state, Command::OpenProfile { region });
            assert_eq!(opened, Reply::Now(Outcome::ProfileOpened { profile }));
        }
        let full = Reply::Now(Outcome::Declined(Reason::ShardFull));
        assert_eq!(client(&mut state, Command::OpenProfile { region }), full);
        assert_eq!(state.profiles.len(), SHARD_ENTRIES_MAX);
        let kind = AccountKind::Savings;
        for _ in 0..SHARD_ENTRIES_MAX {
            let open = Command::OpenAccount { profile: 0, kind, opening: None };
            assert!(matches!(client(&mut state, open), Reply::Now(Outcome::AccountOpened { .. })));
        }
        let before = state.clone();
        let open = Command::OpenAccount { profile: 1, kind, opening: None };
        assert_eq!(client(&mut state, open), full);
        assert_eq!(state, before, "a full shard changes nothing, not even a counter");
        assert_eq!(state.check(), Ok(()));
        assert_eq!(Reason::ShardFull.as_str(), "SHARD_FULL");
    }
}
