//! The change stream (§13) through the embedded API: every durable entry of a shard in its
//! order, with the fields §13 lists and the balances the replies gave; a wake-up when new
//! entries are durable; and a refusal for a start that retention deleted.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use plafond::stream::{StreamId, StreamStart};
use plafond::{
    Archive, Command, CommandId, Engine, EngineConfig, EngineError, LogRetention, ManualClock,
    Outcome, Reason, Request,
};

/// 2027-01-04T12:00:00Z.
const START_MS: i64 = 1_799_064_000_000;

/// One entry: its id and its fields as text.
type Entry = (StreamId, HashMap<&'static str, String>);

fn read(engine: &Engine, shard: u16, start: StreamStart, count: usize) -> Vec<Entry> {
    let mut entries = Vec::new();
    engine
        .stream_read(shard, start, StreamId::MAX, count, |id, fields| {
            let text = fields.iter().map(|field| (field.name, field.value.to_string())).collect();
            entries.push((id, text));
            true
        })
        .expect("the stream reads");
    entries
}

/// The one entry of `kind` in `entries`.
fn only<'a>(entries: &'a [Entry], kind: &str) -> &'a HashMap<&'static str, String> {
    let found: Vec<_> = entries.iter().filter(|(_, f)| f["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}: {entries:?}");
    &found[0].1
}

#[test]
fn every_durable_entry_in_shard_order_with_the_balances_the_replies_gave() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let config = EngineConfig::durable(dir.path()).with_shards(2).with_clock(clock.clone());
    let engine = Engine::open(config.with_epoch_poll(None)).unwrap();
    // Profiles go round the shards: the two accounts live on different shards.
    let (a, b) =
        (support::open_checking(&engine, "eu-west"), support::open_checking(&engine, "eu-west"));
    let (shard_a, shard_b) = ((a % 2) as u16, (b % 2) as u16);
    assert_ne!(shard_a, shard_b);
    let mut watch = engine.stream_watch(shard_a).unwrap();
    watch.mark_unchanged();
    let pay = Request::with_id(
        Command::Pay { card: a, amount_minor: 2_500 },
        CommandId::new("p-1").unwrap(),
    );
    let Outcome::Approved { balance_minor: paid, .. } = engine.execute(pay).unwrap() else {
        panic!("approved")
    };
    // Acknowledged means durable, and a reader waiting on the shard is woken.
    assert!(watch.has_changed().unwrap(), "the pay's batch moved the shard's durable end");
    let too_much = engine.run(Command::Pay { card: a, amount_minor: 10_000_000 }).unwrap();
    assert_eq!(too_much, Outcome::Declined(Reason::CeilingExceeded));
    let moved = engine.run(Command::Transfer { from: a, to: b, amount_minor: 700 }).unwrap();
    let Outcome::Done { balance_minor: after_transfer } = moved else { panic!("{moved:?}") };

    let source = read(&engine, shard_a, StreamStart::Retained, 1_000);
    let ids: Vec<StreamId> = source.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids[0], StreamId { batch_seq: 0, index: 1 }, "the stream starts after 0-0");
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");
    assert_eq!(source[0].1["kind"], "RULES", "the rules are logged first");
    let payment =
        &source.iter().find(|(_, f)| f.get("command_id").is_some_and(|id| id == "p-1")).unwrap().1;
    assert_eq!(payment["kind"], "PAY");
    assert_eq!(payment["ts"], START_MS.to_string());
    assert_eq!((payment["card"].as_str(), payment["amount"].as_str()), (&*a.to_string(), "2500"));
    assert_eq!(
        (payment["outcome"].as_str(), payment["account"].as_str()),
        ("APPROVED", &*a.to_string())
    );
    assert_eq!(
        (payment["balance"].clone(), payment["spent_7d"].as_str()),
        (paid.to_string(), "2500")
    );
    let declined = source.iter().find(|(_, f)| f["outcome"] == "DECLINED").unwrap();
    assert_eq!(declined.1["reason"], "CEILING_EXCEEDED", "declines are entries too");
    let debit = only(&source, "TRANSFER_DEBIT");
    assert_eq!((debit["from"].clone(), debit["to"].clone()), (a.to_string(), b.to_string()));
    assert_eq!(debit["outcome"], "PENDING");
    let settle = only(&source, "TRANSFER_SETTLE");
    assert_eq!((settle["transfer"].as_str(), settle["outcome"].as_str()), ("0", "DONE"));
    let target = read(&engine, shard_b, StreamStart::Retained, 1_000);
    let credit = only(&target, "TRANSFER_CREDIT");
    assert_eq!((credit["origin"].clone(), credit["transfer"].as_str()), (shard_a.to_string(), "0"));
    assert_eq!(credit["balance"], (100_000 + 700).to_string());
    assert_eq!(after_transfer, paid - 700);

    // Bounds name the first and the last entry; a read from the middle, and counts, agree.
    let bounds = engine.stream_bounds(shard_a).unwrap();
    assert_eq!(bounds.first, StreamId { batch_seq: 0, index: 1 });
    assert_eq!(bounds.last, ids.last().copied());
    let from_third = read(&engine, shard_a, StreamStart::At(ids[2]), 2);
    assert_eq!(from_third.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids[2..4]);
    let past_the_end = bounds.last.unwrap().successor().unwrap();
    assert!(read(&engine, shard_a, StreamStart::At(past_the_end), 10).is_empty());
    assert!(matches!(
        engine.stream_read(2, StreamStart::Retained, StreamId::MAX, 1, |_, _| true),
        Err(EngineError::NoSuchStream { shard: 2, shards: 2 })
    ));
}

#[test]
fn a_start_that_retention_deleted_is_refused_with_the_first_id_retained() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START_MS));
    let retention = LogRetention { days: 0, archive: Archive::Delete };
    let config = EngineConfig::durable(dir.path())
        .with_shards(1)
        .with_clock(clock.clone())
        .with_epoch_poll(None)
        .with_log_retention(retention);
    let engine = Engine::open(config).unwrap();
    let card = support::open_checking(&engine, "eu-west");
    // Retention keeps the log after the oldest kept checkpoint: a few checkpoints, each after
    // new entries, move it on.
    for round in 0..3 {
        engine.run(Command::Pay { card, amount_minor: 10 + round }).unwrap();
        clock.advance(1_000);
        engine.checkpoint().unwrap();
    }
    let first = engine.stream_bounds(0).unwrap().first;
    assert!(first.batch_seq > 0, "retention deleted the oldest batches: {first}");
    let trimmed = engine.stream_read(
        0,
        StreamStart::At(StreamId { batch_seq: 0, index: 1 }),
        StreamId::MAX,
        10,
        |_, _| true,
    );
    match trimmed {
        Err(EngineError::StreamTrimmed { shard: 0, first: said }) => assert_eq!(said, first),
        other => panic!("a trimmed start is refused: {other:?}"),
    }
    assert_eq!(
        format!("{}", EngineError::StreamTrimmed { shard: 0, first }),
        format!("TRIMMED {first}")
    );
    let retained = read(&engine, 0, StreamStart::Retained, 100);
    assert_eq!(retained[0].0, first, "from the start of what is retained");
}
