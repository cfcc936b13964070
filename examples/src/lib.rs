//! Shared pieces of the example programs: the RESP wire format, the server's command
//! table and the combiner of its engine submissions, the stats dump, flag parsing, and the
//! random samplers of the load generator.

pub mod access;
pub mod budget;
pub mod clock;
pub mod combiner;
pub mod commands;
pub mod descriptors;
pub mod epochs;
pub mod flags;
pub mod limits;
pub mod resp;
pub mod sample;
pub mod slots;
pub mod snapshot_dir;
pub mod stats;
