//! The snapshot file format without an engine: the documented encoding, round trips over
//! many chunks, and files that pass their checksums yet must be refused.

use plafond_shards::check::StateError;
use plafond_shards::command::{CardStatus, Command, CommandId, Reason};
use plafond_shards::idempotency::{IdempotencyRecord, Remembered};
use plafond_shards::interest::Savings;
use plafond_shards::state::{Account, Card, Instrument, Profile, ShardState, NO_ACCOUNT};
use plafond_shards::window::Window;
use plafond_snapshots::format::{self, Header, SectionInfo, WriteOptions, CRC_BYTES};
use plafond_snapshots::SnapshotError;

/// A shard of `shards` with `accounts` checking accounts, one profile each.
fn shard(index: u16, shards: u16, accounts: u32) -> ShardState {
    let mut state = ShardState::new(index, shards, 2);
    for local in 0..accounts {
        state.profiles.push(Profile {
            region: (local % 2) as u16,
            first_account: local,
            last_account: local,
        });
        state.accounts.push(Account {
            balance_minor: 20_000 + u64::from(local),
            profile: local,
            next_in_profile: NO_ACCOUNT,
            region: (local % 2) as u16,
            instrument: Instrument::Card(Card {
                status: CardStatus::Active,
                ceiling_minor: 10_000,
                window: Window::new(20_000),
            }),
        });
    }
    state
}

fn options(chunk_bytes: u32) -> WriteOptions {
    WriteOptions { chunk_bytes, created_ms: 1_799_064_000_000, bytes_per_second: None }
}

/// The unsigned varint of the standard configuration, as the format page gives it.
fn varint(value: u64, out: &mut Vec<u8>) {
    if value < 251 {
        out.push(value as u8);
    } else if value <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(value as u16).to_le_bytes());
    } else if value <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(value as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

#[test]
fn the_documented_encoding_is_bincodes() {
    // One shard of two, two regions, one profile with one checking account.
    let state = shard(1, 2, 1);
    let mut expected = Vec::new();
    varint(1, &mut expected); // shard
    varint(2, &mut expected); // shards
    varint(1, &mut expected); // profiles: one
    expected.extend([0, 0, 0]); // region 0, first_account 0, last_account 0
    varint(1, &mut expected); // accounts: one
    varint(20_000, &mut expected); // balance
    expected.push(0); // profile 0
    varint(u64::from(NO_ACCOUNT), &mut expected); // next_in_profile
    expected.push(0); // region 0
    expected.push(0); // Instrument::Card
    expected.push(0); // CardStatus::Active
    varint(10_000, &mut expected); // ceiling
    varint(zigzag(20_000), &mut expected); // window day
    expected.extend([0; 7]); // seven empty days, no length
    expected.push(0); // pending: empty map
    expected.push(0); // next_transfer_seq
    expected.extend([2, 0, 0]); // credits_seen: two zeros
    expected.push(0); // refused_credits: empty map
    varint(zigzag(i64::MIN), &mut expected); // clock_ms
    expected.extend([2, 0, 0]); // rules: two None
    expected.push(2); // rolled_day: two of Day::MIN
    for _ in 0..2 {
        varint(zigzag(i64::from(i32::MIN)), &mut expected);
    }
    expected.extend([0; 8]); // totals: eight zero u128
    expected.push(3); // counters: regions + 1
    expected.extend([0; 3 * (6 + 2 * 10)]); // six scalars and two arrays of ten, all zero
    expected.push(0); // remembered: no records
                      // Holds (§12): an empty table, next_seq 0, no expiry rules, captured 0, refunded 0.
    expected.extend([0; 5]);
    let encoded = bincode::encode_to_vec(&state, bincode::config::standard()).unwrap();
    assert_eq!(encoded, expected);
}

#[test]
fn a_snapshot_round_trips_over_many_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.plafsnap");
    let shards: Vec<(ShardState, u64)> = (0..3)
        .map(|index| (shard(index, 3, 50 + u32::from(index)), 7 * u64::from(index)))
        .collect();
    let mut phases = Vec::new();
    let report =
        plafond_snapshots::write_with(&path, &shards, options(16), &mut |p| phases.push(p.phase))
            .unwrap();
    assert!(phases.contains(&"encode") && phases.contains(&"write"));
    assert_eq!(report.accounts, 153);
    assert_eq!(report.log_positions, vec![0, 7, 14]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), report.bytes);
    assert!(!format::temporary_path(&path).exists());
    let read = plafond_snapshots::read(&path, |_| {}).unwrap();
    assert_eq!(read.header.chunk_bytes, 16);
    assert_eq!(read.header.regions, 2);
    for ((state, position), (expected, expected_position)) in read.shards().zip(&shards) {
        assert_eq!(state, expected);
        assert_eq!(position, *expected_position);
    }
    // Writing again replaces the file whole.
    let single = vec![(shard(0, 1, 2), 3)];
    plafond_snapshots::write(&path, &single, |_| {}).unwrap();
    assert_eq!(plafond_snapshots::read(&path, |_| {}).unwrap().states.len(), 1);
}

#[test]
fn shards_out_of_order_are_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.plafsnap");
    let shards = vec![(shard(1, 2, 1), 0), (shard(0, 2, 1), 0)];
    let error = plafond_snapshots::write(&path, &shards, |_| {}).unwrap_err();
    assert!(matches!(error, SnapshotError::BadInput { .. }), "{error}");
    assert!(!path.exists() && !format::temporary_path(&path).exists());
}

/// A file with valid checksums around the given encoded states.
fn assemble(header: &Header, sections: &[Vec<u8>]) -> Vec<u8> {
    let mut file = header.encode();
    for section in sections {
        for chunk in section.chunks(header.chunk_bytes as usize) {
            file.extend_from_slice(chunk);
            file.extend_from_slice(&crc32c::crc32c(chunk).to_le_bytes());
        }
    }
    file.extend_from_slice(&format::TRAILER_MAGIC);
    let mac_bytes = if header.keyed() { plafond_mac::MAC_BYTES as u64 } else { 0 };
    let total = file.len() as u64 + 12 + mac_bytes;
    file.extend_from_slice(&total.to_le_bytes());
    let crc = crc32c::crc32c(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    if header.keyed() {
        // Read without a key, a version 4 file's MAC is not checked: any 32 bytes do.
        file.extend_from_slice(&[0; plafond_mac::MAC_BYTES]);
    }
    assert_eq!(file.len() as u64, header.file_bytes().unwrap());
    file
}

/// A version 3 header for `sections`.
fn header_for(sections: &[Vec<u8>], accounts: u64) -> Header {
    header_of_version(format::FORMAT_VERSION, sections, accounts)
}

fn header_of_version(version: u32, sections: &[Vec<u8>], accounts: u64) -> Header {
    Header {
        version,
        shards: sections.len() as u16,
        regions: 2,
        chunk_bytes: 64,
        created_ms: 0,
        sections: sections
            .iter()
            .map(|bytes| SectionInfo { log_position: 0, accounts, state_bytes: bytes.len() as u64 })
            .collect(),
    }
}

fn read_bytes(bytes: &[u8]) -> Result<(), SnapshotError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.plafsnap");
    std::fs::write(&path, bytes).unwrap();
    plafond_snapshots::read(&path, |_| {}).map(|_| ())
}

#[test]
fn an_assembled_file_reads_back() {
    let state = shard(0, 1, 3);
    let sections = vec![format::encode_state(&state).unwrap()];
    read_bytes(&assemble(&header_for(&sections, 3), &sections)).unwrap();
    // The same state as version 2 wrote it: one bincode encoding, before the state had
    // holds (their five bytes of an empty hold table end today's encoding).
    let mut encoded = bincode::encode_to_vec(&state, bincode::config::standard()).unwrap();
    encoded.truncate(encoded.len() - 5);
    let sections = vec![encoded];
    read_bytes(&assemble(&header_of_version(2, &sections, 3), &sections)).unwrap();
    // A version 2 section behind a version 3 header is not a state.
    assert!(read_bytes(&assemble(&header_for(&sections, 3), &sections)).is_err());
}

#[test]
fn a_version_5_section_is_the_rest_then_the_two_tables() {
    let state = shard(1, 2, 1);
    let encoded = format::encode_state(&state).unwrap();
    let rest_bytes = u64::from_le_bytes(encoded[..8].try_into().unwrap()) as usize;
    // The rest is bincode's encoding of the state with both tables empty, without the two
    // zero lengths of those tables, then per region the decline counters of the reasons
    // after the first ten (version 5).
    let mut empty = state.clone();
    empty.profiles = Default::default();
    empty.accounts = Default::default();
    let mut whole = bincode::encode_to_vec(&empty, bincode::config::standard()).unwrap();
    assert_eq!(whole[2..4], [0, 0], "two empty tables after shard and shards");
    whole.drain(2..4);
    let later = Reason::ALL.len() - Reason::COUNTED;
    let tail: Vec<(Vec<u64>, Vec<u128>)> = vec![(vec![0; later], vec![0; later]); 3];
    whole.extend(bincode::encode_to_vec(&tail, bincode::config::standard()).unwrap());
    assert_eq!(&encoded[8..8 + rest_bytes], &whole[..]);
    // Each table: entries u64, entries per block u32, where each block ends u64, the
    // entries' bincode bytes. The profile is region 0, first and last account 0.
    let account = bincode::encode_to_vec(state.accounts[0], bincode::config::standard()).unwrap();
    let mut tables = Vec::new();
    for entry in [&[0u8, 0, 0][..], &account] {
        tables.extend_from_slice(&1u64.to_le_bytes());
        tables.extend_from_slice(&(1u32 << 16).to_le_bytes());
        tables.extend_from_slice(&(entry.len() as u64).to_le_bytes());
        tables.extend_from_slice(entry);
    }
    assert_eq!(&encoded[8 + rest_bytes..], &tables[..]);
}

#[test]
fn a_state_pointing_outside_its_shard_is_refused_despite_good_checksums() {
    let mut state = shard(0, 1, 3);
    state.accounts[2].profile = 99;
    let encoded = format::encode_state(&state).unwrap();
    let sections = vec![encoded];
    let error = read_bytes(&assemble(&header_for(&sections, 3), &sections)).unwrap_err();
    assert!(error.to_string().contains("account 2 points outside"), "{error}");

    let state = shard(0, 1, 3);
    let encoded = format::encode_state(&state).unwrap();
    let sections = vec![encoded];
    let error = read_bytes(&assemble(&header_for(&sections, 4), &sections)).unwrap_err();
    assert!(error.to_string().contains("3 accounts, the header says 4"), "{error}");
}

/// Reads `state` from a file whose every checksum is right.
fn read_crafted(state: &ShardState) -> Result<(), SnapshotError> {
    let sections = vec![format::encode_state(state).unwrap()];
    read_bytes(&assemble(&header_for(&sections, state.accounts.len() as u64), &sections))
}

#[test]
fn a_cycle_in_a_profiles_account_list_is_refused_despite_good_checksums() {
    let mut state = shard(0, 1, 3);
    // Profile 1's list would be 1, 1, 1, ...: reading the profile loops forever.
    state.accounts[1].next_in_profile = 1;
    let error = read_crafted(&state).unwrap_err();
    let cycle = StateError::ListCycle { profile: 1, account: 1 };
    assert!(
        matches!(&error, SnapshotError::InvalidState { shard: 0, source } if *source == cycle),
        "{error}"
    );
    assert!(error.to_string().contains("loops back to account 1"), "{error}");
}

#[test]
fn a_pending_record_without_its_transfer_is_refused_despite_good_checksums() {
    let mut state = shard(0, 1, 3);
    let record = IdempotencyRecord {
        command: Command::Transfer { from: 0, to: 1, amount_minor: 10 },
        // No transfer 5 is in flight: a retry of the command would park forever.
        remembered: Remembered::Pending { seq: 5 },
        region: 0,
        day: 20_000,
        shard: 0,
        batch_seq: 0,
    };
    state.remembered = vec![(CommandId::new("t-1").unwrap(), record)];
    let error = read_crafted(&state).unwrap_err();
    assert!(
        matches!(
            &error,
            SnapshotError::InvalidState { source: StateError::RecordOrphan { .. }, .. }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("a transfer that is not in flight"), "{error}");
}

#[test]
fn a_half_month_out_of_the_calendar_is_refused_despite_good_checksums() {
    let mut state = shard(0, 1, 3);
    // The first touch of the account would walk 2^31 half-months.
    state.accounts[2].instrument = Instrument::Savings(Savings::opened(i32::MIN));
    let error = read_crafted(&state).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::InvalidState { source: StateError::OutOfRange { .. }, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("half-month of savings account 2"), "{error}");
    state.accounts[2].instrument = Instrument::Savings(Savings::opened(2027 * 24));
    read_crafted(&state).unwrap();
}

#[test]
fn a_huge_length_inside_a_state_allocates_nothing_and_is_refused() {
    // shard 0 of 1, then a profile count of 2^60: decoding must not reserve for it.
    let mut bytes = vec![0, 1];
    varint(1 << 60, &mut bytes);
    bytes.extend([0; 32]);
    let sections = vec![bytes];
    let error = read_bytes(&assemble(&header_of_version(2, &sections, 0), &sections)).unwrap_err();
    assert!(matches!(error, SnapshotError::CorruptShard { shard: 0, .. }), "{error}");
    // Version 3: a rest of 2^60 bytes, and a table of 2^60 accounts.
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend([0; 32]);
    let sections = vec![bytes];
    let error = read_bytes(&assemble(&header_for(&sections, 0), &sections)).unwrap_err();
    assert!(error.to_string().contains("length of its rest"), "{error}");
    let mut bytes = format::encode_state(&shard(0, 1, 0)).unwrap();
    let accounts_at = bytes.len() - 12;
    bytes[accounts_at..accounts_at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let sections = vec![bytes];
    let error = read_bytes(&assemble(&header_for(&sections, 0), &sections)).unwrap_err();
    assert!(error.to_string().contains("cannot fit"), "{error}");
    // Trailing bytes after a sound state are refused too, in both versions.
    let mut encoded = bincode::encode_to_vec(shard(0, 1, 1), bincode::config::standard()).unwrap();
    encoded.push(0);
    let sections = vec![encoded];
    let error = read_bytes(&assemble(&header_of_version(2, &sections, 1), &sections)).unwrap_err();
    assert!(error.to_string().contains("after the encoded state"), "{error}");
    let mut encoded = format::encode_state(&shard(0, 1, 1)).unwrap();
    encoded.push(0);
    let sections = vec![encoded];
    let error = read_bytes(&assemble(&header_for(&sections, 1), &sections)).unwrap_err();
    assert!(error.to_string().contains("after the encoded state"), "{error}");
}

#[test]
fn header_lengths_that_do_not_add_up_are_refused_before_any_allocation() {
    let sections = vec![vec![0u8; 10]];
    let mut header = header_for(&sections, 0);
    let file = assemble(&header, &sections);
    // A header claiming a 1 TiB state: its CRC is valid, the file is simply too short.
    header.sections[0].state_bytes = 1 << 40;
    let mut lying = header.encode();
    lying.extend_from_slice(&file[lying.len()..]);
    let error = read_bytes(&lying).unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");
    // More than the format allows at all.
    header.sections[0].state_bytes = (1 << 40) + 1;
    let mut lying = header.encode();
    lying.extend_from_slice(&file[lying.len()..]);
    let error = read_bytes(&lying).unwrap_err();
    assert!(error.to_string().contains("header is corrupt"), "{error}");
    assert_eq!(CRC_BYTES, 4);
}

/// xorshift64*: deterministic, no dependency.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed >> 12;
    *seed ^= *seed << 25;
    *seed ^= *seed >> 27;
    seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn mutated_states_behind_valid_checksums_never_panic_the_reader() {
    // What the fuzz target (snapshots/fuzz) does at random, a few thousand times here:
    // checksums stop random damage before decoding, so recompute them to reach it.
    let mut state = shard(0, 1, 40);
    state.accounts[3].instrument = Instrument::Savings(Savings::opened(48_648));
    for version in format::VERSIONS_READ {
        mutate_and_read(&state, version);
    }
}

fn mutate_and_read(state: &ShardState, version: u32) {
    let encoded = match version {
        2 => bincode::encode_to_vec(state, bincode::config::standard()).unwrap(),
        _ => format::encode_state(state).unwrap(),
    };
    let mut seed = 0x5eed_u64;
    let mut accepted = 0;
    for _ in 0..5_000 {
        let mut bytes = encoded.clone();
        for _ in 0..1 + next(&mut seed) % 4 {
            let at = (next(&mut seed) % bytes.len() as u64) as usize;
            bytes[at] = next(&mut seed) as u8;
        }
        if next(&mut seed).is_multiple_of(8) {
            bytes.truncate(1 + (next(&mut seed) % bytes.len() as u64) as usize);
        }
        let sections = vec![bytes];
        let file = assemble(&header_of_version(version, &sections, 40), &sections);
        if format::read_from_slice(&file, &mut |_| {}).is_ok() {
            accepted += 1;
        }
    }
    // Most changes land in balances or windows and still decode to a sound state; the
    // point is that none panicked.
    assert!(accepted < 5_000);
}

#[test]
fn holds_and_the_later_reasons_counters_round_trip_in_version_5() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("holds.plafsnap");
    let mut state = shard(0, 1, 3);
    state.holds.set_expiry_days(1, 10);
    let open = state.holds.place(0, 20_000, 20_007, 1_500);
    state.holds.increment(open, 20_000, 500);
    let closed = state.holds.place(2, 20_000, 20_010, 700);
    state.holds.void(closed, 700, None);
    state.holds.record_refund(42);
    state.counters[1].declined[Reason::TooManyHolds.index()] = 4;
    state.counters[2].declined_minor[Reason::UnknownHold.index()] = 9;
    assert_eq!(state.check(), Ok(()));
    let shards = vec![(state, 5)];
    plafond_snapshots::write_with(&path, &shards, options(32), &mut |_| {}).unwrap();
    let read = plafond_snapshots::read(&path, |_| {}).unwrap();
    assert_eq!(read.header.version, format::FORMAT_VERSION);
    let restored = &read.states[0];
    assert_eq!(restored, &shards[0].0);
    assert_eq!(restored.holds.held_of(0), 2_000, "the indices are rebuilt");
    assert_eq!(restored.holds.open_of(2), None);
    assert_eq!(restored.counters[1].declined[Reason::TooManyHolds.index()], 4);
}
