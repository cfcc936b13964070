//! What the engine does with a data directory it cannot trust: it refuses to start, and
//! says what is wrong, rather than serve a state that differs from what it acknowledged.

use plafond::internals::log::log_key;
use plafond::internals::store::Store;
use plafond::{AccountKind, Command, Engine, EngineConfig, Outcome};

fn durable(dir: &std::path::Path) -> EngineConfig {
    EngineConfig::durable(dir).with_shards(2).with_epoch_poll(None)
}

/// Opens a profile and an account on a fresh engine in `dir`, then stops it.
fn write_some(dir: &std::path::Path) {
    let engine = Engine::open(durable(dir)).unwrap();
    let Outcome::ProfileOpened { profile } =
        engine.run(Command::OpenProfile { region: 0 }).unwrap()
    else {
        panic!("profile")
    };
    let kind = AccountKind::Checking;
    let opened = engine.run(Command::OpenAccount { profile, kind, opening: None }).unwrap();
    assert!(matches!(opened, Outcome::AccountOpened { .. }));
}

fn overwrite_first_batch(dir: &std::path::Path, value: &[u8]) {
    let store = Store::open(dir, 2).unwrap();
    let mut key = None;
    store
        .read_log(0, 0, |seq, _| {
            key.get_or_insert(seq);
            Ok(())
        })
        .unwrap();
    let seq = key.expect("shard 0 logged something");
    store.db().put(log_key(0, seq), value).unwrap();
}

#[test]
fn a_corrupt_log_batch_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path());
    overwrite_first_batch(dir.path(), &[1, 9, 0, 0, 0, 0xff]);
    let error = Engine::open(durable(dir.path())).err().expect("refused").to_string();
    assert!(error.contains("shard 0"), "{error}");
    assert!(error.contains("entry"), "{error}");
}

#[test]
fn an_unknown_log_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path());
    overwrite_first_batch(dir.path(), &[42, 0, 0, 0, 0]);
    let error = Engine::open(durable(dir.path())).err().expect("refused").to_string();
    assert!(error.contains("version 42"), "{error}");
}

#[test]
fn a_log_that_replays_differently_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write_some(dir.path());
    // A well-formed batch whose recorded outcome is not what replaying it gives.
    let mut encoder = plafond::internals::log::BatchEncoder::new();
    let input = plafond::internals::apply::Input::Client(plafond::Request::new(Command::Deposit {
        account: 12_345,
        amount_minor: 5,
    }));
    encoder.push(0, &input, Some(&Outcome::Done { balance_minor: 5 }), &Default::default());
    let store = Store::open(dir.path(), 2).unwrap();
    let next = store.read_log(0, 0, |_, _| Ok(())).unwrap();
    store.db().put(log_key(0, next), encoder.finish()).unwrap();
    drop(store);
    let error = Engine::open(durable(dir.path())).err().expect("refused").to_string();
    assert!(error.contains("different outcome"), "{error}");
}
