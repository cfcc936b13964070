//! The server's command table (SPEC §9): RESP arguments in, engine [`Request`]s or local
//! actions out; engine [`Outcome`]s in, RESP replies out. Pure functions, no I/O, so the
//! whole table is unit-tested without a socket.

use plafond::{
    AccountKind, CardView, Command, CommandId, Outcome, Reason, Regions, Request, AMOUNT_MAX_MINOR,
};

use plafond_wire::{parse_i64, Encoder};

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A command for the engine; its outcome is rendered by [`render_outcome`].
    Engine(Request),
    /// Something the server answers itself.
    Local(Local),
    /// A malformed request: the `-ERR` text (without the `-`).
    Error(String),
}

/// Requests the server answers without the engine's shards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Local {
    Ping(Option<Vec<u8>>),
    Auth(Vec<u8>),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        protocol: Option<i64>,
        auth: Option<Vec<u8>>,
    },
    Quit,
    Stats {
        json: bool,
    },
    ClockSet(i64),
    ClockAdvance(i64),
    /// Accept the jump of the system clock the time guard refused.
    ClockAccept,
    /// The clock, and the refused jump if any.
    ClockStatus,
    /// `CONFIG GET name`: redis-benchmark asks at start; `[name, ""]` satisfies it.
    ConfigGet(Vec<u8>),
    /// Write a snapshot; reply its path.
    Snapshot,
    /// Run the region's epoch now.
    BatchRun(String),
    /// Per region, the last completed epoch.
    BatchStatus,
    /// The change stream (`streams`).
    XRead(crate::streams::XRead),
    XRange(crate::streams::XRange),
    StreamsInfo,
    /// `ROLE`: `[leader|follower|candidate, term, leader HOST:PORT]` (SPEC §14).
    Role,
}

impl Action {
    /// Whether a replica that does not lead answers it itself (SPEC §14); every other
    /// request gets `-READONLY leader HOST:PORT` or `-CLUSTERDOWN no leader` there. A
    /// malformed request keeps its own error; `QUIT` and `CONFIG GET` concern only the
    /// connection.
    pub fn allowed_on_follower(&self) -> bool {
        matches!(
            self,
            Action::Error(_)
                | Action::Local(
                    Local::Ping(_)
                        | Local::Auth(_)
                        | Local::Hello { .. }
                        | Local::Quit
                        | Local::ConfigGet(_)
                        | Local::Role
                        | Local::Stats { .. }
                        | Local::XRead(_)
                        | Local::XRange(_)
                        | Local::StreamsInfo
                )
        )
    }

    /// Whether the request may run before a successful `AUTH`.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(
            self,
            Action::Local(Local::Ping(_) | Local::Auth(_) | Local::Hello { .. } | Local::Quit)
        )
    }
}

/// Reads one request's arguments. Never panics, whatever the bytes.
pub fn parse(args: &[&[u8]], regions: &Regions) -> Action {
    let Some((name, rest)) = args.split_first() else {
        return Action::Error("ERR empty command".into());
    };
    // Upper-cased on the stack: this runs for every request.
    let mut buffer = [0u8; COMMAND_NAME_BYTES_MAX];
    let upper = match buffer.get_mut(..name.len()) {
        Some(upper) => {
            upper.copy_from_slice(name);
            upper.make_ascii_uppercase();
            &*upper
        }
        None => &[],
    };
    let result = match upper {
        b"PING" => ping(rest),
        b"AUTH" => auth(rest),
        b"HELLO" => hello(rest),
        b"QUIT" => arity(rest, 0, 0).map(|_| Action::Local(Local::Quit)),
        b"PROFILE.OPEN" => profile_open(rest, regions),
        b"ACCOUNT.OPEN" => account_open(rest),
        b"PAY" => pay(rest),
        b"TRANSFER" => transfer(rest),
        b"DEPOSIT" => deposit(rest),
        b"BALANCE" => read(rest, |account| Command::ReadAccount { account }),
        b"CARD" => read(rest, |card| Command::ReadCard { card }),
        b"CARD.CEILING" => ceiling(rest),
        b"CARD.BLOCK" => read(rest, |card| Command::Block { card }),
        b"CARD.UNBLOCK" => read(rest, |card| Command::Unblock { card }),
        b"STATS" => stats(rest),
        b"CLOCK.SET" => clock(rest, Local::ClockSet),
        b"CLOCK.ADVANCE" => clock(rest, Local::ClockAdvance),
        b"CLOCK.ACCEPT" => arity(rest, 0, 0).map(|_| Action::Local(Local::ClockAccept)),
        b"CLOCK.STATUS" => arity(rest, 0, 0).map(|_| Action::Local(Local::ClockStatus)),
        b"CONFIG" => config(rest),
        b"SNAPSHOT" => arity(rest, 0, 0).map(|_| Action::Local(Local::Snapshot)),
        b"BATCH.RUN" => batch_run(rest, regions),
        b"BATCH.STATUS" => arity(rest, 0, 0).map(|_| Action::Local(Local::BatchStatus)),
        hold if crate::holds::is_hold_command(hold) => crate::holds::parse(hold, rest),
        b"XREAD" => streams_command(crate::streams::parse_xread(rest).map(Some), Local::XRead),
        b"XRANGE" => streams_command(crate::streams::parse_xrange(rest), Local::XRange),
        b"STREAMS.INFO" => arity(rest, 0, 0).map(|_| Action::Local(Local::StreamsInfo)),
        b"ROLE" => arity(rest, 0, 0).map(|_| Action::Local(Local::Role)),
        _ => {
            return Action::Error(format!(
                "ERR unknown command '{}'",
                printable(name, CLIENT_INPUT_ECHO_BYTES_MAX)
            ))
        }
    };
    match result {
        Ok(action) => action,
        Err(Malformed::Arity) => Action::Error(format!(
            "ERR wrong number of arguments for '{}' command",
            printable(name, CLIENT_INPUT_ECHO_BYTES_MAX).to_ascii_lowercase()
        )),
        Err(Malformed::Other(text)) => Action::Error(format!("ERR {text}")),
    }
}

pub use crate::limits::CLIENT_INPUT_ECHO_BYTES_MAX;
use crate::limits::COMMAND_NAME_BYTES_MAX;

pub(crate) enum Malformed {
    Arity,
    Other(String),
}

pub(crate) type Parsed = Result<Action, Malformed>;

pub(crate) fn arity(rest: &[&[u8]], min: usize, max: usize) -> Result<(), Malformed> {
    if rest.len() < min || rest.len() > max {
        return Err(Malformed::Arity);
    }
    Ok(())
}

pub(crate) fn engine(command: Command, command_id: Option<&[u8]>) -> Parsed {
    let request = match command_id {
        None => Request::new(command),
        Some(bytes) => {
            let text = std::str::from_utf8(bytes)
                .map_err(|_| Malformed::Other("command id must be printable ASCII".into()))?;
            let id = CommandId::new(text).map_err(|why| Malformed::Other(why.into()))?;
            Request::with_id(command, id)
        }
    };
    Ok(Action::Engine(request))
}

/// An id: a decimal `u64`. Anything else is malformed.
pub(crate) fn id(bytes: &[u8]) -> Result<u64, Malformed> {
    digits_u64(bytes)
        .flatten()
        .ok_or_else(|| Malformed::Other("id is not a non-negative integer".into()))
}

/// An amount: any decimal integer. One outside `1 ..= 10^15` (negative, zero, too big, even
/// beyond `u64`) becomes 0, which the engine declines as `INVALID_AMOUNT` and counts.
pub(crate) fn amount(bytes: &[u8]) -> Result<u64, Malformed> {
    let (negative, digits) = match bytes.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, bytes),
    };
    let Some(value) = digits_u64(digits) else {
        return Err(Malformed::Other("value is not an integer or out of range".into()));
    };
    let valid = value.filter(|value| !negative && (1..=AMOUNT_MAX_MINOR).contains(value));
    Ok(valid.unwrap_or(0))
}

/// Reads one or more ASCII digits: `None` if `bytes` is anything else, `Some(None)` if the
/// digits do not fit a `u64`. Straight from the bytes: every request has one or two.
fn digits_u64(bytes: &[u8]) -> Option<Option<u64>> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().try_fold(0u64, |value, &digit| {
        value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
    }))
}

fn ping(rest: &[&[u8]]) -> Parsed {
    arity(rest, 0, 1)?;
    Ok(Action::Local(Local::Ping(rest.first().map(|message| message.to_vec()))))
}

fn auth(rest: &[&[u8]]) -> Parsed {
    // `AUTH token`, or `AUTH default token` as Redis 6 clients send it.
    match rest {
        [token] | [_, token] => Ok(Action::Local(Local::Auth(token.to_vec()))),
        _ => Err(Malformed::Arity),
    }
}

fn hello(rest: &[&[u8]]) -> Parsed {
    let Some((version, options)) = rest.split_first() else {
        return Ok(Action::Local(Local::Hello { protocol: None, auth: None }));
    };
    let protocol = parse_i64(version)
        .ok_or_else(|| Malformed::Other("Protocol version is not an integer".into()))?;
    let mut auth = None;
    let mut at = 0;
    while let Some(option) = options.get(at) {
        match option.to_ascii_uppercase().as_slice() {
            b"AUTH" => {
                let token = options.get(at + 2).ok_or(Malformed::Arity)?;
                auth = Some(token.to_vec());
                at += 3;
            }
            b"SETNAME" => at += 2,
            _ => return Err(Malformed::Other("syntax error in HELLO option".into())),
        }
    }
    Ok(Action::Local(Local::Hello { protocol: Some(protocol), auth }))
}

fn profile_open(rest: &[&[u8]], regions: &Regions) -> Parsed {
    arity(rest, 1, 2)?;
    let name = String::from_utf8_lossy(rest[0]);
    // An unknown name gets an id no region has, so the engine declines it as
    // `UNKNOWN_REGION` and counts the decline like any other.
    let region = regions.id_of(&name).unwrap_or(u16::MAX);
    engine(Command::OpenProfile { region }, rest.get(1).copied())
}

fn account_open(rest: &[&[u8]]) -> Parsed {
    arity(rest, 2, 3)?;
    let profile = id(rest[0])?;
    let kind = match rest[1].to_ascii_uppercase().as_slice() {
        b"CHECKING" => AccountKind::Checking,
        b"SAVINGS" => AccountKind::Savings,
        _ => return Err(Malformed::Other("kind must be CHECKING or SAVINGS".into())),
    };
    let command = Command::OpenAccount { profile, kind, opening: None };
    engine(command, rest.get(2).copied())
}

fn pay(rest: &[&[u8]]) -> Parsed {
    arity(rest, 2, 3)?;
    let command = Command::Pay { card: id(rest[0])?, amount_minor: amount(rest[1])? };
    engine(command, rest.get(2).copied())
}

fn transfer(rest: &[&[u8]]) -> Parsed {
    arity(rest, 3, 4)?;
    let command =
        Command::Transfer { from: id(rest[0])?, to: id(rest[1])?, amount_minor: amount(rest[2])? };
    engine(command, rest.get(3).copied())
}

fn deposit(rest: &[&[u8]]) -> Parsed {
    arity(rest, 2, 3)?;
    let command = Command::Deposit { account: id(rest[0])?, amount_minor: amount(rest[1])? };
    engine(command, rest.get(2).copied())
}

fn ceiling(rest: &[&[u8]]) -> Parsed {
    arity(rest, 2, 2)?;
    let command = Command::SetCeiling { card: id(rest[0])?, ceiling_minor: amount(rest[1])? };
    engine(command, None)
}

/// Commands that take exactly one id.
fn read(rest: &[&[u8]], command: impl Fn(u64) -> Command) -> Parsed {
    arity(rest, 1, 1)?;
    engine(command(id(rest[0])?), None)
}

fn batch_run(rest: &[&[u8]], regions: &Regions) -> Parsed {
    arity(rest, 1, 1)?;
    match std::str::from_utf8(rest[0]).ok().filter(|name| regions.id_of(name).is_some()) {
        Some(name) => Ok(Action::Local(Local::BatchRun(name.to_owned()))),
        None => Err(Malformed::Other(format!(
            "unknown region '{}'",
            printable(rest[0], CLIENT_INPUT_ECHO_BYTES_MAX)
        ))),
    }
}

/// A stream command parsed by `streams`: `None` is a wrong arity.
fn streams_command<T>(parsed: Result<Option<T>, String>, local: fn(T) -> Local) -> Parsed {
    match parsed {
        Ok(Some(command)) => Ok(Action::Local(local(command))),
        Ok(None) => Err(Malformed::Arity),
        Err(text) => Err(Malformed::Other(text)),
    }
}

fn stats(rest: &[&[u8]]) -> Parsed {
    arity(rest, 0, 1)?;
    match rest.first().map(|arg| arg.to_ascii_uppercase()) {
        None => Ok(Action::Local(Local::Stats { json: false })),
        Some(format) if format == b"JSON" => Ok(Action::Local(Local::Stats { json: true })),
        Some(_) => Err(Malformed::Other("STATS takes no argument or JSON".into())),
    }
}

fn clock(rest: &[&[u8]], local: fn(i64) -> Local) -> Parsed {
    arity(rest, 1, 1)?;
    let ms = parse_i64(rest[0])
        .ok_or_else(|| Malformed::Other("value is not an integer or out of range".into()))?;
    Ok(Action::Local(local(ms)))
}

fn config(rest: &[&[u8]]) -> Parsed {
    match (rest.first().map(|sub| sub.to_ascii_uppercase()), rest.get(1)) {
        (Some(sub), Some(name)) if sub == b"GET" && rest.len() == 2 => {
            Ok(Action::Local(Local::ConfigGet(name.to_vec())))
        }
        (Some(sub), _) if sub == b"GET" => Err(Malformed::Arity),
        (Some(_), _) => Err(Malformed::Other("only CONFIG GET <name> is supported".into())),
        (None, _) => Err(Malformed::Arity),
    }
}

/// A client's bytes made safe to echo in an error: printable ASCII, at most `max` chars.
fn printable(bytes: &[u8], max: usize) -> String {
    bytes
        .iter()
        .take(max)
        .map(|&b| if b.is_ascii_graphic() { char::from(b) } else { '?' })
        .collect()
}

/// Writes the §9 reply for an engine outcome.
pub fn render_outcome(encoder: &mut Encoder<'_>, outcome: &Outcome) {
    match outcome {
        Outcome::ProfileOpened { profile } => encoder.integer(i128::from(*profile)),
        Outcome::AccountOpened { account, card } => {
            encoder.array(2);
            encoder.integer(i128::from(*account));
            match card {
                Some(card) => encoder.integer(i128::from(*card)),
                None => encoder.nil(),
            }
        }
        Outcome::Approved { balance_minor, spent_7d_minor } => {
            encoder.array(3);
            encoder.simple("APPROVED");
            encoder.integer(i128::from(*balance_minor));
            encoder.integer(i128::from(*spent_7d_minor));
        }
        Outcome::Done { balance_minor } => {
            encoder.array(2);
            encoder.simple("DONE");
            encoder.integer(i128::from(*balance_minor));
        }
        Outcome::Updated => encoder.simple("OK"),
        Outcome::Account(view) => encoder.integer(i128::from(view.balance_minor)),
        Outcome::Card(view) => render_card(encoder, view),
        Outcome::Profile(view) => {
            encoder.array(1 + view.accounts.len());
            encoder.integer(i128::from(view.region));
            for account in &view.accounts {
                encoder.integer(i128::from(*account));
            }
        }
        Outcome::Declined(reason) => render_declined(encoder, *reason),
        // §12's outcomes.
        hold => {
            let rendered = crate::holds::render(encoder, hold);
            debug_assert!(rendered, "every outcome has a reply");
        }
    }
}

fn render_card(encoder: &mut Encoder<'_>, view: &CardView) {
    encoder.array(5);
    encoder.integer(i128::from(view.account));
    encoder.simple(view.status.as_str());
    encoder.integer(i128::from(view.ceiling_minor));
    encoder.integer(i128::from(view.spent_7d_minor));
    encoder.integer(i128::from(view.remaining_minor));
}

/// `[DECLINED, REASON]`.
pub fn render_declined(encoder: &mut Encoder<'_>, reason: Reason) {
    encoder.array(2);
    encoder.simple("DECLINED");
    encoder.simple(reason.as_str());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use plafond_wire::{parse_value, Protocol, Value};

    /// A command line split at spaces, parsed with the built-in regions (also used by
    /// the hold commands' tests).
    pub(crate) fn parse_words(line: &str) -> Action {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        parse(&args, &Regions::builtin())
    }

    /// The RESP2 reply `outcome` is rendered as, read back.
    pub(crate) fn rendered(outcome: Outcome) -> Value {
        let mut out = Vec::new();
        let mut encoder = Encoder { out: &mut out, protocol: Protocol::Resp2 };
        render_outcome(&mut encoder, &outcome);
        let (value, used) = parse_value(&out).expect("valid").expect("complete");
        assert_eq!(used, out.len());
        value
    }

    fn error_of(action: Action) -> String {
        match action {
            Action::Error(text) => text,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn commands_become_engine_requests() {
        assert_eq!(
            parse_words("pay 000000000012 100 order-1"),
            Action::Engine(Request::with_id(
                Command::Pay { card: 12, amount_minor: 100 },
                CommandId::new("order-1").expect("valid id")
            ))
        );
        assert_eq!(
            parse_words("PROFILE.OPEN us-east"),
            Action::Engine(Request::new(Command::OpenProfile { region: 1 }))
        );
        assert_eq!(
            parse_words("ACCOUNT.OPEN 3 savings"),
            Action::Engine(Request::new(Command::OpenAccount {
                profile: 3,
                kind: AccountKind::Savings,
                opening: None
            }))
        );
        assert_eq!(
            parse_words("TRANSFER 1 2 5"),
            Action::Engine(Request::new(Command::Transfer { from: 1, to: 2, amount_minor: 5 }))
        );
    }

    #[test]
    fn amounts_out_of_range_reach_the_engine_as_invalid() {
        for amount in ["0", "-5", "1000000000000001", "99999999999999999999999"] {
            assert_eq!(
                parse_words(&format!("PAY 1 {amount}")),
                Action::Engine(Request::new(Command::Pay { card: 1, amount_minor: 0 })),
                "{amount}"
            );
        }
        assert_eq!(
            parse_words("PAY 1 1000000000000000"),
            Action::Engine(Request::new(Command::Pay { card: 1, amount_minor: AMOUNT_MAX_MINOR }))
        );
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(error_of(parse_words("PAY 1")).contains("wrong number of arguments"));
        assert!(error_of(parse_words("PAY 1 2 3 4")).contains("wrong number of arguments"));
        assert!(error_of(parse_words("PAY x 2")).starts_with("ERR "));
        assert!(error_of(parse_words("PAY 1 12abc")).contains("not an integer"));
        assert!(error_of(parse_words("PAY -1 5")).starts_with("ERR "));
        assert!(error_of(parse_words("PAY 18446744073709551616 5")).contains("id is not"));
        assert!(error_of(parse_words("PAY +1 5")).contains("id is not"));
        assert!(error_of(parse_words("PAY 1 -")).contains("not an integer"));
        assert!(error_of(parse_words("NOPE 1")).contains("unknown command 'NOPE'"));
        let long_name = "PROFILE.OPEN.AND.MORE";
        assert!(
            error_of(parse_words(long_name)).contains("unknown command 'PROFILE.OPEN.AND.MORE'")
        );
        assert_eq!(parse_words("pRoFiLe.OpEn eu-west"), parse_words("PROFILE.OPEN eu-west"));
        assert!(error_of(parse_words("ACCOUNT.OPEN 1 GOLD")).starts_with("ERR "));
        let long_id = "x".repeat(65);
        assert!(error_of(parse_words(&format!("PAY 1 5 {long_id}"))).starts_with("ERR "));
        assert!(error_of(parse(&[], &Regions::builtin())).starts_with("ERR "));
        let huge = "é".repeat(30_000);
        let refused = error_of(parse_words(&format!("BATCH.RUN {huge}")));
        assert!(refused.len() <= 100 + CLIENT_INPUT_ECHO_BYTES_MAX, "{} bytes", refused.len());
        assert!(refused.contains("unknown region"), "{refused}");
        let binary: [&[u8]; 3] = [b"PAY", &[0xff, 0x00], b"1"];
        assert!(error_of(parse(&binary, &Regions::builtin())).starts_with("ERR "));
    }

    #[test]
    fn outcomes_render_as_the_spec_table_says() {
        let simple = |text: &str| Value::Simple(text.into());
        assert_eq!(
            rendered(Outcome::Approved { balance_minor: 19_900, spent_7d_minor: 100 }),
            Value::Array(vec![simple("APPROVED"), Value::Integer(19_900), Value::Integer(100)])
        );
        assert_eq!(
            rendered(Outcome::Declined(Reason::CeilingExceeded)),
            Value::Array(vec![simple("DECLINED"), simple("CEILING_EXCEEDED")])
        );
        assert_eq!(
            rendered(Outcome::AccountOpened { account: 4, card: None }),
            Value::Array(vec![Value::Integer(4), Value::Nil])
        );
        assert_eq!(rendered(Outcome::Updated), simple("OK"));
    }
}
