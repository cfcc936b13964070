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
