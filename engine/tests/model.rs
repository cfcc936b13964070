//! Property test: random command sequences against a tiny reference model.
//!
//! The model is written from SPEC §2, §3 and §6 alone: balances in a map, a card's window
//! as the list of its approved payments with their business days, idempotency as a map of
//! command ids with the business day each was used on, forgotten after its region's
//! retention (2 and 4 business days here, so that clock moves cross it). Every outcome of
//! the engine must equal the model's, and at the end every balance must match and the
//! conservation equation must hold. A variant runs a durable engine that takes
//! checkpoints and restarts in the middle of the sequence, so loading a checkpoint and
//! replaying the log after it are checked too.

use std::collections::HashMap;
use std::sync::Arc;

use plafond::internals::calendar::business_day_of;
use plafond::{
    AccountKind, AccountView, CardStatus, CardView, Command, CommandId, Durability, Engine,
    EngineConfig, ManualClock, Outcome, ProfileView, Reason, Regions, Request,
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
    /// Approved payments: (business day, amount).
    payments: Vec<(i32, u64)>,
}

impl ModelCard {
    /// Approved payments of business days `day - 6 ..= day` (§3).
    fn spent(&self, day: i32) -> u64 {
        self.payments.iter().filter(|(d, _)| *d > day - 7 && *d <= day).map(|p| p.1).sum()
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
}

/// The built-in regions, remembering command ids 2 (`eu-west`) and 4 (`us-east`) days.
fn regions() -> Regions {
    let mut text = String::new();
    for (name, zone, days) in [("eu-west", "Europe/Paris", 2), ("us-east", "America/New_York", 4)] {
        text.push_str(&format!(
            "[[region]]\nname = \"{name}\"\ntime_zone = \"{zone}\"\nroll_time = \"04:00\"\n\
             initial_deposit = 100000\ndefault_card_ceiling = 300000\nsavings_rate_bp = 300\n\
             idempotency_retention_days = {days}\n"
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
            | Command::SetCeiling { ceiling_minor: amount_minor, .. } => {
                Self::valid_amount(amount_minor)
            }
            _ => true,
        };
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
            | Command::Unblock { card: id } => id,
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
                if account.balance < amount_minor {
                    return Declined(Reason::InsufficientFunds);
                }
                account.balance -= amount_minor;
                state.payments.push((day, amount_minor));
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
                if self.by_id[&from].balance < amount_minor {
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
        Command::ReadAccount { .. } | Command::ReadCard { .. } | Command::ReadProfile { .. }
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
    for (&account, entry) in &model.by_id {
        let Outcome::Account(view) = engine.run(Command::ReadAccount { account }).unwrap() else {
            return Err(TestCaseError::fail("account vanished"));
        };
        prop_assert_eq!(view.balance_minor, entry.balance);
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
