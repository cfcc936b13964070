//! Replays the corpus kept from fuzzing (`fuzz/regressions/snapshot_reader/`, see
//! docs/FUZZING.md) through the fuzz target's own check, on stable.

use std::path::Path;

use plafond_snapshots::fuzzing::check_snapshot;

#[test]
fn the_kept_corpus_is_refused_or_passes_every_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/snapshot_reader");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the regression directory is in the repository") {
        let path = entry.expect("listing the regression directory").path();
        let bytes = std::fs::read(&path).expect("reading a kept corpus file");
        check_snapshot(&bytes);
        replayed += 1;
    }
    assert!(replayed > 0, "no corpus kept in {}", dir.display());
}

/// The check sees a real snapshot: the fixture written by the code is accepted, and the
/// same bytes cut short are refused.
#[test]
fn a_real_snapshot_is_accepted_and_a_cut_one_refused() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2.plafsnap");
    let bytes = std::fs::read(fixture).expect("the fixture is in the repository");
    assert!(check_snapshot(&bytes));
    assert!(!check_snapshot(&bytes[..bytes.len() - 1]));
}
