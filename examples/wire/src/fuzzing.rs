//! The checks the fuzz target `request_parser` runs on every input, here so that the stable
//! regression test (`tests/fuzz_corpus.rs`) replays the kept corpus through the same code.
//! Not part of the API.

use crate::request::{Frame, ProtocolError, RequestParser};

/// One request as parsed, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The command name and its arguments.
    Args(Vec<Vec<u8>>),
    /// An oversized request.
    TooLarge,
}

/// Everything a connection would get out of `input` when it arrives in reads ending at
/// each of `cuts` (ascending, then the rest): the requests, and the protocol error that ended
/// the stream if one did. Panics if the parser over-consumes or stalls on a complete frame.
pub fn parse_in_reads(input: &[u8], cuts: &[usize]) -> (Vec<Parsed>, Option<ProtocolError>) {
    let mut parser = RequestParser::new();
    let mut parsed = Vec::new();
    let mut at = 0;
    let ends = cuts.iter().copied().filter(|&cut| cut <= input.len()).chain([input.len()]);
    for end in ends {
        if end < at {
            continue;
        }
        loop {
            let buffered = &input[at..end];
            let step = match parser.next(buffered) {
                Ok(step) => step,
                Err(error) => return (parsed, Some(error)),
            };
            assert!(step.consumed <= buffered.len(), "consumed more than it was given");
            at += step.consumed;
            match step.frame {
                Some(Frame::Args(args)) => {
                    assert!(step.consumed > 0, "a request from no bytes");
                    parsed.push(Parsed::Args(args.as_slice().iter().map(|a| a.to_vec()).collect()));
                }
                Some(Frame::TooLarge) => parsed.push(Parsed::TooLarge),
                None if step.consumed == 0 => break,
                None => {}
            }
        }
    }
    (parsed, None)
}

/// The fuzz target's check: the first four bytes pick a cut, the rest is the stream. Parsed
/// in one read, in two reads split at the cut, and one byte at a time (for short inputs),
/// the requests and the error are the same.
pub fn check(data: &[u8]) {
    let (cut_bytes, input) = match data {
        [a, b, c, d, rest @ ..] => (u32::from_le_bytes([*a, *b, *c, *d]) as usize, rest),
        _ => return,
    };
    let whole = parse_in_reads(input, &[]);
    let cut = if input.is_empty() { 0 } else { cut_bytes % (input.len() + 1) };
    let split = parse_in_reads(input, &[cut]);
    assert_eq!(whole, split, "one read and two reads split at {cut} differ");
    if input.len() <= 512 {
        let cuts: Vec<usize> = (1..input.len()).collect();
        let bytewise = parse_in_reads(input, &cuts);
        assert_eq!(whole, bytewise, "one read and one byte a read differ");
    }
}
