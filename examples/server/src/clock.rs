//! The server's clock and its commands: `CLOCK.SET` / `CLOCK.ADVANCE` move a manual clock
//! (bounded: [`plafond::CLOCK_MOVE_DAYS_MAX`] days a move, the years 2000 to 2199);
//! `CLOCK.STATUS` and `CLOCK.ACCEPT` report and accept a jump of the system clock that
//! the [`TimeGuard`] refused (SPEC §9, issue 15).

use std::sync::Arc;

use plafond::{Clock, ManualClock, SystemClock, TimeGuard};

use crate::commands::Local;
use plafond_wire::Encoder;

/// The clock the server stamps commands with.
#[derive(Clone)]
pub enum ServerClock {
    /// `--clock manual`: moves only by `CLOCK.SET` / `CLOCK.ADVANCE`.
    Manual(Arc<ManualClock>),
    /// `--clock system`: the host's clock behind a guard against jumps.
    System(Arc<TimeGuard>),
}

impl ServerClock {
    /// The manual clock at its documented start, or the guarded system clock.
    pub fn new(manual: bool) -> ServerClock {
        match manual {
            true => ServerClock::Manual(Arc::new(ManualClock::new(ManualClock::SERVER_START_MS))),
            false => ServerClock::System(Arc::new(TimeGuard::new(Arc::new(SystemClock)))),
        }
    }

    /// The clock to hand to the engine.
    pub fn clock(&self) -> Arc<dyn Clock> {
        match self {
            ServerClock::Manual(clock) => clock.clone(),
            ServerClock::System(guard) => guard.clone(),
        }
    }

    /// Runs a `CLOCK.*` command and writes its reply; other commands get an error.
    pub fn reply(&self, local: &Local, encoder: &mut Encoder<'_>) {
        match (self, local) {
            (ServerClock::Manual(clock), Local::ClockSet(ms)) => moved(encoder, clock.try_set(*ms)),
            (ServerClock::Manual(clock), Local::ClockAdvance(ms)) => {
                moved(encoder, clock.try_advance(*ms))
            }
            (ServerClock::System(_), Local::ClockSet(_) | Local::ClockAdvance(_)) => {
                encoder.error("ERR the clock is the system clock; start with --clock manual")
            }
            (ServerClock::Manual(_), Local::ClockAccept) => {
                encoder.error("ERR the manual clock has no jump to accept")
            }
            (ServerClock::System(guard), Local::ClockAccept) => match guard.accept() {
                Some(_) => encoder.simple("OK"),
                None => encoder.error("ERR no clock jump is refused: nothing to accept"),
            },
            (_, Local::ClockStatus) => self.status(encoder),
            _ => encoder.error("ERR not a clock command"),
        }
    }

    /// `{clock, now_ms, host_ms, refused_ahead_ms}`: the host's reading and how far ahead
    /// of the engine's time it is while a jump is refused (nil otherwise).
    fn status(&self, encoder: &mut Encoder<'_>) {
        let (kind, now_ms, host_ms, refused) = match self {
            ServerClock::Manual(clock) => ("manual", clock.now_ms(), None, None),
            ServerClock::System(guard) => {
                let now_ms = guard.now_ms();
                let refused = guard.refused();
                let host_ms = refused.as_ref().map_or(now_ms, |jump| jump.host_ms);
                ("system", now_ms, Some(host_ms), refused.map(|jump| jump.ahead_ms))
            }
        };
        encoder.map(4);
        encoder.bulk(b"clock");
        encoder.bulk(kind.as_bytes());
        encoder.bulk(b"now_ms");
        encoder.integer(i128::from(now_ms));
        encoder.bulk(b"host_ms");
        optional(encoder, host_ms);
        encoder.bulk(b"refused_ahead_ms");
        optional(encoder, refused);
    }
}

fn moved(encoder: &mut Encoder<'_>, result: Result<(), plafond::ClockMoveError>) {
    match result {
        Ok(()) => encoder.simple("OK"),
        Err(error) => encoder.error(&format!("ERR {error}")),
    }
}

fn optional(encoder: &mut Encoder<'_>, value: Option<i64>) {
    match value {
        Some(value) => encoder.integer(i128::from(value)),
        None => encoder.nil(),
    }
}
