//! The UpdateBatchingService (§4) and savings interest (§5) through the engine.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use plafond::{
    AccountKind, Clock, Command, Durability, Engine, EngineConfig, ManualClock, Opening, Outcome,
    Regions,
};

mod support;

const DAY_MS: i64 = 86_400_000;

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn regions(rate_bp: u32) -> Regions {
    Regions::from_toml(&format!(
        "[[region]]\nname = \"eu-west\"\ntime_zone = \"Europe/Paris\"\nroll_time = \"04:00\"\n\
         initial_deposit = 100000\ndefault_card_ceiling = 300000\nsavings_rate_bp = {rate_bp}\n"
    ))
    .unwrap()
}

struct Bank {
    engine: Engine,
    clock: Arc<ManualClock>,
    savings: u64,
    checking: u64,
}

fn bank(config: EngineConfig, opened: &str) -> Bank {
    let clock = Arc::new(ManualClock::new(ms(opened)));
    let engine = Engine::open(config.with_clock(clock.clone()).with_epoch_poll(None)).unwrap();
    let Outcome::ProfileOpened { profile } =
        engine.run(Command::OpenProfile { region: 0 }).unwrap()
    else {
        panic!("profile")
    };
    let open =
        |kind| match engine.run(Command::OpenAccount { profile, kind, opening: None }).unwrap() {
            Outcome::AccountOpened { account, .. } => account,
            other => panic!("{other:?}"),
        };
    let (savings, checking) = (open(AccountKind::Savings), open(AccountKind::Checking));
    // The first epoch sets the baseline from which missed ones are counted.
    engine.run_due_epochs().unwrap();
    Bank { engine, clock, savings, checking }
}

impl Bank {
    fn balance(&self, account: u64) -> u64 {
        match self.engine.run(Command::ReadAccount { account }).unwrap() {
            Outcome::Account(view) => view.balance_minor,
            other => panic!("{other:?}"),
        }
    }

    /// Moves the clock day by day to `until` (noon UTC), running due epochs each day.
    fn days_until(&self, until: &str) {
        let until = ms(until);
        while self.clock.now_ms() + DAY_MS <= until {
            self.clock.advance(DAY_MS);
            self.engine.run_due_epochs().unwrap();
        }
        self.clock.set(until);
        self.engine.run_due_epochs().unwrap();
    }

    fn deposit(&self, amount_minor: u64) {
        let done =
            self.engine.run(Command::Deposit { account: self.savings, amount_minor }).unwrap();
        assert!(matches!(done, Outcome::Done { .. }), "{done:?}");
    }

    fn withdraw(&self, amount_minor: u64) {
        let transfer = Command::Transfer { from: self.savings, to: self.checking, amount_minor };
        assert!(matches!(self.engine.run(transfer).unwrap(), Outcome::Done { .. }));
    }
}

/// The test vector of §5 with epochs run every day: 5_125 posted on 1 January.
#[test]
fn spec_test_vector_with_daily_epochs() {
    let bank = bank(
        EngineConfig::in_memory().with_shards(2).with_regions(regions(600)),
        "2027-02-20T12:00:00Z",
    );
    bank.days_until("2027-08-25T12:00:00Z");
    bank.deposit(10_000);
    bank.days_until("2027-11-29T12:00:00Z");
    bank.withdraw(10_000);
    bank.days_until("2027-12-31T12:00:00Z");
    assert_eq!(bank.balance(bank.savings), 100_000, "nothing is posted before the year ends");
    bank.days_until("2028-01-01T12:00:00Z");
    assert_eq!(bank.balance(bank.savings), 100_000 + 5_125);
    // Running the 1 January epoch again posts nothing more.
    bank.engine.run_epoch("eu-west").unwrap();
    assert_eq!(bank.balance(bank.savings), 105_125);
    assert!(bank.engine.audit().unwrap().holds());
    let status = bank.engine.epoch_status();
    let report = status[0].1.last_report.clone().unwrap();
    assert_eq!(status[0].1.last_day, Some(report.day));
    assert!(report.max_pause <= report.duration);
}

/// Without any epoch, the lazy path gives the same 5_125 when the account is next touched.
#[test]
fn spec_test_vector_lazily() {
    let bank = bank(
        EngineConfig::in_memory().with_shards(3).with_regions(regions(600)),
        "2027-02-20T12:00:00Z",
    );
    bank.clock.set(ms("2027-08-25T12:00:00Z"));
    bank.deposit(10_000);
    bank.clock.set(ms("2027-11-29T12:00:00Z"));
    bank.withdraw(10_000);
    bank.clock.set(ms("2028-01-03T12:00:00Z"));
    bank.deposit(1);
    assert_eq!(bank.balance(bank.savings), 100_000 + 5_125 + 1);
    assert!(bank.engine.audit().unwrap().holds());
}

/// Money credited during half-month k earns from k + 1: the 15th and the 16th differ, and
/// the business day (not the calendar date) decides.
#[test]
fn deposits_and_withdrawals_on_the_15th_and_16th() {
    let year_interest = |event: &str, deposit: bool| {
        let bank = bank(
            EngineConfig::in_memory().with_shards(2).with_regions(regions(600)),
            "2027-01-01T12:00:00Z",
        );
        bank.days_until(event);
        if deposit {
            bank.deposit(50_000);
        } else {
            bank.withdraw(50_000);
        }
        let after_event = bank.balance(bank.savings);
        bank.days_until("2028-01-01T12:00:00Z");
        bank.balance(bank.savings) - after_event
    };
    // Deposit in k0: E_0 = 0, k1..k23 earn on 150_000: 23 × 150_000 × 600 / 240_000.
    assert_eq!(year_interest("2027-01-15T12:00:00Z", true), 8_625);
    // 01:00 in Paris on the 16th is before the 04:00 roll: still business day 15.
    assert_eq!(year_interest("2027-01-16T00:00:00Z", true), 8_625);
    // Deposit in k1: E_1 = 100_000, k2..k23 on 150_000: 3_400_000 × 600 / 240_000.
    assert_eq!(year_interest("2027-01-16T12:00:00Z", true), 8_500);
    // Withdraw in k1: E_1 = 100_000 - 50_000, k2..k23 on 50_000: 1_150_000 × 600 / 240_000.
    assert_eq!(year_interest("2027-01-16T12:00:00Z", false), 2_875);
    // Withdraw in k2 (1 Feb): E_1 = 100_000, E_2 = 50_000, k3..k23 on 50_000.
    assert_eq!(
        year_interest("2027-02-01T12:00:00Z", false),
        (100_000 + 50_000 + 21 * 50_000) * 600 / 240_000
    );
}

/// A rate change applies to the half-months closed after it.
#[test]
fn rate_change_applies_from_the_next_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = |rate| {
        EngineConfig::durable(dir.path())
            .with_durability(Durability::Async)
            .with_shards(2)
            .with_regions(regions(rate))
    };
    let first = bank(config(600), "2027-01-01T12:00:00Z");
    first.days_until("2027-07-01T12:00:00Z");
    let (savings, now) = (first.savings, first.clock.now_ms());
    drop(first);
    let clock = Arc::new(ManualClock::new(now));
    let engine = Engine::open(config(300).with_clock(clock.clone()).with_epoch_poll(None)).unwrap();
    let second = Bank { engine, clock, savings, checking: 0 };
    second.days_until("2028-01-01T12:00:00Z");
    // k1..k11 closed at 600 bp, k12..k23 at 300 bp, all on 100_000.
    let expected = (11 * 100_000 * 600 + 12 * 100_000 * 300) / 240_000;
    assert_eq!(second.balance(savings), 100_000 + expected);
    // The next year starts from zero accrued.
    second.days_until("2029-01-01T12:00:00Z");
    // 24 × 104_250 × 300 / 240_000 = 3_127.5, rounded half to even: 3_128.
    assert_eq!(expected, 4_250);
    assert_eq!(second.balance(savings), 104_250 + 3_128);
}

/// Missed epochs (the engine was down, the clock jumped) run in order on catch-up, and the
/// result equals running each on time.
#[test]
fn catch_up_equals_running_on_time() {
    let on_time =
        bank(EngineConfig::in_memory().with_regions(regions(600)), "2027-03-01T12:00:00Z");
    on_time.days_until("2028-02-01T12:00:00Z");
    let late = bank(EngineConfig::in_memory().with_regions(regions(600)), "2027-03-01T12:00:00Z");
    late.clock.set(ms("2028-02-01T12:00:00Z"));
    let reports = late.engine.run_due_epochs().unwrap();
    assert_eq!(reports.len(), 337, "every missed business day has its epoch");
    assert!(reports.windows(2).all(|pair| pair[0].day + 1 == pair[1].day), "in order");
    assert_eq!(late.balance(late.savings), on_time.balance(on_time.savings));
    assert!(late.balance(late.savings) > 100_000);
    assert!(late.engine.run_due_epochs().unwrap().is_empty(), "nothing is run twice");
}

/// An epoch over a million accounts while payments flow: payments complete during it,
/// and every outcome is what the model says.
#[test]
fn payments_go_on_during_an_epoch_over_a_million_accounts() {
    const ACCOUNTS: u64 = 1_000_000;
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config =
        EngineConfig::in_memory().with_shards(2).with_clock(clock.clone()).with_epoch_poll(None);
    let engine = Arc::new(Engine::open(config).unwrap());
    let opening = Opening::REFERENCE;
    engine.populate(0, ACCOUNTS, opening, |_| {}).unwrap();
    engine.run_due_epochs().unwrap();
    clock.advance(DAY_MS);
    let running = Arc::new(AtomicBool::new(true));
    let paid = Arc::new(AtomicU64::new(0));
    let payer = {
        let (engine, running, paid) = (engine.clone(), running.clone(), paid.clone());
        std::thread::spawn(move || {
            let mut completed = Vec::new();
            let mut card = 0;
            while running.load(Ordering::SeqCst) && card < ACCOUNTS {
                let outcome = engine.run(Command::Pay { card, amount_minor: 2_500 }).unwrap();
                // Every card is fresh: the model approves 2_500 of 20_000 within 10_000.
                assert_eq!(
                    outcome,
                    Outcome::Approved { balance_minor: 17_500, spent_7d_minor: 2_500 }
                );
                completed.push(Instant::now());
                paid.fetch_add(1, Ordering::SeqCst);
                card += 7;
            }
            completed
        })
    };
    // The epoch starts once payments flow, however late the payer thread first runs.
    while paid.load(Ordering::SeqCst) < 100 && !payer.is_finished() {
        std::thread::yield_now();
    }
    let started = Instant::now();
    let report = engine.run_epoch("eu-west").unwrap();
    let ended = Instant::now();
    running.store(false, Ordering::SeqCst);
    let completed = payer.join().unwrap();
    let during = completed.iter().filter(|&&at| at > started && at < ended).count();
    assert_eq!(report.accounts, ACCOUNTS);
    assert!(during > 0, "no payment completed during the {:?} epoch", report.duration);
    assert!(report.max_pause < report.duration, "{report:?}");
    assert!(engine.audit().unwrap().holds());
    eprintln!("epoch over {ACCOUNTS} accounts: {report:?}; {during} payments completed during it");
}

/// A catch-up of three years (the clock jumped) stops at the next chunk when the engine is
/// dropped (SIGTERM in the server), with what completed recorded, and resumes from there
/// after a restart; regions take turns, so neither is left years behind the other.
#[test]
fn a_long_catch_up_stops_on_drop_and_resumes_after_restart() {
    const YEARS_MS: i64 = 3 * 365 * DAY_MS;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(ManualClock::SERVER_START_MS));
    let config = EngineConfig::durable(dir.path())
        .with_durability(Durability::Async)
        .with_shards(2)
        .with_clock(clock.clone())
        .with_epoch_poll(None);
    let engine = Engine::open(config.clone()).unwrap();
    let opening = Opening::REFERENCE;
    engine.populate(0, 1_000, opening, |_| {}).unwrap();
    engine.run_due_epochs().unwrap();
    let baseline: Vec<i32> =
        engine.epoch_status().iter().map(|(_, e)| e.last_day.unwrap()).collect();
    drop(engine);
    clock.advance(YEARS_MS);
    let polled = config.clone().with_epoch_poll(Some(std::time::Duration::from_millis(10)));
    let engine = Engine::open(polled).unwrap();
    let _watchdog = support::watchdog("catch-up stop", std::time::Duration::from_secs(600));
    while engine.epoch_status()[1].1.last_day.unwrap() < baseline[1] + 20 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    drop(engine);
    let engine = Engine::open(config).unwrap();
    let stopped: Vec<i32> =
        engine.epoch_status().iter().map(|(_, e)| e.last_day.unwrap()).collect();
    let today = baseline[0] + (YEARS_MS / DAY_MS) as i32;
    for (region, &day) in stopped.iter().enumerate() {
        assert!(day > baseline[region] + 10, "region {region} took its turns: {stopped:?}");
        assert!(day < today - 100, "the drop stopped the catch-up: {stopped:?}");
    }
    let reports = engine.run_due_epochs().unwrap();
    let after: Vec<i32> = engine.epoch_status().iter().map(|(_, e)| e.last_day.unwrap()).collect();
    assert_eq!(after, vec![today; 2], "the catch-up resumed and completed");
    let resumed = (today - stopped[0]) + (today - stopped[1]);
    assert_eq!(reports.len(), resumed as usize, "from where it stopped, nothing twice");
}
