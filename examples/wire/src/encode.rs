//! Writing RESP: the server's replies ([`Encoder`]) and a client's commands
//! ([`encode_command`]).

/// The longest error reply. Errors quote at most this much (and the server's command table
/// far less): a 60 KB argument once came back as a 180 KB error.
pub const ERROR_BYTES_MAX: usize = 512;

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
            Protocol::Resp2 => self.bulk_decimal(n),
            Protocol::Resp3 => self.decimal_line(b'(', n),
        }
    }

    /// `$len\r\nbytes\r\n`.
    pub fn bulk(&mut self, bytes: &[u8]) {
        // Room for the header, the bytes and the CRLF at once: a stream entry is twenty
        // bulk strings, each otherwise three capacity checks.
        self.out.reserve(bytes.len() + 24);
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

    /// A bulk string of `n`'s decimal digits (stream entries carry numbers as strings),
    /// formatted on the stack, two digits a step from a table (`itoa`): a stream entry has
    /// a dozen numbers, and decimal formatting was a third of serving one.
    pub fn bulk_decimal(&mut self, n: impl itoa::Integer) {
        let mut digits = itoa::Buffer::new();
        self.bulk(digits.format(n).as_bytes());
    }

    /// A null array: `*-1` in RESP2 (what Redis answers an `XREAD` that timed out), `_`
    /// in RESP3.
    pub fn null_array(&mut self) {
        match self.protocol {
            Protocol::Resp2 => self.out.extend_from_slice(b"*-1\r\n"),
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
        // Most numbers written are lengths and small ids: one or two digits, no division.
        if let Ok(small @ 0..=99) = u8::try_from(n) {
            let (tens, ones) = (small / 10, small % 10);
            if tens == 0 {
                self.out.extend_from_slice(&[marker, b'0' + ones, b'\r', b'\n']);
            } else {
                self.out.extend_from_slice(&[marker, b'0' + tens, b'0' + ones, b'\r', b'\n']);
            }
            return;
        }
        let mut digits = itoa::Buffer::new();
        self.line(marker, digits.format(n).as_bytes());
    }
}

/// Encodes a command as a RESP array of bulk strings (what a client sends).
pub fn encode_command<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    let mut encoder = Encoder { out, protocol: Protocol::Resp2 };
    encoder.array(args.len());
    for arg in args {
        encoder.bulk(arg.as_ref());
    }
}
