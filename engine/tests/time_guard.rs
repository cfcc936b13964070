//! The time guard through the engine: a restart after the host clock jumped (or after
//! months down) goes on from the last committed time, runs no epoch for the jump, and
//! catches up once an operator accepts it.

use std::sync::Arc;

use plafond::{
    AccountKind, Clock, Command, Engine, EngineConfig, ManualClock, Outcome, TimeGuard, DAY_MS,
};

const JUMP_DAYS: i64 = 100;

fn open(dir: &std::path::Path, guard: Arc<TimeGuard>) -> Engine {
    let config = EngineConfig::durable(dir).with_shards(2).with_clock(guard).with_epoch_poll(None);
    Engine::open(config).unwrap()
}

#[test]
fn a_restart_past_a_clock_jump_waits_for_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let host = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let engine = open(dir.path(), Arc::new(TimeGuard::new(host.clone())));
    let Outcome::ProfileOpened { profile } =
        engine.run(Command::OpenProfile { region: 0 }).unwrap()
    else {
        panic!("a profile")
    };
    let opened =
        engine.run(Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None });
    let Ok(Outcome::AccountOpened { card: Some(card), .. }) = opened else { panic!("{opened:?}") };
    assert_eq!(engine.run_due_epochs().unwrap().len(), 2, "one epoch per region");
    drop(engine);

    host.advance(JUMP_DAYS * DAY_MS);
    let guard = Arc::new(TimeGuard::new(host.clone()));
    let engine = open(dir.path(), guard.clone());
    let now = guard.now_ms();
    assert!(now < ManualClock::SERVER_START_MS + DAY_MS, "time goes on from the last commit");
    let refused = guard.refused().expect("the jump is refused and reported");
    assert!(refused.ahead_ms > (JUMP_DAYS - 1) * DAY_MS, "{refused:?}");
    assert!(engine.run_due_epochs().unwrap().is_empty(), "no epoch runs for a refused jump");
    // Payments go on meanwhile.
    let paid = engine.run(Command::Pay { card, amount_minor: 100 }).unwrap();
    assert!(matches!(paid, Outcome::Approved { .. }), "{paid:?}");

    let accepted = guard.accept().expect("a jump to accept");
    assert_eq!(accepted.host_ms, host.now_ms());
    assert_eq!(guard.now_ms(), host.now_ms());
    let reports = engine.run_due_epochs().unwrap();
    assert_eq!(reports.len(), 2 * JUMP_DAYS as usize, "the accepted days are caught up");
    assert!(guard.refused().is_none());
}

/// An embedding application that keeps the default clock gets the guard too; the bare
/// system clock is the documented way out.
#[test]
fn the_default_clock_is_the_guarded_system_clock() {
    let dir = tempfile::tempdir().unwrap();
    assert!(EngineConfig::in_memory().clock.guard().is_some());
    assert!(EngineConfig::durable(dir.path()).clock.guard().is_some());
    let bare = EngineConfig::in_memory().with_clock(Arc::new(plafond::SystemClock));
    assert!(bare.clock.guard().is_none(), "opting out");
    let engine = Engine::open(EngineConfig::in_memory().with_shards(1)).unwrap();
    let quiet = plafond::ClockGuardReport { jumps_refused: 0, refused: None };
    assert_eq!(engine.stats().unwrap().clock_guard, Some(quiet));
    let manual = EngineConfig::in_memory().with_shards(1);
    let manual = manual.with_clock(Arc::new(ManualClock::new(ManualClock::SERVER_START_MS)));
    assert_eq!(Engine::open(manual).unwrap().stats().unwrap().clock_guard, None);
}

/// A host clock that jumps, guarded as the default system clock is: the jump is refused,
/// the engine's time goes on from before it, and the statistics say how many jumps were
/// refused, whether one is refused now and by how much.
#[test]
fn a_refused_jump_of_the_host_clock_is_reported_in_the_stats() {
    let host = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = EngineConfig::in_memory().with_shards(2).with_epoch_poll(None);
    let engine = Engine::open(config.with_host_clock(host.clone())).unwrap();
    let Outcome::ProfileOpened { profile } =
        engine.run(Command::OpenProfile { region: 0 }).unwrap()
    else {
        panic!("a profile")
    };
    let opened =
        engine.run(Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None });
    let Ok(Outcome::AccountOpened { card: Some(card), .. }) = opened else { panic!("{opened:?}") };
    engine.run_due_epochs().unwrap();
    let guard = |engine: &Engine| engine.stats().unwrap().clock_guard.expect("a guarded clock");
    assert_eq!(guard(&engine).jumps_refused, 0);

    host.advance(10 * 365 * DAY_MS);
    let paid = engine.run(Command::Pay { card, amount_minor: 100 }).unwrap();
    assert!(matches!(paid, Outcome::Approved { .. }), "{paid:?}");
    assert!(engine.clock().now_ms() < ManualClock::SERVER_START_MS + DAY_MS);
    assert!(engine.run_due_epochs().unwrap().is_empty(), "no epoch for a refused jump");
    let report = guard(&engine);
    assert_eq!(report.jumps_refused, 1);
    let refused = report.refused.expect("refused now");
    assert_eq!(refused.host_ms, host.now_ms());
    assert!(refused.ahead_ms > 3649 * DAY_MS, "{refused:?}");

    let accepted = engine.clock().guard().and_then(plafond::TimeGuard::accept);
    assert!(accepted.is_some(), "the operator accepts it through the engine's clock");
    let report = guard(&engine);
    assert_eq!((report.jumps_refused, report.refused), (1, None));

    host.advance(100 * DAY_MS);
    engine.run(Command::Pay { card, amount_minor: 100 }).unwrap();
    assert_eq!(guard(&engine).jumps_refused, 2, "each jump counts");
}
