//! A shard's card holds (§12): the hold table, apart from the accounts so that an account
//! without holds costs nothing more (`docs/BENCHMARKS.md`, memory per account).
//!
//! A hold reserves money on a checking account: `available = balance - held`. It keeps
//! what it still holds as *pieces*, the amounts by the business day they were authorized
//! on, because an amount released gives ceiling room back only if its day is still inside
//! the card's window. Captures take the oldest pieces first, releases the newest first:
//! what a merchant does not claim is what it authorized last, and giving that back first
//! returns the most room a release may return.
//!
//! Hold ids are dense per shard like account ids: the n-th hold of shard s is
//! `n * shards + s`, so replaying the log gives every hold its id again, and a hold's id
//! routes its commands to its shard.
//!
//! Only [`Holds`]'s methods change the table; they keep its indices (open holds per
//! account, closed holds by account, the shard's total held) in step with it. The
//! indices are not encoded: decoding rebuilds them from the table.
//!
//! Open holds and closed ones are kept apart. An open hold is a [`Hold`] with its pieces;
//! a closed or expired one only answers `HOLD`, a late capture's `HOLD_CLOSED` or
//! `HOLD_EXPIRED` and the day it is forgotten, so it is kept as a [`ClosedHold`] of 32
//! bytes in a map of its own. The maps every authorization and capture change then hold
//! only the open holds (a few thousand in the two-message flow, where a hold closes
//! moments after it is placed), and a closed hold goes into its map at the right edge
//! (sequence numbers grow), instead of every hold ever placed in the last fortnight
//! sitting in the maps every command walks (`docs/BENCHMARKS.md` §9).
//!
//! The table and its indices are persistent maps (`imbl`'s B-trees): a clone shares
//! every node and costs O(1), and a change copies only the path it touches while the
//! node is shared. A checkpoint's capture clones them at its instant, so it pauses the
//! shard no longer with 2M holds than with none (`docs/DECISIONS.md`, card holds).

use std::collections::BTreeMap;

use imbl::{OrdMap, Vector};

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use crate::calendar::Day;
use crate::command::RegionId;
use crate::window::Window;

pub use crate::limits::{
    HOLDS_PER_ACCOUNT_MAX, HOLDS_PER_SHARD_MAX, HOLD_EXPIRY_DAYS_DEFAULT, HOLD_EXPIRY_DAYS_MAX,
    HOLD_EXPIRY_DAYS_MIN, HOLD_KEPT_DAYS, HOLD_PIECES_MAX,
};

/// Where a hold is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum HoldStatus {
    /// It holds money (or may be incremented, captured or voided).
    Pending,
    /// Captured in full, finally captured, or voided: it holds nothing and takes nothing.
    Closed,
    /// It reached its expiry day open: what it held was released.
    Expired,
}

impl HoldStatus {
    /// The upper-case word clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Pending => "PENDING",
            HoldStatus::Closed => "CLOSED",
            HoldStatus::Expired => "EXPIRED",
        }
    }
}

/// Part of what a hold holds, by the business day it was authorized on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Piece {
    /// The business day it was authorized on (and counted in the card's window).
    pub day: Day,
    /// The amount still held of it, in minor units; never 0 in a table.
    pub amount_minor: u64,
}

/// One hold.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Hold {
    /// Local index of the checking account whose money it holds (the card's).
    pub account: u32,
    /// Pending, closed or expired.
    pub status: HoldStatus,
    /// The business day of its authorization.
    pub business_day: Day,
    /// It expires at the roll of this business day if still open.
    pub expires_day: Day,
    /// Everything authorized on it (the authorization and its increments).
    pub authorized_minor: u64,
    /// What captures debited from it.
    pub captured_minor: u64,
    /// What voids, a final capture's rest and expiry released.
    pub released_minor: u64,
    /// What it still holds, oldest day first; empty once it is closed or expired.
    pub pieces: Vec<Piece>,
}

impl Hold {
    /// What it still holds: `authorized - captured - released`.
    pub fn held_minor(&self) -> u64 {
        // Pieces are each at most a balance and at most HOLD_PIECES_MAX of them; their sum
        // is a part of one account's balance, which is a u64.
        self.pieces.iter().map(|piece| piece.amount_minor).sum()
    }

    /// The business day from whose roll on the hold is forgotten (`UNKNOWN_HOLD`).
    pub fn forgotten_day(&self) -> Day {
        self.expires_day.saturating_add(HOLD_KEPT_DAYS)
    }

    /// Whether it is still open at business day `day` (not expired by then).
    pub fn open_on(&self, day: Day) -> bool {
        self.status == HoldStatus::Pending && day < self.expires_day
    }

    fn add(&mut self, day: Day, amount_minor: u64) {
        match self.pieces.last_mut() {
            Some(last) if last.day == day => last.amount_minor += amount_minor,
            _ => self.pieces.push(Piece { day, amount_minor }),
        }
        // Pieces of days before the window no longer give room back: one piece holds them.
        let window_start = day.saturating_sub(crate::window::WINDOW_DAYS as Day - 1);
        while self.pieces.len() >= 2 && self.pieces[1].day < window_start {
            let second = self.pieces.remove(1);
            self.pieces[0].amount_minor += second.amount_minor;
        }
        debug_assert!(self.pieces.len() <= HOLD_PIECES_MAX);
    }

    /// Takes `amount_minor` (at most what it holds) from the oldest pieces.
    fn take_oldest(&mut self, mut amount_minor: u64) {
        while amount_minor > 0 {
            let Some(first) = self.pieces.first_mut() else { return };
            let taken = first.amount_minor.min(amount_minor);
            first.amount_minor -= taken;
            amount_minor -= taken;
            if first.amount_minor == 0 {
                self.pieces.remove(0);
            }
        }
    }

    /// Releases `amount_minor` (at most what it holds) from the newest pieces, giving the
    /// card's window back what of it is still inside the window.
    fn release_newest(&mut self, mut amount_minor: u64, mut window: Option<&mut Window>) {
        self.released_minor += amount_minor;
        while amount_minor > 0 {
            let Some(last) = self.pieces.last_mut() else { return };
            let taken = last.amount_minor.min(amount_minor);
            if let Some(window) = window.as_deref_mut() {
                window.release(last.day, taken);
            }
            last.amount_minor -= taken;
            amount_minor -= taken;
            if last.amount_minor == 0 {
                self.pieces.pop();
            }
        }
    }

    /// Expires it if open and due at `day`: releases what it holds. Returns what it
    /// released.
    pub fn expire_if_due(&mut self, day: Day, window: Option<&mut Window>) -> u64 {
        if self.status != HoldStatus::Pending || day < self.expires_day {
            return 0;
        }
        let held_minor = self.held_minor();
        self.release_newest(held_minor, window);
        self.status = HoldStatus::Expired;
        held_minor
    }
}

/// A closed or expired hold, as long as it is remembered: what `HOLD` shows of it and
/// what a late command on it is told. It holds nothing, so what it released is what was
/// authorized and not captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClosedHold {
    /// Local index of the checking account whose money it held.
    pub account: u32,
    /// Closed or expired (never pending).
    pub status: HoldStatus,
    /// The business day of its authorization.
    pub business_day: Day,
    /// The business day it expired at, or would have.
    pub expires_day: Day,
    /// Everything authorized on it.
    pub authorized_minor: u64,
    /// What captures debited from it.
    pub captured_minor: u64,
}

impl ClosedHold {
    /// What voids, a final capture's rest and expiry released: the rest of it.
    pub fn released_minor(&self) -> u64 {
        // Equal or more: a closed hold's amounts add up (`ClosedHold::of`, the check).
        self.authorized_minor.saturating_sub(self.captured_minor)
    }

    /// The hold as a [`Hold`] holding nothing (no allocation: no pieces).
    pub fn to_hold(&self) -> Hold {
        Hold {
            account: self.account,
            status: self.status,
            business_day: self.business_day,
            expires_day: self.expires_day,
            authorized_minor: self.authorized_minor,
            captured_minor: self.captured_minor,
            released_minor: self.released_minor(),
            pieces: Vec::new(),
        }
    }

    /// A closed [`Hold`] as kept, or `None` if it still holds money or is pending.
    pub fn of(hold: &Hold) -> Option<ClosedHold> {
        let closed = hold.status != HoldStatus::Pending && hold.pieces.is_empty();
        let adds_up =
            hold.captured_minor.checked_add(hold.released_minor) == Some(hold.authorized_minor);
        (closed && adds_up).then(|| ClosedHold::kept_of(hold))
    }

    /// What a closed hold keeps of `hold`, unchecked: for a hold this table has just
    /// closed itself (its amounts add up by construction; `of` checks a decoded one).
    fn kept_of(hold: &Hold) -> ClosedHold {
        ClosedHold {
            account: hold.account,
            status: hold.status,
            business_day: hold.business_day,
            expires_day: hold.expires_day,
            authorized_minor: hold.authorized_minor,
            captured_minor: hold.captured_minor,
        }
    }

    /// The business day from whose roll on the hold is forgotten (`UNKNOWN_HOLD`).
    pub fn forgotten_day(&self) -> Day {
        self.expires_day.saturating_add(HOLD_KEPT_DAYS)
    }
}

/// A remembered hold, open or closed, as [`Holds::get`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldRef<'a> {
    /// Pending: it holds money.
    Open(&'a Hold),
    /// Closed or expired.
    Closed(&'a ClosedHold),
}

impl HoldRef<'_> {
    /// Local index of the account whose money it holds or held.
    pub fn account(self) -> u32 {
        match self {
            HoldRef::Open(hold) => hold.account,
            HoldRef::Closed(hold) => hold.account,
        }
    }

    /// Pending, closed or expired.
    pub fn status(self) -> HoldStatus {
        match self {
            HoldRef::Open(hold) => hold.status,
            HoldRef::Closed(hold) => hold.status,
        }
    }

    /// What it still holds (nothing once closed).
    pub fn held_minor(self) -> u64 {
        match self {
            HoldRef::Open(hold) => hold.held_minor(),
            HoldRef::Closed(_) => 0,
        }
    }

    /// The business day from whose roll on it is forgotten.
    pub fn forgotten_day(self) -> Day {
        match self {
            HoldRef::Open(hold) => hold.forgotten_day(),
            HoldRef::Closed(hold) => hold.forgotten_day(),
        }
    }

    /// A copy of it as a [`Hold`].
    pub fn to_hold(self) -> Hold {
        match self {
            HoldRef::Open(hold) => hold.clone(),
            HoldRef::Closed(hold) => hold.to_hold(),
        }
    }
}

/// The open holds of one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenHolds {
    /// What they hold together.
    pub held_minor: u64,
    /// Their sequence numbers, oldest first (at most [`HOLDS_PER_ACCOUNT_MAX`]).
    pub holds: Vec<u64>,
    /// The earliest expiry day among them: before it, a command has nothing to expire.
    pub next_expiry_day: Day,
}

/// The hold table of one shard, its totals and its regions' expiry rule.
#[derive(Clone, Debug, Default)]
pub struct Holds {
    /// The open holds, by sequence number (a hold's id is `seq * shards + shard`).
    table: OrdMap<u64, Hold>,
    /// The closed and expired holds still remembered, by sequence number.
    closed: OrdMap<u64, ClosedHold>,
    /// The sequence number of the next hold.
    next_seq: u64,
    /// Each region's `hold_expiry_days` as of the latest `Input::SetHoldExpiry`; a region
    /// without an entry uses [`HOLD_EXPIRY_DAYS_DEFAULT`].
    expiry_days: Vec<u16>,
    /// Debited by captures (§2).
    captured_minor: u128,
    /// Credited by card refunds (§2).
    refunded_minor: u128,
    // Indices, rebuilt from the table when decoded.
    /// Accounts with open holds.
    open: OrdMap<u32, OpenHolds>,
    /// The closed holds (seq, account) by account block and day forgotten: the epoch
    /// finds a chunk's holds to forget with it, walking only those due. A block is 1 <<
    /// [`ACCOUNT_BLOCK_BITS`] accounts; a hold closing is appended to its list (a
    /// persistent vector: a push copies at most the shared tail after a capture), in a
    /// map of a few thousand lists, where a set keyed by account would copy the path to a
    /// random leaf of millions at every close. The order within a list is the order of
    /// closing and means nothing. Open holds are found by account in `open`.
    closed_by_block: OrdMap<(u32, Day), Vector<(u64, u32)>>,
    /// What the open holds hold together.
    held_minor: u128,
}

impl PartialEq for Holds {
    /// The encoded parts only: the indices follow from them.
    fn eq(&self, other: &Holds) -> bool {
        self.table == other.table
            && self.closed == other.closed
            && self.next_seq == other.next_seq
            && self.expiry_days == other.expiry_days
            && self.captured_minor == other.captured_minor
            && self.refunded_minor == other.refunded_minor
    }
}

impl Eq for Holds {}

/// Every remembered hold in sequence order, open and closed merged: what the encoding
/// writes and the state's check walks.
pub struct Remembered<'a> {
    open:
        std::iter::Peekable<imbl::ordmap::Iter<'a, u64, Hold, imbl::shared_ptr::DefaultSharedPtr>>,
    closed: std::iter::Peekable<
        imbl::ordmap::Iter<'a, u64, ClosedHold, imbl::shared_ptr::DefaultSharedPtr>,
    >,
}

impl<'a> Iterator for Remembered<'a> {
    type Item = (u64, HoldRef<'a>);

    fn next(&mut self) -> Option<(u64, HoldRef<'a>)> {
        let open_first = match (self.open.peek(), self.closed.peek()) {
            (Some((open, _)), Some((closed, _))) => open < closed,
            (open, _) => open.is_some(),
        };
        if open_first {
            self.open.next().map(|(&seq, hold)| (seq, HoldRef::Open(hold)))
        } else {
            self.closed.next().map(|(&seq, hold)| (seq, HoldRef::Closed(hold)))
        }
    }
}

impl Holds {
    /// A table from its encoded parts (every remembered hold, by sequence number), its
    /// indices built. `None` if a closed hold's amounts do not add up or it still holds
    /// money (a file no engine wrote).
    pub fn from_parts(
        holds: impl IntoIterator<Item = (u64, Hold)>,
        next_seq: u64,
        expiry_days: Vec<u16>,
        captured_minor: u128,
        refunded_minor: u128,
    ) -> Option<Holds> {
        let mut table = OrdMap::new();
        let mut closed = OrdMap::new();
        for (seq, hold) in holds {
            if hold.status == HoldStatus::Pending {
                table.insert(seq, hold);
            } else {
                closed.insert(seq, ClosedHold::of(&hold)?);
            }
        }
        let mut holds = Holds {
            table,
            closed,
            next_seq,
            expiry_days,
            captured_minor,
            refunded_minor,
            ..Holds::default()
        };
        holds.rebuild_indices();
        Some(holds)
    }

    fn rebuild_indices(&mut self) {
        self.open.clear();
        self.closed_by_block.clear();
        self.held_minor = 0;
        for (&seq, hold) in &self.closed {
            index_closed(&mut self.closed_by_block, seq, hold);
        }
        for (&seq, hold) in &self.table {
            let open = self.open.entry(hold.account).or_insert_with(|| OpenHolds {
                next_expiry_day: hold.expires_day,
                ..OpenHolds::default()
            });
            let held_minor = hold.held_minor();
            open.held_minor = open.held_minor.saturating_add(held_minor);
            open.holds.push(seq);
            open.next_expiry_day = open.next_expiry_day.min(hold.expires_day);
            self.held_minor = self.held_minor.saturating_add(u128::from(held_minor));
        }
    }

    /// Whether the indices are those the table gives, and every hold is in the map of
    /// its status (checked by `ShardState::check`).
    pub fn indices_agree(&self) -> bool {
        let mut rebuilt = self.clone();
        rebuilt.rebuild_indices();
        rebuilt.open == self.open
            && forget_entries(&rebuilt) == forget_entries(self)
            && rebuilt.held_minor == self.held_minor
            && self.table.values().all(|hold| hold.status == HoldStatus::Pending)
            && self.closed.values().all(|hold| hold.status != HoldStatus::Pending)
            && self.table.keys().all(|seq| !self.closed.contains_key(seq))
    }

    /// Whether `other` shares every map of this one, root and all: a clone since which
    /// neither changed. What a capture costs follows from it.
    #[cfg(test)]
    fn shares_with(&self, other: &Holds) -> bool {
        self.table.ptr_eq(&other.table)
            && self.closed.ptr_eq(&other.closed)
            && self.open.ptr_eq(&other.open)
            && self.closed_by_block.ptr_eq(&other.closed_by_block)
    }

    /// Every remembered hold, open or closed, by sequence number.
    pub fn iter(&self) -> Remembered<'_> {
        Remembered { open: self.table.iter().peekable(), closed: self.closed.iter().peekable() }
    }

    /// The hold with sequence number `seq`, if remembered.
    pub fn get(&self, seq: u64) -> Option<HoldRef<'_>> {
        match self.table.get(&seq) {
            Some(hold) => Some(HoldRef::Open(hold)),
            None => self.closed.get(&seq).map(HoldRef::Closed),
        }
    }

    /// The open hold with sequence number `seq`, if it is one.
    pub fn get_open(&self, seq: u64) -> Option<&Hold> {
        self.table.get(&seq)
    }

    /// The sequence number the next hold gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Each region's expiry rule as set (see [`Holds::expiry_days_of`]).
    pub fn expiry_days(&self) -> &[u16] {
        &self.expiry_days
    }

    /// `hold_expiry_days` of `region`.
    pub fn expiry_days_of(&self, region: RegionId) -> u16 {
        self.expiry_days.get(usize::from(region)).copied().unwrap_or(HOLD_EXPIRY_DAYS_DEFAULT)
    }

    /// Sets `hold_expiry_days` of `region` (for holds authorized from now on).
    pub fn set_expiry_days(&mut self, region: RegionId, days: u16) {
        let index = usize::from(region);
        if self.expiry_days.len() <= index {
            self.expiry_days.resize(index + 1, HOLD_EXPIRY_DAYS_DEFAULT);
        }
        self.expiry_days[index] = days;
    }

    /// Debited by captures.
    pub fn captured_minor(&self) -> u128 {
        self.captured_minor
    }

    /// Credited by card refunds.
    pub fn refunded_minor(&self) -> u128 {
        self.refunded_minor
    }

    /// Counts a refund credited (the balance is the caller's).
    pub fn record_refund(&mut self, amount_minor: u64) {
        self.refunded_minor += u128::from(amount_minor);
    }

    /// What every open hold of the shard holds together.
    pub fn held_minor(&self) -> u128 {
        self.held_minor
    }

    /// The accounts with open holds, and those holds.
    pub fn open(&self) -> &OrdMap<u32, OpenHolds> {
        &self.open
    }

    /// The open holds of account `local`, if it has any.
    pub fn open_of(&self, local: u32) -> Option<&OpenHolds> {
        self.open.get(&local)
    }

    /// What the open holds of account `local` hold.
    pub fn held_of(&self, local: u32) -> u64 {
        self.open.get(&local).map_or(0, |open| open.held_minor)
    }

    /// How many holds are remembered (open or closed).
    pub fn len(&self) -> usize {
        self.table.len() + self.closed.len()
    }

    /// How many of them are open.
    pub fn open_len(&self) -> usize {
        self.table.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty() && self.closed.is_empty()
    }

    /// Places a new hold of `amount_minor` on account `local` on business day `day`,
    /// expiring at the roll of `expires_day`. The caller checked the limits and the money.
    pub fn place(&mut self, local: u32, day: Day, expires_day: Day, amount_minor: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let hold = Hold {
            account: local,
            status: HoldStatus::Pending,
            business_day: day,
            expires_day,
            authorized_minor: amount_minor,
            captured_minor: 0,
            released_minor: 0,
            pieces: vec![Piece { day, amount_minor }],
        };
        self.table.insert(seq, hold);
        let open = self
            .open
            .entry(local)
            .or_insert_with(|| OpenHolds { next_expiry_day: expires_day, ..OpenHolds::default() });
        open.holds.push(seq);
        open.held_minor += amount_minor;
        open.next_expiry_day = open.next_expiry_day.min(expires_day);
        self.held_minor += u128::from(amount_minor);
        seq
    }

    /// Adds `amount_minor` authorized on `day` to open hold `seq`. The caller checked it
    /// is open and that `authorized_minor` does not overflow.
    pub fn increment(&mut self, seq: u64, day: Day, amount_minor: u64) {
        let Some(hold) = self.table.get_mut(&seq) else { return };
        hold.authorized_minor += amount_minor;
        hold.add(day, amount_minor);
        if let Some(open) = self.open.get_mut(&hold.account) {
            open.held_minor += amount_minor;
        }
        self.held_minor += u128::from(amount_minor);
    }

    /// Captures `amount_minor` (at most what it holds) of open hold `seq`; a `last` capture
    /// also releases the rest. Closes the hold when it holds nothing more. The caller
    /// debits the balance.
    pub fn capture(
        &mut self,
        seq: u64,
        amount_minor: u64,
        last: bool,
        window: Option<&mut Window>,
    ) {
        self.change(seq, |hold| {
            hold.take_oldest(amount_minor);
            hold.captured_minor += amount_minor;
            if last {
                let rest_minor = hold.held_minor();
                hold.release_newest(rest_minor, window);
            }
        });
        self.captured_minor += u128::from(amount_minor);
    }

    /// Releases `amount_minor` (at most what it holds) of open hold `seq` (a void);
    /// closes the hold when it holds nothing more.
    pub fn void(&mut self, seq: u64, amount_minor: u64, window: Option<&mut Window>) {
        self.change(seq, |hold| hold.release_newest(amount_minor, window));
    }

    /// Expires the open holds of account `local` due at `day`, releasing what they hold.
    /// A no-op before the account's earliest expiry day, and when done already.
    /// `expired` hears each hold expired: its sequence number and what it released.
    pub fn expire_due(
        &mut self,
        local: u32,
        day: Day,
        mut window: Option<&mut Window>,
        mut expired: impl FnMut(u64, u64),
    ) {
        let Some(open) = self.open.get(&local) else { return };
        if day < open.next_expiry_day {
            return;
        }
        let due: Vec<u64> = open
            .holds
            .iter()
            .copied()
            .filter(|seq| self.table.get(seq).is_some_and(|hold| hold.expires_day <= day))
            .collect();
        for seq in due {
            self.change(seq, |hold| expired(seq, hold.expire_if_due(day, window.as_deref_mut())));
        }
    }

    /// The end of the first accounts of `start .. end` whose open holds number at most
    /// `holds_max` together (at least one account more than `start`, whose holds are at
    /// most [`HOLDS_PER_ACCOUNT_MAX`]): where an epoch's chunk is cut so that what one roll
    /// logs stays bounded.
    pub fn open_holds_cut(&self, start: u32, end: u32, holds_max: usize) -> u32 {
        let mut holds = 0;
        for (&local, open) in self.open.range(start..end) {
            holds += open.holds.len();
            if holds > holds_max {
                return local.max(start + 1);
            }
        }
        end
    }

    /// Applies `change` to open hold `seq`, closes it if that left it holding nothing, and
    /// brings the indices in step: a hold no longer pending moves to the closed holds.
    /// The hold is taken out of the open map and put back only if it stays open, so a
    /// change that closes it (a final capture, a void of all, an expiry) walks the map once.
    fn change(&mut self, seq: u64, change: impl FnOnce(&mut Hold)) {
        let Some(mut hold) = self.table.remove(&seq) else { return };
        let before_minor = hold.held_minor();
        change(&mut hold);
        let after_minor = hold.held_minor();
        if after_minor == 0 && hold.status == HoldStatus::Pending {
            hold.status = HoldStatus::Closed;
        }
        let account = hold.account;
        let released_minor = before_minor - after_minor;
        self.held_minor -= u128::from(released_minor);
        if hold.status == HoldStatus::Pending {
            self.table.insert(seq, hold);
            if let Some(open) = self.open.get_mut(&account) {
                open.held_minor -= released_minor;
            }
            return;
        }
        let closed = ClosedHold::kept_of(&hold);
        index_closed(&mut self.closed_by_block, seq, &closed);
        self.closed.insert(seq, closed);
        let Some(open) = self.open.get_mut(&account) else { return };
        open.held_minor -= released_minor;
        open.holds.retain(|&open_seq| open_seq != seq);
        if open.holds.is_empty() {
            self.open.remove(&account);
            return;
        }
        let table = &self.table;
        open.next_expiry_day = open
            .holds
            .iter()
            .filter_map(|seq| table.get(seq).map(|hold| hold.expires_day))
            .min()
            .unwrap_or(Day::MAX);
    }

    /// The open holds of accounts `start .. end`, for an epoch's chunk.
    pub fn accounts_in(&self, start: u32, end: u32) -> Vec<u32> {
        self.open.range(start..end).map(|(&local, _)| local).collect()
    }

    /// Forgets the closed holds of accounts `start .. end` past their keeping at business
    /// day `day` (their day forgotten is `day` or before) whose account `in_region` says
    /// the roll is for.
    pub fn forget(
        &mut self,
        start: u32,
        end: u32,
        day: Day,
        mut in_region: impl FnMut(u32) -> bool,
    ) {
        if start >= end {
            return;
        }
        for block in start >> ACCOUNT_BLOCK_BITS..=(end - 1) >> ACCOUNT_BLOCK_BITS {
            let due: Vec<(u32, Day)> = self
                .closed_by_block
                .range((block, Day::MIN)..=(block, day))
                .map(|(&key, _)| key)
                .collect();
            for key in due {
                let Some(list) = self.closed_by_block.get(&key) else { continue };
                let mut forgotten = false;
                let mut kept = Vector::new();
                for &(seq, account) in list {
                    if (start..end).contains(&account) && in_region(account) {
                        self.closed.remove(&seq);
                        forgotten = true;
                    } else {
                        kept.push_back((seq, account));
                    }
                }
                if !forgotten {
                    continue;
                }
                if kept.is_empty() {
                    self.closed_by_block.remove(&key);
                } else {
                    self.closed_by_block.insert(key, kept);
                }
            }
        }
    }
}

/// How many accounts (as a power of two) share a block of `Holds::closed_by_block`:
/// 1,024, the fewest an epoch's chunk covers, so that a chunk walks at most its own
/// blocks and parts of two more.
const ACCOUNT_BLOCK_BITS: u32 = 10;

/// Notes closed hold `seq` in `Holds::closed_by_block`.
fn index_closed(
    by_block: &mut OrdMap<(u32, Day), Vector<(u64, u32)>>,
    seq: u64,
    hold: &ClosedHold,
) {
    let key = (hold.account >> ACCOUNT_BLOCK_BITS, hold.forgotten_day());
    by_block.entry(key).or_default().push_back((seq, hold.account));
}

/// What `Holds::closed_by_block` holds, whatever the order of its lists.
fn forget_entries(holds: &Holds) -> Vec<(u32, Day, u64, u32)> {
    let mut entries: Vec<(u32, Day, u64, u32)> = holds
        .closed_by_block
        .iter()
        .flat_map(|(&(block, day), list)| list.iter().map(move |&(seq, a)| (block, day, seq, a)))
        .collect();
    entries.sort_unstable();
    entries
}

impl Encode for Holds {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        // As bincode encodes a `BTreeMap<u64, Hold>` of every remembered hold (format 5
        // was written from one): the length, then each entry in key order, open and
        // closed merged, a closed hold as the `Hold` holding nothing it stands for.
        (self.len() as u64).encode(encoder)?;
        for (seq, hold) in self.iter() {
            seq.encode(encoder)?;
            match hold {
                HoldRef::Open(hold) => hold.encode(encoder)?,
                HoldRef::Closed(hold) => hold.to_hold().encode(encoder)?,
            }
        }
        self.next_seq.encode(encoder)?;
        self.expiry_days.encode(encoder)?;
        self.captured_minor.encode(encoder)?;
        self.refunded_minor.encode(encoder)
    }
}

impl<Context> Decode<Context> for Holds {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Holds, DecodeError> {
        // Decoded as the `BTreeMap` it was encoded as (its length claimed against the
        // decoder's limit), then moved into the persistent maps.
        let table = BTreeMap::<u64, Hold>::decode(decoder)?;
        let next_seq = u64::decode(decoder)?;
        let expiry_days = Vec::decode(decoder)?;
        let captured_minor = u128::decode(decoder)?;
        let refunded_minor = u128::decode(decoder)?;
        Holds::from_parts(table, next_seq, expiry_days, captured_minor, refunded_minor)
            .ok_or(DecodeError::Other("a closed hold that still holds money or does not add up"))
    }
}

bincode::impl_borrow_decode!(Holds);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ShardState;

    #[test]
    fn a_capture_shares_the_hold_table_and_a_later_change_leaves_it_as_captured() {
        const HOLDS: u32 = 200_000;
        let mut state = ShardState::new(0, 1, 1);
        for account in 0..HOLDS {
            state.holds.place(account, 10, 17, 100);
        }
        let capture = state.begin_capture();
        let Ok(captured) = state.finish_capture(capture) else {
            panic!("a state without accounts is captured at once");
        };
        // Nothing was copied: the capture holds the same roots, whatever the hold count.
        assert!(captured.holds.shares_with(&state.holds), "the capture copied the holds");
        assert_eq!(captured.holds, state.holds);

        state.holds.void(0, 100, None);
        assert!(!captured.holds.shares_with(&state.holds));
        assert_eq!(state.holds.get(0).map(|hold| hold.status()), Some(HoldStatus::Closed));
        assert_eq!(captured.holds.get(0).map(|hold| hold.status()), Some(HoldStatus::Pending));
        assert_eq!(state.holds.held_minor(), u128::from(HOLDS - 1) * 100);
        assert_eq!(captured.holds.held_minor(), u128::from(HOLDS) * 100);
        assert!(captured.holds.open_of(0).is_some() && state.holds.open_of(0).is_none());
        assert!(captured.holds.indices_agree() && state.holds.indices_agree());
    }

    #[test]
    fn captures_take_the_oldest_pieces_and_releases_the_newest() {
        let mut window = Window::new(100);
        let mut holds = Holds::default();
        window.record(100);
        let seq = holds.place(3, 100, 107, 100);
        window.roll_to(104);
        window.record(50);
        holds.increment(seq, 104, 50);
        assert_eq!(holds.held_of(3), 150);
        window.roll_to(108);
        // Day 100 left the window [102, 108]; day 104 is inside it.
        holds.capture(seq, 120, true, Some(&mut window));
        let hold = holds.get(seq).unwrap().to_hold();
        assert_eq!((hold.captured_minor, hold.released_minor), (120, 30));
        assert_eq!(hold.status, HoldStatus::Closed);
        assert_eq!(window.spent_minor(), 20, "the 30 released were day 104's");
        assert_eq!(holds.held_of(3), 0);
        assert!(holds.open_of(3).is_none());
        assert!(holds.indices_agree());
    }

    #[test]
    fn a_roll_is_cut_where_the_open_holds_pass_the_bound() {
        let mut holds = Holds::default();
        // Accounts 2 and 5 have two open holds each, account 9 one.
        for account in [2, 2, 5, 5, 9] {
            holds.place(account, 10, 17, 1);
        }
        assert_eq!(holds.open_holds_cut(0, 16, 5), 16, "all five fit");
        assert_eq!(holds.open_holds_cut(0, 16, 4), 9, "account 9 would be the fifth");
        assert_eq!(holds.open_holds_cut(0, 16, 3), 5);
        assert_eq!(holds.open_holds_cut(5, 16, 1), 6, "at least one account moves on");
        assert_eq!(holds.open_holds_cut(10, 16, 0), 16, "no holds there");
    }

    #[test]
    fn expiry_is_lazy_idempotent_and_keeps_the_indices() {
        let mut holds = Holds::default();
        let first = holds.place(1, 10, 17, 40);
        let second = holds.place(1, 12, 19, 60);
        let mut expired = Vec::new();
        holds.expire_due(1, 16, None, |seq, released| expired.push((seq, released)));
        assert_eq!(holds.held_of(1), 100);
        holds.expire_due(1, 17, None, |seq, released| expired.push((seq, released)));
        holds.expire_due(1, 17, None, |seq, released| expired.push((seq, released)));
        assert_eq!(expired, [(first, 40)], "each expiry told once, with what it released");
        assert_eq!(holds.get(first).unwrap().status(), HoldStatus::Expired);
        assert_eq!(holds.get(first).unwrap().to_hold().released_minor, 40);
        assert_eq!(holds.held_of(1), 60);
        assert_eq!(holds.open_of(1).unwrap().next_expiry_day, 19);
        assert_eq!(holds.get(second).unwrap().status(), HoldStatus::Pending);
        assert_eq!(holds.held_minor(), 60);
        assert!(holds.indices_agree());
        let encoded = bincode::encode_to_vec(&holds, bincode::config::standard()).unwrap();
        // The bytes format 5 wrote from a `BTreeMap` table, field by field.
        let table: BTreeMap<u64, Hold> =
            holds.iter().map(|(seq, hold)| (seq, hold.to_hold())).collect();
        let parts = (
            table,
            holds.next_seq(),
            holds.expiry_days().to_vec(),
            holds.captured_minor(),
            holds.refunded_minor(),
        );
        assert_eq!(encoded, bincode::encode_to_vec(&parts, bincode::config::standard()).unwrap());
        let (decoded, _): (Holds, usize) =
            bincode::decode_from_slice(&encoded, bincode::config::standard()).unwrap();
        assert_eq!(decoded, holds);
        assert!(decoded.indices_agree() && decoded.held_of(1) == 60);
    }

    #[test]
    fn pieces_before_the_window_merge_into_one() {
        let mut holds = Holds::default();
        let seq = holds.place(0, 0, 45, 1);
        for day in 1..40 {
            holds.increment(seq, day, 1);
            assert!(holds.get_open(seq).unwrap().pieces.len() <= HOLD_PIECES_MAX);
        }
        assert_eq!(holds.held_of(0), 40);
        assert_eq!(holds.get(seq).unwrap().held_minor(), 40);
    }

    #[test]
    fn an_epoch_forgets_only_the_due_closed_holds_of_its_chunk_and_region() {
        let mut holds = Holds::default();
        // Closed on day 10, expiring 17: forgotten from day 24 on; account 1500's from 26.
        let mut seqs = Vec::new();
        for account in [5, 1023, 1024, 2047, 3000] {
            seqs.push((account, holds.place(account, 10, 17, 100)));
        }
        let late = holds.place(1500, 12, 19, 100);
        let open = holds.place(1600, 12, 19, 100);
        for &(_, seq) in &seqs {
            holds.void(seq, 100, None);
        }
        holds.void(late, 100, None);
        assert_eq!((holds.len(), holds.open_len()), (7, 1));
        holds.forget(1000, 2100, 23, |_| true);
        assert_eq!(holds.len(), 7, "none is due before day 24");
        // Account 2047 is another region's: its roll comes apart.
        holds.forget(1000, 2100, 24, |account| account != 2047);
        for (account, seq) in seqs {
            let kept = holds.get(seq).is_some();
            assert_eq!(kept, ![1023, 1024].contains(&account), "account {account}");
        }
        assert_eq!(holds.get(late).map(|hold| hold.status()), Some(HoldStatus::Closed));
        assert_eq!(holds.get(open).map(|hold| hold.status()), Some(HoldStatus::Pending));
        assert!(holds.indices_agree());
        holds.forget(0, 4000, 30, |_| true);
        assert_eq!((holds.len(), holds.open_len()), (1, 1));
        assert!(holds.closed_by_block.is_empty() && holds.indices_agree());
    }

    #[test]
    fn a_closed_hold_still_holding_money_is_refused_when_decoded() {
        let mut hold = Hold {
            account: 0,
            status: HoldStatus::Closed,
            business_day: 10,
            expires_day: 17,
            authorized_minor: 100,
            captured_minor: 60,
            released_minor: 40,
            pieces: Vec::new(),
        };
        let encode = |hold: &Hold| {
            let table = BTreeMap::from([(0u64, hold.clone())]);
            let parts = (table, 1u64, Vec::<u16>::new(), 60u128, 0u128);
            bincode::encode_to_vec(&parts, bincode::config::standard()).unwrap()
        };
        let decode = |bytes: &[u8]| {
            bincode::decode_from_slice::<Holds, _>(bytes, bincode::config::standard())
        };
        let Ok((decoded, _)) = decode(&encode(&hold)) else { panic!("a closed hold decodes") };
        assert_eq!(decoded.get(0).map(|hold| hold.to_hold()), Some(hold.clone()));
        hold.pieces.push(Piece { day: 10, amount_minor: 40 });
        hold.released_minor = 0;
        assert!(decode(&encode(&hold)).is_err(), "closed, yet it holds 40");
    }
}
