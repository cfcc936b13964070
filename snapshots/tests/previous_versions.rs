//! Files written by earlier builds still read: `fixtures/v2.plafsnap` was written by the
//! build of commit c7b5f52 (format version 2, bincode sections) and `fixtures/v3.plafsnap`
//! by the build of commit 7cd9c48 (format version 3, before card holds), both from
//! [`fixture_shards`], and must read back as exactly those states (without holds), checked
//! as a file of the current version would be.

use std::collections::{BTreeMap, HashMap};

use plafond_shards::command::{CardStatus, Command, CommandId, Outcome, Reason};
use plafond_shards::idempotency::{IdempotencyRecord, Remembered};
use plafond_shards::interest::Savings;
use plafond_shards::region::Rules;
use plafond_shards::state::{
    Account, Card, Instrument, PendingTransfer, Profile, ShardState, NO_ACCOUNT,
};
use plafond_shards::window::Window;

/// The fixtures' files, relative to this crate.
const V2_FIXTURE: &str = "tests/fixtures/v2.plafsnap";
const V3_FIXTURE: &str = "tests/fixtures/v3.plafsnap";

/// Shard `index` of two, two regions, with every kind of entry the format holds: cards
/// (active, blocked, with spending), a savings account with interest, profiles with
/// several accounts, a transfer in flight, a refused credit, rules, counters, records.
fn fixture_state(index: u16) -> ShardState {
    let mut state = ShardState::new(index, 2, 2);
    for local in 0..5u32 {
        let profile = local / 2;
        if local % 2 == 0 {
            state.profiles.push(Profile {
                region: (profile % 2) as u16,
                first_account: local,
                last_account: (local + 1).min(4),
            });
        }
        let mut window = Window::new(20_450 + local as i32);
        window.record(1_000 * u64::from(local) + u64::from(index));
        let instrument = if local == 3 {
            let mut savings = Savings::opened(48_648);
            savings.record_debit(77);
            savings.advance_to(48_650, 1_000_000, 250);
            Instrument::Savings(savings)
        } else {
            let status = if local == 1 { CardStatus::Blocked } else { CardStatus::Active };
            Instrument::Card(Card { status, ceiling_minor: 10_000 * u64::from(local), window })
        };
        let next_in_profile = if local % 2 == 0 && local < 4 { local + 1 } else { NO_ACCOUNT };
        state.accounts.push(Account {
            balance_minor: 20_000 + 70_000 * u64::from(local) + u64::from(index),
            profile,
            next_in_profile,
            region: (profile % 2) as u16,
            instrument,
        });
    }
    let id = CommandId::new(&format!("transfer-{index}")).expect("a valid id");
    state.pending = BTreeMap::from([(
        7,
        PendingTransfer {
            from_local: 2,
            to: 5,
            amount_minor: 1_234,
            balance_after_minor: 9_876,
            command_id: Some(id),
            ts_ms: 1_799_064_000_123,
        },
    )]);
    state.next_transfer_seq = 8;
    state.credits_seen = vec![3, 4];
    state.refused_credits = HashMap::from([((1 - index, 2), Reason::UnknownAccount)]);
    state.clock_ms = 1_799_064_000_500;
    state.rules = vec![
        Some(Rules {
            initial_deposit_minor: 20_000,
            default_card_ceiling_minor: 10_000,
            savings_rate_bp: 250,
        }),
        None,
    ];
    state.rolled_day = vec![20_454, i32::MIN];
    state.totals.balances_minor = 5_000_000_000_000_000_000_000;
    state.totals.card_payments_minor = 42;
    state.counters[0].payments_approved = 9;
    state.counters[1].declined[3] = 2;
    state.counters[2].declined_minor[9] = u128::MAX;
    let record = IdempotencyRecord {
        command: Command::Pay { card: 2 * 2 + u64::from(index), amount_minor: 100 },
        remembered: Remembered::Final(Outcome::Approved {
            balance_minor: 19_900,
            spent_7d_minor: 100,
        }),
        region: 0,
        day: 20_454,
        shard: index,
        batch_seq: 11,
    };
    state.remembered = vec![(CommandId::new("pay-1").expect("a valid id"), record)];
    state
}

fn fixture_shards() -> Vec<(ShardState, u64)> {
    vec![(fixture_state(0), 12), (fixture_state(1), 3)]
}

#[test]
fn a_version_2_file_reads_back_as_the_states_it_was_written_from() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(V2_FIXTURE);
    if std::env::var_os("PLAFOND_WRITE_V2_FIXTURE").is_some() {
        // Only meaningful with a build that writes version 2 (commit c7b5f52).
        let options = plafond_snapshots::format::WriteOptions {
            chunk_bytes: 64,
            created_ms: 1_799_064_000_000,
            bytes_per_second: None,
        };
        plafond_snapshots::write_with(&path, &fixture_shards(), options, &mut |_| {}).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[8..12], 2u32.to_le_bytes(), "the fixture is a version 2 file");
    let read = plafond_snapshots::read(&path, |_| {}).unwrap();
    assert_eq!(read.header.chunk_bytes, 64, "several chunks per section");
    let expected = fixture_shards();
    assert_eq!(read.states.len(), expected.len());
    for ((state, position), (expected, expected_position)) in read.shards().zip(&expected) {
        assert_eq!(state, expected);
        assert_eq!(position, *expected_position);
    }
}

#[test]
fn a_version_3_file_reads_back_as_the_states_it_was_written_from_without_holds() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(V3_FIXTURE);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[8..12], 3u32.to_le_bytes(), "the fixture is a version 3 file");
    let read = plafond_snapshots::read(&path, |_| {}).unwrap();
    assert_eq!(read.header.version, 3);
    let expected = fixture_shards();
    assert_eq!(read.states.len(), expected.len());
    for ((state, position), (expected, expected_position)) in read.shards().zip(&expected) {
        assert_eq!(state, expected);
        assert!(state.holds.is_empty() && state.holds.next_seq() == 0);
        assert_eq!(position, *expected_position);
    }
}
