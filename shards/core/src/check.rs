//! The invariants of a shard's state ([`ShardState::check`]): what `apply` and the shard's
//! loop take for granted, checked on every state read from a file (a checkpoint, a
//! snapshot) and, in debug builds, before every write of the log.
//!
//! A file can pass every checksum and still hold a state no engine made (crafted, or
//! written by a faulty build). Each check here rules out one way such a state wedges or
//! crashes a shard: an index out of range panics; a cycle in a profile's account list
//! makes reading the profile loop forever; a pending record without its transfer parks
//! every retry of its command forever; a half-month of `i32::MIN` makes the first touch of
//! the account walk 2^31 half-months.

use std::collections::BTreeMap;

use crate::calendar::Day;
use crate::command::RegionId;
use crate::holds::{
    Hold, HoldStatus, HOLDS_PER_ACCOUNT_MAX, HOLDS_PER_SHARD_MAX, HOLD_EXPIRY_DAYS_MAX,
    HOLD_EXPIRY_DAYS_MIN, HOLD_PIECES_MAX,
};
use crate::idempotency::Remembered;
use crate::ids::global_of;
use crate::limits::{
    AMOUNT_MAX_MINOR, DAY_MAX, DAY_MIN, HALF_MONTH_MAX, HALF_MONTH_MIN, SAVINGS_RATE_BP_MAX,
    SHARDS_MAX, SHARD_ENTRIES_MAX,
};
use crate::money::amount_is_valid;
use crate::region::Rules;
use crate::state::{Account, Instrument, ShardState, NO_ACCOUNT};
use crate::window::WINDOW_DAYS;

/// A state that breaks an invariant: not one this engine made. Whoever read it refuses it;
/// the fix is to load another checkpoint or snapshot (or restore a backup).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The per-shard or per-region vectors do not match the shard and region counts.
    #[error("its shape is wrong: {problem}")]
    Shape {
        /// What does not match.
        problem: String,
    },
    /// A profile names a region the state has no entry for.
    #[error("profile {profile} is in region {region}, beyond the state's {regions} regions")]
    ProfileRegion {
        /// The profile's local index.
        profile: usize,
        /// Its region.
        region: RegionId,
        /// The regions the state has.
        regions: usize,
    },
    /// An account points at a profile, account or region outside the shard.
    #[error("account {account} points outside the shard")]
    AccountOutside {
        /// The account's local index.
        account: usize,
    },
    /// A profile's account list points outside the shard, or ends elsewhere than at the
    /// profile's last account.
    #[error("profile {profile}'s account list is broken")]
    BrokenList {
        /// The profile's local index.
        profile: usize,
    },
    /// A profile's account list comes back to an account it already passed (or one that
    /// belongs to another profile): reading the profile would loop forever.
    #[error("profile {profile}'s account list loops back to account {account}")]
    ListCycle {
        /// The profile's local index.
        profile: usize,
        /// The account reached a second time.
        account: usize,
    },
    /// An account is in no profile's account list (or in another profile's).
    #[error("account {account} is not in the account list of its profile {profile}")]
    Unlisted {
        /// The account's local index.
        account: usize,
        /// The profile it says it belongs to.
        profile: usize,
    },
    /// A field holds a value no command can give it.
    #[error("{what} {index} is out of range ({value})")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// The index of the entry (account, region, transfer sequence number).
        index: u64,
        /// The value found.
        value: i128,
    },
    /// A transfer in flight is from no account of this shard.
    #[error("pending transfer {seq} is from no account of this shard")]
    PendingOrphan {
        /// The transfer's sequence number.
        seq: u64,
    },
    /// An idempotency record of the state is not this shard's, or waits on a transfer that
    /// is not in flight here: a retry of its command would wait forever.
    #[error("the record of command id {command_id} is orphaned: {problem}")]
    RecordOrphan {
        /// The command id.
        command_id: String,
        /// What it lacks.
        problem: &'static str,
    },
    /// A hold (§12) breaks an invariant of the hold table.
    #[error("hold {seq} is broken: {problem}")]
    Hold {
        /// The hold's sequence number on this shard.
        seq: u64,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An account's open holds break a limit or hold more than its balance.
    #[error("account {account}'s holds are broken: {problem}")]
    AccountHolds {
        /// The account's local index.
        account: usize,
        /// What is wrong with them.
        problem: &'static str,
    },
}

fn out_of_range(what: &'static str, index: u64, value: impl Into<i128>) -> StateError {
    StateError::OutOfRange { what, index, value: value.into() }
}

fn day_in_range(day: Day) -> bool {
    (DAY_MIN..=DAY_MAX).contains(&day)
}

impl ShardState {
    /// Checks every invariant of the state (see the module's documentation); linear in
    /// its size, with one bit per account of scratch.
    pub fn check(&self) -> Result<(), StateError> {
        self.check_shape()?;
        self.check_rules()?;
        self.check_lists()?;
        for (index, account) in self.accounts.iter().enumerate() {
            check_account(index, account)?;
        }
        self.check_transfers()?;
        self.check_records()?;
        self.check_holds()
    }

    fn regions(&self) -> usize {
        self.rolled_day.len()
    }

    fn check_shape(&self) -> Result<(), StateError> {
        let shape = |problem: String| Err(StateError::Shape { problem });
        if self.shards == 0 || self.shards > SHARDS_MAX || self.shard >= self.shards {
            return shape(format!("shard {} of {}", self.shard, self.shards));
        }
        let regions = self.regions();
        if self.rules.len() != regions
            || self.counters.len() != regions + 1
            || self.credits_seen.len() != usize::from(self.shards)
        {
            return shape(format!(
                "{} rules, {} counters and {} credit sequences for {regions} regions and {} \
                 shards",
                self.rules.len(),
                self.counters.len(),
                self.credits_seen.len(),
                self.shards
            ));
        }
        if self.profiles.len() > SHARD_ENTRIES_MAX || self.accounts.len() > SHARD_ENTRIES_MAX {
            return shape(format!(
                "{} profiles and {} accounts, beyond {SHARD_ENTRIES_MAX}",
                self.profiles.len(),
                self.accounts.len()
            ));
        }
        for (region, &day) in self.rolled_day.iter().enumerate() {
            if day != Day::MIN && !day_in_range(day) {
                return Err(out_of_range("the rolled day of region", region as u64, day));
            }
        }
        Ok(())
    }

    fn check_rules(&self) -> Result<(), StateError> {
        for (region, rules) in self.rules.iter().enumerate() {
            let Some(Rules { initial_deposit_minor, default_card_ceiling_minor, savings_rate_bp }) =
                rules
            else {
                continue;
            };
            let region = region as u64;
            if !amount_is_valid(*initial_deposit_minor) {
                return Err(out_of_range(
                    "the initial deposit of region",
                    region,
                    *initial_deposit_minor,
                ));
            }
            if !amount_is_valid(*default_card_ceiling_minor) {
                let ceiling = *default_card_ceiling_minor;
                return Err(out_of_range("the default card ceiling of region", region, ceiling));
            }
            if *savings_rate_bp > SAVINGS_RATE_BP_MAX {
                return Err(out_of_range("the savings rate of region", region, *savings_rate_bp));
            }
        }
        Ok(())
    }

    /// Walks every profile's account list once: each account must be reached exactly once,
    /// from its own profile, and each walk must end at the profile's last account.
    fn check_lists(&self) -> Result<(), StateError> {
        let (profiles, accounts, regions) =
            (self.profiles.len(), self.accounts.len(), self.regions());
        for (index, account) in self.accounts.iter().enumerate() {
            let next_ok = account.next_in_profile == NO_ACCOUNT
                || (account.next_in_profile as usize) < accounts;
            if (account.profile as usize) >= profiles
                || !next_ok
                || usize::from(account.region) >= regions
            {
                return Err(StateError::AccountOutside { account: index });
            }
        }
        let mut listed = vec![false; accounts];
        for (index, profile) in self.profiles.iter().enumerate() {
            if usize::from(profile.region) >= regions {
                let region = profile.region;
                return Err(StateError::ProfileRegion { profile: index, region, regions });
            }
            let mut last = NO_ACCOUNT;
            let mut next = profile.first_account;
            while next != NO_ACCOUNT {
                let at = next as usize;
                let Some(account) = self.accounts.get(at) else {
                    return Err(StateError::BrokenList { profile: index });
                };
                if listed[at] || account.profile as usize != index {
                    return Err(StateError::ListCycle { profile: index, account: at });
                }
                if account.region != profile.region {
                    return Err(StateError::AccountOutside { account: at });
                }
                listed[at] = true;
                last = next;
                next = account.next_in_profile;
            }
            if last != profile.last_account {
                return Err(StateError::BrokenList { profile: index });
            }
        }
        if let Some(account) = listed.iter().position(|&seen| !seen) {
            let profile = self.accounts[account].profile as usize;
            return Err(StateError::Unlisted { account, profile });
        }
        Ok(())
    }

    fn check_transfers(&self) -> Result<(), StateError> {
        for (&seq, pending) in &self.pending {
            if pending.from_local as usize >= self.accounts.len() {
                return Err(StateError::PendingOrphan { seq });
            }
            if seq >= self.next_transfer_seq {
                return Err(out_of_range("pending transfer", seq, seq));
            }
            if !amount_is_valid(pending.amount_minor) {
                return Err(out_of_range(
                    "the amount of pending transfer",
                    seq,
                    pending.amount_minor,
                ));
            }
        }
        for &(origin, seq) in self.refused_credits.keys() {
            if origin >= self.shards {
                return Err(out_of_range("the origin shard of refused credit", seq, origin));
            }
        }
        Ok(())
    }

    fn check_records(&self) -> Result<(), StateError> {
        let regions = self.regions();
        for (command_id, record) in &self.remembered {
            let orphan = |problem: &'static str| StateError::RecordOrphan {
                command_id: command_id.as_str().to_owned(),
                problem,
            };
            if record.shard != self.shard {
                return Err(orphan("it is another shard's"));
            }
            if usize::from(record.region) >= regions || !day_in_range(record.day) {
                return Err(orphan("its region or business day is out of range"));
            }
            if let Remembered::Pending { seq } = record.remembered {
                if !self.pending.contains_key(&seq) {
                    return Err(orphan("it waits on a transfer that is not in flight"));
                }
            }
        }
        Ok(())
    }
}

impl ShardState {
    fn check_holds(&self) -> Result<(), StateError> {
        let holds = &self.holds;
        if holds.len() > HOLDS_PER_SHARD_MAX {
            return Err(StateError::Shape {
                problem: format!("{} holds, beyond {HOLDS_PER_SHARD_MAX}", holds.len()),
            });
        }
        for (region, &days) in holds.expiry_days().iter().enumerate() {
            if region >= self.regions()
                || !(HOLD_EXPIRY_DAYS_MIN..=HOLD_EXPIRY_DAYS_MAX).contains(&days)
            {
                return Err(out_of_range("the hold expiry days of region", region as u64, days));
            }
        }
        let mut held_by_account: BTreeMap<u32, (u128, usize)> = BTreeMap::new();
        for (seq, hold) in holds.iter() {
            let hold = &hold.to_hold();
            let broken = |problem: &'static str| Err(StateError::Hold { seq, problem });
            if seq >= holds.next_seq() || global_of(seq, self.shard, self.shards).is_none() {
                return broken("its sequence number was never given");
            }
            let account = hold.account as usize;
            match self.accounts.get(account).map(|a| &a.instrument) {
                Some(Instrument::Card(_)) => {}
                _ => return broken("it holds money of no checking account of this shard"),
            }
            check_hold(hold).map_err(|problem| StateError::Hold { seq, problem })?;
            if hold.status == HoldStatus::Pending {
                let entry = held_by_account.entry(hold.account).or_default();
                entry.0 += u128::from(hold.held_minor());
                entry.1 += 1;
            }
        }
        for (&account, &(held_minor, open)) in &held_by_account {
            let broken =
                |problem| Err(StateError::AccountHolds { account: account as usize, problem });
            if open > HOLDS_PER_ACCOUNT_MAX {
                return broken("more open holds than HOLDS_PER_ACCOUNT_MAX");
            }
            if held_minor > u128::from(self.accounts[account as usize].balance_minor) {
                return broken("they hold more than its balance");
            }
        }
        if !holds.indices_agree() {
            return Err(StateError::Shape {
                problem: "the hold table's indices disagree with it".to_owned(),
            });
        }
        Ok(())
    }
}

/// One hold's own invariants: its days, its amounts adding up, its pieces.
fn check_hold(hold: &Hold) -> Result<(), &'static str> {
    if !day_in_range(hold.business_day) || !day_in_range(hold.expires_day) {
        return Err("a day out of range");
    }
    let lifetime = i64::from(hold.expires_day) - i64::from(hold.business_day);
    if !(i64::from(HOLD_EXPIRY_DAYS_MIN)..=i64::from(HOLD_EXPIRY_DAYS_MAX)).contains(&lifetime) {
        return Err("it expires outside the expiry days a region may have");
    }
    let held_minor: u128 = hold.pieces.iter().map(|p| u128::from(p.amount_minor)).sum();
    let accounted = u128::from(hold.captured_minor) + u128::from(hold.released_minor) + held_minor;
    if accounted != u128::from(hold.authorized_minor) {
        return Err("captured, released and held do not add up to authorized");
    }
    match hold.status {
        HoldStatus::Pending if hold.pieces.is_empty() => {
            return Err("it is open and holds nothing")
        }
        HoldStatus::Closed | HoldStatus::Expired if !hold.pieces.is_empty() => {
            return Err("it is closed and still holds money")
        }
        _ => {}
    }
    if hold.pieces.len() > HOLD_PIECES_MAX {
        return Err("more pieces than HOLD_PIECES_MAX");
    }
    let mut previous = hold.business_day - 1;
    for piece in &hold.pieces {
        if piece.amount_minor == 0 || piece.day <= previous || !day_in_range(piece.day) {
            return Err("its pieces are not of increasing days with money");
        }
        previous = piece.day;
    }
    Ok(())
}

fn check_account(index: usize, account: &Account) -> Result<(), StateError> {
    let index = index as u64;
    match &account.instrument {
        Instrument::Card(card) => {
            if card.ceiling_minor > AMOUNT_MAX_MINOR {
                return Err(out_of_range("the ceiling of card", index, card.ceiling_minor));
            }
            if !day_in_range(card.window.day()) {
                return Err(out_of_range("the window day of card", index, card.window.day()));
            }
            // Each day's spending passed a ceiling of at most an amount: the sum of the
            // window cannot overflow.
            let spent: u128 =
                card.window.spent_by_day_minor().iter().map(|&day| u128::from(day)).sum();
            if spent > u128::from(AMOUNT_MAX_MINOR) * WINDOW_DAYS as u128 {
                return Err(out_of_range("the seven-day spending of card", index, spent as i128));
            }
        }
        Instrument::Savings(savings) => {
            let half_month = savings.half_month();
            if !(HALF_MONTH_MIN..=HALF_MONTH_MAX).contains(&half_month) {
                return Err(out_of_range("the half-month of savings account", index, half_month));
            }
            if savings.accrued() < 0 {
                return Err(out_of_range(
                    "the accrued interest of account",
                    index,
                    savings.accrued(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{apply, Env, Input};
    use crate::calendar::Calendar;
    use crate::command::{AccountKind, Command, CommandId, Request};
    use crate::idempotency::IdempotencyRecord;
    use crate::interest::Savings;
    use crate::region::Regions;

    /// 2027-01-04T12:00:00Z.
    const START_MS: i64 = 1_799_064_000_000;

    /// Shard 0 of 2: a profile with a checking and a savings account (local 0 and 1),
    /// another profile with one checking account (local 2), and a transfer in flight from
    /// local 0 to an account of shard 1.
    fn made_by_apply() -> ShardState {
        let regions = Regions::builtin();
        let mut state = ShardState::new(0, 2, regions.len());
        let mut calendar = Calendar::new(&regions);
        let mut env = Env::new(&regions, &mut calendar);
        for region in 0..regions.len() as u16 {
            let rules = regions.get(region).expect("a built-in region").rules.clone();
            apply(&mut state, &mut env, START_MS, &Input::SetRules { region, rules });
        }
        let mut client = |state: &mut ShardState, command: Command| {
            apply(state, &mut env, START_MS, &Input::Client(Request::new(command))).reply
        };
        client(&mut state, Command::OpenProfile { region: 0 });
        client(&mut state, Command::OpenProfile { region: 1 });
        for (profile, kind) in
            [(0, AccountKind::Checking), (0, AccountKind::Savings), (2, AccountKind::Checking)]
        {
            client(&mut state, Command::OpenAccount { profile, kind, opening: None });
        }
        client(&mut state, Command::Transfer { from: 0, to: 1, amount_minor: 10 });
        assert_eq!(state.accounts.len(), 3);
        assert_eq!(state.pending.len(), 1, "a transfer to shard 1 is in flight");
        state
    }

    #[test]
    fn a_state_made_by_apply_passes() {
        assert_eq!(made_by_apply().check(), Ok(()));
        assert_eq!(ShardState::new(3, 4, 2).check(), Ok(()));
    }

    #[test]
    fn a_cycle_in_a_profiles_account_list_is_refused() {
        let mut state = made_by_apply();
        // Account 1 (the profile's last) points back to account 0: reading profile 0
        // would walk 0, 1, 0, 1, ... forever.
        state.accounts[1].next_in_profile = 0;
        assert_eq!(state.check(), Err(StateError::ListCycle { profile: 0, account: 0 }));
        let mut state = made_by_apply();
        state.accounts[0].next_in_profile = 0;
        assert_eq!(state.check(), Err(StateError::ListCycle { profile: 0, account: 0 }));
    }

    #[test]
    fn a_list_that_skips_or_steals_an_account_is_refused() {
        let mut state = made_by_apply();
        state.accounts[0].next_in_profile = NO_ACCOUNT;
        state.profiles[0].last_account = 0;
        assert_eq!(state.check(), Err(StateError::Unlisted { account: 1, profile: 0 }));
        let mut state = made_by_apply();
        state.profiles[1].first_account = 1;
        assert_eq!(state.check(), Err(StateError::ListCycle { profile: 1, account: 1 }));
        let mut state = made_by_apply();
        state.profiles[0].last_account = 0;
        assert_eq!(state.check(), Err(StateError::BrokenList { profile: 0 }));
        let mut state = made_by_apply();
        state.accounts[2].next_in_profile = 7;
        assert_eq!(state.check(), Err(StateError::AccountOutside { account: 2 }));
    }

    #[test]
    fn a_pending_record_without_its_transfer_is_refused() {
        let mut state = made_by_apply();
        let seq = *state.pending.keys().next().unwrap_or(&0);
        let record = |seq| IdempotencyRecord {
            command: Command::Transfer { from: 0, to: 1, amount_minor: 10 },
            remembered: Remembered::Pending { seq },
            region: 0,
            day: crate::calendar::business_day_of(Regions::builtin().get(0).unwrap(), START_MS),
            shard: 0,
            batch_seq: 0,
        };
        let id = CommandId::new("t-1").unwrap();
        state.remembered = vec![(id.clone(), record(seq))];
        assert_eq!(state.check(), Ok(()), "waiting on a transfer in flight");
        // A retry of this command would park on transfer 99, which will never settle.
        state.remembered = vec![(id, record(99))];
        assert!(matches!(state.check(), Err(StateError::RecordOrphan { .. })));
        let mut state = made_by_apply();
        let pending = state.pending.values_mut().next().unwrap();
        pending.from_local = 3;
        assert_eq!(state.check(), Err(StateError::PendingOrphan { seq }));
    }

    #[test]
    fn a_half_month_beyond_the_calendar_is_refused() {
        let mut state = made_by_apply();
        // On first touch the account would close 2^31 half-months, one by one.
        state.accounts[1].instrument = Instrument::Savings(Savings::opened(i32::MIN));
        let found = state.check();
        assert_eq!(found, Err(out_of_range("the half-month of savings account", 1, i32::MIN)));
        state.accounts[1].instrument = Instrument::Savings(Savings::opened(HALF_MONTH_MAX + 1));
        assert!(matches!(state.check(), Err(StateError::OutOfRange { .. })));
        state.accounts[1].instrument = Instrument::Savings(Savings::opened(HALF_MONTH_MAX));
        assert_eq!(state.check(), Ok(()));
    }

    #[test]
    fn fields_out_of_range_are_refused() {
        let mut state = made_by_apply();
        let Instrument::Card(card) = &mut state.accounts[0].instrument else {
            panic!("account 0 is a checking account");
        };
        card.ceiling_minor = AMOUNT_MAX_MINOR + 1;
        assert!(matches!(state.check(), Err(StateError::OutOfRange { .. })));
        let mut state = made_by_apply();
        state.rolled_day[0] = DAY_MAX + 1;
        assert!(matches!(state.check(), Err(StateError::OutOfRange { .. })));
        let mut state = made_by_apply();
        state.credits_seen.push(0);
        assert!(matches!(state.check(), Err(StateError::Shape { .. })));
        let mut state = made_by_apply();
        state.profiles[1].region = 9;
        assert!(matches!(state.check(), Err(StateError::ProfileRegion { .. })));
    }

    #[test]
    fn the_calendar_bounds_hold_every_day_the_engine_accepts() {
        let regions = Regions::builtin();
        for region in 0..regions.len() as u16 {
            let region = regions.get(region).unwrap();
            for ts_ms in [crate::limits::TIME_MIN_MS, crate::limits::TIME_MAX_MS] {
                let day = crate::calendar::business_day_of(region, ts_ms);
                assert!(day_in_range(day), "{day} of {}", region.name);
                let half_month = crate::calendar::half_month_of(day);
                assert!((HALF_MONTH_MIN..=HALF_MONTH_MAX).contains(&half_month));
            }
        }
    }
}
