//! The decisions on card holds (§12): authorize, increment, capture, void, refund, the
//! reads, and expiry, lazy (before every command on the account) and eager (an epoch's
//! chunk). Called by [`crate::apply`]; pure like it.
//!
//! Lazy and eager expiry are one function ([`Holds::expire_due`]) run at the business day
//! of the input: the epoch runs it at the day it rolls to, a command at its own day, and
//! running it again at the same day finds nothing due. A read changes no state, so it
//! expires copies: what it shows is what a command at the same instant would see.

use crate::apply::{ceiling_of, credit, debit, decline, local_account, Applied, Env};
use crate::calendar::Day;
use crate::command::{
    BalanceDetail, CardStatus, ExpiredHold, HoldView, Outcome, Reason, RegionId, Release,
};
use crate::holds::{Hold, HoldStatus, HOLDS_PER_ACCOUNT_MAX, HOLDS_PER_SHARD_MAX};
use crate::ids::{global_of, local_of, shard_of, CardId, HoldId};
use crate::state::{Account, Instrument, ShardState};
use crate::table::Table;
use crate::window::{Window, WINDOW_DAYS};

/// A hold found for a command: its sequence number, its account and the account's
/// region and current business day.
struct Found {
    seq: u64,
    local: usize,
    region: RegionId,
    day: Day,
}

/// The hold `hold` names, as of `now_ms`, or `UNKNOWN_HOLD` (also once it is forgotten:
/// the epoch removes it at that day's roll, a lookup applies the same rule).
fn find(state: &ShardState, env: &mut Env<'_>, now_ms: i64, hold: HoldId) -> Result<Found, Reason> {
    if shard_of(hold, state.shards) != state.shard {
        return Err(Reason::UnknownHold);
    }
    let seq = local_of(hold, state.shards);
    let entry = state.holds.get(seq).ok_or(Reason::UnknownHold)?;
    let local = entry.account() as usize;
    let region = state.accounts.get(local).ok_or(Reason::UnknownHold)?.region;
    let day = env.calendar.business_day(env.regions, region, now_ms);
    if day >= entry.forgotten_day() {
        return Err(Reason::UnknownHold);
    }
    Ok(Found { seq, local, region, day })
}

/// The region of the account hold `hold` holds money of, if this shard remembers it.
pub(crate) fn region_of_hold(state: &ShardState, hold: HoldId) -> Option<RegionId> {
    if shard_of(hold, state.shards) != state.shard {
        return None;
    }
    let entry = state.holds.get(local_of(hold, state.shards))?;
    state.accounts.get(entry.account() as usize).map(|account| account.region)
}

/// Brings account `local`'s card window and holds to business day `day`: rolls the
/// window, then expires the holds due (releasing into the rolled window), each noted in
/// `expired` as logged: lazily for a command ([`Env`]'s part of [`Applied::lazy`]),
/// eagerly for an epoch's roll.
fn bring_to(state: &mut ShardState, local: usize, day: Day, expired: &mut Vec<ExpiredHold>) {
    let (shard, shards) = (state.shard, state.shards);
    let card = global_of(local as u64, shard, shards).unwrap_or(u64::MAX);
    let mut window = window_in(&mut state.accounts, local);
    if let Some(window) = window.as_deref_mut() {
        window.roll_to(day);
    }
    state.holds.expire_due(local as u32, day, window, |seq, released_minor| {
        let hold = global_of(seq, shard, shards).unwrap_or(u64::MAX);
        expired.push(ExpiredHold { hold, card, released_minor });
    });
}

/// Applies account `local`'s due expiries as of `now_ms` (every command spending the
/// account's money runs it first). Costs one lookup for an account without open holds.
pub(crate) fn expire_account(state: &mut ShardState, env: &mut Env<'_>, now_ms: i64, local: usize) {
    let Some(open) = state.holds.open_of(local as u32) else { return };
    let next_expiry_day = open.next_expiry_day;
    let region = state.accounts[local].region;
    let day = env.calendar.business_day(env.regions, region, now_ms);
    if day >= next_expiry_day {
        bring_to(state, local, day, &mut env.lazy.expired);
    }
}

/// An epoch's part for holds: expires the due holds of `region`'s accounts `start .. end`
/// at `day` (their windows were rolled to `day` just before) and forgets the closed ones
/// past their keeping.
pub(crate) fn expire_chunk(
    state: &mut ShardState,
    region: RegionId,
    day: Day,
    (start, end): (u32, u32),
    expired: &mut Vec<ExpiredHold>,
) {
    for local in state.holds.accounts_in(start, end) {
        if state.accounts.get(local as usize).is_some_and(|a| a.region == region) {
            bring_to(state, local as usize, day, expired);
        }
    }
    let accounts = &state.accounts;
    state.holds.forget(start, end, day, |account| {
        accounts.get(account as usize).is_some_and(|a| a.region == region)
    });
}

/// What account `local` may spend: its balance less what its open holds hold.
pub(crate) fn available_of(state: &ShardState, local: usize) -> u64 {
    // `held <= balance` is an invariant (`ShardState::check`).
    state.accounts[local].balance_minor.saturating_sub(state.holds.held_of(local as u32))
}

/// The card window of account `local` and its ceiling, once the account is brought to
/// `day` (the holds it expires noted in `expired`); `Err` with the decline when the card
/// is missing or blocked.
fn active_card(
    state: &mut ShardState,
    local: usize,
    day: Day,
    expired: &mut Vec<ExpiredHold>,
) -> Result<(u64, u64), Reason> {
    let region = state.accounts[local].region;
    let Instrument::Card(card) = &state.accounts[local].instrument else {
        return Err(Reason::UnknownCard);
    };
    if card.status == CardStatus::Blocked {
        return Err(Reason::CardBlocked);
    }
    bring_to(state, local, day, expired);
    let Instrument::Card(card) = &state.accounts[local].instrument else {
        return Err(Reason::UnknownCard);
    };
    Ok((card.window.spent_minor(), ceiling_of(card, &state.rules, region)))
}

/// Decides `amount_minor` more held on account `local` at `day` like a payment (§12):
/// the card active, `spent_7d + amount <= ceiling`, `amount <= available`. Returns the
/// spending including it.
fn decide_hold(
    state: &mut ShardState,
    env: &mut Env<'_>,
    local: usize,
    day: Day,
    amount_minor: u64,
) -> Result<u64, Reason> {
    let (spent_minor, ceiling_minor) = active_card(state, local, day, &mut env.lazy.expired)?;
    if spent_minor + amount_minor > ceiling_minor {
        return Err(Reason::CeilingExceeded);
    }
    if available_of(state, local) < amount_minor {
        return Err(Reason::InsufficientFunds);
    }
    Ok(spent_minor + amount_minor)
}

/// Counts `amount_minor` in account `local`'s card window (rolled to today already).
fn record(state: &mut ShardState, local: usize, amount_minor: u64) {
    if let Instrument::Card(card) = &mut state.accounts[local].instrument {
        card.window.record(amount_minor);
    }
}

/// The window of account `local` if it is a card's, for releases to give room back to.
/// Takes the accounts table alone, so the hold table can be changed beside it.
fn window_in(accounts: &mut Table<Account>, local: usize) -> Option<&mut Window> {
    match &mut accounts[local].instrument {
        Instrument::Card(card) => Some(&mut card.window),
        Instrument::Savings(_) => None,
    }
}

/// `AUTHORIZE`.
pub(crate) fn authorize(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    card: CardId,
    amount_minor: u64,
) -> Applied {
    let Some(local) = local_account(state, card) else {
        return decline(state, None, Reason::UnknownCard, amount_minor);
    };
    let region = state.accounts[local].region;
    let day = env.calendar.business_day(env.regions, region, now_ms);
    let spent_7d_minor = match decide_hold(state, env, local, day, amount_minor) {
        Ok(spent_minor) => spent_minor,
        Err(reason) => return decline(state, Some(region), reason, amount_minor),
    };
    let open = state.holds.open_of(local as u32).map_or(0, |open| open.holds.len());
    if open >= HOLDS_PER_ACCOUNT_MAX {
        return decline(state, Some(region), Reason::TooManyHolds, amount_minor);
    }
    let hold = global_of(state.holds.next_seq(), state.shard, state.shards);
    let (true, Some(hold)) = (state.holds.len() < HOLDS_PER_SHARD_MAX, hold) else {
        return decline(state, Some(region), Reason::ShardFull, amount_minor);
    };
    let expiry_days = state.holds.expiry_days_of(region);
    record(state, local, amount_minor);
    state.holds.place(local as u32, day, day + Day::from(expiry_days), amount_minor);
    let available_minor = available_of(state, local);
    Applied::changed(Outcome::Authorized { hold, available_minor, spent_7d_minor })
}

/// The hold of `found` once its account is brought to today, if it is still pending.
fn pending(state: &mut ShardState, env: &mut Env<'_>, found: &Found) -> Result<u64, Reason> {
    bring_to(state, found.local, found.day, &mut env.lazy.expired);
    let hold = state.holds.get(found.seq).ok_or(Reason::UnknownHold)?;
    match hold.status() {
        HoldStatus::Pending => Ok(hold.held_minor()),
        HoldStatus::Closed => Err(Reason::HoldClosed),
        HoldStatus::Expired => Err(Reason::HoldExpired),
    }
}

/// `AUTHORIZE.INCREMENT`.
pub(crate) fn increment(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    hold: HoldId,
    amount_minor: u64,
) -> Applied {
    let found = match find(state, env, now_ms, hold) {
        Ok(found) => found,
        Err(reason) => return decline(state, region_of_hold(state, hold), reason, amount_minor),
    };
    let region = Some(found.region);
    let decided = pending(state, env, &found).and_then(|held_minor| {
        let authorized_minor = state.holds.get_open(found.seq).map_or(0, |h| h.authorized_minor);
        // A hold's totals are u64: an increment that would overflow them is refused.
        authorized_minor.checked_add(amount_minor).ok_or(Reason::InvalidAmount)?;
        let spent_minor = decide_hold(state, env, found.local, found.day, amount_minor)?;
        Ok((held_minor, spent_minor))
    });
    let (held_minor, spent_7d_minor) = match decided {
        Ok(decided) => decided,
        Err(reason) => return decline(state, region, reason, amount_minor),
    };
    record(state, found.local, amount_minor);
    state.holds.increment(found.seq, found.day, amount_minor);
    let available_minor = available_of(state, found.local);
    let held_minor = held_minor + amount_minor;
    Applied::changed(Outcome::Incremented { held_minor, available_minor, spent_7d_minor })
}

/// `CAPTURE` (`last` false) and `CAPTURE.FINAL` (`last` true). A capture up to what is
/// held always succeeds, whatever the card's status or window: the money was reserved.
pub(crate) fn capture(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    hold: HoldId,
    amount_minor: u64,
    last: bool,
) -> Applied {
    let found = match find(state, env, now_ms, hold) {
        Ok(found) => found,
        Err(reason) => return decline(state, region_of_hold(state, hold), reason, amount_minor),
    };
    let held_minor = match pending(state, env, &found) {
        Ok(held_minor) if held_minor >= amount_minor => held_minor,
        Ok(_) => return decline(state, Some(found.region), Reason::ExceedsHold, amount_minor),
        Err(reason) => return decline(state, Some(found.region), reason, amount_minor),
    };
    // The account holds at least what its holds hold, so the debit cannot fail.
    let Ok(balance_minor) = debit(state, found.local, amount_minor) else {
        return decline(state, Some(found.region), Reason::InsufficientFunds, amount_minor);
    };
    let window = window_in(&mut state.accounts, found.local);
    state.holds.capture(found.seq, amount_minor, last, window);
    let held_minor = if last { 0 } else { held_minor - amount_minor };
    Applied::changed(Outcome::Captured { balance_minor, held_minor })
}

/// `VOID`: releases `amount_minor`, or all the hold holds (`None`).
pub(crate) fn void(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    hold: HoldId,
    amount_minor: Option<u64>,
) -> Applied {
    let volume_minor = amount_minor.unwrap_or(0);
    let found = match find(state, env, now_ms, hold) {
        Ok(found) => found,
        Err(reason) => return decline(state, region_of_hold(state, hold), reason, volume_minor),
    };
    let (held_minor, released_minor) = match pending(state, env, &found) {
        Ok(held_minor) => match amount_minor {
            None => (held_minor, held_minor),
            Some(amount_minor) if amount_minor <= held_minor => (held_minor, amount_minor),
            Some(_) => {
                return decline(state, Some(found.region), Reason::ExceedsHold, volume_minor)
            }
        },
        Err(reason) => return decline(state, Some(found.region), reason, volume_minor),
    };
    let window = window_in(&mut state.accounts, found.local);
    state.holds.void(found.seq, released_minor, window);
    let available_minor = available_of(state, found.local);
    Applied::changed(Outcome::Voided { available_minor, held_minor: held_minor - released_minor })
}

/// `REFUND`: credits the card's account, also when the card is blocked; no ceiling room
/// comes back (what was spent was spent on its day).
pub(crate) fn refund(
    state: &mut ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    card: CardId,
    amount_minor: u64,
) -> Applied {
    let Some(local) = local_account(state, card) else {
        return decline(state, None, Reason::UnknownCard, amount_minor);
    };
    let region = Some(state.accounts[local].region);
    if !matches!(state.accounts[local].instrument, Instrument::Card(_)) {
        return decline(state, region, Reason::UnknownCard, amount_minor);
    }
    expire_account(state, env, now_ms, local);
    match credit(state, local, amount_minor) {
        Ok(balance_minor) => {
            state.holds.record_refund(amount_minor);
            Applied::changed(Outcome::Done { balance_minor })
        }
        Err(reason) => decline(state, region, reason, amount_minor),
    }
}

/// A copy of hold `found.seq` as a command at `found.day` would find it.
fn hold_as_of(state: &ShardState, found: &Found) -> Option<Hold> {
    let mut hold = state.holds.get(found.seq)?.to_hold();
    hold.expire_if_due(found.day, None);
    Some(hold)
}

/// `HOLD`.
pub(crate) fn read_hold(state: &ShardState, env: &mut Env<'_>, now_ms: i64, id: HoldId) -> Outcome {
    let Some((found, hold)) = find(state, env, now_ms, id)
        .ok()
        .and_then(|found| hold_as_of(state, &found).map(|hold| (found, hold)))
    else {
        return Outcome::Declined(Reason::UnknownHold);
    };
    let card = global_of(found.local as u64, state.shard, state.shards).unwrap_or(u64::MAX);
    let held_minor = hold.held_minor();
    Outcome::Hold(HoldView {
        hold: id,
        card,
        status: hold.status,
        authorized_minor: hold.authorized_minor,
        captured_minor: hold.captured_minor,
        released_minor: hold.released_minor,
        held_minor,
        business_day: hold.business_day,
        expires_day: hold.expires_day,
    })
}

/// The open holds of account `local` still open at `day`, as copies.
fn open_holds_as_of(state: &ShardState, local: usize, day: Day) -> Vec<&Hold> {
    let Some(open) = state.holds.open_of(local as u32) else { return Vec::new() };
    open.holds
        .iter()
        .filter_map(|seq| state.holds.get_open(*seq))
        .filter(|hold| hold.open_on(day))
        .collect()
}

/// A copy of card window `window` of account `local` as a command at `day` would find
/// it: rolled, and given back what the account's holds due by then release.
pub(crate) fn window_as_of(state: &ShardState, local: usize, window: &Window, day: Day) -> Window {
    let mut window = *window;
    window.roll_to(day);
    if let Some(open) = state.holds.open_of(local as u32) {
        if day >= open.next_expiry_day {
            for hold in open.holds.iter().filter_map(|seq| state.holds.get_open(*seq)) {
                hold.clone().expire_if_due(day, Some(&mut window));
            }
        }
    }
    window
}

/// `BALANCE.DETAIL`.
pub(crate) fn read_balance_detail(
    state: &ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    account: u64,
) -> Outcome {
    let Some(local) = local_account(state, account) else {
        return Outcome::Declined(Reason::UnknownAccount);
    };
    let entry = &state.accounts[local];
    let day = env.calendar.business_day(env.regions, entry.region, now_ms);
    let open = open_holds_as_of(state, local, day);
    let held_minor: u64 = open.iter().map(|hold| hold.held_minor()).sum();
    Outcome::BalanceDetail(BalanceDetail {
        balance_minor: entry.balance_minor,
        available_minor: entry.balance_minor.saturating_sub(held_minor),
        held_minor,
        open_holds: open.len() as u32,
    })
}

/// `CARD.RELEASES`: for each of the next seven business days on which ceiling room comes
/// back, how much. Room counted on day d comes back at day d + 7, when d leaves the
/// window; a hold's piece comes back earlier, at its hold's expiry, if that comes first.
pub(crate) fn read_releases(
    state: &ShardState,
    env: &mut Env<'_>,
    now_ms: i64,
    card_id: CardId,
) -> Outcome {
    let Some(local) = local_account(state, card_id) else {
        return Outcome::Declined(Reason::UnknownCard);
    };
    let entry = &state.accounts[local];
    let Instrument::Card(card) = &entry.instrument else {
        return Outcome::Declined(Reason::UnknownCard);
    };
    let today = env.calendar.business_day(env.regions, entry.region, now_ms);
    let window = window_as_of(state, local, &card.window, today);
    let open = open_holds_as_of(state, local, today);
    let days = WINDOW_DAYS as Day;
    let mut back_minor = [0u64; WINDOW_DAYS];
    for (offset, back) in back_minor.iter_mut().enumerate() {
        *back = window.spent_on_minor(today + 1 + offset as Day - days);
    }
    for hold in &open {
        for piece in hold.pieces.iter().filter(|piece| window.holds_day(piece.day)) {
            if hold.expires_day < piece.day + days {
                // Both days are within the next seven: today < expiry < piece + 7.
                let (from, to) = (piece.day + days - today - 1, hold.expires_day - today - 1);
                back_minor[from as usize] -= piece.amount_minor;
                back_minor[to as usize] += piece.amount_minor;
            }
        }
    }
    let releases = (1..=days)
        .zip(back_minor)
        .filter(|&(_, amount_minor)| amount_minor > 0)
        .map(|(offset, amount_minor)| Release { business_day: today + offset, amount_minor })
        .collect();
    Outcome::Releases(releases)
}

#[cfg(test)]
mod tests {
    //! §12 case by case on one shard (this crate's tests allow 3 open holds an account and
    //! 6 holds a shard, `crate::limits`).
    use super::*;
    use crate::apply::{apply, Input, Reply};
    use crate::calendar::{business_day_of, Calendar};
    use crate::command::{AccountKind, Command, Opening, Request, Rolled};
    use crate::holds::HOLD_KEPT_DAYS;
    use crate::region::Regions;

    /// 2027-01-04T12:00Z, the manual clock's start.
    const START_MS: i64 = 1_799_064_000_000;
    const DAY_MS: i64 = 86_400_000;

    struct Shard {
        regions: Regions,
        calendar: Calendar,
        state: ShardState,
        now_ms: i64,
    }

    impl Shard {
        /// One eu-west card (id 0) with balance 20_000 and ceiling 10_000, and one more
        /// (id 1) with the same terms.
        fn new() -> Shard {
            let regions = Regions::builtin();
            let region = regions.id_of("eu-west").unwrap();
            let calendar = Calendar::new(&regions);
            let state = ShardState::new(0, 1, regions.len());
            let mut shard = Shard { regions, calendar, state, now_ms: START_MS };
            let rules = shard.regions.get(region).unwrap().rules.clone();
            shard.input(&Input::SetRules { region, rules });
            assert_eq!(
                shard.run(Command::OpenProfile { region }),
                Outcome::ProfileOpened { profile: 0 }
            );
            for _ in 0..2 {
                let opening = Some(Opening::REFERENCE);
                let kind = AccountKind::Checking;
                shard.run(Command::OpenAccount { profile: 0, kind, opening });
            }
            shard
        }

        fn input(&mut self, input: &Input) -> Reply {
            self.applied(input).reply
        }

        fn applied(&mut self, input: &Input) -> Applied {
            let mut env = Env::new(&self.regions, &mut self.calendar);
            let applied = apply(&mut self.state, &mut env, self.now_ms, input);
            assert_eq!(self.state.check(), Ok(()));
            applied
        }

        fn run(&mut self, command: Command) -> Outcome {
            match self.input(&Input::Client(Request::new(command))) {
                Reply::Now(outcome) => outcome,
                other => panic!("no outcome: {other:?}"),
            }
        }

        fn day(&self) -> Day {
            business_day_of(self.regions.get(0).unwrap(), self.now_ms)
        }

        fn authorize(&mut self, card: u64, amount_minor: u64) -> u64 {
            match self.run(Command::Authorize { card, amount_minor }) {
                Outcome::Authorized { hold, .. } => hold,
                other => panic!("not authorized: {other:?}"),
            }
        }

        fn detail(&mut self, account: u64) -> BalanceDetail {
            match self.run(Command::ReadBalanceDetail { account }) {
                Outcome::BalanceDetail(detail) => detail,
                other => panic!("no detail: {other:?}"),
            }
        }

        fn spent(&mut self, card: u64) -> u64 {
            match self.run(Command::ReadCard { card }) {
                Outcome::Card(view) => view.spent_7d_minor,
                other => panic!("no card: {other:?}"),
            }
        }

        fn hold(&mut self, hold: u64) -> HoldView {
            match self.run(Command::ReadHold { hold }) {
                Outcome::Hold(view) => view,
                other => panic!("no hold: {other:?}"),
            }
        }

        /// Conservation (§2) on one shard without transfers in flight.
        fn conserved(&self) -> bool {
            let t = &self.state.totals;
            let came_in = t.initial_deposits_minor
                + t.deposits_minor
                + t.interest_minor
                + self.state.holds.refunded_minor();
            let went_out = t.card_payments_minor + self.state.holds.captured_minor();
            t.balances_minor + went_out == came_in
        }
    }

    fn declined(reason: Reason) -> Outcome {
        Outcome::Declined(reason)
    }

    #[test]
    fn an_authorization_holds_available_money_and_counts_in_the_window() {
        let mut shard = Shard::new();
        let day = shard.day();
        let authorized = shard.run(Command::Authorize { card: 0, amount_minor: 6_000 });
        assert_eq!(
            authorized,
            Outcome::Authorized { hold: 0, available_minor: 14_000, spent_7d_minor: 6_000 }
        );
        let detail = BalanceDetail {
            balance_minor: 20_000,
            available_minor: 14_000,
            held_minor: 6_000,
            open_holds: 1,
        };
        assert_eq!(shard.detail(0), detail);
        assert_eq!(shard.spent(0), 6_000);
        // The ceiling (10_000) counts the hold; the funds check spends available money.
        let pay = Command::Pay { card: 0, amount_minor: 4_001 };
        assert_eq!(shard.run(pay), declined(Reason::CeilingExceeded));
        shard.run(Command::SetCeiling { card: 0, ceiling_minor: 100_000 });
        let pay = Command::Pay { card: 0, amount_minor: 14_001 };
        assert_eq!(shard.run(pay), declined(Reason::InsufficientFunds));
        let transfer = Command::Transfer { from: 0, to: 1, amount_minor: 14_001 };
        assert_eq!(shard.run(transfer), declined(Reason::InsufficientFunds));
        let transfer = Command::Transfer { from: 0, to: 1, amount_minor: 14_000 };
        assert_eq!(shard.run(transfer), Outcome::Done { balance_minor: 6_000 });
        let too_much = Command::Authorize { card: 0, amount_minor: 1 };
        assert_eq!(shard.run(too_much), declined(Reason::InsufficientFunds));
        let view = shard.hold(0);
        assert_eq!((view.card, view.status, view.held_minor), (0, HoldStatus::Pending, 6_000));
        assert_eq!((view.business_day, view.expires_day), (day, day + 7));
        assert!(shard.conserved());
    }

    #[test]
    fn captures_debit_the_hold_and_never_count_in_the_window_again() {
        let mut shard = Shard::new();
        let hold = shard.authorize(0, 5_000);
        shard.run(Command::Block { card: 0 });
        let capture = Command::Capture { hold, amount_minor: 2_000 };
        assert_eq!(
            shard.run(capture),
            Outcome::Captured { balance_minor: 18_000, held_minor: 3_000 },
            "a capture succeeds whatever the card's status"
        );
        assert_eq!(shard.spent(0), 5_000, "the capture does not count again");
        let over = Command::Capture { hold, amount_minor: 3_001 };
        assert_eq!(shard.run(over), declined(Reason::ExceedsHold));
        let last = Command::CaptureFinal { hold, amount_minor: 1_000 };
        assert_eq!(shard.run(last), Outcome::Captured { balance_minor: 17_000, held_minor: 0 });
        assert_eq!(shard.spent(0), 3_000, "the rest released on its own day gives room back");
        let view = shard.hold(hold);
        assert_eq!(view.status, HoldStatus::Closed);
        let amounts = (view.authorized_minor, view.captured_minor, view.released_minor);
        assert_eq!(amounts, (5_000, 3_000, 2_000));
        let again = Command::Capture { hold, amount_minor: 1 };
        assert_eq!(shard.run(again), declined(Reason::HoldClosed));
        assert_eq!(shard.detail(0).available_minor, 17_000);
        assert!(shard.conserved());
    }

    #[test]
    fn a_capture_of_everything_held_closes_the_hold() {
        let mut shard = Shard::new();
        let hold = shard.authorize(0, 700);
        let all = Command::Capture { hold, amount_minor: 700 };
        assert_eq!(shard.run(all), Outcome::Captured { balance_minor: 19_300, held_minor: 0 });
        assert_eq!(shard.hold(hold).status, HoldStatus::Closed);
        let void = Command::Void { hold, amount_minor: None };
        assert_eq!(shard.run(void), declined(Reason::HoldClosed));
    }

    #[test]
    fn voids_release_part_or_all_and_give_room_back_inside_the_window() {
        let mut shard = Shard::new();
        shard.state.holds.set_expiry_days(0, 30);
        let hold = shard.authorize(0, 4_000);
        shard.now_ms += 3 * DAY_MS;
        let incremented = shard.run(Command::AuthorizeIncrement { hold, amount_minor: 1_500 });
        assert_eq!(
            incremented,
            Outcome::Incremented {
                held_minor: 5_500,
                available_minor: 14_500,
                spent_7d_minor: 5_500
            }
        );
        shard.now_ms += 5 * DAY_MS;
        // The first day left the window: only the increment is still counted.
        assert_eq!(shard.spent(0), 1_500);
        let over = Command::Void { hold, amount_minor: Some(5_501) };
        assert_eq!(shard.run(over), declined(Reason::ExceedsHold));
        let part = Command::Void { hold, amount_minor: Some(1_000) };
        assert_eq!(shard.run(part), Outcome::Voided { available_minor: 15_500, held_minor: 4_500 });
        assert_eq!(shard.spent(0), 500, "the newest piece is released first");
        let all = Command::Void { hold, amount_minor: None };
        assert_eq!(shard.run(all), Outcome::Voided { available_minor: 20_000, held_minor: 0 });
        assert_eq!(shard.spent(0), 0);
        let view = shard.hold(hold);
        assert_eq!((view.status, view.released_minor), (HoldStatus::Closed, 5_500));
        assert_eq!(
            shard.run(Command::Void { hold, amount_minor: None }),
            declined(Reason::HoldClosed)
        );
    }

    #[test]
    fn a_hold_expires_at_its_roll_lazily_and_eagerly_alike() {
        let mut lazy = Shard::new();
        lazy.state.holds.set_expiry_days(0, 3);
        let hold = lazy.authorize(0, 3_000);
        let day = lazy.day();
        let mut eager =
            Shard { state: lazy.state.clone(), calendar: lazy.calendar.clone(), ..Shard::new() };
        lazy.now_ms += 2 * DAY_MS;
        assert_eq!(lazy.detail(0).held_minor, 3_000, "still open the day before");
        lazy.now_ms += DAY_MS;
        assert_eq!(lazy.day(), day + 3);
        // A read shows the expiry before any command applied it.
        assert_eq!(
            lazy.detail(0),
            BalanceDetail {
                balance_minor: 20_000,
                available_minor: 20_000,
                held_minor: 0,
                open_holds: 0
            }
        );
        assert_eq!(lazy.hold(hold).status, HoldStatus::Expired);
        assert_eq!(lazy.spent(0), 0, "day D is inside the window: its room came back");
        let late = Command::Capture { hold, amount_minor: 1 };
        let applied = lazy.applied(&Input::Client(Request::new(late.clone())));
        assert_eq!(applied.reply, Reply::Now(declined(Reason::HoldExpired)));
        // The command tells the expiry it applied (for the log and the stream), once.
        let expired = vec![ExpiredHold { hold, card: 0, released_minor: 3_000 }];
        assert_eq!(applied.lazy, Rolled { interest: Vec::new(), expired: expired.clone() });
        assert!(lazy.applied(&Input::Client(Request::new(late.clone()))).lazy.is_empty());
        // The epoch does the same, twice or not, and tells it the same way.
        eager.now_ms = lazy.now_ms;
        for round in 0..2 {
            let roll = Input::Roll { region: 0, day: day + 3, start: 0, end: 2 };
            let told = match eager.input(&roll) {
                Reply::Recorded(Outcome::Rolled(rolled)) => rolled.expired,
                _ => Vec::new(),
            };
            assert_eq!(told, if round == 0 { expired.clone() } else { Vec::new() });
        }
        assert_eq!(eager.state.holds.get(0).unwrap().status(), HoldStatus::Expired);
        assert_eq!(eager.run(late), declined(Reason::HoldExpired));
        assert_eq!(eager.state.holds, lazy.state.holds);
        // The card with the hold is the same (the other was only rolled, unseen).
        assert_eq!(eager.state.accounts[0], lazy.state.accounts[0]);
        // Forgotten HOLD_KEPT_DAYS after its expiry day: unknown, lazily and eagerly.
        lazy.now_ms += i64::from(HOLD_KEPT_DAYS) * DAY_MS;
        assert_eq!(lazy.run(Command::ReadHold { hold }), declined(Reason::UnknownHold));
        eager.now_ms = lazy.now_ms;
        eager.input(&Input::Roll { region: 0, day: lazy.day(), start: 0, end: 2 });
        assert!(eager.state.holds.is_empty());
        assert_eq!(eager.run(Command::ReadHold { hold }), declined(Reason::UnknownHold));
    }

    #[test]
    fn open_holds_are_bounded_per_account_and_per_shard() {
        let mut shard = Shard::new();
        for _ in 0..HOLDS_PER_ACCOUNT_MAX {
            shard.authorize(0, 10);
        }
        let more = Command::Authorize { card: 0, amount_minor: 10 };
        assert_eq!(shard.run(more), declined(Reason::TooManyHolds));
        for _ in HOLDS_PER_ACCOUNT_MAX..HOLDS_PER_SHARD_MAX {
            shard.authorize(1, 10);
        }
        shard.run(Command::Void { hold: 0, amount_minor: None });
        let before = shard.state.clone();
        let more = Command::Authorize { card: 0, amount_minor: 10 };
        assert_eq!(shard.run(more), declined(Reason::ShardFull));
        assert_eq!(shard.state.holds, before.holds);
        assert_eq!(shard.state.accounts, before.accounts);
    }

    #[test]
    fn a_refund_credits_a_blocked_card_and_gives_no_room_back() {
        let mut shard = Shard::new();
        shard.run(Command::Pay { card: 0, amount_minor: 3_000 });
        shard.run(Command::Block { card: 0 });
        let refund = Command::Refund { card: 0, amount_minor: 1_000 };
        assert_eq!(shard.run(refund), Outcome::Done { balance_minor: 18_000 });
        assert_eq!(shard.spent(0), 3_000);
        let savings =
            Command::OpenAccount { profile: 0, kind: AccountKind::Savings, opening: None };
        let Outcome::AccountOpened { account, .. } = shard.run(savings) else { panic!() };
        let refund = Command::Refund { card: account, amount_minor: 1 };
        assert_eq!(shard.run(refund), declined(Reason::UnknownCard));
        assert!(shard.conserved());
    }

    #[test]
    fn unknown_holds_are_declined_and_reads_of_them_too() {
        let mut shard = Shard::new();
        for command in [
            Command::Capture { hold: 5, amount_minor: 1 },
            Command::CaptureFinal { hold: 5, amount_minor: 1 },
            Command::Void { hold: 5, amount_minor: None },
            Command::AuthorizeIncrement { hold: 5, amount_minor: 1 },
            Command::ReadHold { hold: 5 },
        ] {
            assert_eq!(shard.run(command), declined(Reason::UnknownHold));
        }
    }

    #[test]
    fn the_release_schedule_says_when_room_comes_back() {
        let mut shard = Shard::new();
        shard.state.holds.set_expiry_days(0, 2);
        let today = shard.day();
        shard.run(Command::Pay { card: 0, amount_minor: 1_000 });
        shard.now_ms += DAY_MS;
        shard.authorize(0, 2_000);
        let releases = shard.run(Command::ReadReleases { card: 0 });
        let expected = vec![
            Release { business_day: today + 3, amount_minor: 2_000 },
            Release { business_day: today + 7, amount_minor: 1_000 },
        ];
        assert_eq!(releases, Outcome::Releases(expected));
    }
}
