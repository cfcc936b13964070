//! What a change-stream entry says (SPEC §13): each logged input and its outcome as
//! field/value pairs, in one mapping. Every input and command is matched exhaustively, so a
//! new one does not compile until it is given its kind and fields here.
//!
//! Fields, in this order: `kind`, `ts` (Unix ms), `command_id` when the client gave one,
//! the ids that apply, `amount`, `outcome` (`APPROVED`, `DONE`, `DECLINED`, or `PENDING`
//! for the debit of a transfer to another shard, which its `TRANSFER_SETTLE` completes),
//! then `reason` for a decline, or for an entry whose logged outcome carries a balance
//! `account` and its `balance` after (and `spent_7d` for a card payment).
//!
//! An epoch shows on each shard as its `ROLL` chunks, then `EPOCH` (`region`, `day`) once
//! every chunk of every shard is durable. A roll is followed by one entry per savings
//! account it paid interest to (`INTEREST`: `region`, `amount`, `account` and its
//! `balance` after) and per card hold it expired (`EXPIRE`: `hold`, `card`, the `amount`
//! released; no balance moves). What a command applied lazily before deciding, on an
//! account the epoch had not reached yet (§5, §12), comes the same way right before the
//! command's own entry, an `INTEREST` with its account's `region` as an epoch's (a log
//! of format 3 did not write it): the interest due on a savings account it touches, the
//! holds due on the account it spends from; a consumer that applies the
//! entries in order is exact through both (the `balance` of a command's entry already
//! includes its lazy interest; a `PENDING` debit's does not say one).
//!
//! A balance the log does not carry is not invented: a cross-shard debit (`PENDING`) says
//! `from` and `amount`; a transfer within one shard says the source's balance, and the
//! target gained `amount`; a settle that refunds (`DECLINED`) gives back the amount of
//! its shard's transfer `transfer` (the n-th `PENDING` debit of the shard's log is
//! transfer n); an account opened on its region's terms got the `initial_deposit` of the
//! last `RULES` entry of its region on that shard.

use plafond_shards::apply::Input;
use plafond_shards::command::{AccountKind, Command, CommandId, Outcome, Rolled};
use plafond_shards::log::Entry;

/// Field names.
pub mod name {
    /// The entry's kind (`PAY`, `TRANSFER_DEBIT`, ...).
    pub const KIND: &str = "kind";
    /// When the input was stamped, Unix ms.
    pub const TS: &str = "ts";
    /// The client's idempotency key.
    pub const COMMAND_ID: &str = "command_id";
    /// The account whose `balance` follows, or that a deposit credits.
    pub const ACCOUNT: &str = "account";
    /// The card paying or changed.
    pub const CARD: &str = "card";
    /// A transfer's source account.
    pub const FROM: &str = "from";
    /// A transfer's target account.
    pub const TO: &str = "to";
    /// The profile an account opens in, or the one opened.
    pub const PROFILE: &str = "profile";
    /// A region's index (`STREAMS.INFO` and `BATCH.STATUS` name them).
    pub const REGION: &str = "region";
    /// `CHECKING` or `SAVINGS`.
    pub const ACCOUNT_KIND: &str = "account_kind";
    /// Minor units moved, or an opening deposit, or a new ceiling.
    pub const AMOUNT: &str = "amount";
    /// A card's seven-day ceiling given at opening.
    pub const CEILING: &str = "ceiling";
    /// `APPROVED`, `DONE`, `DECLINED` or `PENDING`.
    pub const OUTCOME: &str = "outcome";
    /// Why it was declined.
    pub const REASON: &str = "reason";
    /// `account`'s balance after the entry.
    pub const BALANCE: &str = "balance";
    /// The card's seven-day spending after a payment.
    pub const SPENT_7D: &str = "spent_7d";
    /// The shard a transfer's credit comes from.
    pub const ORIGIN: &str = "origin";
    /// A cross-shard transfer's sequence number on its source shard.
    pub const TRANSFER: &str = "transfer";
    /// The business day an epoch rolls to (days since 1970-01-01 of its local date).
    pub const DAY: &str = "day";
    /// The first local account index an epoch chunk covers.
    pub const START: &str = "start";
    /// One past the last.
    pub const END: &str = "end";
    /// A region's opening deposit from this entry on.
    pub const INITIAL_DEPOSIT: &str = "initial_deposit";
    /// A region's default card ceiling from this entry on.
    pub const DEFAULT_CARD_CEILING: &str = "default_card_ceiling";
    /// A region's savings rate from this entry on, basis points a year.
    pub const SAVINGS_RATE_BP: &str = "savings_rate_bp";
    /// A card hold (§12): the one an authorization placed, or the one a command names.
    pub const HOLD: &str = "hold";
    /// What the hold still holds after the entry.
    pub const HELD: &str = "held";
    /// The account's available money (balance less held) after the entry.
    pub const AVAILABLE: &str = "available";
    /// `1` for a final capture (the rest of the hold is released), `0` otherwise.
    pub const FINAL: &str = "final";
    /// A region's hold expiry rule from this entry on, business days.
    pub const DAYS: &str = "days";
}

/// One field's value, written as decimal digits or as the word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldValue {
    /// An id or an amount.
    Number(u64),
    /// A time or a day, which may be negative.
    Signed(i64),
    /// A kind, an outcome, a reason.
    Word(&'static str),
    /// A client's command id.
    Id(CommandId),
}

impl std::fmt::Display for FieldValue {
    /// The value as its stream entry carries it (a decimal number, a word, the id).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Number(n) => write!(f, "{n}"),
            FieldValue::Signed(n) => write!(f, "{n}"),
            FieldValue::Word(word) => f.write_str(word),
            FieldValue::Id(id) => f.write_str(id.as_str()),
        }
    }
}

/// One field/value pair of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// One of [`name`]'s.
    pub name: &'static str,
    /// Its value.
    pub value: FieldValue,
}

/// The entry's kind.
pub fn kind(input: &Input) -> &'static str {
    match input {
        Input::Client(request) => match request.command {
            Command::OpenProfile { .. } => "OPEN_PROFILE",
            Command::OpenAccount { .. } => "OPEN_ACCOUNT",
            Command::Pay { .. } => "PAY",
            Command::Transfer { .. } => "TRANSFER_DEBIT",
            Command::Deposit { .. } => "DEPOSIT",
            Command::SetCeiling { .. } => "CARD_CEILING",
            Command::Block { .. } => "CARD_BLOCK",
            Command::Unblock { .. } => "CARD_UNBLOCK",
            // An increment names the hold it adds to; a new authorization gets one.
            Command::Authorize { .. } | Command::AuthorizeIncrement { .. } => "AUTHORIZE",
            Command::Capture { .. } | Command::CaptureFinal { .. } => "CAPTURE",
            Command::Void { .. } => "VOID",
            Command::Refund { .. } => "REFUND",
            // Reads change nothing and are never logged.
            Command::ReadAccount { .. }
            | Command::ReadCard { .. }
            | Command::ReadProfile { .. }
            | Command::ReadHold { .. }
            | Command::ReadBalanceDetail { .. }
            | Command::ReadReleases { .. } => "READ",
        },
        Input::Credit { .. } => "TRANSFER_CREDIT",
        Input::Settle { .. } => "TRANSFER_SETTLE",
        Input::Roll { .. } => "ROLL",
        Input::SetRules { .. } => "RULES",
        Input::SetHoldExpiry { .. } => "HOLD_EXPIRY",
        Input::Epoch { .. } => "EPOCH",
    }
}

/// How many stream entries logged `entry` gives: one, then for a roll one more per
/// interest it posted (`INTEREST`) and per hold it expired (`EXPIRE`), right after it; and
/// before it one per interest and expiry it applied lazily ([`Entry::lazy`]).
pub fn parts(entry: &Entry) -> usize {
    let rolled = match &entry.outcome {
        Some(Outcome::Rolled(rolled)) => changes(rolled),
        _ => 0,
    };
    lazy_parts(entry) + 1 + rolled
}

/// How many entries `changed` gives.
fn changes(changed: &Rolled) -> usize {
    changed.interest.len() + changed.expired.len()
}

/// How many entries the lazy changes of `entry` give, before its own.
fn lazy_parts(entry: &Entry) -> usize {
    entry.lazy.as_ref().map_or(0, changes)
}

/// Appends the fields of part `part` (below [`parts`]) of `entry` to `out`: the lazy
/// changes first, then the entry itself, then what its roll changed.
pub fn fields(entry: &Entry, part: usize, out: &mut Vec<Field>) {
    let lazy = lazy_parts(entry);
    match (entry.lazy.as_ref(), &entry.outcome, part.checked_sub(lazy)) {
        (Some(changed), _, None) => changed_fields(entry, changed, part, out),
        (_, _, Some(0)) => entry_fields(entry, out),
        (_, Some(Outcome::Rolled(rolled)), Some(after)) => {
            changed_fields(entry, rolled, after - 1, out);
        }
        // Past the entry's parts: nothing (the caller counts with `parts`).
        (_, _, _) => {}
    }
}

/// `INTEREST` or `EXPIRE`: the `at`-th thing `changed` holds, at the entry's time (an
/// interest with its account's `region`, which a log of format 3 did not write for a
/// lazy one).
fn changed_fields(entry: &Entry, changed: &Rolled, at: usize, out: &mut Vec<Field>) {
    let mut push = |name: &'static str, value: FieldValue| out.push(Field { name, value });
    let number = FieldValue::Number;
    let ts = FieldValue::Signed(entry.ts_ms.max(0));
    if let Some(posted) = changed.interest.get(at) {
        push(name::KIND, FieldValue::Word("INTEREST"));
        push(name::TS, ts);
        if let Some(region) = posted.region {
            push(name::REGION, number(u64::from(region)));
        }
        push(name::AMOUNT, number(posted.amount_minor));
        push(name::OUTCOME, FieldValue::Word("DONE"));
        push(name::ACCOUNT, number(posted.account));
        push(name::BALANCE, number(posted.balance_minor));
    } else if let Some(expired) =
        at.checked_sub(changed.interest.len()).and_then(|at| changed.expired.get(at))
    {
        push(name::KIND, FieldValue::Word("EXPIRE"));
        push(name::TS, ts);
        push(name::HOLD, number(expired.hold));
        push(name::CARD, number(expired.card));
        push(name::AMOUNT, number(expired.released_minor));
        push(name::OUTCOME, FieldValue::Word("DONE"));
    }
}

/// Appends the fields of `entry` itself.
fn entry_fields(entry: &Entry, out: &mut Vec<Field>) {
    let mut push = |name: &'static str, value: FieldValue| out.push(Field { name, value });
    push(name::KIND, FieldValue::Word(kind(&entry.input)));
    // The rules a new data directory logs first carry no time yet (a shard's clock starts
    // at `i64::MIN`): shown as 0, so that a consumer reading Unix times gets one.
    push(name::TS, FieldValue::Signed(entry.ts_ms.max(0)));
    match &entry.input {
        Input::Client(request) => {
            if let Some(id) = &request.command_id {
                push(name::COMMAND_ID, FieldValue::Id(id.clone()));
            }
            command_fields(&request.command, &mut push);
        }
        Input::Credit { origin, seq, to, amount_minor } => {
            push(name::ORIGIN, FieldValue::Number(u64::from(*origin)));
            push(name::TRANSFER, FieldValue::Number(*seq));
            push(name::TO, FieldValue::Number(*to));
            push(name::AMOUNT, FieldValue::Number(*amount_minor));
        }
        Input::Settle { seq, refused: _ } => push(name::TRANSFER, FieldValue::Number(*seq)),
        Input::Roll { region, day, start, end } => {
            push(name::REGION, FieldValue::Number(u64::from(*region)));
            push(name::DAY, FieldValue::Signed(i64::from(*day)));
            push(name::START, FieldValue::Number(u64::from(*start)));
            push(name::END, FieldValue::Number(u64::from(*end)));
        }
        Input::SetRules { region, rules } => {
            push(name::REGION, FieldValue::Number(u64::from(*region)));
            push(name::INITIAL_DEPOSIT, FieldValue::Number(rules.initial_deposit_minor));
            let ceiling = rules.default_card_ceiling_minor;
            push(name::DEFAULT_CARD_CEILING, FieldValue::Number(ceiling));
            push(name::SAVINGS_RATE_BP, FieldValue::Number(u64::from(rules.savings_rate_bp)));
        }
        Input::SetHoldExpiry { region, days } => {
            push(name::REGION, FieldValue::Number(u64::from(*region)));
            push(name::DAYS, FieldValue::Number(u64::from(*days)));
        }
        Input::Epoch { region, day } => {
            push(name::REGION, FieldValue::Number(u64::from(*region)));
            push(name::DAY, FieldValue::Signed(i64::from(*day)));
        }
    }
    outcome_fields(entry, &mut push);
}

/// The ids and amount of a client's command.
fn command_fields(command: &Command, push: &mut impl FnMut(&'static str, FieldValue)) {
    let number = FieldValue::Number;
    match *command {
        Command::OpenProfile { region } => push(name::REGION, number(u64::from(region))),
        Command::OpenAccount { profile, kind, opening } => {
            push(name::PROFILE, number(profile));
            let kind = match kind {
                AccountKind::Checking => "CHECKING",
                AccountKind::Savings => "SAVINGS",
            };
            push(name::ACCOUNT_KIND, FieldValue::Word(kind));
            if let Some(opening) = opening {
                push(name::AMOUNT, number(opening.deposit_minor));
                push(name::CEILING, number(opening.ceiling_minor));
            }
        }
        Command::Pay { card, amount_minor } => {
            push(name::CARD, number(card));
            push(name::AMOUNT, number(amount_minor));
        }
        Command::Transfer { from, to, amount_minor } => {
            push(name::FROM, number(from));
            push(name::TO, number(to));
            push(name::AMOUNT, number(amount_minor));
        }
        Command::Deposit { account: _, amount_minor } => push(name::AMOUNT, number(amount_minor)),
        Command::SetCeiling { card, ceiling_minor } => {
            push(name::CARD, number(card));
            push(name::AMOUNT, number(ceiling_minor));
        }
        Command::Block { card } | Command::Unblock { card } | Command::ReadCard { card } => {
            push(name::CARD, number(card));
        }
        Command::ReadAccount { account } | Command::ReadBalanceDetail { account } => {
            push(name::ACCOUNT, number(account));
        }
        Command::ReadProfile { profile } => push(name::PROFILE, number(profile)),
        Command::Authorize { card, amount_minor } | Command::Refund { card, amount_minor } => {
            push(name::CARD, number(card));
            push(name::AMOUNT, number(amount_minor));
        }
        Command::AuthorizeIncrement { hold, amount_minor } => {
            push(name::HOLD, number(hold));
            push(name::AMOUNT, number(amount_minor));
        }
        Command::Capture { hold, amount_minor } | Command::CaptureFinal { hold, amount_minor } => {
            push(name::HOLD, number(hold));
            push(name::AMOUNT, number(amount_minor));
            let last = matches!(command, Command::CaptureFinal { .. });
            push(name::FINAL, number(u64::from(last)));
        }
        Command::Void { hold, amount_minor } => {
            push(name::HOLD, number(hold));
            push(name::AMOUNT, amount_minor.map_or(FieldValue::Word("ALL"), number));
        }
        Command::ReadHold { hold } => push(name::HOLD, number(hold)),
        Command::ReadReleases { card } => push(name::CARD, number(card)),
    }
}

/// The account whose balance an outcome of `input` reports, if any.
fn balance_account(input: &Input) -> Option<u64> {
    match input {
        Input::Client(request) => match request.command {
            Command::Pay { card: account, .. }
            | Command::Transfer { from: account, .. }
            | Command::Deposit { account, .. }
            | Command::Authorize { card: account, .. }
            | Command::Refund { card: account, .. } => Some(account),
            // A hold's commands name the hold: its account is the card of the
            // `AUTHORIZE` entry that placed it (its `hold` field).
            Command::AuthorizeIncrement { .. }
            | Command::Capture { .. }
            | Command::CaptureFinal { .. }
            | Command::Void { .. }
            | Command::ReadHold { .. }
            | Command::ReadBalanceDetail { .. }
            | Command::ReadReleases { .. }
            | Command::OpenProfile { .. }
            | Command::OpenAccount { .. }
            | Command::SetCeiling { .. }
            | Command::Block { .. }
            | Command::Unblock { .. }
            | Command::ReadAccount { .. }
            | Command::ReadCard { .. }
            | Command::ReadProfile { .. } => None,
        },
        Input::Credit { to, .. } => Some(*to),
        // The balance a settle logs is the source's right after its debit, not now.
        Input::Settle { .. }
        | Input::Roll { .. }
        | Input::SetRules { .. }
        | Input::SetHoldExpiry { .. }
        | Input::Epoch { .. } => None,
    }
}

/// `outcome` and what it carries.
fn outcome_fields(entry: &Entry, push: &mut impl FnMut(&'static str, FieldValue)) {
    let word = FieldValue::Word;
    let Some(outcome) = &entry.outcome else {
        // Only a debit waiting for its credit on another shard is logged without an
        // outcome among client commands; epochs and rules have none to give.
        let pending = matches!(&entry.input, Input::Client(r) if matches!(r.command, Command::Transfer { .. }));
        return push(name::OUTCOME, word(if pending { "PENDING" } else { "DONE" }));
    };
    let balance = |push: &mut dyn FnMut(&'static str, FieldValue), balance_minor: u64| {
        if let Some(account) = balance_account(&entry.input) {
            push(name::ACCOUNT, FieldValue::Number(account));
            push(name::BALANCE, FieldValue::Number(balance_minor));
        }
    };
    match outcome {
        Outcome::Approved { balance_minor, spent_7d_minor } => {
            push(name::OUTCOME, word("APPROVED"));
            balance(push, *balance_minor);
            push(name::SPENT_7D, FieldValue::Number(*spent_7d_minor));
        }
        Outcome::Done { balance_minor } => {
            push(name::OUTCOME, word("DONE"));
            balance(push, *balance_minor);
        }
        Outcome::ProfileOpened { profile } => {
            push(name::PROFILE, FieldValue::Number(*profile));
            push(name::OUTCOME, word("DONE"));
        }
        Outcome::AccountOpened { account, card } => {
            push(name::ACCOUNT, FieldValue::Number(*account));
            if let Some(card) = card {
                push(name::CARD, FieldValue::Number(*card));
            }
            push(name::OUTCOME, word("DONE"));
            let opening = match &entry.input {
                Input::Client(request) => match request.command {
                    Command::OpenAccount { opening, .. } => opening,
                    _ => None,
                },
                _ => None,
            };
            if let Some(opening) = opening {
                push(name::BALANCE, FieldValue::Number(opening.deposit_minor));
            }
        }
        Outcome::Authorized { hold, available_minor, spent_7d_minor } => {
            push(name::OUTCOME, word("APPROVED"));
            push(name::HOLD, FieldValue::Number(*hold));
            if let Some(account) = balance_account(&entry.input) {
                push(name::ACCOUNT, FieldValue::Number(account));
            }
            push(name::AVAILABLE, FieldValue::Number(*available_minor));
            push(name::SPENT_7D, FieldValue::Number(*spent_7d_minor));
        }
        Outcome::Incremented { held_minor, available_minor, spent_7d_minor } => {
            push(name::OUTCOME, word("APPROVED"));
            push(name::HELD, FieldValue::Number(*held_minor));
            push(name::AVAILABLE, FieldValue::Number(*available_minor));
            push(name::SPENT_7D, FieldValue::Number(*spent_7d_minor));
        }
        // The balance after is the hold's account's (named by its `AUTHORIZE` entry).
        Outcome::Captured { balance_minor, held_minor } => {
            push(name::OUTCOME, word("DONE"));
            push(name::BALANCE, FieldValue::Number(*balance_minor));
            push(name::HELD, FieldValue::Number(*held_minor));
        }
        Outcome::Voided { available_minor, held_minor } => {
            push(name::OUTCOME, word("DONE"));
            push(name::AVAILABLE, FieldValue::Number(*available_minor));
            push(name::HELD, FieldValue::Number(*held_minor));
        }
        // The roll's own entry says it is done; what it changed follows it ([`parts`]).
        Outcome::Rolled(_)
        | Outcome::Updated
        | Outcome::Account(_)
        | Outcome::Card(_)
        | Outcome::Profile(_)
        | Outcome::Hold(_)
        | Outcome::BalanceDetail(_)
        | Outcome::Releases(_) => {
            push(name::OUTCOME, word("DONE"));
        }
        Outcome::Declined(reason) => {
            push(name::OUTCOME, word("DECLINED"));
            push(name::REASON, word(reason.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plafond_shards::command::{Opening, Reason, Request};

    fn rendered(input: Input, outcome: Option<Outcome>) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let entry = Entry { ts_ms: 1_800_000_000_000, input, outcome, lazy: None };
        fields(&entry, 0, &mut out);
        text(out)
    }

    fn text(fields: Vec<Field>) -> Vec<(&'static str, String)> {
        fields.into_iter().map(|field| (field.name, field.value.to_string())).collect()
    }

    fn pairs(expected: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        expected.iter().map(|(name, value)| (*name, value.to_string())).collect()
    }

    #[test]
    fn a_payment_says_its_card_amount_outcome_and_the_balance_after() {
        let id = CommandId::new("order-7").unwrap();
        let pay = Input::Client(Request::with_id(Command::Pay { card: 4, amount_minor: 250 }, id));
        let approved = Outcome::Approved { balance_minor: 19_750, spent_7d_minor: 250 };
        assert_eq!(
            rendered(pay.clone(), Some(approved)),
            pairs(&[
                ("kind", "PAY"),
                ("ts", "1800000000000"),
                ("command_id", "order-7"),
                ("card", "4"),
                ("amount", "250"),
                ("outcome", "APPROVED"),
                ("account", "4"),
                ("balance", "19750"),
                ("spent_7d", "250"),
            ])
        );
        let declined = rendered(pay, Some(Outcome::Declined(Reason::CeilingExceeded)));
        assert_eq!(
            &declined[5..],
            &pairs(&[("outcome", "DECLINED"), ("reason", "CEILING_EXCEEDED")])
        );
    }

    #[test]
    fn a_cross_shard_transfer_shows_three_legs_and_no_stale_balance() {
        let debit = Command::Transfer { from: 1, to: 2, amount_minor: 30 };
        let debit = rendered(Input::Client(Request::new(debit)), None);
        assert_eq!(debit[0], ("kind", "TRANSFER_DEBIT".to_string()));
        assert!(debit.contains(&("outcome", "PENDING".to_string())), "{debit:?}");
        assert!(!debit.iter().any(|(name, _)| *name == "balance"));
        let credit = Input::Credit { origin: 1, seq: 5, to: 2, amount_minor: 30 };
        let credit = rendered(credit, Some(Outcome::Done { balance_minor: 130 }));
        assert_eq!(
            &credit[2..],
            &pairs(&[
                ("origin", "1"),
                ("transfer", "5"),
                ("to", "2"),
                ("amount", "30"),
                ("outcome", "DONE"),
                ("account", "2"),
                ("balance", "130"),
            ])
        );
        let settle = Input::Settle { seq: 5, refused: None };
        let settle = rendered(settle, Some(Outcome::Done { balance_minor: 70 }));
        assert_eq!(&settle[2..], &pairs(&[("transfer", "5"), ("outcome", "DONE")]));
    }

    #[test]
    fn an_opening_on_its_own_terms_gives_the_balance_and_one_on_the_regions_does_not() {
        let kind = AccountKind::Checking;
        let opened = Some(Outcome::AccountOpened { account: 6, card: Some(6) });
        let own = Command::OpenAccount { profile: 2, kind, opening: Some(Opening::REFERENCE) };
        let own = rendered(Input::Client(Request::new(own)), opened.clone());
        assert!(own.contains(&("balance", "20000".to_string())), "{own:?}");
        let regions = Command::OpenAccount { profile: 2, kind, opening: None };
        let regions = rendered(Input::Client(Request::new(regions)), opened);
        assert!(!regions.iter().any(|(name, _)| *name == "balance" || *name == "amount"));
        assert!(regions.contains(&("account", "6".to_string())));
    }

    #[test]
    fn a_roll_is_followed_by_its_interest_and_its_expiries() {
        use plafond_shards::command::{ExpiredHold, Posted};
        let roll = Input::Roll { region: 1, day: 20_000, start: 0, end: 16 };
        let rolled = Rolled {
            interest: vec![Posted {
                account: 3,
                amount_minor: 41,
                balance_minor: 100_041,
                region: Some(1),
            }],
            expired: vec![ExpiredHold { hold: 18, card: 2, released_minor: 900 }],
        };
        let outcome = Some(Outcome::Rolled(rolled));
        let entry = Entry { ts_ms: 5, input: roll.clone(), outcome, lazy: Some(Rolled::default()) };
        assert_eq!(parts(&entry), 3);
        let part = |at| {
            let mut out = Vec::new();
            fields(&entry, at, &mut out);
            text(out)
        };
        assert_eq!(part(0)[0], ("kind", "ROLL".to_string()));
        assert_eq!(part(0).last(), Some(&("outcome", "DONE".to_string())));
        assert_eq!(
            part(1),
            pairs(&[
                ("kind", "INTEREST"),
                ("ts", "5"),
                ("region", "1"),
                ("amount", "41"),
                ("outcome", "DONE"),
                ("account", "3"),
                ("balance", "100041"),
            ])
        );
        assert_eq!(
            part(2),
            pairs(&[
                ("kind", "EXPIRE"),
                ("ts", "5"),
                ("hold", "18"),
                ("card", "2"),
                ("amount", "900"),
                ("outcome", "DONE"),
            ])
        );
        assert!(part(3).is_empty());
        // A roll that changed nothing is logged without an outcome: one entry, as before.
        assert_eq!(parts(&Entry { ts_ms: 5, input: roll, outcome: None, lazy: None }), 1);
    }

    #[test]
    fn what_a_command_changed_lazily_comes_right_before_it() {
        use plafond_shards::command::{ExpiredHold, Posted};
        let debit = Command::Transfer { from: 3, to: 8, amount_minor: 500 };
        let lazy = Rolled {
            interest: vec![Posted {
                account: 3,
                amount_minor: 41,
                balance_minor: 100_041,
                region: Some(2),
            }],
            expired: vec![ExpiredHold { hold: 18, card: 3, released_minor: 900 }],
        };
        let input = Input::Client(Request::new(debit));
        let entry = Entry { ts_ms: 5, input, outcome: None, lazy: Some(lazy) };
        assert_eq!(parts(&entry), 3);
        let part = |at| {
            let mut out = Vec::new();
            fields(&entry, at, &mut out);
            text(out)
        };
        // With its account's region, as an epoch's INTEREST.
        assert_eq!(
            part(0),
            pairs(&[
                ("kind", "INTEREST"),
                ("ts", "5"),
                ("region", "2"),
                ("amount", "41"),
                ("outcome", "DONE"),
                ("account", "3"),
                ("balance", "100041"),
            ])
        );
        // A log of format 3 did not write the region: none is shown.
        let mut unplaced = entry.clone();
        if let Some(lazy) = &mut unplaced.lazy {
            lazy.interest[0].region = None;
        }
        let mut out = Vec::new();
        fields(&unplaced, 0, &mut out);
        assert!(!text(out).iter().any(|(name, _)| *name == "region"));
        assert_eq!(part(1)[0], ("kind", "EXPIRE".to_string()));
        assert_eq!(part(1)[2..4], pairs(&[("hold", "18"), ("card", "3")])[..]);
        assert_eq!(part(2)[0], ("kind", "TRANSFER_DEBIT".to_string()));
        assert_eq!(part(2).last(), Some(&("outcome", "PENDING".to_string())));
        assert!(part(3).is_empty());
    }

    #[test]
    fn a_hold_shows_its_id_then_each_capture_names_it() {
        let authorize =
            Input::Client(Request::new(Command::Authorize { card: 4, amount_minor: 900 }));
        let placed = Outcome::Authorized { hold: 12, available_minor: 19_100, spent_7d_minor: 900 };
        assert_eq!(
            rendered(authorize, Some(placed))[2..],
            pairs(&[
                ("card", "4"),
                ("amount", "900"),
                ("outcome", "APPROVED"),
                ("hold", "12"),
                ("account", "4"),
                ("available", "19100"),
                ("spent_7d", "900"),
            ])[..]
        );
        let capture =
            Input::Client(Request::new(Command::CaptureFinal { hold: 12, amount_minor: 700 }));
        let captured = Outcome::Captured { balance_minor: 19_300, held_minor: 0 };
        let capture = rendered(capture, Some(captured));
        assert_eq!(capture[0], ("kind", "CAPTURE".to_string()));
        assert_eq!(
            capture[2..],
            pairs(&[
                ("hold", "12"),
                ("amount", "700"),
                ("final", "1"),
                ("outcome", "DONE"),
                ("balance", "19300"),
                ("held", "0"),
            ])[..]
        );
        let void = Input::Client(Request::new(Command::Void { hold: 12, amount_minor: None }));
        let void = rendered(void, Some(Outcome::Declined(Reason::HoldClosed)));
        assert_eq!(
            void[..],
            pairs(&[
                ("kind", "VOID"),
                ("ts", "1800000000000"),
                ("hold", "12"),
                ("amount", "ALL"),
                ("outcome", "DECLINED"),
                ("reason", "HOLD_CLOSED"),
            ])[..]
        );
    }
}
