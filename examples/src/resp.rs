//! The wire format: RESP2 (and the few RESP3 types `HELLO 3` needs).
//!
//! The server side is [`RequestParser`], an incremental parser of client requests with a
//! limit on everything a client controls, and [`Encoder`], which writes replies. The client
//! side (cli, loadgen, tests) is [`parse_value`] and [`encode_command`].
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
/// The longest error reply. Errors quote at most this much (and the command table far
/// less, see `commands::CLIENT_INPUT_ECHO_BYTES_MAX`): a 60 KB argument once came back as
/// a 180 KB error.
pub const ERROR_BYTES_MAX: usize = 512;

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
    const fn empty() -> Args<'a> {
        Args { slots: [&[]; FRAME_ARGS_MAX], len: 0 }
    }

    /// Adds an argument; `false` when there are already [`FRAME_ARGS_MAX`].
    fn push(&mut self, arg: &'a [u8]) -> bool {
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

fn incomplete() -> Step<'static> {
    Step { consumed: 0, frame: None }
}

/// An inline request: words separated by spaces, ended by `\n` (or `\r\n`).
fn inline(input: &[u8]) -> Result<Step<'_>, ProtocolError> {
    let Some(end) = input.iter().take(INLINE_BYTES_MAX + 2).position(|&b| b == b'\n') else {
        if input.len() > INLINE_BYTES_MAX {
            return Err(ProtocolError("too big inline request"));
        }
        return Ok(incomplete());
    };
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

/// How nil and maps are written: RESP2 (the default) or RESP3 (after `HELLO 3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Resp2,
    Resp3,
}

/// Writes replies into a buffer, for one write per batch.
#[derive(Debug)]
pub struct Encoder<'a> {
    pub out: &'a mut Vec<u8>,
    pub protocol: Protocol,
}

impl Encoder<'_> {
    /// `+text`: `text` must not contain CR or LF (it is one of ours, never a client's).
    pub fn simple(&mut self, text: &str) {
        debug_assert!(!text.contains(['\r', '\n']));
        self.line(b'+', text.as_bytes());
    }

    /// `-text`: CR and LF become spaces, so an error can never break the framing; at most
    /// [`ERROR_BYTES_MAX`] bytes of it (cut at a character boundary).
    pub fn error(&mut self, text: &str) {
        let mut clean = String::with_capacity(text.len().min(ERROR_BYTES_MAX));
        for c in text.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }) {
            if clean.len() + c.len_utf8() > ERROR_BYTES_MAX {
                break;
            }
            clean.push(c);
        }
        self.line(b'-', clean.as_bytes());
    }

    /// `:n` when `n` fits a signed 64-bit integer, which is what every Redis client reads
    /// (`redis-cli` refuses wider). Beyond (a balance over `i64::MAX`, sums of `u64`s):
    /// in RESP2 a bulk string of the decimal digits, in RESP3 a big number `(n`.
    pub fn integer(&mut self, n: i128) {
        if i64::try_from(n).is_ok() {
            return self.decimal_line(b':', n);
        }
        match self.protocol {
            Protocol::Resp2 => {
                let (digits, at) = decimal(n);
                self.bulk(&digits[at..]);
            }
            Protocol::Resp3 => self.decimal_line(b'(', n),
        }
    }

    /// `$len\r\nbytes\r\n`.
    pub fn bulk(&mut self, bytes: &[u8]) {
        self.decimal_line(b'$', bytes.len() as i128);
        self.out.extend_from_slice(bytes);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Nil: `$-1` in RESP2, `_` in RESP3.
    pub fn nil(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.out.extend_from_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.out.extend_from_slice(b"_\r\n"),
        }
    }

    /// The header of an array of `len` elements; the caller writes them next.
    pub fn array(&mut self, len: usize) {
        self.decimal_line(b'*', len as i128);
    }

    /// The header of a map of `pairs` key-value pairs: `%` in RESP3, a flat array in RESP2.
    pub fn map(&mut self, pairs: usize) {
        match self.protocol {
            Protocol::Resp2 => self.array(pairs * 2),
            Protocol::Resp3 => self.decimal_line(b'%', pairs as i128),
        }
    }

    fn line(&mut self, marker: u8, body: &[u8]) {
        self.out.push(marker);
        self.out.extend_from_slice(body);
        self.out.extend_from_slice(b"\r\n");
    }

    /// `<marker><n>\r\n`, formatted on the stack: every reply has one or more, and a
    /// `to_string` each would be an allocation per number.
    fn decimal_line(&mut self, marker: u8, n: i128) {
        let (digits, at) = decimal(n);
        self.line(marker, &digits[at..]);
    }
}

/// The decimal text of `n`: `digits[at..]`. On the stack: every reply has numbers.
fn decimal(n: i128) -> ([u8; 40], usize) {
    // i128::MIN has 39 digits and a sign.
    let mut digits = [0u8; 40];
    let mut at = digits.len();
    let mut wide = n.unsigned_abs();
    // u128 division is a library call: only the digits beyond u64 pay for it.
    while wide > u128::from(u64::MAX) {
        at -= 1;
        digits[at] = b'0' + (wide % 10) as u8;
        wide /= 10;
    }
    let mut rest = wide as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    (digits, at)
}

/// Encodes a command as a RESP array of bulk strings (what a client sends).
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    let mut encoder = Encoder { out, protocol: Protocol::Resp2 };
    encoder.array(args.len());
    for arg in args {
        encoder.bulk(arg.as_ref());
    }
}

/// A reply, as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

/// The largest bulk reply a client accepts (the stats dump of a big engine fits).
pub const REPLY_BULK_BYTES_MAX: usize = 64 * 1024 * 1024;
/// The most elements of one reply array a client accepts.
pub const REPLY_ARRAY_LEN_MAX: usize = 1024 * 1024;
/// How deeply reply arrays may nest.
pub const REPLY_DEPTH_MAX: usize = 8;

/// Reads one reply from the start of `input`: the value and the bytes it used, or `None`
/// if it is not complete yet.
pub fn parse_value(input: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    parse_value_at(input, 0)
}

fn parse_value_at(input: &[u8], depth: usize) -> Result<Option<(Value, usize)>, ProtocolError> {
    if depth > REPLY_DEPTH_MAX {
        return Err(ProtocolError("reply nested too deeply"));
    }
    let Some(&marker) = input.first() else {
        return Ok(None);
    };
    let Some(end) = input.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    // `end` is 0 when the input starts with CRLF: no marker, an empty line.
    let line = input.get(1..end).unwrap_or_default();
    let text = || String::from_utf8_lossy(line).into_owned();
    let after = end + 2;
    let value = match marker {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Integer(parse_i64(line).ok_or(ProtocolError("invalid integer"))?),
        // A RESP3 big number (an integer past i64) reads as its digits, as RESP2 sends it.
        b'(' => Value::Bulk(line.to_vec()),
        b'_' => Value::Nil,
        b'$' => {
            let len = parse_i64(line).ok_or(ProtocolError("invalid bulk length"))?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let len = len as usize;
            if len > REPLY_BULK_BYTES_MAX {
                return Err(ProtocolError("bulk reply too large"));
            }
            let Some(body) = input.get(after..after + len + 2) else {
                return Ok(None);
            };
            return Ok(Some((Value::Bulk(body[..len].to_vec()), after + len + 2)));
        }
        b'*' | b'%' => {
            let len = parse_i64(line).ok_or(ProtocolError("invalid array length"))?;
            if len < 0 {
                return Ok(Some((Value::Nil, after)));
            }
            let elements = if marker == b'%' { len.saturating_mul(2) } else { len };
            let elements = usize::try_from(elements).unwrap_or(usize::MAX);
            if elements > REPLY_ARRAY_LEN_MAX {
                return Err(ProtocolError("reply array too long"));
            }
            let mut items = Vec::with_capacity(elements.min(1024));
            let mut at = after;
            for _ in 0..elements {
                let Some((item, used)) = parse_value_at(&input[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            return Ok(Some((Value::Array(items), at)));
        }
        _ => return Err(ProtocolError("unknown reply type")),
    };
    Ok(Some((value, after)))
}

impl fmt::Display for Value {
    /// Like redis-cli: one line per element, bulk strings as text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Simple(text) => write!(f, "{text}"),
            Value::Error(text) => write!(f, "(error) {text}"),
            Value::Integer(n) => write!(f, "(integer) {n}"),
            Value::Bulk(bytes) => write!(f, "{}", String::from_utf8_lossy(bytes)),
            Value::Nil => write!(f, "(nil)"),
            Value::Array(items) if items.is_empty() => write!(f, "(empty array)"),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{}) {item}", index + 1)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(words: &[&'a str]) -> Frame<'a> {
        let mut args = Args::empty();
        for word in words {
            assert!(args.push(word.as_bytes()), "at most FRAME_ARGS_MAX words");
        }
        Frame::Args(args)
    }

    /// Parses everything, as the server does, returning frames and the bytes left over.
    fn parse_all<'a>(parser: &mut RequestParser, input: &'a [u8]) -> (Vec<Frame<'a>>, usize) {
        let mut at = 0;
        let mut frames = Vec::new();
        loop {
            let step = parser.next(&input[at..]).expect("valid RESP");
            at += step.consumed;
            match step.frame {
                Some(frame) => frames.push(frame),
                None if step.consumed == 0 => return (frames, input.len() - at),
                None => {}
            }
        }
    }

    /// A frame that outlives the buffer it was parsed from: `None` for `TooLarge`.
    fn owned(frame: &Frame<'_>) -> Option<Vec<String>> {
        match frame {
            Frame::Args(args) => Some(
                args.as_slice().iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect(),
            ),
            Frame::TooLarge => None,
        }
    }

    #[test]
    fn parses_arrays_and_inline_requests() {
        let mut parser = RequestParser::new();
        let input = b"*2\r\n$3\r\nPAY\r\n$1\r\n7\r\nPING\r\n*0\r\nBALANCE  3\n";
        let (frames, left) = parse_all(&mut parser, input);
        assert_eq!(frames, vec![args(&["PAY", "7"]), args(&["PING"]), args(&["BALANCE", "3"])]);
        assert_eq!(left, 0);
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes_at_every_split() {
        let input = b"*3\r\n$3\r\nPAY\r\n$2\r\n12\r\n$3\r\n100\r\n";
        for split in 0..input.len() {
            let mut parser = RequestParser::new();
            let step = parser.next(&input[..split]).expect("valid prefix");
            assert_eq!(step, incomplete(), "split at {split}");
            let step = parser.next(input).expect("valid frame");
            assert_eq!(step.consumed, input.len());
            assert_eq!(step.frame, Some(args(&["PAY", "12", "100"])));
        }
    }

    #[test]
    fn an_oversized_bulk_is_reported_then_skipped_and_the_stream_goes_on() {
        let big = vec![b'x'; FRAME_BYTES_MAX + 1];
        let mut input = format!("*3\r\n$3\r\nPAY\r\n${}\r\n", big.len()).into_bytes();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\r\n$3\r\n100\r\n*1\r\n$4\r\nPING\r\n");
        // Fed in small pieces, as a network would: the parser never needs the big bulk
        // whole, and reports it as soon as its header arrives.
        let mut parser = RequestParser::new();
        let mut buffered: Vec<u8> = Vec::new();
        let mut frames = Vec::new();
        for piece in input.chunks(1000) {
            buffered.extend_from_slice(piece);
            let (found, left) = parse_all(&mut parser, &buffered);
            frames.extend(found.iter().map(owned));
            buffered.drain(..buffered.len() - left);
            assert!(buffered.len() < 2000, "the parser buffers at most a header");
        }
        assert_eq!(frames, vec![None, Some(vec!["PING".to_owned()])]);
    }

    #[test]
    fn too_many_arguments_is_too_large() {
        let mut parser = RequestParser::new();
        let mut input = Vec::new();
        let words: Vec<String> = (0..=FRAME_ARGS_MAX).map(|i| i.to_string()).collect();
        encode_command(&mut input, &words);
        encode_command(&mut input, &["PING"]);
        let (frames, left) = parse_all(&mut parser, &input);
        assert_eq!(frames, vec![Frame::TooLarge, args(&["PING"])]);
        assert_eq!(left, 0);
    }

    #[test]
    fn too_many_inline_words_is_too_large() {
        let mut parser = RequestParser::new();
        let line: Vec<String> = (0..=FRAME_ARGS_MAX).map(|i| i.to_string()).collect();
        let input = format!("{}\r\nPING\r\n", line.join(" "));
        let (frames, left) = parse_all(&mut parser, input.as_bytes());
        assert_eq!(frames, vec![Frame::TooLarge, args(&["PING"])]);
        assert_eq!(left, 0);
    }

    #[test]
    fn integers_of_every_width_encode_as_their_decimal_text() {
        for n in [0, 7, -7, 10, 19_900, i128::from(i64::MIN), i128::from(i64::MAX)] {
            let mut out = Vec::new();
            Encoder { out: &mut out, protocol: Protocol::Resp2 }.integer(n);
            assert_eq!(out, format!(":{n}\r\n").into_bytes());
        }
        // Past i64, which Redis clients cannot read as integers: digits in a bulk string
        // (RESP2) or a big number (RESP3).
        for n in [i128::from(i64::MAX) + 1, i128::from(u64::MAX), i128::MAX, i128::MIN] {
            let mut out = Vec::new();
            Encoder { out: &mut out, protocol: Protocol::Resp2 }.integer(n);
            let text = n.to_string();
            assert_eq!(out, format!("${}\r\n{text}\r\n", text.len()).into_bytes());
            let mut out = Vec::new();
            Encoder { out: &mut out, protocol: Protocol::Resp3 }.integer(n);
            assert_eq!(out, format!("({n}\r\n").into_bytes());
        }
        let mut out = Vec::new();
        Encoder { out: &mut out, protocol: Protocol::Resp2 }.error(&"é".repeat(60_000));
        assert!(out.len() <= ERROR_BYTES_MAX + 3, "{}", out.len());
        assert!(std::str::from_utf8(&out).is_ok(), "cut at a character boundary");
        let mut out = Vec::new();
        Encoder { out: &mut out, protocol: Protocol::Resp3 }.map(12);
        assert_eq!(out, b"%12\r\n");
    }

    #[test]
    fn integers_parse_exactly_as_the_standard_library_would() {
        let cases = [
            "0",
            "7",
            "-7",
            "+7",
            "",
            "-",
            "--1",
            "1-",
            " 1",
            "1 ",
            "12a",
            "007",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
        ];
        for text in cases {
            let expected = text.parse::<i64>().ok().filter(|_| !text.starts_with('+'));
            assert_eq!(parse_i64(text.as_bytes()), expected, "{text:?}");
        }
        assert_eq!(parse_i64(&[b'1', 0xff]), None);
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for garbage in [
            &b"*x\r\n"[..],
            b"*2\r\n+PING\r\n",
            b"*1\r\n$4\r\nPINGxx",
            b"*1\r\n$-5\r\n",
            b"*99999999999999\r\n",
            b"*1\r\n$99999999999999999\r\n",
            b"*111111111111111111111111111111111111111",
        ] {
            let mut parser = RequestParser::new();
            assert!(parser.next(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn an_endless_inline_line_is_a_protocol_error() {
        let mut parser = RequestParser::new();
        let line = vec![b'a'; INLINE_BYTES_MAX + 1];
        assert!(parser.next(&line).is_err());
        assert_eq!(parser.next(&line[..100]), Ok(incomplete()));
    }

    #[test]
    fn random_bytes_never_panic_and_never_over_consume() {
        let alphabet = b"*$+-:_%\r\n0123456789-PINGx ";
        let mut rng = crate::sample::Rng::new(5);
        for _ in 0..20_000 {
            let len = rng.below(64) as usize;
            let input: Vec<u8> =
                (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let mut parser = RequestParser::new();
            let mut at = 0;
            while let Ok(step) = parser.next(&input[at..]) {
                assert!(step.consumed <= input.len() - at);
                at += step.consumed;
                if step.consumed == 0 && step.frame.is_none() {
                    break;
                }
            }
            if let Ok(Some((_, used))) = parse_value(&input) {
                assert!(used <= input.len());
            }
        }
    }

    #[test]
    fn replies_round_trip() {
        let mut out = Vec::new();
        let mut encoder = Encoder { out: &mut out, protocol: Protocol::Resp2 };
        encoder.array(4);
        encoder.simple("APPROVED");
        encoder.integer(19_900);
        encoder.nil();
        encoder.bulk(b"a\r\nb");
        encoder.error("bad\r\nthing");
        let (value, used) = parse_value(&out).expect("valid").expect("complete");
        assert_eq!(
            value,
            Value::Array(vec![
                Value::Simple("APPROVED".into()),
                Value::Integer(19_900),
                Value::Nil,
                Value::Bulk(b"a\r\nb".to_vec()),
            ])
        );
        let (error, rest) = parse_value(&out[used..]).expect("valid").expect("complete");
        assert_eq!(error, Value::Error("bad  thing".into()));
        assert_eq!(used + rest, out.len());
        assert_eq!(parse_value(&out[..used - 1]), Ok(None));
    }
}
