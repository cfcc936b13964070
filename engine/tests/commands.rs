//! The commands of §2 through the embedded API, on in-memory and durable engines.

use std::sync::Arc;

use plafond::{
    AccountKind, Command, CommandId, Durability, Engine, EngineConfig, ManualClock, Outcome,
    Reason, Request,
};

const START_MS: i64 = ManualClock::SERVER_START_MS;
const DAY_MS: i64 = 86_400_000;

fn engine(shards: u16) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = EngineConfig::in_memory().with_shards(shards).with_clock(clock.clone());
    (Engine::open(config).unwrap(), clock)
}

fn open_checking(engine: &Engine, region: &str) -> (u64, u64) {
    let region = engine.region_id(region).unwrap();
    let Outcome::ProfileOpened { profile } = engine.run(Command::OpenProfile { region }).unwrap()
    else {
        panic!("profile")
    };
    let opened =
        engine.run(Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None });
    match opened.unwrap() {
        Outcome::AccountOpened { account, card: Some(card) } => (profile, card.max(account)),
        other => panic!("unexpected {other:?}"),
    }
}

fn balance(engine: &Engine, account: u64) -> u64 {
    match engine.run(Command::ReadAccount { account }).unwrap() {
        Outcome::Account(view) => view.balance_minor,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_decline_reason_of_section_2() {
    let (engine, _) = engine(3);
    let (profile, card) = open_checking(&engine, "eu-west");
    let pay = |card, amount_minor| engine.run(Command::Pay { card, amount_minor }).unwrap();
    assert_eq!(
        engine.run(Command::OpenProfile { region: 99 }).unwrap(),
        Outcome::Declined(Reason::UnknownRegion)
    );
    let open = Command::OpenAccount {
        profile: profile + 3_000,
        kind: AccountKind::Savings,
        opening: None,
    };
    assert_eq!(engine.run(open).unwrap(), Outcome::Declined(Reason::UnknownProfile));
    assert_eq!(pay(card + 3_000, 10), Outcome::Declined(Reason::UnknownCard));
    assert_eq!(pay(card, 0), Outcome::Declined(Reason::InvalidAmount));
    assert_eq!(pay(card, 1_000_000_000_000_001), Outcome::Declined(Reason::InvalidAmount));
    assert_eq!(pay(card, 100_001), Outcome::Declined(Reason::InsufficientFunds));
    engine.run(Command::SetCeiling { card, ceiling_minor: 50 }).unwrap();
    assert_eq!(pay(card, 51), Outcome::Declined(Reason::CeilingExceeded));
    assert_eq!(engine.run(Command::Block { card }).unwrap(), Outcome::Updated);
    assert_eq!(pay(card, 1), Outcome::Declined(Reason::CardBlocked));
    engine.run(Command::Unblock { card }).unwrap();
    assert_eq!(pay(card, 50), Outcome::Approved { balance_minor: 99_950, spent_7d_minor: 50 });
    let same = Command::Transfer { from: card, to: card, amount_minor: 1 };
    assert_eq!(engine.run(same).unwrap(), Outcome::Declined(Reason::SameAccount));
    let unknown = Command::Transfer { from: card, to: 1_000_000, amount_minor: 1 };
    assert_eq!(engine.run(unknown).unwrap(), Outcome::Declined(Reason::UnknownAccount));
    assert_eq!(balance(&engine, card), 99_950, "a refused transfer is refunded");
    let deposit = Command::Deposit { account: 1_000_000, amount_minor: 1 };
    assert_eq!(engine.run(deposit).unwrap(), Outcome::Declined(Reason::UnknownAccount));
    assert!(engine.audit().unwrap().holds());
    let stats = engine.stats().unwrap();
    let declined = |reason: Reason| stats.total.counters.declined[reason.index()];
    assert_eq!(declined(Reason::InvalidAmount), 2);
    // Counted in the region of the card they named, like every other decline (§10).
    let eu_west = &stats.regions[0].1.counters;
    assert_eq!(stats.regions[0].0, "eu-west");
    assert_eq!(eu_west.declined[Reason::InvalidAmount.index()], 2);
    assert_eq!(eu_west.declined_minor[Reason::InvalidAmount.index()], 1_000_000_000_000_001);
    assert_eq!(declined(Reason::UnknownAccount), 2);
    assert_eq!(declined(Reason::CardBlocked), 1);
    assert_eq!(stats.total.counters.payments_approved, 1);
}

#[test]
fn transfers_move_money_between_shards_and_profiles() {
    let (engine, _) = engine(4);
    let accounts: Vec<u64> = (0..8).map(|_| open_checking(&engine, "us-east").1).collect();
    for pair in accounts.windows(2) {
        let moved = engine
            .run(Command::Transfer { from: pair[0], to: pair[1], amount_minor: 1_000 })
            .unwrap();
        assert!(matches!(moved, Outcome::Done { .. }), "{moved:?}");
    }
    assert_eq!(balance(&engine, accounts[0]), 99_000);
    assert_eq!(balance(&engine, accounts[7]), 101_000);
    for &middle in &accounts[1..7] {
        assert_eq!(balance(&engine, middle), 100_000);
    }
    let audit = engine.audit().unwrap();
    assert!(audit.holds());
    assert_eq!(audit.in_flight_minor, 0);
    // Transfers do not count toward the card's ceiling.
    let Outcome::Card(card) = engine.run(Command::ReadCard { card: accounts[0] }).unwrap() else {
        panic!()
    };
    assert_eq!(card.spent_7d_minor, 0);
}

#[test]
fn the_window_slides_with_business_days() {
    let (engine, clock) = engine(2);
    let (_, card) = open_checking(&engine, "eu-west");
    engine.run(Command::SetCeiling { card, ceiling_minor: 1_000 }).unwrap();
    let pay = |amount_minor| engine.run(Command::Pay { card, amount_minor }).unwrap();
    assert!(matches!(pay(600), Outcome::Approved { .. }));
    clock.advance(3 * DAY_MS);
    assert_eq!(pay(500), Outcome::Declined(Reason::CeilingExceeded));
    assert!(matches!(pay(400), Outcome::Approved { spent_7d_minor: 1_000, .. }));
    // Seven business days after the first payment, it leaves the window.
    clock.advance(4 * DAY_MS);
    assert_eq!(pay(601), Outcome::Declined(Reason::CeilingExceeded));
    assert!(matches!(pay(600), Outcome::Approved { spent_7d_minor: 1_000, .. }));
}

#[test]
fn idempotency_returns_the_first_outcome_and_refuses_conflicts() {
    let (engine, _) = engine(2);
    let (_, a) = open_checking(&engine, "eu-west");
    let (_, b) = open_checking(&engine, "eu-west");
    let id = CommandId::new("t-1").unwrap();
    let transfer =
        Request::with_id(Command::Transfer { from: a, to: b, amount_minor: 700 }, id.clone());
    let first = engine.execute(transfer.clone()).unwrap();
    assert_eq!(engine.execute(transfer).unwrap(), first);
    assert_eq!(balance(&engine, a), 99_300);
    let other = Request::with_id(Command::Deposit { account: b, amount_minor: 5 }, id);
    assert_eq!(engine.execute(other).unwrap(), Outcome::Declined(Reason::IdempotencyConflict));
    assert_eq!(balance(&engine, b), 100_700);
    // A declined outcome is remembered too.
    let declined = Request::with_id(
        Command::Pay { card: a, amount_minor: 200_000 },
        CommandId::new("p").unwrap(),
    );
    assert_eq!(
        engine.execute(declined.clone()).unwrap(),
        Outcome::Declined(Reason::InsufficientFunds)
    );
    engine.run(Command::Deposit { account: a, amount_minor: 2_000_000 }).unwrap();
    assert_eq!(engine.execute(declined).unwrap(), Outcome::Declined(Reason::InsufficientFunds));
    assert!(CommandId::new("").is_err());
    assert!(CommandId::new(&"x".repeat(65)).is_err());
    assert!(CommandId::new("has space").is_err());
}

#[test]
fn durable_engine_recovers_its_state_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = EngineConfig::durable(dir.path()).with_shards(3).with_clock(clock.clone());
    let (a, b, card_view, id);
    {
        let engine = Engine::open(config.clone()).unwrap();
        a = open_checking(&engine, "eu-west").1;
        b = open_checking(&engine, "us-east").1;
        id = CommandId::new("once").unwrap();
        let pay = Request::with_id(Command::Pay { card: a, amount_minor: 1_234 }, id.clone());
        assert!(matches!(engine.execute(pay).unwrap(), Outcome::Approved { .. }));
        engine.run(Command::Transfer { from: b, to: a, amount_minor: 66 }).unwrap();
        engine.run(Command::Block { card: b }).unwrap();
        card_view = engine.run(Command::ReadCard { card: a }).unwrap();
    }
    let engine = Engine::open(config.clone()).unwrap();
    assert_eq!(balance(&engine, a), 100_000 - 1_234 + 66);
    assert_eq!(balance(&engine, b), 100_000 - 66);
    assert_eq!(engine.run(Command::ReadCard { card: a }).unwrap(), card_view);
    let retry = Request::with_id(Command::Pay { card: a, amount_minor: 1_234 }, id);
    assert_eq!(
        engine.execute(retry).unwrap(),
        Outcome::Approved { balance_minor: 98_766, spent_7d_minor: 1_234 }
    );
    assert_eq!(balance(&engine, a), 98_832, "the retry after restart paid nothing");
    assert_eq!(
        engine.run(Command::Pay { card: b, amount_minor: 1 }).unwrap(),
        Outcome::Declined(Reason::CardBlocked)
    );
    assert!(engine.audit().unwrap().holds());
    drop(engine);
    let wrong_shards = Engine::open(config.with_shards(2)).err().unwrap().to_string();
    assert!(wrong_shards.contains("3 shards"), "{wrong_shards}");
}

#[test]
fn async_durability_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        EngineConfig::durable(dir.path()).with_shards(2).with_durability(Durability::Async);
    let card = {
        let engine = Engine::open(config.clone()).unwrap();
        let (_, card) = open_checking(&engine, "eu-west");
        engine.run(Command::Pay { card, amount_minor: 10 }).unwrap();
        card
    };
    let engine = Engine::open(config).unwrap();
    assert_eq!(balance(&engine, card), 99_990);
}

#[test]
fn cards_near_their_ceiling_are_counted_as_of_now() {
    let (engine, clock) = engine(2);
    let (_, card) = open_checking(&engine, "eu-west");
    let (_, other) = open_checking(&engine, "eu-west");
    engine.run(Command::SetCeiling { card, ceiling_minor: 1_000 }).unwrap();
    engine.run(Command::Pay { card, amount_minor: 950 }).unwrap();
    engine.run(Command::Pay { card: other, amount_minor: 900 }).unwrap();
    let near = |engine: &Engine| engine.stats().unwrap().regions[0].1.cards_near_ceiling;
    assert_eq!(near(&engine), 1, "950 of 1_000 is above 90 %; 900 of 300_000 is not");
    // A week later the payment has left the window, even though no command rolled it.
    clock.advance(7 * DAY_MS);
    engine.run(Command::ReadAccount { account: other }).unwrap();
    engine.run(Command::ReadAccount { account: card }).unwrap();
    assert_eq!(near(&engine), 0);
}

/// One shard takes no claims at the door (`Claims::new`): its table of records in flight
/// must answer every other use of an id while the first is still on its way to disk, in
/// the same submission, in later ones, and from other threads at once.
#[test]
fn one_shard_answers_the_uses_of_an_id_in_flight_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig::durable(dir.path()).with_shards(1).with_durability(Durability::Sync);
    let engine = Arc::new(Engine::open(config).unwrap());
    let (_, card) = open_checking(&engine, "eu-west");
    let before = balance(&engine, card);
    let rounds = 20;
    for round in 0..rounds {
        let id = CommandId::new(&format!("dup-{round}")).unwrap();
        let pay = Request::with_id(Command::Pay { card, amount_minor: 100 }, id.clone());
        let other = Request::with_id(Command::Deposit { account: card, amount_minor: 7 }, id);
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (engine, pay, other) = (engine.clone(), pay.clone(), other.clone());
                std::thread::spawn(move || {
                    let ticket = engine.submit(vec![pay.clone(), other, pay.clone()]).unwrap();
                    let later = engine.submit(vec![pay]).unwrap();
                    let mut outcomes = ticket.wait().unwrap();
                    outcomes.extend(later.wait().unwrap());
                    outcomes
                })
            })
            .collect();
        let outcomes: Vec<Vec<Outcome>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let first = &outcomes[0][0];
        assert!(matches!(first, Outcome::Approved { .. }), "{first:?}");
        for of_thread in &outcomes {
            assert_eq!(&of_thread[0], first);
            assert_eq!(of_thread[1], Outcome::Declined(Reason::IdempotencyConflict));
            assert_eq!(&of_thread[2], first);
            assert_eq!(&of_thread[3], first);
        }
    }
    assert_eq!(balance(&engine, card), before - 100 * rounds);
    assert_eq!(engine.ids_in_flight(), 0, "one shard claims nothing");
}
