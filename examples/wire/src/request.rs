//! Reading requests, as the server does.
//!
//! [`RequestParser`] is the server's side: an incremental parser of client requests with a
//! limit on everything a client controls.
//!
//! A request is either a RESP array of bulk strings (`*2\r\n$4\r\nPING\r\n...`) or an
//! inline line (`PING\r\n`, what `telnet` sends). The parser never panics and never buffers
//! more than one frame of at most [`FRAME_BYTES_MAX`] payload bytes: a larger frame is
//! reported as [`Frame::TooLarge`] as soon as its header says so, and its payload is then
//! skipped as it streams in, so the connection keeps working after it.

use std::fmt;

/// The most payload bytes (sum of the arguments' lengths) one request may carry.
pub const FRAME_BYTES_MAX: usize = 64 * 1024;
/// The most arguments one request may carry; the widest command has five.
pub const FRAME_ARGS_MAX: usize = 16;
/// The longest header line (`*N` or `$N`); longer is garbage, not a number.
pub const HEADER_BYTES_MAX: usize = 32;
/// The longest inline request line.
pub const INLINE_BYTES_MAX: usize = FRAME_BYTES_MAX;
/// The largest bulk string the parser will skip over in an oversized frame; beyond this
/// (Redis's own `proto-max-bulk-len`) the client is not speaking RESP in good faith.
pub const SKIP_BULK_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// The most elements an oversized array may declare before the framing counts as lost.
pub const SKIP_ARGS_MAX: u64 = 1024 * 1024;
/// The client sent something that is not RESP: the framing is lost, close the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// One request's arguments, borrowed from the bytes the parser was given: a request costs
/// no allocation on its way to the command table.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    slots: [&'a [u8]; FRAME_ARGS_MAX],
    len: usize,
}

impl<'a> Args<'a> {
    pub(crate) const fn empty() -> Args<'a> {
        Args { slots: [&[]; FRAME_ARGS_MAX], len: 0 }
    }

    /// Adds an argument; `false` when there are already [`FRAME_ARGS_MAX`].
    pub(crate) fn push(&mut self, arg: &'a [u8]) -> bool {
        let Some(slot) = self.slots.get_mut(self.len) else {
            return false;
        };
        *slot = arg;
        self.len += 1;
        true
    }

    /// The command name and its arguments, in order.
    pub fn as_slice(&self) -> &[&'a [u8]] {
        &self.slots[..self.len]
    }
}

impl PartialEq for Args<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Args<'_> {}

impl fmt::Debug for Args<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.as_slice().iter().map(|arg| String::from_utf8_lossy(arg)))
            .finish()
    }
}

/// One request read off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a frame lives on the stack for one step; boxing its arguments would be the \
              allocation per request this type exists to avoid"
)]
pub enum Frame<'a> {
    /// The command name and its arguments.
    Args(Args<'a>),
    /// A request over [`FRAME_BYTES_MAX`] or [`FRAME_ARGS_MAX`]; the rest of it is skipped.
    TooLarge,
}

/// What one call to [`RequestParser::next`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// Bytes of the input that were used up (and must be dropped by the caller).
    pub consumed: usize,
    /// A complete request, if one was found; it borrows the input.
    pub frame: Option<Frame<'a>>,
}

/// The rest of an oversized request, still to be skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Skip {
    bytes: u64,
    bulks: u64,
}

/// An incremental request parser. Feed it the buffered bytes; it says how many it used.
#[derive(Debug, Default)]
pub struct RequestParser {
    skip: Option<Skip>,
}

impl RequestParser {
    /// A parser at the start of a stream.
    pub fn new() -> RequestParser {
        RequestParser::default()
    }

    /// Reads at most one request from the start of `input`. `consumed == 0` with no frame
    /// means: more bytes are needed.
    pub fn next<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, ProtocolError> {
        if let Some(skip) = self.skip {
            return self.skip_some(skip, input);
        }
        match input.first() {
            None => Ok(Step { consumed: 0, frame: None }),
            Some(b'*') => self.array(input),
            Some(_) => inline(input),
        }
    }

    fn skip_some(&mut self, mut skip: Skip, input: &[u8]) -> Result<Step<'static>, ProtocolError> {
        let mut consumed = 0usize;
        loop {
            if skip.bytes > 0 {
                let available = (input.len() - consumed) as u64;
                let taken = skip.bytes.min(available);
                skip.bytes -= taken;
                consumed += taken as usize;
                if skip.bytes > 0 {
                    break;
                }
            } else if skip.bulks > 0 {
                let rest = &input[consumed..];
                let Some((len, header)) = header_line(rest, b'$')? else {
                    break;
                };
                if len < 0 || len as u64 > SKIP_BULK_BYTES_MAX {
                    return Err(ProtocolError("invalid bulk length"));
                }
                consumed += header;
                skip.bulks -= 1;
                skip.bytes = len as u64 + 2;
            } else {
                break;
            }
        }
        self.skip = (skip != Skip::default()).then_some(skip);
        Ok(Step { consumed, frame: None })
    }

    fn array<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, ProtocolError> {
        let Some((count, mut at)) = header_line(input, b'*')? else {
            return Ok(Step { consumed: 0, frame: None });
        };
        if count <= 0 {
            // `*0` and `*-1` carry no command; Redis ignores them too.
            return Ok(Step { consumed: at, frame: None });
        }
        let count = count as u64;
        if count > FRAME_ARGS_MAX as u64 {
            if count > SKIP_ARGS_MAX {
                return Err(ProtocolError("invalid multibulk length"));
            }
            return Ok(self.too_large(at, Skip { bytes: 0, bulks: count }));
        }
        let mut args = Args::empty();
        let mut payload_bytes = 0usize;
        for index in 0..count {
            let Some((len, header)) = header_line(&input[at..], b'$')? else {
                return Ok(incomplete());
            };
            if len < 0 || len as u64 > SKIP_BULK_BYTES_MAX {
                return Err(ProtocolError("invalid bulk length"));
            }
            let len = len as usize;
            at += header;
            payload_bytes += len;
            if payload_bytes > FRAME_BYTES_MAX {
                let skip = Skip { bytes: len as u64 + 2, bulks: count - index - 1 };
                return Ok(self.too_large(at, skip));
            }
            let Some(bulk) = input.get(at..at + len + 2) else {
                return Ok(incomplete());
            };
            if !bulk.ends_with(b"\r\n") {
                return Err(ProtocolError("bulk string not terminated by CRLF"));
            }
            // `count <= FRAME_ARGS_MAX` was checked above, so every argument fits.
            args.push(&bulk[..len]);
            at += len + 2;
        }
        Ok(Step { consumed: at, frame: Some(Frame::Args(args)) })
    }

    fn too_large(&mut self, consumed: usize, skip: Skip) -> Step<'static> {
        self.skip = (skip != Skip::default()).then_some(skip);
        Step { consumed, frame: Some(Frame::TooLarge) }
    }
}

pub(crate) fn incomplete() -> Step<'static> {
    Step { consumed: 0, frame: None }
}

/// An inline request: words separated by spaces, ended by `\n` (or `\r\n`).
fn inline(input: &[u8]) -> Result<Step<'_>, ProtocolError> {
    // A line of at most INLINE_BYTES_MAX bytes, then `\n` or `\r\n`. The same rule whether
    // the `\r\n` arrives in one read or split across two: a pending `\r` just past the
    // limit is incomplete, not too big (it was refused when split, accepted when whole).
    let fits = |end: usize| {
        end <= INLINE_BYTES_MAX
            || (end == INLINE_BYTES_MAX + 1 && input.get(INLINE_BYTES_MAX) == Some(&b'\r'))
    };
    let Some(end) = input.iter().take(INLINE_BYTES_MAX + 2).position(|&b| b == b'\n') else {
        if !fits(input.len()) {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(incomplete());
    };
    if !fits(end) {
        return Err(ProtocolError("too big inline request"));
    }
    let line = &input[..end];
    let mut args = Args::empty();
    let mut too_many = false;
    for word in line.split(|b| b.is_ascii_whitespace()).filter(|word| !word.is_empty()) {
        too_many |= !args.push(word);
    }
    let frame =
        if too_many { Some(Frame::TooLarge) } else { (args.len > 0).then_some(Frame::Args(args)) };
    Ok(Step { consumed: end + 1, frame })
}

/// Reads a `<marker><integer>\r\n` line: the integer and the line's length, or `None` if
/// the line is not complete yet.
fn header_line(input: &[u8], marker: u8) -> Result<Option<(i64, usize)>, ProtocolError> {
    let Some(&first) = input.first() else {
        return Ok(None);
    };
    if first != marker {
        return Err(ProtocolError(if marker == b'$' { "expected '$'" } else { "expected '*'" }));
    }
    let window = &input[..input.len().min(HEADER_BYTES_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if input.len() >= HEADER_BYTES_MAX {
            return Err(ProtocolError("header line too long"));
        }
        return Ok(None);
    };
    let Some(&lf) = input.get(cr + 1) else {
        return Ok(None);
    };
    if lf != b'\n' {
        return Err(ProtocolError("header not terminated by CRLF"));
    }
    let number = parse_i64(&input[1..cr]).ok_or(ProtocolError("invalid length"))?;
    Ok(Some((number, cr + 2)))
}

/// A decimal integer with an optional minus sign, nothing else. Straight from the bytes:
/// every request has a header line per argument.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulated negatively, so i64::MIN, which has no positive twin, parses too.
    let mut value: i64 = 0;
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_sub(i64::from(digit))?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}
