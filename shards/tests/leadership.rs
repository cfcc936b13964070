//! A cross-shard transfer carried across two changes of leader on a replica (SPEC §14: no
//! acknowledged outcome lost, conservation; §2: a transfer is never half-applied), with the
//! shards of each new leader told to lead in the order the three-node Jepsen run found
//! losing a credit: the source shard took the lead, and resent its unsettled credit, before
//! the target shard had even been told to lead.
//!
//! The shards run as a replica's do (`replicated`: following until `Mail::Lead`), without a
//! store or a writer, so every batch is released at once and each step below is ordered
//! by the shards' mailboxes alone, not by time.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Sender};

use plafond_shards::actor::{self, Mail, Mailboxes, Router, ShardMetrics, ShardSetup};
use plafond_shards::apply::{apply, Env, Input, Reply};
use plafond_shards::calendar::Calendar;
use plafond_shards::command::{AccountKind, Command, Outcome, Request};
use plafond_shards::health::StorageHealth;
use plafond_shards::ids::{local_of, shard_of, AccountId, ShardId};
use plafond_shards::region::Regions;
use plafond_shards::remembered::{Claims, IdsHome};
use plafond_shards::reply::Collector;
use plafond_shards::state::ShardState;
use plafond_shards::store::{Durability, DurableMarks};

const SHARDS: u16 = 2;
/// Every input's time: 2026-06-01, well inside the calendar.
const TS_MS: i64 = 1_780_272_000_000;
/// The transfer the old leader debited and whose credit had not committed when it died.
const OWED_MINOR: u64 = 1_825;
/// A transfer the next leader decided, from the same source shard to the same target.
const LATER_MINOR: u64 = 7_093;

/// One shard's state built by `apply` alone, as the log of an old leader left it.
struct Shard {
    state: ShardState,
    calendar: Calendar,
}

impl Shard {
    /// A shard with the regions' rules adopted, as a leader's shard logs them first.
    fn new(shard: ShardId, regions: &Regions) -> Shard {
        let mut shard = Shard {
            state: ShardState::new(shard, SHARDS, regions.len()),
            calendar: Calendar::new(regions),
        };
        for (index, region) in regions.iter().enumerate() {
            let region_id = index as u16;
            shard
                .apply(regions, Input::SetRules { region: region_id, rules: region.rules.clone() });
            let days = region.hold_expiry_days;
            shard.apply(regions, Input::SetHoldExpiry { region: region_id, days });
        }
        shard
    }

    fn apply(&mut self, regions: &Regions, input: Input) -> plafond_shards::apply::Applied {
        let mut env = Env::new(regions, &mut self.calendar);
        apply(&mut self.state, &mut env, TS_MS, &input)
    }

    fn decide(&mut self, regions: &Regions, command: Command) -> plafond_shards::apply::Applied {
        self.apply(regions, Input::Client(Request::new(command)))
    }

    /// Opens a profile and a checking account in it: the account's id.
    fn open_account(&mut self, regions: &Regions) -> AccountId {
        let opened = self.decide(regions, Command::OpenProfile { region: 0 });
        let Reply::Now(Outcome::ProfileOpened { profile }) = opened.reply else {
            panic!("no profile opened: {:?}", opened.reply);
        };
        let command = Command::OpenAccount { profile, kind: AccountKind::Checking, opening: None };
        let opened = self.decide(regions, command);
        let Reply::Now(Outcome::AccountOpened { account, .. }) = opened.reply else {
            panic!("no account opened: {:?}", opened.reply);
        };
        assert_eq!(shard_of(account, SHARDS), self.state.shard);
        account
    }
}

/// The shards of one replica, following until told to lead.
struct Replica {
    router: Arc<Router>,
    threads: Vec<JoinHandle<()>>,
}

impl Replica {
    /// Starts the shards from `states` (each at log position 0), as a replica starts: following.
    fn start(regions: &Arc<Regions>, states: Vec<ShardState>) -> Replica {
        let (mut ingress, mut internal, mut receivers) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..SHARDS {
            let (ingress_tx, ingress_rx) = bounded(64);
            let (internal_tx, internal_rx) = unbounded();
            ingress.push(ingress_tx);
            internal.push(internal_tx);
            receivers.push(Mailboxes { ingress: ingress_rx, internal: internal_rx });
        }
        let router = Arc::new(Router { ingress, internal });
        let claims = Arc::new(Claims::new(SHARDS));
        let marks = Arc::new(DurableMarks::new(SHARDS));
        let (ready_tx, ready_rx) = unbounded();
        let mut threads = Vec::new();
        for (shard, (mailboxes, state)) in receivers.into_iter().zip(states).enumerate() {
            let setup = ShardSetup {
                shard: shard as ShardId,
                shards: SHARDS,
                regions: regions.clone(),
                durability: Durability::None,
                store: None,
                checkpoint: Some((state, 0)),
                claims: claims.clone(),
                ids: IdsHome::memory(),
                marks: marks.clone(),
                writer: None,
                router: router.clone(),
                metrics: Arc::new(ShardMetrics::default()),
                replicated: true,
                health: Arc::new(StorageHealth::default()),
            };
            let ready = ready_tx.clone();
            threads.push(std::thread::spawn(move || actor::run(setup, mailboxes, ready)));
        }
        for _ in 0..SHARDS {
            let (shard, started) = ready_rx.recv().expect("a shard thread died");
            assert!(started.is_ok(), "shard {shard} did not start");
        }
        Replica { router, threads }
    }

    /// Tells `shard` to lead and waits until it decides: a host that sends the next shard's
    /// `Lead` only now is one whose thread lost its core right after this send.
    fn lead(&self, shard: ShardId) {
        let (done, led) = bounded(1);
        self.router.send_internal(shard, Mail::Lead { done });
        led.recv().expect("the shard took the lead");
    }

    /// The state of `shard` once everything sent to it before has been handled.
    fn state(&self, shard: ShardId) -> ShardState {
        let (sender, receiver): (Sender<ShardState>, _) = bounded(1);
        let inspect = move |state: &ShardState, _position: u64| {
            let _ = sender.send(state.clone());
        };
        self.router.send_internal(shard, Mail::Inspect(Box::new(inspect)));
        receiver.recv().expect("the shard was inspected")
    }

    /// Submits `command` as a client would and waits for its outcome.
    fn execute(&self, shard: ShardId, command: Command) -> Outcome {
        let (collector, ticket) = Collector::new(1);
        let items = vec![(0, Request::new(command))];
        let mail = Mail::Requests { ts_ms: TS_MS, items, collector };
        assert!(self.router.ingress[usize::from(shard)].send(mail).is_ok());
        let mut outcomes = ticket.wait().expect("the command was decided");
        outcomes.pop().expect("one outcome")
    }

    /// Every shard's state, then the shards stopped (the node dies).
    fn kill(self) -> Vec<ShardState> {
        let states = (0..SHARDS).map(|shard| self.state(shard)).collect();
        for shard in 0..SHARDS {
            self.router.send_internal(shard, Mail::Stop);
        }
        for thread in self.threads {
            thread.join().expect("a shard thread panicked");
        }
        states
    }
}

fn balance(states: &[ShardState], account: AccountId) -> u64 {
    let state = &states[usize::from(shard_of(account, SHARDS))];
    state.accounts[local_of(account, SHARDS) as usize].balance_minor
}

#[test]
fn a_credit_resent_before_its_target_shard_leads_is_applied_once_across_two_new_leaders() {
    let regions = Arc::new(Regions::builtin());
    // The old leader: the source shard debited the transfer and logged it in flight; its
    // credit never reached a committed entry of the target shard before the leader died.
    let (mut source, mut target) = (Shard::new(0, &regions), Shard::new(1, &regions));
    let from = source.open_account(&regions);
    let to = target.open_account(&regions);
    let opening_minor = target.state.accounts[local_of(to, SHARDS) as usize].balance_minor;
    let debit = Command::Transfer { from, to, amount_minor: OWED_MINOR };
    let debited = source.decide(&regions, debit);
    assert!(matches!(debited.reply, Reply::Parked { .. }), "{:?}", debited.reply);
    assert_eq!(source.state.pending.len(), 1, "the transfer is in flight");

    // The next leader: its source shard leads first and resends the owed credit, and the
    // target shard is told to lead only after that. Then it decides a later transfer
    // between the same two shards.
    let replica = Replica::start(&regions, vec![source.state, target.state]);
    replica.lead(0);
    replica.lead(1);
    let later = replica.execute(0, Command::Transfer { from, to, amount_minor: LATER_MINOR });
    assert!(matches!(later, Outcome::Done { .. }), "{later:?}");
    let states = replica.kill();

    // The leader after it, whose shards lead in the other order: the source resends what
    // is still unsettled once the target decides.
    let replica = Replica::start(&regions, states);
    replica.lead(1);
    replica.lead(0);
    // The target first: the resent credit (and its settle, sent on its release) come
    // before these inspections in each shard's mailbox.
    let target_state = replica.state(1);
    let source_state = replica.state(0);
    let states = vec![source_state, target_state];
    let _ = replica.kill();

    let owed_settled = !states[0].pending.values().any(|p| p.amount_minor == OWED_MINOR);
    assert!(owed_settled, "the owed transfer never settled: {:?}", states[0].pending);
    assert_eq!(
        balance(&states, to),
        opening_minor + OWED_MINOR + LATER_MINOR,
        "every settled transfer's credit is on the target account, exactly once"
    );
    let (mut balances, mut in_flight) = (0u128, 0i128);
    for state in &states {
        balances += state.totals.balances_minor;
        in_flight += state.totals.in_flight_minor();
    }
    let in_flight_pending: u64 = states[0].pending.values().map(|p| p.amount_minor).sum();
    assert_eq!(in_flight, i128::from(in_flight_pending), "in flight is what is pending");
    let opened: u128 = states.iter().map(|s| s.totals.initial_deposits_minor).sum();
    assert_eq!(balances as i128 + in_flight, opened as i128, "conservation");
}
