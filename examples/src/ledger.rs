//! What the example consumer (`examples/consumer`) rebuilds from the change stream alone,
//! and its file.
//!
//! Per account its balance (savings interest included: `INTEREST` entries, of an epoch or
//! applied lazily before a command, carry the balance after) and what its open holds hold;
//! per shard the cursor (the last entry applied) and what the
//! stream's entries leave for later ones to use: each region's opening deposit (`RULES`),
//! each profile's region (`OPEN_PROFILE`), and the transfers to other shards still waiting
//! for their settle (the n-th `PENDING` debit of a shard's log is its transfer n), so that a
//! refund can be given back. The cursors and the balances are saved together, atomically
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory), so
//! a restart resumes exactly where the saved balances stand: entries delivered again after
//! the cursor were not applied, entries at or before it are skipped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use plafond::stream::fields::name;

/// The file's format version (2: what each hold holds).
const LEDGER_FORMAT_VERSION: u32 = 2;

/// An entry id, `<batch>-<index>`, ordered as the stream orders them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub batch: u64,
    pub index: u64,
}

impl Cursor {
    pub fn parse(text: &str) -> anyhow::Result<Cursor> {
        let (batch, index) = text.split_once('-').context("an id is <batch>-<index>")?;
        Ok(Cursor { batch: batch.parse()?, index: index.parse()? })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.batch, self.index)
    }
}

/// One shard's part of the ledger.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardLedger {
    /// The last entry applied (`0-0`: none).
    pub cursor: Cursor,
    /// Each region's opening deposit, from the shard's last `RULES` entry for it.
    initial_deposits: BTreeMap<u64, u64>,
    /// The region of each profile opened on the shard.
    profile_regions: BTreeMap<u64, u64>,
    /// The shard's next transfer sequence number: how many `PENDING` debits it logged.
    next_transfer: u64,
    /// Debits waiting for their settle: transfer → (from, amount).
    pending: BTreeMap<u64, (u64, u64)>,
    /// Each card hold (§12) that still holds money: a `CAPTURE` entry names its hold, and
    /// the `AUTHORIZE` entry that placed it names the card. A hold is forgotten once a
    /// capture or void leaves it holding nothing, or it expires (`EXPIRE`, of an epoch or
    /// applied lazily before a command on its card).
    holds: BTreeMap<u64, OpenHold>,
}

/// A hold that still holds money.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct OpenHold {
    /// Its card's account.
    account: u64,
    /// What it holds.
    held: u64,
}

/// Everything the consumer keeps.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    version: u32,
    pub shards: Vec<ShardLedger>,
    pub balances: BTreeMap<u64, u64>,
    /// Entries applied since the ledger began.
    pub applied: u64,
}

/// One entry's fields, as the stream sends them.
pub type Fields<'a> = [(&'a str, &'a str)];

fn field<'a>(fields: &Fields<'a>, wanted: &str) -> Option<&'a str> {
    fields.iter().find(|(name, _)| *name == wanted).map(|(_, value)| *value)
}

fn number(fields: &Fields<'_>, wanted: &str) -> anyhow::Result<u64> {
    let text = field(fields, wanted).with_context(|| format!("no field `{wanted}`"))?;
    text.parse().with_context(|| format!("field `{wanted}` is {text:?}"))
}

impl Ledger {
    /// An empty ledger for `shards` streams.
    pub fn new(shards: usize) -> Ledger {
        Ledger {
            version: LEDGER_FORMAT_VERSION,
            shards: vec![ShardLedger::default(); shards],
            balances: BTreeMap::new(),
            applied: 0,
        }
    }

    /// The ledger saved at `path`, or `None` if there is no file.
    pub fn load(path: &Path) -> anyhow::Result<Option<Ledger>> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
        };
        let ledger: Ledger = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a consumer's ledger", path.display()))?;
        if ledger.version != LEDGER_FORMAT_VERSION {
            bail!(
                "{} has format version {}, not {LEDGER_FORMAT_VERSION}",
                path.display(),
                ledger.version
            );
        }
        Ok(Some(ledger))
    }

    /// Saves the ledger at `path`, atomically: a crash leaves the old file or the new one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_all().with_context(|| format!("fsyncing {}", temporary.display()))?;
        drop(file);
        std::fs::rename(&temporary, path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// What the open holds of each account hold together (accounts without any left out).
    pub fn held(&self) -> BTreeMap<u64, u64> {
        let mut held = BTreeMap::new();
        for hold in self.shards.iter().flat_map(|shard| shard.holds.values()) {
            *held.entry(hold.account).or_default() += hold.held;
        }
        held
    }

    /// Moves `shard`'s cursor past entry `id` without applying it (only counting).
    pub fn skip(&mut self, shard: usize, id: Cursor) -> anyhow::Result<()> {
        let ledger = self.shards.get_mut(shard).context("an entry of a stream not followed")?;
        ledger.cursor = ledger.cursor.max(id);
        self.applied += 1;
        Ok(())
    }

    /// Applies entry `id` of `shard`'s stream, unless the cursor is past it already (an
    /// entry delivered again). Returns whether it was applied.
    pub fn apply(&mut self, shard: usize, id: Cursor, fields: &Fields<'_>) -> anyhow::Result<bool> {
        let Some(ledger) = self.shards.get_mut(shard) else {
            bail!("an entry of stream changes:{shard}, which the ledger does not follow");
        };
        if id <= ledger.cursor {
            return Ok(false);
        }
        apply_entry(ledger, &mut self.balances, fields)
            .with_context(|| format!("entry {id} of changes:{shard}: {fields:?}"))?;
        ledger.cursor = id;
        self.applied += 1;
        Ok(true)
    }
}

/// What one entry does to the balances (and to what later entries need).
fn apply_entry(
    ledger: &mut ShardLedger,
    balances: &mut BTreeMap<u64, u64>,
    fields: &Fields<'_>,
) -> anyhow::Result<()> {
    let kind = field(fields, name::KIND).context("no kind")?;
    let outcome = field(fields, name::OUTCOME).unwrap_or_default();
    if kind == "RULES" {
        let region = number(fields, name::REGION)?;
        ledger.initial_deposits.insert(region, number(fields, name::INITIAL_DEPOSIT)?);
        return Ok(());
    }
    match (kind, outcome) {
        ("OPEN_PROFILE", "DONE") => {
            let profile = number(fields, name::PROFILE)?;
            ledger.profile_regions.insert(profile, number(fields, name::REGION)?);
        }
        ("OPEN_ACCOUNT", "DONE") => {
            let account = number(fields, name::ACCOUNT)?;
            let balance = match field(fields, name::BALANCE) {
                Some(_) => number(fields, name::BALANCE)?,
                // Opened on its region's terms.
                None => {
                    let profile = number(fields, name::PROFILE)?;
                    let region = ledger.profile_regions.get(&profile).context("unknown profile")?;
                    *ledger.initial_deposits.get(region).context("no RULES for the region")?
                }
            };
            balances.insert(account, balance);
        }
        ("TRANSFER_DEBIT", "PENDING") => {
            let (from, amount) = (number(fields, name::FROM)?, number(fields, name::AMOUNT)?);
            let balance = balances.get_mut(&from).context("a debit of an unknown account")?;
            *balance = balance.checked_sub(amount).context("a debit below zero")?;
            ledger.pending.insert(ledger.next_transfer, (from, amount));
            ledger.next_transfer += 1;
        }
        ("TRANSFER_SETTLE", outcome) => {
            let transfer = number(fields, name::TRANSFER)?;
            let (from, amount) = ledger.pending.remove(&transfer).context("an unknown transfer")?;
            if outcome == "DECLINED" {
                // The target refused the credit: the source got its money back.
                *balances.entry(from).or_default() += amount;
            }
        }
        ("AUTHORIZE", "APPROVED") if field(fields, name::CARD).is_some() => {
            let (account, held) = (number(fields, name::CARD)?, number(fields, name::AMOUNT)?);
            ledger.holds.insert(number(fields, name::HOLD)?, OpenHold { account, held });
        }
        ("EXPIRE", "DONE") => {
            ledger.holds.remove(&number(fields, name::HOLD)?);
        }
        ("CAPTURE", "DONE") => {
            let hold = number(fields, name::HOLD)?;
            let account = ledger.holds.get(&hold).context("a capture of an unknown hold")?.account;
            balances.insert(account, number(fields, name::BALANCE)?);
        }
        _ => {}
    }
    // An increment, a capture or a void says what the hold holds after it.
    if matches!((kind, outcome), ("AUTHORIZE", "APPROVED") | ("CAPTURE" | "VOID", "DONE")) {
        if let Some(held) = field(fields, name::HELD) {
            let hold = number(fields, name::HOLD)?;
            let open = ledger.holds.get_mut(&hold).context("a change of an unknown hold")?;
            open.held = held.parse().with_context(|| format!("field `held` is {held:?}"))?;
            if open.held == 0 {
                ledger.holds.remove(&hold);
            }
        }
    }
    if outcome != "DONE" && outcome != "APPROVED" {
        return Ok(());
    }
    // A transfer within one shard credited its target in the same entry.
    if kind == "TRANSFER_DEBIT" {
        let (to, amount) = (number(fields, name::TO)?, number(fields, name::AMOUNT)?);
        *balances.entry(to).or_default() += amount;
    }
    if let (Some(_), Some(_)) = (field(fields, name::ACCOUNT), field(fields, name::BALANCE)) {
        balances.insert(number(fields, name::ACCOUNT)?, number(fields, name::BALANCE)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(pairs: &'a [(&'a str, &'a str)]) -> &'a Fields<'a> {
        pairs
    }

    #[test]
    fn balances_follow_openings_payments_and_a_refunded_transfer() {
        let mut ledger = Ledger::new(2);
        let id = |index| Cursor { batch: 0, index };
        let rules = [("kind", "RULES"), ("region", "0"), ("initial_deposit", "100000")];
        assert!(ledger.apply(0, id(1), entry(&rules)).unwrap());
        let profile =
            [("kind", "OPEN_PROFILE"), ("region", "0"), ("profile", "0"), ("outcome", "DONE")];
        ledger.apply(0, id(2), entry(&profile)).unwrap();
        let open =
            [("kind", "OPEN_ACCOUNT"), ("profile", "0"), ("account", "0"), ("outcome", "DONE")];
        ledger.apply(0, id(3), entry(&open)).unwrap();
        assert_eq!(ledger.balances[&0], 100_000);
        let pay =
            [("kind", "PAY"), ("outcome", "APPROVED"), ("account", "0"), ("balance", "99000")];
        ledger.apply(0, id(4), entry(&pay)).unwrap();
        // Delivered again: skipped.
        assert!(!ledger.apply(0, id(4), entry(&pay)).unwrap());
        let debit = [
            ("kind", "TRANSFER_DEBIT"),
            ("from", "0"),
            ("to", "9"),
            ("amount", "500"),
            ("outcome", "PENDING"),
        ];
        ledger.apply(0, id(5), entry(&debit)).unwrap();
        assert_eq!(ledger.balances[&0], 98_500);
        let settle = [("kind", "TRANSFER_SETTLE"), ("transfer", "0"), ("outcome", "DECLINED")];
        ledger.apply(0, id(6), entry(&settle)).unwrap();
        assert_eq!(ledger.balances[&0], 99_000);
        assert_eq!(ledger.applied, 6);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.json");
        ledger.save(&path).unwrap();
        let loaded = Ledger::load(&path).unwrap().unwrap();
        assert_eq!((loaded.balances, loaded.shards[0].cursor), (ledger.balances, id(6)));
    }

    /// Every entry of every stream of `engine`, applied to a new ledger in order.
    fn rebuilt_from(engine: &plafond::Engine) -> Ledger {
        use plafond::stream::{StreamId, StreamStart, STREAM_READ_ENTRIES_MAX};
        let mut ledger = Ledger::new(usize::from(engine.shards()));
        for shard in 0..engine.shards() {
            let mut start = StreamStart::Retained;
            loop {
                let mut read = Vec::new();
                let visit = |id: StreamId, fields: &[plafond::stream::Field]| {
                    let text: Vec<(&'static str, String)> =
                        fields.iter().map(|field| (field.name, field.value.to_string())).collect();
                    read.push((id, text));
                    true
                };
                let max = STREAM_READ_ENTRIES_MAX;
                engine.stream_read(shard, start, StreamId::MAX, max, visit).unwrap();
                let Some(&(last, _)) = read.last() else { break };
                for (id, text) in &read {
                    let pairs: Vec<(&str, &str)> =
                        text.iter().map(|(name, value)| (*name, value.as_str())).collect();
                    let cursor = Cursor { batch: id.batch_seq, index: id.index };
                    assert!(ledger.apply(usize::from(shard), cursor, &pairs).unwrap());
                }
                start = StreamStart::At(last.successor().unwrap());
            }
        }
        ledger
    }

    #[test]
    fn the_ledger_rebuilt_from_the_streams_is_the_engine_through_lazy_and_eager_changes() {
        use plafond::{AccountKind, Command, Engine, EngineConfig, ManualClock, Outcome};
        const DAY_MS: i64 = 86_400_000;
        let dir = tempfile::tempdir().unwrap();
        let clock = std::sync::Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
        // Epochs only when the test says: between them, commands apply what is due lazily.
        let config = EngineConfig::durable(dir.path())
            .with_shards(2)
            .with_clock(clock.clone())
            .with_epoch_poll(None);
        let engine = Engine::open(config.clone()).unwrap();
        let mut accounts = Vec::new();
        for index in 0..6u64 {
            let region = (index % 2) as plafond::RegionId;
            let Ok(Outcome::ProfileOpened { profile }) =
                engine.run(Command::OpenProfile { region })
            else {
                panic!("a profile")
            };
            for kind in [AccountKind::Checking, AccountKind::Savings] {
                let open = Command::OpenAccount { profile, kind, opening: None };
                let Ok(Outcome::AccountOpened { account, .. }) = engine.run(open) else {
                    panic!("an account")
                };
                accounts.push((account, kind));
            }
        }
        let cards: Vec<u64> = accounts
            .iter()
            .filter(|(_, kind)| *kind == AccountKind::Checking)
            .map(|(account, _)| *account)
            .collect();
        let mut rng = crate::sample::Rng::new(13);
        let mut holds = Vec::new();
        for _ in 0..600 {
            let any = accounts[rng.below(accounts.len() as u64) as usize].0;
            let card = cards[rng.below(cards.len() as u64) as usize];
            let amount_minor = 1 + rng.below(4_000);
            let hold = |rng: &mut crate::sample::Rng, holds: &[u64]| match holds {
                [] => u64::MAX,
                _ => holds[rng.below(holds.len() as u64) as usize],
            };
            let command = match rng.below(20) {
                0..=2 => Command::Deposit { account: any, amount_minor },
                3..=5 => Command::Pay { card, amount_minor },
                6..=8 => Command::Transfer { from: any, to: card, amount_minor },
                // On the second shard and never opened: refunded.
                9 => Command::Transfer { from: any, to: 1_000_001, amount_minor },
                10..=11 => Command::Authorize { card, amount_minor },
                12 => Command::AuthorizeIncrement { hold: hold(&mut rng, &holds), amount_minor },
                13 => Command::Capture {
                    hold: hold(&mut rng, &holds),
                    amount_minor: amount_minor / 4,
                },
                14 => Command::CaptureFinal {
                    hold: hold(&mut rng, &holds),
                    amount_minor: amount_minor / 8,
                },
                15 => Command::Void { hold: hold(&mut rng, &holds), amount_minor: None },
                16 => Command::Refund { card, amount_minor },
                17 => {
                    // Hours to weeks: holds fall due, half-months and years pass.
                    clock.advance((1 + rng.below(20 * 24)) as i64 * DAY_MS / 24);
                    continue;
                }
                18 if rng.below(4) == 0 => {
                    engine.run_due_epochs().unwrap();
                    continue;
                }
                _ => {
                    let to = accounts[rng.below(accounts.len() as u64) as usize].0;
                    Command::Transfer { from: any, to, amount_minor }
                }
            };
            if let Ok(Outcome::Authorized { hold, .. }) = engine.run(command) {
                holds.push(hold);
            }
        }
        // What is due is applied eagerly now, so that the state (what the stream shows)
        // is what a read shows; what commands applied lazily before stays theirs.
        engine.run_due_epochs().unwrap();
        // Reopened, the log replays to the same state, lazy changes checked like outcomes.
        drop(engine);
        let engine = Engine::open(config).unwrap();
        let ledger = rebuilt_from(&engine);
        let held = ledger.held();
        for (account, _) in &accounts {
            let Ok(Outcome::BalanceDetail(detail)) =
                engine.run(Command::ReadBalanceDetail { account: *account })
            else {
                panic!("a detail")
            };
            let rebuilt = (ledger.balances[account], held.get(account).copied().unwrap_or(0));
            assert_eq!(rebuilt, (detail.balance_minor, detail.held_minor), "account {account}");
        }
    }

    #[test]
    fn a_capture_debits_the_account_its_authorization_named() {
        let mut ledger = Ledger::new(1);
        ledger.balances.insert(4, 20_000);
        let id = |index| Cursor { batch: 1, index };
        let authorize = [
            ("kind", "AUTHORIZE"),
            ("card", "4"),
            ("amount", "900"),
            ("outcome", "APPROVED"),
            ("hold", "12"),
            ("account", "4"),
            ("available", "19100"),
        ];
        ledger.apply(0, id(1), entry(&authorize)).unwrap();
        assert_eq!(ledger.balances[&4], 20_000, "a hold does not move the ledger balance");
        let capture = [
            ("kind", "CAPTURE"),
            ("hold", "12"),
            ("amount", "300"),
            ("final", "0"),
            ("outcome", "DONE"),
            ("balance", "19700"),
            ("held", "600"),
        ];
        ledger.apply(0, id(2), entry(&capture)).unwrap();
        assert_eq!(ledger.balances[&4], 19_700);
        let last = [
            ("kind", "CAPTURE"),
            ("hold", "12"),
            ("amount", "600"),
            ("final", "1"),
            ("outcome", "DONE"),
            ("balance", "19100"),
            ("held", "0"),
        ];
        assert_eq!(ledger.held(), BTreeMap::from([(4, 600)]));
        ledger.apply(0, id(3), entry(&last)).unwrap();
        assert_eq!(ledger.balances[&4], 19_100);
        assert!(ledger.shards[0].holds.is_empty(), "a hold holding nothing is forgotten");
        let refund = [
            ("kind", "REFUND"),
            ("card", "4"),
            ("amount", "100"),
            ("outcome", "DONE"),
            ("account", "4"),
            ("balance", "19200"),
        ];
        ledger.apply(0, id(4), entry(&refund)).unwrap();
        assert_eq!(ledger.balances[&4], 19_200);
    }
}
