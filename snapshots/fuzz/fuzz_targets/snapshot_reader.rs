//! Any bytes given to the snapshot reader give an error or states that pass
//! `ShardState::check` and add up: never a panic, an abort or an allocation beyond what the
//! input's size bounds (`plafond_snapshots::fuzzing::check_snapshot`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    plafond_snapshots::fuzzing::check_snapshot(bytes);
});
