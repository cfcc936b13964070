//! Any bytes given to the snapshot reader give a snapshot or an error: never a panic, an
//! abort or an allocation beyond what the input's size bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = plafond_snapshots::format::read_from_slice(bytes, &mut |_| {});
});
