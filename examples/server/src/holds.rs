//! The card-hold commands of SPEC §12 on the wire: `AUTHORIZE`, `AUTHORIZE.INCREMENT`,
//! `CAPTURE`, `CAPTURE.FINAL`, `VOID`, `REFUND`, `HOLD`, `BALANCE.DETAIL`,
//! `CARD.RELEASES`. Parsed into engine requests and rendered from their outcomes, like
//! the rest of the table in [`crate::commands`], which hands these names here.
//!
//! Business days are rendered as their local dates (`2027-01-04`), which a cardholder can
//! be told as they are.

use plafond::{BalanceDetail, Command, HoldView, Outcome, Release};
use plafond_wire::Encoder;

use crate::commands::{amount, arity, engine, id, Malformed, Parsed};
use crate::stats::civil_date;

/// Whether `upper` (an upper-cased command name) is one of §12's.
pub fn is_hold_command(upper: &[u8]) -> bool {
    matches!(
        upper,
        b"AUTHORIZE"
            | b"AUTHORIZE.INCREMENT"
            | b"CAPTURE"
            | b"CAPTURE.FINAL"
            | b"VOID"
            | b"REFUND"
            | b"HOLD"
            | b"BALANCE.DETAIL"
            | b"CARD.RELEASES"
    )
}

/// Reads the arguments of §12 command `upper`.
pub(crate) fn parse(upper: &[u8], rest: &[&[u8]]) -> Parsed {
    match upper {
        b"HOLD" | b"BALANCE.DETAIL" | b"CARD.RELEASES" => {
            arity(rest, 1, 1)?;
            let id = id(rest[0])?;
            let command = match upper {
                b"HOLD" => Command::ReadHold { hold: id },
                b"BALANCE.DETAIL" => Command::ReadBalanceDetail { account: id },
                _ => Command::ReadReleases { card: id },
            };
            engine(command, None)
        }
        b"VOID" => {
            arity(rest, 2, 3)?;
            let hold = id(rest[0])?;
            let amount_minor = match rest[1].eq_ignore_ascii_case(b"ALL") {
                true => None,
                false => Some(amount(rest[1])?),
            };
            engine(Command::Void { hold, amount_minor }, rest.get(2).copied())
        }
        _ => {
            arity(rest, 2, 3)?;
            let (target, amount_minor) = (id(rest[0])?, amount(rest[1])?);
            let command = match upper {
                b"AUTHORIZE" => Command::Authorize { card: target, amount_minor },
                b"AUTHORIZE.INCREMENT" => {
                    Command::AuthorizeIncrement { hold: target, amount_minor }
                }
                b"CAPTURE" => Command::Capture { hold: target, amount_minor },
                b"CAPTURE.FINAL" => Command::CaptureFinal { hold: target, amount_minor },
                b"REFUND" => Command::Refund { card: target, amount_minor },
                _ => return Err(Malformed::Other("not a hold command".into())),
            };
            engine(command, rest.get(2).copied())
        }
    }
}

/// Writes the §12 reply of a hold outcome; false if `outcome` is not one.
pub fn render(encoder: &mut Encoder<'_>, outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Authorized { hold, available_minor, spent_7d_minor } => {
            approved(encoder, [*hold, *available_minor, *spent_7d_minor])
        }
        Outcome::Incremented { held_minor, available_minor, spent_7d_minor } => {
            approved(encoder, [*held_minor, *available_minor, *spent_7d_minor])
        }
        Outcome::Captured { balance_minor, held_minor } => {
            done(encoder, *balance_minor, *held_minor)
        }
        Outcome::Voided { available_minor, held_minor } => {
            done(encoder, *available_minor, *held_minor)
        }
        Outcome::Hold(view) => render_hold(encoder, view),
        Outcome::BalanceDetail(detail) => render_detail(encoder, detail),
        Outcome::Releases(releases) => render_releases(encoder, releases),
        _ => return false,
    }
    true
}

fn approved(encoder: &mut Encoder<'_>, values: [u64; 3]) {
    encoder.array(4);
    encoder.simple("APPROVED");
    for value in values {
        encoder.integer(i128::from(value));
    }
}

fn done(encoder: &mut Encoder<'_>, first_minor: u64, held_minor: u64) {
    encoder.array(3);
    encoder.simple("DONE");
    encoder.integer(i128::from(first_minor));
    encoder.integer(i128::from(held_minor));
}

fn day(encoder: &mut Encoder<'_>, day: i32) {
    encoder.bulk(civil_date(day).as_bytes());
}

fn render_hold(encoder: &mut Encoder<'_>, view: &HoldView) {
    encoder.array(8);
    encoder.integer(i128::from(view.card));
    encoder.simple(view.status.as_str());
    for amount_minor in
        [view.authorized_minor, view.captured_minor, view.released_minor, view.held_minor]
    {
        encoder.integer(i128::from(amount_minor));
    }
    day(encoder, view.business_day);
    day(encoder, view.expires_day);
}

fn render_detail(encoder: &mut Encoder<'_>, detail: &BalanceDetail) {
    encoder.array(4);
    encoder.integer(i128::from(detail.balance_minor));
    encoder.integer(i128::from(detail.available_minor));
    encoder.integer(i128::from(detail.held_minor));
    encoder.integer(i128::from(detail.open_holds));
}

fn render_releases(encoder: &mut Encoder<'_>, releases: &[Release]) {
    encoder.array(releases.len());
    for release in releases {
        encoder.array(2);
        day(encoder, release.business_day);
        encoder.integer(i128::from(release.amount_minor));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::tests::{parse_words, rendered};
    use crate::commands::Action;
    use plafond::{CommandId, HoldStatus, Reason, Request};
    use plafond_wire::Value;

    #[test]
    fn hold_commands_become_engine_requests() {
        let id = |text: &str| CommandId::new(text).expect("valid id");
        let cases = [
            (
                "AUTHORIZE 7 500 a-1",
                Request::with_id(Command::Authorize { card: 7, amount_minor: 500 }, id("a-1")),
            ),
            (
                "authorize.increment 3 20",
                Request::new(Command::AuthorizeIncrement { hold: 3, amount_minor: 20 }),
            ),
            ("CAPTURE 3 20", Request::new(Command::Capture { hold: 3, amount_minor: 20 })),
            ("CAPTURE.FINAL 3 0", Request::new(Command::CaptureFinal { hold: 3, amount_minor: 0 })),
            (
                "VOID 3 all c",
                Request::with_id(Command::Void { hold: 3, amount_minor: None }, id("c")),
            ),
            ("VOID 3 15", Request::new(Command::Void { hold: 3, amount_minor: Some(15) })),
            ("REFUND 7 99", Request::new(Command::Refund { card: 7, amount_minor: 99 })),
            ("HOLD 3", Request::new(Command::ReadHold { hold: 3 })),
            ("BALANCE.DETAIL 7", Request::new(Command::ReadBalanceDetail { account: 7 })),
            ("CARD.RELEASES 7", Request::new(Command::ReadReleases { card: 7 })),
        ];
        for (line, request) in cases {
            assert_eq!(parse_words(line), Action::Engine(request), "{line}");
        }
        for malformed in
            ["AUTHORIZE 7", "VOID 3", "HOLD", "HOLD 1 2", "VOID x ALL", "CAPTURE 1 2 3 4"]
        {
            assert!(matches!(parse_words(malformed), Action::Error(_)), "{malformed}");
        }
    }

    #[test]
    fn hold_outcomes_render_as_section_12_says() {
        let simple = |text: &str| Value::Simple(text.into());
        let bulk = |text: &str| Value::Bulk(text.as_bytes().to_vec());
        let integers =
            |values: &[i64]| values.iter().map(|&v| Value::Integer(v)).collect::<Vec<_>>();
        let authorized = Outcome::Authorized { hold: 4, available_minor: 90, spent_7d_minor: 10 };
        let mut expected = vec![simple("APPROVED")];
        expected.extend(integers(&[4, 90, 10]));
        assert_eq!(rendered(authorized), Value::Array(expected));
        let captured = Outcome::Captured { balance_minor: 80, held_minor: 5 };
        let mut expected = vec![simple("DONE")];
        expected.extend(integers(&[80, 5]));
        assert_eq!(rendered(captured), Value::Array(expected));
        // 2027-01-04 is day 20_822.
        let view = HoldView {
            hold: 4,
            card: 7,
            status: HoldStatus::Expired,
            authorized_minor: 10,
            captured_minor: 3,
            released_minor: 7,
            held_minor: 0,
            business_day: 20_822,
            expires_day: 20_829,
        };
        let mut expected = vec![Value::Integer(7), simple("EXPIRED")];
        expected.extend(integers(&[10, 3, 7, 0]));
        expected.extend([bulk("2027-01-04"), bulk("2027-01-11")]);
        assert_eq!(rendered(Outcome::Hold(view)), Value::Array(expected));
        let releases = vec![Release { business_day: 20_823, amount_minor: 40 }];
        let expected =
            Value::Array(vec![Value::Array(vec![bulk("2027-01-05"), Value::Integer(40)])]);
        assert_eq!(rendered(Outcome::Releases(releases)), expected);
        assert_eq!(rendered(Outcome::Releases(Vec::new())), Value::Array(Vec::new()));
        assert_eq!(
            rendered(Outcome::Declined(Reason::TooManyHolds)),
            Value::Array(vec![simple("DECLINED"), simple("TOO_MANY_HOLDS")])
        );
    }
}
