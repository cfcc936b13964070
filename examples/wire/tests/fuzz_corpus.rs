//! Replays the corpus kept from fuzzing (`fuzz/regressions/request_parser/`, see
//! docs/FUZZING.md) through the fuzz target's own check, on stable.

use std::path::Path;

use plafond_wire::fuzzing::{check, parse_in_reads, Parsed};

#[test]
fn the_kept_corpus_parses_the_same_in_any_reads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/request_parser");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).expect("the regression directory is in the repository") {
        let path = entry.expect("listing the regression directory").path();
        let bytes = std::fs::read(&path).expect("reading a kept corpus file");
        check(&bytes);
        replayed += 1;
    }
    assert!(replayed > 0, "no corpus kept in {}", dir.display());
}

/// The check can fail: two requests come out as two in any split.
#[test]
fn the_check_sees_requests() {
    let input = b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n";
    let (parsed, error) = parse_in_reads(input, &[3]);
    assert_eq!(error, None);
    assert_eq!(
        parsed,
        vec![
            Parsed::Args(vec![b"PING".to_vec()]),
            Parsed::Args(vec![b"ECHO".to_vec(), b"hi".to_vec()])
        ]
    );
}
