//! The check the fuzz target `snapshot_reader` runs on every input, here so that the stable
//! regression test (`tests/fuzz_corpus.rs`) replays the kept corpus through the same code.
//! Not part of the API.

use crate::format;

/// Any bytes read as a snapshot give an error or states that pass `ShardState::check`;
/// panics otherwise. True when the bytes were accepted.
pub fn check_snapshot(bytes: &[u8]) -> bool {
    let Ok(snapshot) = format::read_from_slice(bytes, &mut |_| {}) else {
        return false;
    };
    for state in &snapshot.states {
        if let Err(problem) = state.check() {
            panic!("an accepted snapshot holds a state that fails its check: {problem}");
        }
        // Not asserted: the reader leaves the money to its callers (the fixture written by
        // the code does not add up), but checking it must not panic or wrap either.
        let _ = format::check_money(state);
    }
    true
}
