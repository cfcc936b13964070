//! Reading RESP replies, as a client does: [`parse_value`] reads one [`Value`] from the
//! start of a buffer, with a limit on everything a server controls.

use std::fmt;

use crate::request::{parse_i64, ProtocolError};

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

/// One element of a reply, borrowed from the bytes it was read from: what a client that
/// reads big replies (a stream consumer) walks through without building [`Value`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Integer(i64),
    Bulk(&'a [u8]),
    Nil,
    /// The header of an array (a RESP3 map: twice its pairs) of this many elements, which
    /// follow.
    Array(usize),
}

/// Reads the element at the start of `input`: the token and the bytes it used, or `None`
/// if it is not complete yet (an array's header is complete without its elements).
pub fn parse_token(input: &[u8]) -> Result<Option<(Token<'_>, usize)>, ProtocolError> {
    let Some(&marker) = input.first() else {
        return Ok(None);
    };
    let Some(end) = input.windows(2).position(|pair| pair == b"\r\n") else {
        return Ok(None);
    };
    // `end` is 0 when the input starts with CRLF: no marker, an empty line.
    let line = input.get(1..end).unwrap_or_default();
    let after = end + 2;
    let token = match marker {
        b'+' => Token::Simple(line),
        b'-' => Token::Error(line),
        b':' => Token::Integer(parse_i64(line).ok_or(ProtocolError("invalid integer"))?),
        // A RESP3 big number (an integer past i64) reads as its digits, as RESP2 sends it.
        b'(' => Token::Bulk(line),
        b'_' => Token::Nil,
        b'$' => {
            let len = parse_i64(line).ok_or(ProtocolError("invalid bulk length"))?;
            if len < 0 {
                return Ok(Some((Token::Nil, after)));
            }
            let len = len as usize;
            if len > REPLY_BULK_BYTES_MAX {
                return Err(ProtocolError("bulk reply too large"));
            }
            let Some(body) = input.get(after..after + len + 2) else {
                return Ok(None);
            };
            return Ok(Some((Token::Bulk(&body[..len]), after + len + 2)));
        }
        b'*' | b'%' => {
            let len = parse_i64(line).ok_or(ProtocolError("invalid array length"))?;
            if len < 0 {
                return Ok(Some((Token::Nil, after)));
            }
            let elements = if marker == b'%' { len.saturating_mul(2) } else { len };
            let elements = usize::try_from(elements).unwrap_or(usize::MAX);
            if elements > REPLY_ARRAY_LEN_MAX {
                return Err(ProtocolError("reply array too long"));
            }
            Token::Array(elements)
        }
        _ => return Err(ProtocolError("unknown reply type")),
    };
    Ok(Some((token, after)))
}

/// Walks a reply token by token, in place: the bulk strings it hands out are borrowed from
/// the bytes read. A reply that has not all arrived yet ends in a token cut short
/// ([`Tokens::cut_short`]): its reader reads more and walks that part again
/// ([`crate::Client::read_part`]), so a big reply is tokenized once as it arrives.
#[derive(Debug)]
pub struct Tokens<'a> {
    input: &'a [u8],
    at: usize,
    cut_short: bool,
}

impl<'a> Tokens<'a> {
    /// The tokens of `reply`.
    pub fn new(reply: &'a [u8]) -> Tokens<'a> {
        Tokens { input: reply, at: 0, cut_short: false }
    }

    /// The next token; an error if the bytes end before it (then [`Tokens::cut_short`]).
    pub fn next_token(&mut self) -> Result<Token<'a>, ProtocolError> {
        let input: &'a [u8] = self.input;
        let Some((token, used)) = parse_token(&input[self.at..])? else {
            self.cut_short = true;
            return Err(ProtocolError("the reply ended early"));
        };
        self.at += used;
        Ok(token)
    }

    /// The next token, which must be an array's header: its length.
    pub fn array(&mut self) -> Result<usize, ProtocolError> {
        match self.next_token()? {
            Token::Array(len) => Ok(len),
            _ => Err(ProtocolError("an array was expected")),
        }
    }

    /// The next token, which must be a bulk string.
    pub fn bulk(&mut self) -> Result<&'a [u8], ProtocolError> {
        match self.next_token()? {
            Token::Bulk(bytes) => Ok(bytes),
            _ => Err(ProtocolError("a bulk string was expected")),
        }
    }

    /// Whether a token was asked for past the bytes there are: what came after them had
    /// not arrived yet, or the reply ended early.
    pub fn cut_short(&self) -> bool {
        self.cut_short
    }

    /// The bytes the tokens read so far used.
    pub fn used(&self) -> usize {
        self.at
    }
}

/// Reads one reply from the start of `input`: the value and the bytes it used, or `None`
/// if it is not complete yet.
pub fn parse_value(input: &[u8]) -> Result<Option<(Value, usize)>, ProtocolError> {
    parse_value_at(input, 0)
}

fn parse_value_at(input: &[u8], depth: usize) -> Result<Option<(Value, usize)>, ProtocolError> {
    if depth > REPLY_DEPTH_MAX {
        return Err(ProtocolError("reply nested too deeply"));
    }
    let Some((token, mut at)) = parse_token(input)? else { return Ok(None) };
    let text = |line: &[u8]| String::from_utf8_lossy(line).into_owned();
    let value = match token {
        Token::Simple(line) => Value::Simple(text(line)),
        Token::Error(line) => Value::Error(text(line)),
        Token::Integer(n) => Value::Integer(n),
        Token::Bulk(bytes) => Value::Bulk(bytes.to_vec()),
        Token::Nil => Value::Nil,
        Token::Array(elements) => {
            let mut items = Vec::with_capacity(elements.min(1024));
            for _ in 0..elements {
                let Some((item, used)) = parse_value_at(&input[at..], depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            Value::Array(items)
        }
    };
    Ok(Some((value, at)))
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
