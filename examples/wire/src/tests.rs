//! The wire format's unit tests: requests, replies, and both together.

use crate::request::incomplete;
use crate::*;

/// SplitMix64, enough to make random inputs reproducible.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((u128::from(z ^ (z >> 31)) * u128::from(n)) >> 64) as u64
    }
}

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
        Frame::Args(args) => {
            Some(args.as_slice().iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect())
        }
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
    for n in [0, 7, 9, -7, 10, 42, 99, 100, 19_900, i128::from(i64::MIN), i128::from(i64::MAX)] {
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

/// An inline line of exactly INLINE_BYTES_MAX bytes ends in `\r\n` split across two reads
/// the same as in one: the `\r` alone at the limit is incomplete, not too big. (Found by
/// fuzzing: it was refused split and accepted whole.)
#[test]
fn an_inline_line_at_the_limit_parses_the_same_split_at_its_crlf() {
    let mut line = vec![b'a'; INLINE_BYTES_MAX];
    line.extend_from_slice(b"\r\n");
    let whole = RequestParser::new().next(&line);
    assert!(
        matches!(whole, Ok(Step { consumed, frame: Some(Frame::Args(_)) }) if consumed == line.len()),
        "{whole:?}"
    );
    let mut parser = RequestParser::new();
    assert_eq!(parser.next(&line[..INLINE_BYTES_MAX + 1]), Ok(incomplete()));
    assert_eq!(parser.next(&line), whole);
    // One byte more is too big, in one read or as it arrives.
    let mut longer = vec![b'a'; INLINE_BYTES_MAX + 1];
    longer.extend_from_slice(b"\r\n");
    assert!(RequestParser::new().next(&longer).is_err());
    assert!(RequestParser::new().next(&longer[..INLINE_BYTES_MAX + 2]).is_err());
    // A bare `\n` past the limit without its `\r` is too big as well.
    let mut bare = vec![b'a'; INLINE_BYTES_MAX + 1];
    bare.push(b'\n');
    assert!(RequestParser::new().next(&bare).is_err());
}

#[test]
fn random_bytes_never_panic_and_never_over_consume() {
    let alphabet = b"*$+-:_%\r\n0123456789-PINGx ";
    let mut rng = SplitMix(5);
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
        let parsed = parse_value(&input);
        if let Ok(Some((_, used))) = parsed {
            assert!(used <= input.len());
        }
        // Walked in place token by token, the reply is complete where the tree is, or
        // refused, or cut short.
        let walked = walk(&input);
        match (&parsed, &walked) {
            (Ok(Some((_, used))), Ok(Some(walked))) => assert_eq!(used, walked, "{input:?}"),
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
            // The tree refuses nesting past REPLY_DEPTH_MAX; a walker knows its own depth.
            (Err(_), Ok(_)) => {}
            _ => panic!("{input:?}: parse_value {parsed:?}, walked {walked:?}"),
        }
    }
}

/// The length of the reply at the start of `input` walked with [`Tokens`], `None` if it is
/// cut short.
fn walk(input: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let mut tokens = Tokens::new(input);
    let mut open = 1usize;
    while open > 0 {
        let token = match tokens.next_token() {
            Ok(token) => token,
            Err(_) if tokens.cut_short() => return Ok(None),
            Err(error) => return Err(error),
        };
        open -= 1;
        if let Token::Array(len) = token {
            open = open.checked_add(len).ok_or(ProtocolError("too long"))?;
        }
    }
    Ok(Some(tokens.used()))
}

/// A connection that brings `step` bytes a read.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(self.bytes.len()).min(out.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

/// What `part` reads of the next part of the reply, `reader` reading from `trickle` until
/// that part has all arrived.
fn read_whole(
    reader: &mut ReplyReader,
    trickle: &mut Trickle<'_>,
    mut part: impl FnMut(&mut Tokens<'_>) -> Result<Vec<Vec<u8>>, ProtocolError>,
) -> Result<Vec<Vec<u8>>, ProtocolError> {
    loop {
        if let Some(answer) = reader.read_part(&mut part) {
            return answer;
        }
        reader.fill(trickle).unwrap();
    }
}

#[test]
fn a_stream_reply_reads_in_place_part_by_part_as_it_arrives() {
    let mut out = Vec::new();
    let mut encoder = Encoder { out: &mut out, protocol: Protocol::Resp3 };
    encoder.map(1);
    encoder.bulk(b"changes:0");
    encoder.array(2);
    for id in [&b"4-1"[..], b"4-2"] {
        encoder.array(2);
        encoder.bulk(id);
        encoder.array(2);
        encoder.bulk(b"amount");
        encoder.bulk_decimal(u64::MAX);
    }
    out.extend_from_slice(b"+next\r\n");
    // Whatever the reads bring, each part is read whole and once: the stream's header,
    // then each entry (what a part read when it was cut short is read again, not twice).
    for step in [1, 3, 7, 64, out.len()] {
        let mut reader = ReplyReader::new();
        let mut trickle = Trickle { bytes: &out, step };
        let header = read_whole(&mut reader, &mut trickle, |tokens| {
            assert_eq!(tokens.array()?, 2, "a map of one pair is two elements");
            let name = tokens.bulk()?.to_vec();
            assert_eq!(tokens.array()?, 2);
            Ok(vec![name])
        });
        assert_eq!(header, Ok(vec![b"changes:0".to_vec()]), "in reads of {step}");
        for id in ["4-1", "4-2"] {
            let entry = read_whole(&mut reader, &mut trickle, |tokens| {
                assert_eq!(tokens.array()?, 2);
                let id = tokens.bulk()?.to_vec();
                assert_eq!(tokens.array()?, 2);
                Ok(vec![id, tokens.bulk()?.to_vec(), tokens.bulk()?.to_vec()])
            });
            let max = u64::MAX.to_string();
            let expected = [id.as_bytes(), b"amount", max.as_bytes()];
            assert_eq!(entry, Ok(expected.map(<[u8]>::to_vec).to_vec()), "in reads of {step}");
        }
        let next = read_whole(&mut reader, &mut trickle, |tokens| match tokens.next_token()? {
            Token::Simple(text) => Ok(vec![text.to_vec()]),
            other => panic!("{other:?}"),
        });
        assert_eq!(next, Ok(vec![b"next".to_vec()]), "the reply after it");
    }
    let mut tokens = Tokens::new(b"$5\r\nhel");
    assert!(tokens.bulk().is_err() && tokens.cut_short(), "a bulk string not all there");
    assert_eq!(tokens.used(), 0, "nothing used");
    let mut tokens = Tokens::new(b":5\r\n");
    assert!(tokens.bulk().is_err() && !tokens.cut_short(), "an integer is not a bulk string");
    let deep = "*1\r\n".repeat(REPLY_DEPTH_MAX + 1) + ":1\r\n";
    assert!(parse_value(deep.as_bytes()).is_err());
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

#[test]
fn stream_replies_write_numbers_as_strings_and_a_timeout_as_a_null_array() {
    for (protocol, null) in [(Protocol::Resp2, &b"*-1\r\n"[..]), (Protocol::Resp3, b"_\r\n")] {
        let mut out = Vec::new();
        let mut encoder = Encoder { out: &mut out, protocol };
        encoder.bulk_decimal(-42i64);
        encoder.bulk_decimal(u64::MAX);
        encoder.null_array();
        let mut expected = b"$3\r\n-42\r\n$20\r\n18446744073709551615\r\n".to_vec();
        expected.extend_from_slice(null);
        assert_eq!(out, expected, "{protocol:?}");
    }
}

/// A one-connection server that reads one request, checks it, writes `reply` a byte at a
/// time (so the client must reassemble it), then closes.
fn one_shot_server(expected: &'static [u8], reply: &'static [u8]) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let addr = listener.local_addr().expect("an address");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accepts");
        let mut request = vec![0u8; expected.len()];
        stream.read_exact(&mut request).expect("reads the request");
        assert_eq!(request, expected);
        for byte in reply {
            stream.write_all(&[*byte]).expect("writes");
            stream.flush().expect("flushes");
        }
    });
    addr
}

const PAY_REQUEST: &[u8] = b"*3\r\n$3\r\nPAY\r\n$1\r\n7\r\n$3\r\n100\r\n";
const PAY_REPLY: &[u8] = b"*3\r\n+APPROVED\r\n:19900\r\n:100\r\n";

fn approved() -> Value {
    Value::Array(vec![
        Value::Simple("APPROVED".into()),
        Value::Integer(19_900),
        Value::Integer(100),
    ])
}

#[test]
fn the_blocking_client_reassembles_a_reply_then_sees_the_close() {
    let addr = one_shot_server(PAY_REQUEST, PAY_REPLY);
    let mut client = Client::connect(addr, std::time::Duration::from_secs(10)).expect("connects");
    assert_eq!(client.call(&["PAY", "7", "100"]).expect("a reply"), approved());
    let closed = client.read().expect_err("the server closed");
    assert!(closed.is_disconnect(), "{closed}");
}

#[test]
fn the_async_client_reassembles_a_reply_then_sees_the_close() {
    let addr = one_shot_server(PAY_REQUEST, PAY_REPLY).to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    runtime.block_on(async {
        let mut client = AsyncClient::connect(&addr, None).await.expect("connects");
        assert_eq!(client.call(&["PAY", "7", "100"]).await.expect("a reply"), approved());
        let closed = client.read().await.expect_err("the server closed");
        assert!(closed.is_disconnect(), "{closed}");
    });
}

#[test]
fn a_refused_auth_is_an_error_that_says_so() {
    let addr = one_shot_server(b"*2\r\n$4\r\nAUTH\r\n$1\r\nx\r\n", b"-WRONGPASS invalid token\r\n");
    let mut client = Client::connect(addr, std::time::Duration::from_secs(10)).expect("connects");
    let refused = client.auth("x").expect_err("refused");
    assert!(matches!(&refused, ClientError::AuthRefused(text) if text.contains("WRONGPASS")));
}
