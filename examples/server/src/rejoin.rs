//! How a deposed leader rejoins (SPEC §14): its shards may hold batches that never
//! committed, so it starts again in place, as after a `kill -9`: the same program, the same
//! flags, the same process id (a supervisor or a test that tracks the pid sees one process),
//! rebuilt from its newest checkpoint and the committed log, as a follower.

use std::os::unix::process::CommandExt as _;

/// Replaces this process with a fresh start of the same program and flags. Returns only if
/// that fails, after which the process exits: a supervisor restarts it.
pub fn restart_in_place() {
    eprintln!("server: restarting in place to rejoin as a follower");
    let program = std::env::current_exe();
    let error = match program {
        // Every descriptor the server opened (RocksDB's files and lock, the listeners) is
        // close-on-exec, so the new image opens them afresh.
        Ok(program) => std::process::Command::new(program).args(std::env::args_os().skip(1)).exec(),
        Err(error) => error,
    };
    eprintln!("server: cannot restart in place ({error}); exiting so a supervisor restarts it");
    std::process::exit(75);
}
