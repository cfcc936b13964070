//! Any bytes given to the request parser give requests or a protocol error, never a panic,
//! and the same ones whether they arrive in one read, two reads split anywhere, or one byte
//! at a time (`plafond_wire::fuzzing::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| plafond_wire::fuzzing::check(data));
