//! Card holds (SPEC §12) through the server with a real Redis client (the `redis` crate):
//! every command and reply, each rule one case at a time, and authorizations, payments and
//! captures racing on one account.

mod support;

use redis::Value;
use support::InProcess;

/// The §11 population's cards 0..N (balance 20_000, ceiling 10_000) on a manual clock that
/// starts at 2027-01-04T12:00Z (business day 2027-01-04 in eu-west).
fn server(cards: &str) -> InProcess {
    let args = ["--durability", "none", "--shards", "2", "--clock", "manual", "--populate", cards];
    InProcess::start(&args)
}

const DAY_MS: &str = "86400000";

fn call(con: &mut redis::Connection, args: &[&str]) -> Value {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(con).unwrap_or_else(|error| panic!("{args:?}: {error}"))
}

fn simple(text: &str) -> Value {
    Value::SimpleString(text.into())
}

fn int(n: i64) -> Value {
    Value::Int(n)
}

fn date(text: &str) -> Value {
    Value::BulkString(text.as_bytes().to_vec())
}

fn declined(reason: &str) -> Value {
    Value::Array(vec![simple("DECLINED"), simple(reason)])
}

/// `[word, n...]`.
fn reply(word: &str, numbers: &[i64]) -> Value {
    Value::Array([simple(word)].into_iter().chain(numbers.iter().map(|&n| int(n))).collect())
}

/// `[balance, available, held, open_holds]`.
fn detail(numbers: [i64; 4]) -> Value {
    Value::Array(numbers.iter().map(|&n| int(n)).collect())
}

/// The hold id of an `[APPROVED, hold, available, spent_7d]` reply.
fn hold_of(value: &Value) -> String {
    match value {
        Value::Array(items) if items.len() == 4 && items[0] == simple("APPROVED") => {
            match &items[1] {
                Value::Int(hold) => hold.to_string(),
                other => panic!("a hold id, got {other:?}"),
            }
        }
        other => panic!("an approved authorization, got {other:?}"),
    }
}

#[test]
fn an_authorization_holds_available_money_and_payments_spend_only_the_rest() {
    let server = server("4");
    let mut con = server.redis();
    let authorized = call(&mut con, &["AUTHORIZE", "0", "6000"]);
    assert_eq!(authorized, reply("APPROVED", &[0, 14_000, 6_000]), "hold 0 of shard 0");
    assert_eq!(call(&mut con, &["BALANCE", "0"]), int(20_000), "BALANCE stays the ledger's");
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "0"]), detail([20_000, 14_000, 6_000, 1]));
    // The hold counts in the window on its day.
    assert_eq!(call(&mut con, &["PAY", "0", "4001"]), declined("CEILING_EXCEEDED"));
    assert_eq!(call(&mut con, &["CARD.CEILING", "0", "1000000"]), Value::Okay);
    assert_eq!(call(&mut con, &["PAY", "0", "14001"]), declined("INSUFFICIENT_FUNDS"));
    assert_eq!(call(&mut con, &["TRANSFER", "0", "1", "14001"]), declined("INSUFFICIENT_FUNDS"));
    assert_eq!(call(&mut con, &["AUTHORIZE", "0", "14001"]), declined("INSUFFICIENT_FUNDS"));
    assert_eq!(call(&mut con, &["PAY", "0", "4000"]), reply("APPROVED", &[16_000, 10_000]));
    assert_eq!(call(&mut con, &["TRANSFER", "0", "1", "10000"]), reply("DONE", &[6_000]));
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "0"]), detail([6_000, 0, 6_000, 1]));
    assert_eq!(call(&mut con, &["AUTHORIZE", "424242", "1"]), declined("UNKNOWN_CARD"));
    assert_eq!(call(&mut con, &["AUTHORIZE", "0", "0"]), declined("INVALID_AMOUNT"));
    assert_eq!(call(&mut con, &["CARD.BLOCK", "1"]), Value::Okay);
    assert_eq!(call(&mut con, &["AUTHORIZE", "1", "1"]), declined("CARD_BLOCKED"));
}

#[test]
fn increments_captures_and_voids_move_the_hold_as_section_12_says() {
    let server = server("4");
    let mut con = server.redis();
    let hold = hold_of(&call(&mut con, &["AUTHORIZE", "2", "6000"]));
    let hold = hold.as_str();
    let incremented = call(&mut con, &["AUTHORIZE.INCREMENT", hold, "1000"]);
    assert_eq!(incremented, reply("APPROVED", &[7_000, 13_000, 7_000]), "[held, available, spent]");
    let over_ceiling = call(&mut con, &["AUTHORIZE.INCREMENT", hold, "3001"]);
    assert_eq!(over_ceiling, declined("CEILING_EXCEEDED"), "decided like an authorization");
    // A capture succeeds whatever the card's status: the money was reserved.
    assert_eq!(call(&mut con, &["CARD.BLOCK", "2"]), Value::Okay);
    assert_eq!(call(&mut con, &["CAPTURE", hold, "2000"]), reply("DONE", &[18_000, 5_000]));
    assert_eq!(call(&mut con, &["CAPTURE", hold, "5001"]), declined("EXCEEDS_HOLD"));
    assert_eq!(call(&mut con, &["VOID", hold, "5001"]), declined("EXCEEDS_HOLD"));
    assert_eq!(call(&mut con, &["VOID", hold, "1000"]), reply("DONE", &[14_000, 4_000]));
    let last = call(&mut con, &["CAPTURE.FINAL", hold, "3000"]);
    assert_eq!(last, reply("DONE", &[15_000, 0]), "the rest is released");
    let view = call(&mut con, &["HOLD", hold]);
    let expected = [int(2), simple("CLOSED"), int(7_000), int(5_000), int(2_000), int(0)]
        .into_iter()
        .chain([date("2027-01-04"), date("2027-01-11")])
        .collect();
    assert_eq!(
        view,
        Value::Array(expected),
        "[card, status, authorized, captured, released, held, day, expires]"
    );
    // Captures never count again; what was released on its own day gives room back.
    let Value::Array(card) = call(&mut con, &["CARD", "2"]) else {
        panic!("CARD replies an array")
    };
    assert_eq!(card[3], int(5_000), "spent_7d: 7_000 authorized less 2_000 released");
    assert_eq!(call(&mut con, &["CAPTURE", hold, "1"]), declined("HOLD_CLOSED"));
    assert_eq!(call(&mut con, &["VOID", hold, "ALL"]), declined("HOLD_CLOSED"));
    assert_eq!(call(&mut con, &["AUTHORIZE.INCREMENT", hold, "1"]), declined("HOLD_CLOSED"));
    for unknown in [["HOLD", "999999", ""], ["CAPTURE", "999999", "1"], ["VOID", "999999", "ALL"]] {
        let args: Vec<&str> = unknown.into_iter().filter(|a| !a.is_empty()).collect();
        assert_eq!(call(&mut con, &args), declined("UNKNOWN_HOLD"), "{args:?}");
    }
    // A void of everything closes the hold too.
    assert_eq!(call(&mut con, &["CARD.UNBLOCK", "2"]), Value::Okay);
    let other = hold_of(&call(&mut con, &["AUTHORIZE", "2", "500"]));
    assert_eq!(call(&mut con, &["VOID", &other, "all"]), reply("DONE", &[15_000, 0]));
    assert_eq!(call(&mut con, &["CAPTURE", &other, "1"]), declined("HOLD_CLOSED"));
}

#[test]
fn refunds_credit_blocked_cards_and_give_no_room_back() {
    let server = server("2");
    let mut con = server.redis();
    assert_eq!(call(&mut con, &["PAY", "1", "3000"]), reply("APPROVED", &[17_000, 3_000]));
    assert_eq!(call(&mut con, &["CARD.BLOCK", "1"]), Value::Okay);
    assert_eq!(call(&mut con, &["REFUND", "1", "1000"]), reply("DONE", &[18_000]));
    let Value::Array(card) = call(&mut con, &["CARD", "1"]) else {
        panic!("CARD replies an array")
    };
    assert_eq!(card[3], int(3_000), "spent_7d is what was spent");
    assert_eq!(call(&mut con, &["REFUND", "424242", "1"]), declined("UNKNOWN_CARD"));
}

#[test]
fn a_hold_expires_at_the_roll_of_its_day_plus_the_region_rule() {
    let server = server("2");
    let mut con = server.redis();
    let hold = hold_of(&call(&mut con, &["AUTHORIZE", "1", "3000"]));
    // Six business days later it is still open; the seventh's roll expires it.
    let six_days = (6 * 86_400_000i64).to_string();
    assert_eq!(call(&mut con, &["CLOCK.ADVANCE", &six_days]), Value::Okay);
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "1"]), detail([20_000, 17_000, 3_000, 1]));
    assert_eq!(call(&mut con, &["CLOCK.ADVANCE", DAY_MS]), Value::Okay);
    // No command touched the account since: a read applies the expiry all the same.
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "1"]), detail([20_000, 20_000, 0, 0]));
    let Value::Array(view) = call(&mut con, &["HOLD", &hold]) else {
        panic!("HOLD replies an array")
    };
    assert_eq!(view[1..6], [simple("EXPIRED"), int(3_000), int(0), int(3_000), int(0)]);
    assert_eq!(call(&mut con, &["CAPTURE", &hold, "1"]), declined("HOLD_EXPIRED"));
    // The epoch expires it eagerly too: the same outcome, twice or not.
    for _ in 0..2 {
        assert!(matches!(call(&mut con, &["BATCH.RUN", "eu-west"]), Value::Array(_)));
    }
    assert_eq!(call(&mut con, &["CAPTURE.FINAL", &hold, "1"]), declined("HOLD_EXPIRED"));
    // A late clearing is posted as a payment, checked like any other.
    assert_eq!(call(&mut con, &["PAY", "1", "3000"]), reply("APPROVED", &[17_000, 3_000]));
}

#[test]
fn open_holds_per_account_are_bounded() {
    let server = server("2");
    let mut con = server.redis();
    for _ in 0..plafond::HOLDS_PER_ACCOUNT_MAX {
        hold_of(&call(&mut con, &["AUTHORIZE", "0", "1"]));
    }
    assert_eq!(call(&mut con, &["AUTHORIZE", "0", "1"]), declined("TOO_MANY_HOLDS"));
    let Value::Int(open) = (match call(&mut con, &["BALANCE.DETAIL", "0"]) {
        Value::Array(items) => items[3].clone(),
        other => panic!("{other:?}"),
    }) else {
        panic!("open_holds is an integer")
    };
    assert_eq!(open as usize, plafond::HOLDS_PER_ACCOUNT_MAX);
    // Another account is not affected, and closing one makes room.
    hold_of(&call(&mut con, &["AUTHORIZE", "1", "1"]));
    assert_eq!(call(&mut con, &["VOID", "0", "ALL"]), reply("DONE", &[19_969, 0]));
    hold_of(&call(&mut con, &["AUTHORIZE", "0", "1"]));
}

#[test]
fn the_release_schedule_says_when_room_comes_back() {
    let server = server("2");
    let mut con = server.redis();
    assert_eq!(call(&mut con, &["CARD.RELEASES", "1"]), Value::Array(Vec::new()));
    assert_eq!(call(&mut con, &["PAY", "1", "1000"]), reply("APPROVED", &[19_000, 1_000]));
    assert_eq!(call(&mut con, &["CLOCK.ADVANCE", DAY_MS]), Value::Okay);
    hold_of(&call(&mut con, &["AUTHORIZE", "1", "2000"]));
    let schedule = call(&mut con, &["CARD.RELEASES", "1"]);
    let entry = |day: &str, amount: i64| Value::Array(vec![date(day), int(amount)]);
    // The payment of the 4th leaves the window on the 11th; the hold of the 5th leaves it
    // (and expires) on the 12th.
    let expected = vec![entry("2027-01-11", 1_000), entry("2027-01-12", 2_000)];
    assert_eq!(schedule, Value::Array(expected));
    assert_eq!(call(&mut con, &["CARD.RELEASES", "424242"]), declined("UNKNOWN_CARD"));
}

#[test]
fn hold_commands_are_idempotent_and_the_dump_shows_holds() {
    let server = server("2");
    let mut con = server.redis();
    let first = call(&mut con, &["AUTHORIZE", "0", "100", "auth-1"]);
    assert_eq!(call(&mut con, &["AUTHORIZE", "0", "100", "auth-1"]), first, "the same hold");
    assert_eq!(
        call(&mut con, &["AUTHORIZE", "0", "101", "auth-1"]),
        declined("IDEMPOTENCY_CONFLICT")
    );
    let hold = hold_of(&first);
    let captured = call(&mut con, &["CAPTURE", &hold, "40", "cap-1"]);
    assert_eq!(captured, reply("DONE", &[19_960, 60]));
    assert_eq!(call(&mut con, &["CAPTURE", &hold, "40", "cap-1"]), captured, "captured once");
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "0"]), detail([19_960, 19_900, 60, 1]));
    let Value::BulkString(json) = call(&mut con, &["STATS", "JSON"]) else { panic!("bulk JSON") };
    let stats: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(stats["total"]["held_minor"], 60, "{stats}");
    assert_eq!(stats["total"]["open_holds"], 1);
    assert_eq!(stats["regions"]["eu-west"]["open_holds"], 1);
    assert_eq!(stats["audit"]["captures_minor"], 40);
    assert_eq!(stats["audit"]["held_minor"], 60);
    assert_eq!(stats["audit"]["holds"], true, "conservation with captures");
    let Value::BulkString(table) = call(&mut con, &["STATS"]) else { panic!("bulk text") };
    let table = String::from_utf8(table).expect("text");
    assert!(table.contains("open_holds") && table.contains("held 60"), "{table}");
}

/// N clients authorize and pay on one account at once: exactly what `available` allows is
/// approved (no overdraft, no hold beyond the balance), then every hold captures in full.
#[test]
fn authorizations_payments_and_captures_racing_on_one_account_never_overdraw() {
    const CLIENTS: usize = 8;
    // Half the clients authorize, at most HOLDS_PER_ACCOUNT_MAX together; the others pay.
    const AUTHORIZATIONS_EACH: usize = plafond::HOLDS_PER_ACCOUNT_MAX / (CLIENTS / 2);
    const PAYMENTS_EACH: usize = 16;
    const AMOUNT: i64 = 500;
    const APPROVABLE: usize = 20_000 / AMOUNT as usize;
    const _: () = assert!((AUTHORIZATIONS_EACH + PAYMENTS_EACH) * CLIENTS / 2 > APPROVABLE);
    let server = server("1");
    let mut con = server.redis();
    assert_eq!(call(&mut con, &["CARD.CEILING", "0", "1000000"]), Value::Okay);
    let amount = AMOUNT.to_string();
    let results: Vec<(Vec<String>, usize, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let mut con = server.redis();
                let amount = amount.as_str();
                scope.spawn(move || {
                    let authorizing = client % 2 == 0;
                    let (verb, count) = match authorizing {
                        true => ("AUTHORIZE", AUTHORIZATIONS_EACH),
                        false => ("PAY", PAYMENTS_EACH),
                    };
                    let (mut holds, mut paid, mut refused) = (Vec::new(), 0, 0);
                    for _ in 0..count {
                        let outcome = call(&mut con, &[verb, "0", amount]);
                        if outcome == declined("INSUFFICIENT_FUNDS") {
                            refused += 1;
                        } else if authorizing {
                            holds.push(hold_of(&outcome));
                        } else {
                            let approved =
                                matches!(&outcome, Value::Array(v) if v[0] == simple("APPROVED"));
                            assert!(approved, "{outcome:?}");
                            paid += 1;
                        }
                    }
                    (holds, paid, refused)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a client")).collect()
    });
    let holds: Vec<String> = results.iter().flat_map(|r| r.0.clone()).collect();
    let paid: usize = results.iter().map(|r| r.1).sum();
    let refused: usize = results.iter().map(|r| r.2).sum();
    assert_eq!(holds.len() + paid, APPROVABLE, "exactly what available allows");
    assert_eq!(refused, (AUTHORIZATIONS_EACH + PAYMENTS_EACH) * CLIENTS / 2 - APPROVABLE);
    let balance = 20_000 - AMOUNT * paid as i64;
    let held = AMOUNT * holds.len() as i64;
    let open = holds.len() as i64;
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "0"]), detail([balance, 0, held, open]));
    // Captures race too, each client on its own holds: every one succeeds, once.
    std::thread::scope(|scope| {
        for chunk in holds.chunks(holds.len().div_ceil(CLIENTS).max(1)) {
            let mut con = server.redis();
            let amount = amount.as_str();
            scope.spawn(move || {
                for hold in chunk {
                    let captured = call(&mut con, &["CAPTURE.FINAL", hold, amount]);
                    let done = matches!(&captured, Value::Array(v) if v[0] == simple("DONE"));
                    assert!(done, "{captured:?}");
                }
            });
        }
    });
    assert_eq!(call(&mut con, &["BALANCE.DETAIL", "0"]), detail([0, 0, 0, 0]));
    let Value::BulkString(json) = call(&mut con, &["STATS", "JSON"]) else { panic!("bulk JSON") };
    let stats: serde_json::Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(stats["audit"]["holds"], true, "{stats}");
    assert_eq!(stats["audit"]["captures_minor"], held, "{stats}");
}
