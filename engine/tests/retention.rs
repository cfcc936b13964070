//! §6 with bounded memory: command ids are remembered on disk for their region's
//! `idempotency_retention_days` business days, found again after restarts and across
//! shards, and count as new once retention has passed; memory holds only the records of
//! batches in flight.

mod support;

use std::path::Path;
use std::sync::Arc;

use plafond::internals::store::IDS_COLUMN_FAMILY;
use plafond::{
    Command, CommandId, Durability, Engine, EngineConfig, ManualClock, Outcome, Reason, Regions,
    Request,
};

/// 2027-01-04T12:00:00Z, a Monday: business day 2027-01-04 in both regions.
const START_MS: i64 = 1_799_064_000_000;
const DAY_MS: i64 = 86_400_000;

/// `eu-west` remembering ids 3 business days, `us-east` the default 30.
fn regions() -> Regions {
    Regions::from_toml(
        r#"
        [[region]]
        name = "eu-west"
        time_zone = "Europe/Paris"
        roll_time = "04:00"
        initial_deposit = 100000
        default_card_ceiling = 300000
        savings_rate_bp = 300
        idempotency_retention_days = 3

        [[region]]
        name = "us-east"
        time_zone = "America/New_York"
        roll_time = "04:00"
        initial_deposit = 100000
        default_card_ceiling = 300000
        savings_rate_bp = 300
        "#,
    )
    .unwrap()
}

fn config(dir: &Path, clock: &Arc<ManualClock>) -> EngineConfig {
    EngineConfig::durable(dir)
        .with_shards(2)
        .with_regions(regions())
        .with_clock(clock.clone())
        .with_epoch_poll(None)
}

/// A checking account in `region`; its id is its card's.
fn balance(engine: &Engine, account: u64) -> u64 {
    match engine.run(Command::ReadAccount { account }).unwrap() {
        Outcome::Account(view) => view.balance_minor,
        other => panic!("a balance: {other:?}"),
    }
}

fn pay(card: u64, amount_minor: u64, id: &str) -> Request {
    Request::with_id(Command::Pay { card, amount_minor }, CommandId::new(id).unwrap())
}

/// Moves the clock `days` business days on and runs the epochs due.
fn advance_days(engine: &Engine, clock: &ManualClock, days: i64) {
    clock.advance(days * DAY_MS);
    engine.run_due_epochs().unwrap();
}

#[test]
fn a_retry_gets_its_outcome_across_restarts_until_retention_ends() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let (eu, us);
    {
        let engine = Engine::open(config(dir.path(), &clock)).unwrap();
        eu = support::open_checking(&engine, "eu-west");
        us = support::open_checking(&engine, "us-east");
        engine.run_due_epochs().unwrap();
        let approved = Outcome::Approved { balance_minor: 99_000, spent_7d_minor: 1_000 };
        assert_eq!(engine.execute(pay(eu, 1_000, "eu-1")).unwrap(), approved);
        assert_eq!(engine.execute(pay(us, 1_000, "us-1")).unwrap(), approved);
    }
    // Two restarts and two business days later, both ids still answer, and pay nothing.
    for _ in 0..2 {
        let engine = Engine::open(config(dir.path(), &clock)).unwrap();
        advance_days(&engine, &clock, 1);
        let approved = Outcome::Approved { balance_minor: 99_000, spent_7d_minor: 1_000 };
        assert_eq!(engine.execute(pay(eu, 1_000, "eu-1")).unwrap(), approved);
        assert_eq!(engine.execute(pay(us, 1_000, "us-1")).unwrap(), approved);
        assert_eq!((balance(&engine, eu), balance(&engine, us)), (99_000, 99_000));
        let conflict = engine.execute(pay(eu, 7, "eu-1")).unwrap();
        assert_eq!(conflict, Outcome::Declined(Reason::IdempotencyConflict));
    }
    // Day D + 3 in eu-west: past its retention, the id counts as new and pays again;
    // us-east remembers 30 days.
    let engine = Engine::open(config(dir.path(), &clock)).unwrap();
    advance_days(&engine, &clock, 1);
    let again = engine.execute(pay(eu, 1_000, "eu-1")).unwrap();
    assert!(matches!(again, Outcome::Approved { balance_minor: 98_000, .. }), "{again:?}");
    let remembered = engine.execute(pay(us, 1_000, "us-1")).unwrap();
    assert!(matches!(remembered, Outcome::Approved { balance_minor: 99_000, .. }));
    assert_eq!((balance(&engine, eu), balance(&engine, us)), (98_000, 99_000));
    // The new use is remembered again, from today.
    let retry = engine.execute(pay(eu, 1_000, "eu-1")).unwrap();
    assert_eq!(retry, again);
    assert_eq!(balance(&engine, eu), 98_000);
}

#[test]
fn an_id_used_on_one_shard_conflicts_on_another_in_flight_durable_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let engine = Engine::open(config(dir.path(), &clock)).unwrap();
    let accounts: Vec<u64> = (0..4).map(|_| support::open_checking(&engine, "us-east")).collect();
    let (a, b) = (accounts[0], *accounts.iter().find(|&&id| id % 2 != accounts[0] % 2).unwrap());
    let id = CommandId::new("shared-id").unwrap();
    // In one submission: both in flight at once, on two shards.
    let first = Request::with_id(Command::Pay { card: a, amount_minor: 10 }, id.clone());
    let second = Request::with_id(Command::Deposit { account: b, amount_minor: 10 }, id.clone());
    let outcomes = engine.submit(vec![first.clone(), second.clone()]).unwrap().wait().unwrap();
    assert!(matches!(outcomes[0], Outcome::Approved { .. }), "{outcomes:?}");
    assert_eq!(outcomes[1], Outcome::Declined(Reason::IdempotencyConflict));
    // Once durable, the other shard finds the record on disk.
    assert_eq!(engine.execute(second.clone()).unwrap(), outcomes[1]);
    // A shard ends the claims of a batch at its next batch after the batch is durable.
    engine.run(Command::Deposit { account: a, amount_minor: 1 }).unwrap();
    assert_eq!(engine.ids_in_flight(), 0, "claims end once durable");
    drop(engine);
    let engine = Engine::open(config(dir.path(), &clock)).unwrap();
    assert_eq!(engine.execute(second).unwrap(), Outcome::Declined(Reason::IdempotencyConflict));
    assert_eq!(engine.execute(first).unwrap(), outcomes[0]);
    assert_eq!(balance(&engine, b), 100_000);
    assert_eq!(balance(&engine, a), 99_991);
}

#[test]
fn remembered_ids_live_on_disk_not_in_memory_and_compaction_drops_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let engine = Engine::open(config(dir.path(), &clock)).unwrap();
    let card = support::open_checking(&engine, "eu-west");
    engine.run(Command::Deposit { account: card, amount_minor: 1_000_000_000 }).unwrap();
    engine.run(Command::SetCeiling { card, ceiling_minor: 1_000_000_000 }).unwrap();
    let ids = 20_000u64;
    for chunk in 0..(ids / 500) {
        let requests = (0..500).map(|i| pay(card, 1, &format!("mem-{}", chunk * 500 + i)));
        let outcomes = engine.submit(requests.collect()).unwrap().wait().unwrap();
        assert!(outcomes.iter().all(|o| matches!(o, Outcome::Approved { .. })));
    }
    // The last batch may still be in flight when its ticket resolves; one more batch
    // after it lets its shard see it durable.
    engine.run(Command::ReadAccount { account: card }).unwrap();
    engine.execute(pay(card, 1, "after")).unwrap();
    let in_memory = engine.stats().unwrap().remembered_in_memory;
    assert!(in_memory <= 1_000, "{in_memory} of {ids} records still in memory");
    // Every one is still found (from disk).
    for i in [0, 1, ids / 2, ids - 1] {
        let retry = engine.execute(pay(card, 1, &format!("mem-{i}"))).unwrap();
        assert!(matches!(retry, Outcome::Approved { .. }));
    }
    let expected = 1_000_000_000 + 100_000 - ids - 1;
    assert_eq!(balance(&engine, card), expected, "retries paid nothing");
    let store = engine.store().unwrap().clone();
    let family = store.db().cf_handle(IDS_COLUMN_FAMILY).unwrap();
    assert!(store.db().get_cf(family, b"mem-0").unwrap().is_some());
    // Past retention, an epoch lets compaction drop them from disk.
    advance_days(&engine, &clock, 4);
    store.db().flush_cf(family).unwrap();
    store.db().compact_range_cf(family, None::<&[u8]>, None::<&[u8]>);
    assert!(store.db().get_cf(family, b"mem-0").unwrap().is_none(), "expired: dropped");
    assert!(store.db().get_cf(family, b"after").unwrap().is_none());
}

#[test]
fn in_memory_engines_expire_ids_with_the_epochs() {
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = EngineConfig::in_memory()
        .with_shards(2)
        .with_regions(regions())
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    assert_eq!(config.durability, Durability::None);
    let engine = Engine::open(config).unwrap();
    let card = support::open_checking(&engine, "eu-west");
    engine.run_due_epochs().unwrap();
    for i in 0..100 {
        engine.execute(pay(card, 1, &format!("m-{i}"))).unwrap();
    }
    assert_eq!(engine.stats().unwrap().remembered_in_memory, 100);
    let retry = engine.execute(pay(card, 1, "m-0")).unwrap();
    assert!(matches!(retry, Outcome::Approved { balance_minor: 99_999, .. }), "{retry:?}");
    advance_days(&engine, &clock, 3);
    assert_eq!(engine.stats().unwrap().remembered_in_memory, 0, "all past retention");
    let again = engine.execute(pay(card, 1, "m-0")).unwrap();
    assert!(matches!(again, Outcome::Approved { balance_minor: 99_899, .. }), "{again:?}");
}
