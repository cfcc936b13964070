//! Property test: random command sequences against a tiny reference model.
//!
//! The model is written from SPEC §2, §3, §6 and §12 alone: balances in a map, a card's
//! window as the list of what counted on it by business day (payments, authorizations, and
//! releases as negative entries), holds as what they hold by the day it was authorized on
//! (captures take the oldest, releases the newest: the engine's documented rule), expired
//! for every account at once before each step (so the engine's lazy and eager expiry are
//! both checked against it; 3 and 5 business days here, so clock moves cross them),
//! idempotency as a map of command ids with the business day each was used on, forgotten
//! after its region's retention (2 and 4 business days here). Every outcome of
//! the engine must equal the model's, and at the end every balance must match and the
//! conservation equation must hold. A variant runs a durable engine that takes
//! checkpoints and restarts in the middle of the sequence, so loading a checkpoint and
//! replaying the log after it are checked too.

use std::collections::HashMap;
use std::sync::Arc;

use plafond::internals::calendar::business_day_of;
use plafond::{
    AccountKind, AccountView, BalanceDetail, CardStatus, CardView, Command, CommandId, Durability,
    Engine, EngineConfig, HoldStatus, HoldView, ManualClock, Outcome, ProfileView, Reason, Regions,
    Release, Request, HOLDS_PER_ACCOUNT_MAX, HOLD_KEPT_DAYS,
};
use proptest::prelude::*;

const START_MS: i64 = ManualClock::SERVER_START_MS;
const HOUR_MS: i64 = 3_600_000;
/// An id no profile, account or card will have in these tests.
const UNKNOWN_ID: u64 = 1_000_000_007;
/// Picks are `0 .. 40`; these many of them name an existing entity.
const KNOWN_PICKS: usize = 36;

#[derive(Clone, Debug)]
enum Op {
    OpenProfile {
        region: u16,
    },
    OpenAccount {
        profile: usize,
        savings: bool,
    },
    Pay {
        card: usize,
        amount: u64,
    },
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
    },
    Deposit {
        account: usize,
        amount: u64,
    },
    SetCeiling {
        card: usize,
        ceiling: u64,
    },
    Block {
        card: usize,
    },
    Unblock {
        card: usize,
    },
    ReadAccount {
        account: usize,
    },
    ReadCard {
        card: usize,
    },
    ReadProfile {
        profile: usize,
    },
    Advance {
        hours: i64,
    },
    /// Runs the due epochs: eager rolls must not change any outcome.
    Epochs,
    /// Writes a checkpoint (durable engines only): restarts load it.
    Checkpoint,
    Authorize {
        card: usize,
        amount: u64,
    },
    Increment {
        hold: usize,
        amount: u64,
    },
    Capture {
        hold: usize,
        amount: u64,
        last: bool,
    },
    Void {
        hold: usize,
        amount: Option<u64>,
    },
    Refund {
        card: usize,
        amount: u64,
    },
    ReadHold {
        hold: usize,
    },
    ReadBalanceDetail {
        account: usize,
    },
    ReadReleases {
        card: usize,
    },
}

fn amount() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 1u64..=5_000,
        2 => 5_000u64..=150_000,
        1 => Just(0u64),
        1 => Just(1_000_000_000_000_001u64),
        1 => Just(1_000_000_000_000_000u64),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    // Indices pick among existing entities modulo their count; a large index past the
    // count means "an id that does not exist".
    let pick = 0usize..40;
    prop_oneof![
        2 => (0u16..3).prop_map(|region| Op::OpenProfile { region }),
        3 => (pick.clone(), any::<bool>()).prop_map(|(profile, savings)| Op::OpenAccount { profile, savings }),
        12 => (pick.clone(), amount()).prop_map(|(card, amount)| Op::Pay { card, amount }),
        5 => (pick.clone(), pick.clone(), amount()).prop_map(|(from, to, amount)| Op::Transfer { from, to, amount }),
        2 => (pick.clone(), amount()).prop_map(|(account, amount)| Op::Deposit { account, amount }),
        1 => (pick.clone(), amount()).prop_map(|(card, ceiling)| Op::SetCeiling { card, ceiling }),
        1 => pick.clone().prop_map(|card| Op::Block { card }),
        1 => pick.clone().prop_map(|card| Op::Unblock { card }),
        1 => pick.clone().prop_map(|account| Op::ReadAccount { account }),
        1 => pick.clone().prop_map(|card| Op::ReadCard { card }),
        1 => pick.clone().prop_map(|profile| Op::ReadProfile { profile }),
        2 => (1i64..60).prop_map(|hours| Op::Advance { hours }),
        1 => Just(Op::Epochs),
        1 => Just(Op::Checkpoint),
        6 => (pick.clone(), amount()).prop_map(|(card, amount)| Op::Authorize { card, amount }),
        2 => (pick.clone(), amount()).prop_map(|(hold, amount)| Op::Increment { hold, amount }),
        4 => (pick.clone(), amount(), any::<bool>()).prop_map(|(hold, amount, last)| Op::Capture { hold, amount, last }),
        2 => (pick.clone(), prop::option::of(amount())).prop_map(|(hold, amount)| Op::Void { hold, amount }),
        1 => (pick.clone(), amount()).prop_map(|(card, amount)| Op::Refund { card, amount }),
        1 => pick.clone().prop_map(|hold| Op::ReadHold { hold }),
        1 => pick.clone().prop_map(|account| Op::ReadBalanceDetail { account }),
        1 => pick.clone().prop_map(|card| Op::ReadReleases { card }),
    ]
}

#[derive(Clone, Debug)]
struct ModelAccount {
    profile: u64,
    region: u16,
    balance: u64,
    /// `None` for savings.
    card: Option<ModelCard>,
}

#[derive(Clone, Debug)]
struct ModelCard {
    blocked: bool,
    ceiling: Option<u64>,
    /// What counted in the window: (business day, amount), approved payments and
    /// authorizations positive, amounts released while their day was in the window negative.
    payments: Vec<(i32, i128)>,
}

impl ModelCard {
    /// What counts of business days `day - 6 ..= day` (§3).
    fn spent(&self, day: i32) -> u64 {
        let sum: i128 = self.payments.iter().filter(|(d, _)| in_window(*d, day)).map(|p| p.1).sum();
        u64::try_from(sum).expect("never below zero")
    }

    /// Gives back `amount` counted on `piece_day`, if it is still in the window of `day`.
    fn release(&mut self, piece_day: i32, amount: u64, day: i32) {
        if in_window(piece_day, day) {
            self.payments.push((piece_day, -i128::from(amount)));
        }
    }
}

fn in_window(piece_day: i32, day: i32) -> bool {
    piece_day > day - 7 && piece_day <= day
}

#[derive(Clone, Debug)]
struct ModelHold {
    card: u64,
    status: HoldStatus,
    business_day: i32,
    expires_day: i32,
    authorized: u64,
    captured: u64,
    released: u64,
    /// What it holds, by the day authorized, oldest first.
    pieces: Vec<(i32, u64)>,
}

impl ModelHold {
    fn held(&self) -> u64 {
        self.pieces.iter().map(|p| p.1).sum()
    }

    /// Takes `amount` from the oldest pieces.
    fn take_oldest(&mut self, mut amount: u64) {
        while amount > 0 {
            let taken = self.pieces[0].1.min(amount);
            self.pieces[0].1 -= taken;
            amount -= taken;
            if self.pieces[0].1 == 0 {
                self.pieces.remove(0);
            }
        }
    }

    /// Releases `amount` from the newest pieces, giving `card` room back as of `day`.
    fn release_newest(&mut self, mut amount: u64, card: &mut ModelCard, day: i32) {
        self.released += amount;
        while amount > 0 {
            let last = self.pieces.len() - 1;
            let taken = self.pieces[last].1.min(amount);
            card.release(self.pieces[last].0, taken, day);
            self.pieces[last].1 -= taken;
            amount -= taken;
            if self.pieces[last].1 == 0 {
                self.pieces.pop();
            }
        }
    }
}

/// What the spec says, as plainly as possible.
struct Model {
    regions: Regions,
    now_ms: i64,
    profiles: Vec<(u64, u16)>,
    /// Accounts by engine id, in opening order.
    accounts: Vec<u64>,
    by_id: HashMap<u64, ModelAccount>,
    /// Per command id: its command, outcome, and region and business day of its use.
    remembered: HashMap<String, (Command, Outcome, u16, i32)>,
    /// Every hold by engine id, in placing order.
    holds: Vec<u64>,
    holds_by_id: HashMap<u64, ModelHold>,
}

/// The built-in regions, remembering command ids 2 (`eu-west`) and 4 (`us-east`) days and
/// keeping holds open 3 and 5.
fn regions() -> Regions {
    let mut text = String::new();
    let regions = [("eu-west", "Europe/Paris", 2, 3), ("us-east", "America/New_York", 4, 5)];
    for (name, zone, days, hold_days) in regions {
        text.push_str(&format!(
            "[[region]]\nname = \"{name}\"\ntime_zone = \"{zone}\"\nroll_time = \"04:00\"\n\
             initial_deposit = 100000\ndefault_card_ceiling = 300000\nsavings_rate_bp = 300\n\
             idempotency_retention_days = {days}\nhold_expiry_days = {hold_days}\n"
        ));
    }
    Regions::from_toml(&text).unwrap()
}

impl Model {
    fn day(&self, region: u16) -> i32 {
        business_day_of(self.regions.get(region).unwrap(), self.now_ms)
    }

    /// Picks below `KNOWN_PICKS` choose an existing entity; the rest an unknown id.
    fn profile_id(&self, index: usize) -> u64 {
        match self.profiles.len() {
            0 => UNKNOWN_ID,
            len if index < KNOWN_PICKS => self.profiles[index % len].0,
            _ => UNKNOWN_ID,
        }
    }

    fn account_id(&self, index: usize) -> u64 {
        match self.accounts.len() {
            0 => UNKNOWN_ID,
            len if index < KNOWN_PICKS => self.accounts[index % len],
            _ => UNKNOWN_ID,
        }
    }

    /// Picks the newest holds most (they are the ones still open).
    fn hold_id(&self, index: usize) -> u64 {
        match self.holds.len() {
            0 => UNKNOWN_ID,
            len if index < KNOWN_PICKS => self.holds[len - 1 - (index % len.min(8))],
            _ => UNKNOWN_ID,
        }
    }

    /// What the open holds of `account` hold.
    fn held(&self, account: u64) -> u64 {
        self.holds_by_id
            .values()
            .filter(|h| h.card == account && h.status == HoldStatus::Pending)
            .map(ModelHold::held)
            .sum()
    }

    fn available(&self, account: u64) -> u64 {
        self.by_id[&account].balance - self.held(account)
    }

    /// Expires every open hold whose expiry day has come (§12): what it holds is released,
    /// as of its expiry day.
    fn expire(&mut self) {
        for id in self.holds.clone() {
            let hold = &self.holds_by_id[&id];
            let region = self.by_id[&hold.card].region;
            if hold.status != HoldStatus::Pending || self.day(region) < hold.expires_day {
                continue;
            }
            let hold = self.holds_by_id.get_mut(&id).unwrap();
            let card = self.by_id.get_mut(&hold.card).unwrap().card.as_mut().unwrap();
            let (held, day) = (hold.held(), hold.expires_day);
            hold.release_newest(held, card, day);
            hold.status = HoldStatus::Expired;
        }
    }

    /// The hold `id` names, unless forgotten (`HOLD_KEPT_DAYS` after its expiry day).
    fn hold(&self, id: u64) -> Result<&ModelHold, Reason> {
        let hold = self.holds_by_id.get(&id).ok_or(Reason::UnknownHold)?;
        let region = self.by_id[&hold.card].region;
        if self.day(region) >= hold.expires_day + HOLD_KEPT_DAYS {
            return Err(Reason::UnknownHold);
        }
        Ok(hold)
    }

    /// The hold `id` if it is pending, or why not.
    fn pending(&self, id: u64) -> Result<&ModelHold, Reason> {
        let hold = self.hold(id)?;
        match hold.status {
            HoldStatus::Pending => Ok(hold),
            HoldStatus::Closed => Err(Reason::HoldClosed),
            HoldStatus::Expired => Err(Reason::HoldExpired),
        }
    }

    /// Whether card `card` may take `amount` more in its window and from available money
    /// (§12: decided like a payment). Returns the spending including it.
    fn decide_like_a_payment(&self, card: u64, amount: u64) -> Result<u64, Reason> {
        let account = self.by_id.get(&card).ok_or(Reason::UnknownCard)?;
        let state = account.card.as_ref().ok_or(Reason::UnknownCard)?;
        if state.blocked {
            return Err(Reason::CardBlocked);
        }
        let spent = state.spent(self.day(account.region));
        if spent + amount > state.ceiling.unwrap_or(300_000) {
            return Err(Reason::CeilingExceeded);
        }
        if self.available(card) < amount {
            return Err(Reason::InsufficientFunds);
        }
        Ok(spent + amount)
    }

    fn command(&self, op: &Op) -> Option<Command> {
        Some(match *op {
            Op::OpenProfile { region } => Command::OpenProfile { region },
            Op::OpenAccount { profile, savings } => Command::OpenAccount {
                profile: self.profile_id(profile),
                kind: if savings { AccountKind::Savings } else { AccountKind::Checking },
                opening: None,
            },
            Op::Pay { card, amount } => {
                Command::Pay { card: self.account_id(card), amount_minor: amount }
            }
            Op::Transfer { from, to, amount } => Command::Transfer {
                from: self.account_id(from),
                to: self.account_id(to),
                amount_minor: amount,
            },
            Op::Deposit { account, amount } => {
                Command::Deposit { account: self.account_id(account), amount_minor: amount }
            }
            Op::SetCeiling { card, ceiling } => {
                Command::SetCeiling { card: self.account_id(card), ceiling_minor: ceiling }
            }
            Op::Block { card } => Command::Block { card: self.account_id(card) },
            Op::Unblock { card } => Command::Unblock { card: self.account_id(card) },
            Op::ReadAccount { account } => {
                Command::ReadAccount { account: self.account_id(account) }
            }
            Op::ReadCard { card } => Command::ReadCard { card: self.account_id(card) },
            Op::ReadProfile { profile } => {
                Command::ReadProfile { profile: self.profile_id(profile) }
            }
            Op::Authorize { card, amount } => {
                Command::Authorize { card: self.account_id(card), amount_minor: amount }
            }
            Op::Increment { hold, amount } => {
                Command::AuthorizeIncrement { hold: self.hold_id(hold), amount_minor: amount }
            }
            Op::Capture { hold, amount, last: false } => {
                Command::Capture { hold: self.hold_id(hold), amount_minor: amount }
            }
            Op::Capture { hold, amount, last: true } => {
                Command::CaptureFinal { hold: self.hold_id(hold), amount_minor: amount }
            }
            Op::Void { hold, amount } => {
                Command::Void { hold: self.hold_id(hold), amount_minor: amount }
            }
            Op::Refund { card, amount } => {
                Command::Refund { card: self.account_id(card), amount_minor: amount }
            }
            Op::ReadHold { hold } => Command::ReadHold { hold: self.hold_id(hold) },
            Op::ReadBalanceDetail { account } => {
                Command::ReadBalanceDetail { account: self.account_id(account) }
            }
            Op::ReadReleases { card } => Command::ReadReleases { card: self.account_id(card) },
            Op::Advance { .. } | Op::Epochs | Op::Checkpoint => return None,
        })
    }

    fn valid_amount(amount: u64) -> bool {
        (1..=1_000_000_000_000_000).contains(&amount)
    }

    /// The model's outcome; for opens, `engine` supplies the id the engine chose.
    fn apply(&mut self, request: &Request, engine: &Outcome) -> Outcome {
        let command = &request.command;
        let amount_ok = match *command {
            Command::Pay { amount_minor, .. }
            | Command::Transfer { amount_minor, .. }
            | Command::Deposit { amount_minor, .. }
            | Command::SetCeiling { ceiling_minor: amount_minor, .. }
            | Command::Authorize { amount_minor, .. }
            | Command::AuthorizeIncrement { amount_minor, .. }
            | Command::Capture { amount_minor, .. }
            | Command::CaptureFinal { amount_minor, .. }
            | Command::Void { amount_minor: Some(amount_minor), .. }
            | Command::Refund { amount_minor, .. } => Self::valid_amount(amount_minor),
            _ => true,
        };
        self.expire();
        if !amount_ok {
            return Outcome::Declined(Reason::InvalidAmount);
        }
        if let Command::OpenProfile { region } = *command {
            if self.regions.get(region).is_none() {
                return Outcome::Declined(Reason::UnknownRegion);
            }
        }
        let id = request.command_id.as_ref().filter(|_| !is_read(command));
        if let Some(id) = id {
            if let Some((first, outcome, region, day)) = self.remembered.get(id.as_str()) {
                let retention = self.regions.get(*region).unwrap().idempotency_retention_days;
                // Remembered through business day `day + retention - 1` of its region.
                if self.day(*region) < day + i32::from(retention) {
                    return if first == command {
                        outcome.clone()
                    } else {
                        Outcome::Declined(Reason::IdempotencyConflict)
                    };
                }
            }
        }
        let region = self.region_of(command);
        let outcome = self.decide(command, engine);
        if let Some(id) = id {
            let record = (command.clone(), outcome.clone(), region, self.day(region));
            self.remembered.insert(id.as_str().to_owned(), record);
        }
        outcome
    }

    /// The region whose retention applies (§6): the account's (a transfer's source's),
    /// the profile's or the one named; the first region for what names nothing known.
    fn region_of(&self, command: &Command) -> u16 {
        let account = match *command {
            Command::OpenProfile { region } if self.regions.get(region).is_some() => return region,
            Command::OpenAccount { profile, .. } => {
                return self.profiles.iter().find(|p| p.0 == profile).map_or(0, |p| p.1)
            }
            Command::Pay { card: id, .. }
            | Command::Transfer { from: id, .. }
            | Command::Deposit { account: id, .. }
            | Command::SetCeiling { card: id, .. }
            | Command::Block { card: id }
            | Command::Unblock { card: id }
            | Command::Authorize { card: id, .. }
            | Command::Refund { card: id, .. } => id,
            Command::AuthorizeIncrement { hold, .. }
            | Command::Capture { hold, .. }
            | Command::CaptureFinal { hold, .. }
            | Command::Void { hold, .. } => match self.hold(hold) {
                Ok(hold) => hold.card,
                Err(_) => return 0,
            },
            _ => return 0,
        };
        self.by_id.get(&account).map_or(0, |entry| entry.region)
    }

    fn decide(&mut self, command: &Command, engine: &Outcome) -> Outcome {
        use Outcome::Declined;
        match *command {
            Command::OpenProfile { region } => {
                let Outcome::ProfileOpened { profile } = *engine else {
                    return Outcome::Updated;
                };
                self.profiles.push((profile, region));
                Outcome::ProfileOpened { profile }
            }
            Command::OpenAccount { profile, kind, .. } => {
                let Some(&(_, region)) = self.profiles.iter().find(|p| p.0 == profile) else {
                    return Declined(Reason::UnknownProfile);
                };
                let Outcome::AccountOpened { account, .. } = *engine else {
                    return Outcome::Updated;
                };
                let card = (kind == AccountKind::Checking).then(|| ModelCard {
                    blocked: false,
                    ceiling: None,
                    payments: Vec::new(),
                });
                let has_card = card.is_some();
                self.accounts.push(account);
                self.by_id
                    .insert(account, ModelAccount { profile, region, balance: 100_000, card });
                Outcome::AccountOpened { account, card: has_card.then_some(account) }
            }
            Command::Pay { card, amount_minor } => {
                let now_day = self.by_id.get(&card).map(|a| self.day(a.region));
                let held = self.held(card);
                let Some(account) = self.by_id.get_mut(&card) else {
                    return Declined(Reason::UnknownCard);
                };
                let Some(state) = account.card.as_mut() else {
                    return Declined(Reason::UnknownCard);
                };
                if state.blocked {
                    return Declined(Reason::CardBlocked);
                }
                let day = now_day.unwrap_or_default();
                let spent = state.spent(day);
                if spent + amount_minor > state.ceiling.unwrap_or(300_000) {
                    return Declined(Reason::CeilingExceeded);
                }
                if account.balance - held < amount_minor {
                    return Declined(Reason::InsufficientFunds);
                }
                account.balance -= amount_minor;
                state.payments.push((day, i128::from(amount_minor)));
                Outcome::Approved {
                    balance_minor: account.balance,
                    spent_7d_minor: spent + amount_minor,
                }
            }
            Command::Transfer { from, to, amount_minor } => {
                if !self.by_id.contains_key(&from) {
                    return Declined(Reason::UnknownAccount);
                }
                if from == to {
                    return Declined(Reason::SameAccount);
                }
                // Funds are checked before the target: the source's shard decides them.
                if self.available(from) < amount_minor {
                    return Declined(Reason::InsufficientFunds);
                }
                if !self.by_id.contains_key(&to) {
                    return Declined(Reason::UnknownAccount);
                }
                if self.by_id[&to].balance.checked_add(amount_minor).is_none() {
                    return Declined(Reason::InvalidAmount);
                }
                self.by_id.get_mut(&from).unwrap().balance -= amount_minor;
                self.by_id.get_mut(&to).unwrap().balance += amount_minor;
                Outcome::Done { balance_minor: self.by_id[&from].balance }
            }
            Command::Deposit { account, amount_minor } => {
                let Some(entry) = self.by_id.get_mut(&account) else {
                    return Declined(Reason::UnknownAccount);
                };
                let Some(balance) = entry.balance.checked_add(amount_minor) else {
                    return Declined(Reason::InvalidAmount);
                };
                entry.balance = balance;
                Outcome::Done { balance_minor: balance }
            }
            Command::SetCeiling { card, ceiling_minor } => {
                self.change_card(card, |c| c.ceiling = Some(ceiling_minor))
            }
            Command::Block { card } => self.change_card(card, |c| c.blocked = true),
            Command::Unblock { card } => self.change_card(card, |c| c.blocked = false),
            Command::ReadAccount { account } => match self.by_id.get(&account) {
                None => Declined(Reason::UnknownAccount),
                Some(entry) => Outcome::Account(AccountView {
                    account,
                    profile: entry.profile,
                    kind: if entry.card.is_some() {
                        AccountKind::Checking
                    } else {
                        AccountKind::Savings
                    },
                    balance_minor: entry.balance,
                    card: entry.card.as_ref().map(|_| account),
                }),
            },
            Command::ReadCard { card } => {
                let Some(entry) = self.by_id.get(&card) else {
                    return Declined(Reason::UnknownCard);
                };
                let Some(state) = &entry.card else {
                    return Declined(Reason::UnknownCard);
                };
                let day = self.day(entry.region);
                let spent = state.spent(day);
                let ceiling = state.ceiling.unwrap_or(300_000);
                Outcome::Card(CardView {
                    card,
                    account: card,
                    status: if state.blocked { CardStatus::Blocked } else { CardStatus::Active },
                    ceiling_minor: ceiling,
                    spent_7d_minor: spent,
                    remaining_minor: ceiling.saturating_sub(spent),
                })
            }
            Command::Authorize { .. }
            | Command::AuthorizeIncrement { .. }
            | Command::Capture { .. }
            | Command::CaptureFinal { .. }
            | Command::Void { .. }
            | Command::Refund { .. }
            | Command::ReadHold { .. }
            | Command::ReadBalanceDetail { .. }
            | Command::ReadReleases { .. } => {
                self.decide_hold(command, engine).unwrap_or_else(Outcome::Declined)
            }
            Command::ReadProfile { profile } => {
                let Some(&(_, region)) = self.profiles.iter().find(|p| p.0 == profile) else {
                    return Declined(Reason::UnknownProfile);
                };
                let accounts = self
                    .accounts
                    .iter()
                    .copied()
                    .filter(|a| self.by_id[a].profile == profile)
                    .collect();
                Outcome::Profile(ProfileView { profile, region, accounts })
            }
        }
    }

    /// §12's commands.
    fn decide_hold(&mut self, command: &Command, engine: &Outcome) -> Result<Outcome, Reason> {
        match *command {
            Command::Authorize { card, amount_minor } => {
                let spent = self.decide_like_a_payment(card, amount_minor)?;
                let open = self
                    .holds_by_id
                    .values()
                    .filter(|h| h.card == card && h.status == HoldStatus::Pending)
                    .count();
                if open >= HOLDS_PER_ACCOUNT_MAX {
                    return Err(Reason::TooManyHolds);
                }
                let Outcome::Authorized { hold, .. } = *engine else {
                    return Ok(Outcome::Updated);
                };
                let region = self.by_id[&card].region;
                let day = self.day(region);
                let expiry = i32::from(self.regions.get(region).unwrap().hold_expiry_days);
                let entry = self.by_id.get_mut(&card).unwrap();
                entry.card.as_mut().unwrap().payments.push((day, i128::from(amount_minor)));
                self.holds.push(hold);
                self.holds_by_id.insert(
                    hold,
                    ModelHold {
                        card,
                        status: HoldStatus::Pending,
                        business_day: day,
                        expires_day: day + expiry,
                        authorized: amount_minor,
                        captured: 0,
                        released: 0,
                        pieces: vec![(day, amount_minor)],
                    },
                );
                let available_minor = self.available(card);
                Ok(Outcome::Authorized { hold, available_minor, spent_7d_minor: spent })
            }
            Command::AuthorizeIncrement { hold, amount_minor } => {
                let card = self.pending(hold)?.card;
                let spent = self.decide_like_a_payment(card, amount_minor)?;
                let day = self.day(self.by_id[&card].region);
                let entry = self.by_id.get_mut(&card).unwrap();
                entry.card.as_mut().unwrap().payments.push((day, i128::from(amount_minor)));
                let model = self.holds_by_id.get_mut(&hold).unwrap();
                model.authorized += amount_minor;
                match model.pieces.last_mut() {
                    Some(last) if last.0 == day => last.1 += amount_minor,
                    _ => model.pieces.push((day, amount_minor)),
                }
                let held_minor = model.held();
                let available_minor = self.available(card);
                Ok(Outcome::Incremented { held_minor, available_minor, spent_7d_minor: spent })
            }
            Command::Capture { hold, amount_minor }
            | Command::CaptureFinal { hold, amount_minor } => {
                let last = matches!(command, Command::CaptureFinal { .. });
                let model = self.pending(hold)?;
                if amount_minor > model.held() {
                    return Err(Reason::ExceedsHold);
                }
                let card = model.card;
                let day = self.day(self.by_id[&card].region);
                let entry = self.by_id.get_mut(&card).unwrap();
                entry.balance -= amount_minor;
                let balance_minor = entry.balance;
                let model = self.holds_by_id.get_mut(&hold).unwrap();
                model.take_oldest(amount_minor);
                model.captured += amount_minor;
                if last {
                    let rest = model.held();
                    model.release_newest(rest, entry.card.as_mut().unwrap(), day);
                }
                if model.held() == 0 {
                    model.status = HoldStatus::Closed;
                }
                Ok(Outcome::Captured { balance_minor, held_minor: model.held() })
            }
            Command::Void { hold, amount_minor } => {
                let model = self.pending(hold)?;
                let amount = amount_minor.unwrap_or(model.held());
                if amount > model.held() {
                    return Err(Reason::ExceedsHold);
                }
                let card = model.card;
                let day = self.day(self.by_id[&card].region);
                let entry = self.by_id.get_mut(&card).unwrap();
                let model = self.holds_by_id.get_mut(&hold).unwrap();
                model.release_newest(amount, entry.card.as_mut().unwrap(), day);
                if model.held() == 0 {
                    model.status = HoldStatus::Closed;
                }
                let held_minor = model.held();
                Ok(Outcome::Voided { available_minor: self.available(card), held_minor })
            }
            Command::Refund { card, amount_minor } => {
                let entry = self.by_id.get_mut(&card).ok_or(Reason::UnknownCard)?;
                if entry.card.is_none() {
                    return Err(Reason::UnknownCard);
                }
                entry.balance =
                    entry.balance.checked_add(amount_minor).ok_or(Reason::InvalidAmount)?;
                Ok(Outcome::Done { balance_minor: entry.balance })
            }
            Command::ReadHold { hold } => {
                let model = self.hold(hold)?;
                Ok(Outcome::Hold(HoldView {
                    hold,
                    card: model.card,
                    status: model.status,
                    authorized_minor: model.authorized,
                    captured_minor: model.captured,
                    released_minor: model.released,
                    held_minor: model.held(),
                    business_day: model.business_day,
                    expires_day: model.expires_day,
                }))
            }
            Command::ReadBalanceDetail { account } => {
                let entry = self.by_id.get(&account).ok_or(Reason::UnknownAccount)?;
                let open = self
                    .holds_by_id
                    .values()
                    .filter(|h| h.card == account && h.status == HoldStatus::Pending)
                    .count();
                Ok(Outcome::BalanceDetail(BalanceDetail {
                    balance_minor: entry.balance,
                    available_minor: self.available(account),
                    held_minor: self.held(account),
                    open_holds: open as u32,
                }))
            }
            Command::ReadReleases { card } => self.releases(card).map(Outcome::Releases),
            _ => unreachable!("not a hold command"),
        }
    }

    /// §12's release schedule: what counted on day d comes back on d + 7, a piece of an
    /// open hold on the hold's expiry day if that is sooner.
    fn releases(&self, card: u64) -> Result<Vec<Release>, Reason> {
        let entry = self.by_id.get(&card).ok_or(Reason::UnknownCard)?;
        let state = entry.card.as_ref().ok_or(Reason::UnknownCard)?;
        let today = self.day(entry.region);
        let mut back: HashMap<i32, i128> = HashMap::new();
        for &(day, amount) in state.payments.iter().filter(|(d, _)| in_window(*d, today)) {
            *back.entry(day + 7).or_default() += amount;
        }
        for hold in self.holds_by_id.values() {
            if hold.card != card || hold.status != HoldStatus::Pending {
                continue;
            }
            for &(day, amount) in hold.pieces.iter().filter(|(d, _)| in_window(*d, today)) {
                if hold.expires_day < day + 7 {
                    *back.entry(day + 7).or_default() -= i128::from(amount);
                    *back.entry(hold.expires_day).or_default() += i128::from(amount);
                }
            }
        }
        let mut releases: Vec<Release> = back
            .into_iter()
            .filter(|&(_, amount)| amount > 0)
            .map(|(business_day, amount)| Release {
                business_day,
                amount_minor: u64::try_from(amount).unwrap(),
            })
            .collect();
        releases.sort_by_key(|r| r.business_day);
        Ok(releases)
    }

    fn change_card(&mut self, card: u64, change: impl FnOnce(&mut ModelCard)) -> Outcome {
        match self.by_id.get_mut(&card).and_then(|a| a.card.as_mut()) {
            Some(state) => {
                change(state);
                Outcome::Updated
            }
            None => Outcome::Declined(Reason::UnknownCard),
        }
    }
}

fn is_read(command: &Command) -> bool {
    matches!(
        command,
        Command::ReadAccount { .. }
            | Command::ReadCard { .. }
            | Command::ReadProfile { .. }
            | Command::ReadHold { .. }
            | Command::ReadBalanceDetail { .. }
            | Command::ReadReleases { .. }
    )
}

/// Runs `ops` on a fresh engine and the model; restarts a durable engine at `restart_at`.
fn check(
    ops: &[(Op, Option<u8>)],
    shards: u16,
    restart_at: Option<usize>,
) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(START_MS));
    let dir = tempfile::tempdir().unwrap();
    let config = match restart_at {
        Some(_) => EngineConfig::durable(dir.path()).with_durability(Durability::Async),
        None => EngineConfig::in_memory(),
    }
    .with_shards(shards)
    .with_regions(regions())
    .with_clock(clock.clone())
    .with_epoch_poll(None);
    let mut engine = Engine::open(config.clone()).unwrap();
    let mut model = Model {
        regions: regions(),
        now_ms: START_MS,
        profiles: Vec::new(),
        accounts: Vec::new(),
        by_id: HashMap::new(),
        remembered: HashMap::new(),
        holds: Vec::new(),
        holds_by_id: HashMap::new(),
    };
    for (step, (op, id)) in ops.iter().enumerate() {
        if restart_at == Some(step) {
            drop(engine);
            engine = Engine::open(config.clone()).unwrap();
        }
        if let Op::Advance { hours } = op {
            clock.advance(hours * HOUR_MS);
            model.now_ms += hours * HOUR_MS;
            continue;
        }
        if let Op::Epochs = op {
            engine.run_due_epochs().unwrap();
            continue;
        }
        if let Op::Checkpoint = op {
            if restart_at.is_some() {
                engine.checkpoint().unwrap();
            }
            continue;
        }
        let Some(command) = model.command(op) else {
            continue;
        };
        let request = match id {
            Some(n) => Request::with_id(command, CommandId::new(&format!("id-{n}")).unwrap()),
            None => Request::new(command),
        };
        let got = engine.execute(request.clone()).unwrap();
        let expected = model.apply(&request, &got);
        prop_assert_eq!(&got, &expected, "step {} {:?}", step, request);
    }
    model.expire();
    let accounts: Vec<u64> = model.by_id.keys().copied().collect();
    for account in accounts {
        let detail = engine.run(Command::ReadBalanceDetail { account }).unwrap();
        let expected = model.decide_hold(&Command::ReadBalanceDetail { account }, &detail);
        prop_assert_eq!(Ok(detail), expected);
    }
    let audit = engine.audit().unwrap();
    prop_assert!(audit.holds(), "{:?}", audit);
    prop_assert_eq!(audit.in_flight_minor, 0);
    Ok(())
}

fn ops() -> impl Strategy<Value = Vec<(Op, Option<u8>)>> {
    let with_id = prop_oneof![3 => Just(None), 1 => (0u8..6).prop_map(Some)];
    // Start with a few accounts so that payments have somewhere to go.
    let seed = vec![
        (Op::OpenProfile { region: 0 }, None),
        (Op::OpenProfile { region: 1 }, None),
        (Op::OpenAccount { profile: 0, savings: false }, None),
        (Op::OpenAccount { profile: 1, savings: false }, None),
        (Op::OpenAccount { profile: 0, savings: true }, None),
        (Op::OpenAccount { profile: 1, savings: false }, None),
    ];
    prop::collection::vec((op(), with_id), 1..160).prop_map(move |random| {
        let mut all = seed.clone();
        all.extend(random);
        all
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model_in_memory(ops in ops()) {
        check(&ops, 3, None)?;
    }

    #[test]
    fn engine_matches_the_model_across_a_restart(ops in ops(), at in 0usize..200) {
        let at = at % ops.len().max(1);
        check(&ops, 2, Some(at))?;
    }
}
