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
