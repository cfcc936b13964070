//! The keyed MAC of snapshot files (format version 4): written with an operator's key,
//! checked by every keyed read, refused when missing, made with another key, or left as it
//! was while the content changed behind recomputed checksums.

use std::path::{Path, PathBuf};

use plafond_shards::state::{Account, Instrument, Profile, ShardState, NO_ACCOUNT};
use plafond_shards::window::Window;
use plafond_snapshots::format::{self, WriteOptions};
use plafond_snapshots::{MacKey, SnapshotError, FORMAT_VERSION, KEYED_FORMAT_VERSION};

fn key(byte: u8) -> MacKey {
    MacKey::from_bytes(&[byte; 32]).unwrap()
}

/// Two shards of a few checking accounts, their money consistent.
fn shards() -> Vec<(ShardState, u64)> {
    (0..2u16)
        .map(|index| {
            let mut state = ShardState::new(index, 2, 2);
            for local in 0..5u32 {
                state.profiles.push(Profile {
                    region: 0,
                    first_account: local,
                    last_account: local,
                });
                let card = plafond_shards::state::Card {
                    status: plafond_shards::command::CardStatus::Active,
                    ceiling_minor: 10_000,
                    window: Window::new(20_000),
                };
                state.accounts.push(Account {
                    balance_minor: 100_000,
                    profile: local,
                    next_in_profile: NO_ACCOUNT,
                    region: 0,
                    instrument: Instrument::Card(card),
                });
            }
            state.totals.balances_minor = 500_000;
            state.totals.initial_deposits_minor = 500_000;
            (state, 3 + u64::from(index))
        })
        .collect()
}

/// Small chunks, so that the file has many.
fn options() -> WriteOptions {
    WriteOptions { chunk_bytes: 64, created_ms: 1_799_064_000_000, bytes_per_second: None }
}

fn write(dir: &Path, name: &str, shards: &[(ShardState, u64)], key: Option<&MacKey>) -> PathBuf {
    let path = dir.join(name);
    plafond_snapshots::write_keyed(&path, shards, options(), key, &mut |_| {}).unwrap();
    path
}

fn version(path: &Path) -> u32 {
    let bytes = std::fs::read(path).unwrap();
    u32::from_le_bytes(bytes[8..12].try_into().unwrap())
}

#[test]
fn a_keyed_file_reads_back_with_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let shards = shards();
    let keyed = write(dir.path(), "keyed.plafsnap", &shards, Some(&key(1)));
    let plain = write(dir.path(), "plain.plafsnap", &shards, None);
    assert_eq!((version(&keyed), version(&plain)), (KEYED_FORMAT_VERSION, FORMAT_VERSION));
    let sizes = |path: &Path| std::fs::metadata(path).unwrap().len();
    assert_eq!(sizes(&keyed), sizes(&plain) + plafond_mac::MAC_BYTES as u64);

    let read = plafond_snapshots::read_keyed(&keyed, Some(&key(1)), |_| {}).unwrap();
    assert!(read.header.keyed());
    assert_eq!(read.states, shards.iter().map(|(state, _)| state.clone()).collect::<Vec<_>>());
    // Without a key the MAC cannot be checked; the checksums still are.
    let unchecked = plafond_snapshots::read(&keyed, |_| {}).unwrap();
    assert_eq!(unchecked.states, read.states);

    let error = plafond_snapshots::read_keyed(&keyed, Some(&key(2)), |_| {}).unwrap_err();
    assert!(matches!(&error, SnapshotError::MacMismatch { path } if path == &keyed), "{error}");
    assert!(error.to_string().contains("keyed.plafsnap"), "names the file: {error}");

    let error = plafond_snapshots::read_keyed(&plain, Some(&key(1)), |_| {}).unwrap_err();
    let SnapshotError::MacMissing { path, version } = &error else { panic!("{error}") };
    assert_eq!((path, *version), (&plain, FORMAT_VERSION));
    assert!(error.to_string().contains("carries no MAC"), "{error}");
    // And the unkeyed file reads as it always did.
    assert_eq!(plafond_snapshots::read(&plain, |_| {}).unwrap().states, read.states);
}

/// The bytes of `path` with `tamper` applied to its states, written again with another
/// key (so every CRC and the layout are right) and then given the original file's MAC:
/// what someone who can write the file but has no key can make.
fn forged(dir: &Path, path: &Path, tamper: impl FnOnce(&mut [ShardState])) -> PathBuf {
    let original = std::fs::read(path).unwrap();
    let read = plafond_snapshots::read(path, |_| {}).unwrap();
    let mut states = read.states;
    tamper(&mut states);
    let positions = read.header.sections.iter().map(|section| section.log_position);
    let shards: Vec<(ShardState, u64)> = states.into_iter().zip(positions).collect();
    let forged = write(dir, "forged.plafsnap", &shards, Some(&key(0xee)));
    let mut bytes = std::fs::read(&forged).unwrap();
    let mac_at = bytes.len() - plafond_mac::MAC_BYTES;
    bytes[mac_at..].copy_from_slice(&original[original.len() - plafond_mac::MAC_BYTES..]);
    std::fs::write(&forged, &bytes).unwrap();
    forged
}

#[test]
fn a_state_changed_behind_recomputed_checksums_is_refused_by_the_mac() {
    let dir = tempfile::tempdir().unwrap();
    let keyed = write(dir.path(), "keyed.plafsnap", &shards(), Some(&key(1)));
    let forged = forged(dir.path(), &keyed, |states| {
        states[1].accounts[2].balance_minor += 45_000;
        states[1].totals.balances_minor += 45_000;
        states[1].totals.deposits_minor += 45_000;
    });
    // Every checksum is right: without the key, the forgery reads.
    let read = plafond_snapshots::read(&forged, |_| {}).unwrap();
    assert_eq!(read.states[1].accounts[2].balance_minor, 145_000);
    assert!(format::check_money(&read.states[1]).is_ok(), "the money adds up too");
    let error = plafond_snapshots::read_keyed(&forged, Some(&key(1)), |_| {}).unwrap_err();
    assert!(matches!(&error, SnapshotError::MacMismatch { path } if path == &forged), "{error}");
}

#[test]
fn every_flipped_bit_and_every_cut_of_a_keyed_file_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keyed = write(dir.path(), "keyed.plafsnap", &shards(), Some(&key(1)));
    let bytes = std::fs::read(&keyed).unwrap();
    let damaged = dir.path().join("damaged.plafsnap");
    let refused = |file: &[u8]| {
        std::fs::write(&damaged, file).unwrap();
        plafond_snapshots::read_keyed(&damaged, Some(&key(1)), |_| {}).is_err()
    };
    assert!(!refused(&bytes), "the file itself reads");
    for at in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= 1 << (at % 8);
        assert!(refused(&flipped), "a bit flipped at byte {at} passed");
    }
    let mac_at = bytes.len() - plafond_mac::MAC_BYTES;
    let mut flipped = bytes.clone();
    flipped[mac_at + 5] ^= 0x10;
    std::fs::write(&damaged, &flipped).unwrap();
    let error = plafond_snapshots::read_keyed(&damaged, Some(&key(1)), |_| {}).unwrap_err();
    assert!(matches!(error, SnapshotError::MacMismatch { .. }), "{error}");
    for cut in [mac_at, mac_at + 1, bytes.len() - 1] {
        assert!(refused(&bytes[..cut]), "cut at {cut} passed");
    }
    // In memory (the fuzz target's reader) the file reads, its MAC unchecked.
    assert!(format::read_from_slice(&bytes, &mut |_| {}).is_ok());
}

#[test]
fn a_snapshot_taken_without_a_key_is_sealed_under_one() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "plain.plafsnap", &shards(), None);
    let sealed = dir.path().join("sealed.plafsnap");
    plafond_snapshots::seal(&plain, &sealed, &key(1), |_| {}).unwrap();
    assert_eq!(version(&sealed), KEYED_FORMAT_VERSION);
    let read = plafond_snapshots::read_keyed(&sealed, Some(&key(1)), |_| {}).unwrap();
    let original = plafond_snapshots::read(&plain, |_| {}).unwrap();
    assert_eq!((read.header.chunk_bytes, read.header.created_ms), (64, 1_799_064_000_000));
    assert_eq!(read.states, original.states);
    assert_eq!(read.header.sections, original.header.sections);

    // A state whose money does not add up is not sealed.
    let mut bad = shards();
    bad[0].0.accounts[0].balance_minor += 1;
    let bad = write(dir.path(), "bad.plafsnap", &bad, None);
    let error = plafond_snapshots::seal(&bad, &dir.path().join("x"), &key(1), |_| {});
    assert!(matches!(error, Err(SnapshotError::Money { shard: 0, .. })), "{error:?}");
    assert!(!dir.path().join("x").exists());
}
