//! Commands, outcomes and decline reasons: the vocabulary every boundary shares.

use bincode::{Decode, Encode};

use crate::calendar::Day;
use crate::holds::HoldStatus;
use crate::ids::{AccountId, CardId, HoldId, ProfileId};
use crate::money;

pub use crate::limits::COMMAND_ID_BYTES_MAX;

/// A client's idempotency key: 1 to 64 printable ASCII bytes.
///
/// Held inline, not on the heap: every id is cloned into the claims at the door, the
/// shard's unwritten records and its record, so a clone is a copy of 65 bytes and never
/// an allocation freed on another thread (which cost more than the lookups, measured in
/// `docs/BENCHMARKS.md` §7). On the wire and on disk it is encoded exactly as the string
/// it holds.
#[derive(Clone)]
pub struct CommandId {
    len: u8,
    bytes: [u8; COMMAND_ID_BYTES_MAX],
}

impl CommandId {
    /// Checks `text` and wraps it, or says what is wrong with it.
    pub fn new(text: &str) -> Result<CommandId, &'static str> {
        if text.is_empty() || text.len() > COMMAND_ID_BYTES_MAX {
            return Err("a command id has 1 to 64 bytes");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a command id is printable ASCII without spaces");
        }
        let mut bytes = [0; COMMAND_ID_BYTES_MAX];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        // The length was checked against COMMAND_ID_BYTES_MAX (64) above.
        Ok(CommandId { len: text.len() as u8, bytes })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // `new` admits printable ASCII only, which is UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for CommandId {
    fn eq(&self, other: &CommandId) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CommandId {}

impl std::hash::Hash for CommandId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl PartialOrd for CommandId {
    fn partial_cmp(&self, other: &CommandId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for CommandId {
    fn cmp(&self, other: &CommandId) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::fmt::Debug for CommandId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Encode for CommandId {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.as_str().encode(encoder)
    }
}

impl<Context> Decode<Context> for CommandId {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<CommandId, bincode::error::DecodeError> {
        use bincode::de::read::Reader;
        // As a `String` encodes: its length, then its bytes; read into place, and refused
        // unless it is an id `new` would admit (a file is not trusted).
        let len = usize::decode(decoder)?;
        if len == 0 || len > COMMAND_ID_BYTES_MAX {
            return Err(bincode::error::DecodeError::Other("a command id has 1 to 64 bytes"));
        }
        decoder.claim_bytes_read(len)?;
        let mut bytes = [0; COMMAND_ID_BYTES_MAX];
        decoder.reader().read(&mut bytes[..len])?;
        if !bytes[..len].iter().all(u8::is_ascii_graphic) {
            return Err(bincode::error::DecodeError::Other(
                "a command id is printable ASCII without spaces",
            ));
        }
        Ok(CommandId { len: len as u8, bytes })
    }
}

bincode::impl_borrow_decode!(CommandId);

/// Index of a region in the engine's region table.
pub type RegionId = u16;

/// The kind of an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum AccountKind {
    /// A checking account; it has exactly one debit card.
    Checking,
    /// A savings account; it earns interest and has no card.
    Savings,
}

/// Terms that replace the region's rules when opening an account (bulk population).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Opening {
    /// Credited at opening instead of the region's `initial_deposit`.
    pub deposit_minor: u64,
    /// The card's seven-day ceiling instead of the region default (checking only).
    pub ceiling_minor: u64,
}

impl Opening {
    /// The reference population's terms (§11): balance 20_000, ceiling 10_000. Every
    /// benchmark, load generator and `--populate` opens its cards with these, so their
    /// figures compare.
    pub const REFERENCE: Opening = Opening { deposit_minor: 20_000, ceiling_minor: 10_000 };
}

/// A command a client sends. Amounts are minor units.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Command {
    /// Open a profile in a region.
    OpenProfile {
        /// The region whose rules the profile's accounts follow.
        region: RegionId,
    },
    /// Open an account in a profile; a checking account gets its card.
    OpenAccount {
        /// The owning profile; the account is opened on the profile's shard.
        profile: ProfileId,
        /// Checking (with a card) or savings.
        kind: AccountKind,
        /// Terms replacing the region's rules (bulk population); `None` uses the region's.
        opening: Option<Opening>,
    },
    /// A card payment: debit the card's account, count toward the card's window.
    Pay {
        /// The card paying (its id is its checking account's).
        card: CardId,
        /// The amount debited, in minor units.
        amount_minor: u64,
    },
    /// Move money between two accounts, wherever they live.
    Transfer {
        /// The account debited; the command is routed to its shard.
        from: AccountId,
        /// The account credited, possibly on another shard.
        to: AccountId,
        /// The amount moved, in minor units.
        amount_minor: u64,
    },
    /// Credit an account.
    Deposit {
        /// The account credited.
        account: AccountId,
        /// The amount credited, in minor units.
        amount_minor: u64,
    },
    /// Set a card's own seven-day ceiling.
    SetCeiling {
        /// The card changed.
        card: CardId,
        /// The new seven-day ceiling, in minor units.
        ceiling_minor: u64,
    },
    /// Block a card: its payments are declined.
    Block {
        /// The card blocked.
        card: CardId,
    },
    /// Unblock a card.
    Unblock {
        /// The card unblocked.
        card: CardId,
    },
    /// Read an account.
    ReadAccount {
        /// The account read.
        account: AccountId,
    },
    /// Read a card.
    ReadCard {
        /// The card read.
        card: CardId,
    },
    /// Read a profile.
    ReadProfile {
        /// The profile read.
        profile: ProfileId,
    },
    /// Authorize a card payment to be settled later (§12): decided like [`Command::Pay`]
    /// against the account's available money and the card's window, it places a hold
    /// instead of debiting.
    Authorize {
        /// The card authorizing.
        card: CardId,
        /// The amount held, in minor units.
        amount_minor: u64,
    },
    /// Hold more on an open hold, decided like a new authorization on the current day.
    AuthorizeIncrement {
        /// The hold incremented.
        hold: HoldId,
        /// The amount added, in minor units.
        amount_minor: u64,
    },
    /// Debit part of what a hold holds; the rest stays held.
    Capture {
        /// The hold captured.
        hold: HoldId,
        /// The amount debited, at most what the hold holds, in minor units.
        amount_minor: u64,
    },
    /// Debit part of what a hold holds and release the rest: the hold is closed.
    CaptureFinal {
        /// The hold captured.
        hold: HoldId,
        /// The amount debited, at most what the hold holds, in minor units.
        amount_minor: u64,
    },
    /// Release part or all of what a hold holds (the merchant's reversal).
    Void {
        /// The hold voided.
        hold: HoldId,
        /// The amount released, or `None` for all it holds.
        amount_minor: Option<u64>,
    },
    /// Credit a card's account (a merchant's refund), also when the card is blocked; it
    /// gives no ceiling room back.
    Refund {
        /// The card refunded.
        card: CardId,
        /// The amount credited, in minor units.
        amount_minor: u64,
    },
    /// Read a hold.
    ReadHold {
        /// The hold read.
        hold: HoldId,
    },
    /// Read an account's balance, available money and holds.
    ReadBalanceDetail {
        /// The account read.
        account: AccountId,
    },
    /// Read a card's release schedule: when ceiling room comes back.
    ReadReleases {
        /// The card read.
        card: CardId,
    },
}

impl Command {
    /// Whether every amount the command carries is `1 ..= 10^15` (§1).
    pub fn amounts_are_valid(&self) -> bool {
        match *self {
            Command::OpenAccount { opening: Some(opening), .. } => {
                money::amount_is_valid(opening.deposit_minor)
                    && money::amount_is_valid(opening.ceiling_minor)
            }
            _ => self.moved_minor().is_none_or(money::amount_is_valid),
        }
    }

    /// The amount a decline of the command counts as its volume: the payment's, the
    /// transfer's, the deposit's, the new ceiling's, or an opening deposit; 0 otherwise.
    pub fn amount_minor(&self) -> u64 {
        match *self {
            Command::OpenAccount { opening: Some(opening), .. } => opening.deposit_minor,
            _ => self.moved_minor().unwrap_or(0),
        }
    }

    /// The one amount a command moves, holds, releases or sets (a new ceiling), if it
    /// names one; an opening's two amounts are its own case.
    fn moved_minor(&self) -> Option<u64> {
        match *self {
            Command::Pay { amount_minor, .. }
            | Command::Transfer { amount_minor, .. }
            | Command::Deposit { amount_minor, .. }
            | Command::SetCeiling { ceiling_minor: amount_minor, .. }
            | Command::Authorize { amount_minor, .. }
            | Command::AuthorizeIncrement { amount_minor, .. }
            | Command::Capture { amount_minor, .. }
            | Command::CaptureFinal { amount_minor, .. }
            | Command::Void { amount_minor: Some(amount_minor), .. }
            | Command::Refund { amount_minor, .. } => Some(amount_minor),
            _ => None,
        }
    }

    /// The id whose shard decides the command: the profile for an account opening or a
    /// profile read (accounts live with their profile), the card, the source account, the
    /// account, the hold (a hold's id routes like an account's). `None` for a profile
    /// opening, which any shard may take.
    pub fn routing_id(&self) -> Option<u64> {
        match *self {
            Command::OpenProfile { .. } => None,
            Command::OpenAccount { profile: id, .. }
            | Command::ReadProfile { profile: id }
            | Command::Pay { card: id, .. }
            | Command::SetCeiling { card: id, .. }
            | Command::Block { card: id }
            | Command::Unblock { card: id }
            | Command::ReadCard { card: id }
            | Command::Transfer { from: id, .. }
            | Command::Deposit { account: id, .. }
            | Command::ReadAccount { account: id }
            | Command::Authorize { card: id, .. }
            | Command::Refund { card: id, .. }
            | Command::ReadBalanceDetail { account: id }
            | Command::ReadReleases { card: id }
            | Command::AuthorizeIncrement { hold: id, .. }
            | Command::Capture { hold: id, .. }
            | Command::CaptureFinal { hold: id, .. }
            | Command::Void { hold: id, .. }
            | Command::ReadHold { hold: id } => Some(id),
        }
    }

    /// Whether the command only reads.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Command::ReadAccount { .. }
                | Command::ReadCard { .. }
                | Command::ReadProfile { .. }
                | Command::ReadHold { .. }
                | Command::ReadBalanceDetail { .. }
                | Command::ReadReleases { .. }
        )
    }

    /// What kind of command it is, for counters.
    pub fn kind(&self) -> Kind {
        match self {
            Command::OpenProfile { .. } => Kind::OpenProfile,
            Command::OpenAccount { .. } => Kind::OpenAccount,
            Command::Pay { .. } => Kind::Pay,
            Command::Transfer { .. } => Kind::Transfer,
            Command::Deposit { .. } => Kind::Deposit,
            Command::SetCeiling { .. } => Kind::SetCeiling,
            Command::Block { .. } => Kind::Block,
            Command::Unblock { .. } => Kind::Unblock,
            Command::ReadAccount { .. } => Kind::ReadAccount,
            Command::ReadCard { .. } => Kind::ReadCard,
            Command::ReadProfile { .. } => Kind::ReadProfile,
            Command::Authorize { .. } => Kind::Authorize,
            Command::AuthorizeIncrement { .. } => Kind::AuthorizeIncrement,
            Command::Capture { .. } => Kind::Capture,
            Command::CaptureFinal { .. } => Kind::CaptureFinal,
            Command::Void { .. } => Kind::Void,
            Command::Refund { .. } => Kind::Refund,
            Command::ReadHold { .. } => Kind::ReadHold,
            Command::ReadBalanceDetail { .. } => Kind::ReadBalanceDetail,
            Command::ReadReleases { .. } => Kind::ReadReleases,
        }
    }
}

/// The kinds of [`Command`], one per variant, for counting commands by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// [`Command::OpenProfile`].
    OpenProfile,
    /// [`Command::OpenAccount`].
    OpenAccount,
    /// [`Command::Pay`].
    Pay,
    /// [`Command::Transfer`].
    Transfer,
    /// [`Command::Deposit`].
    Deposit,
    /// [`Command::SetCeiling`].
    SetCeiling,
    /// [`Command::Block`].
    Block,
    /// [`Command::Unblock`].
    Unblock,
    /// [`Command::ReadAccount`].
    ReadAccount,
    /// [`Command::ReadCard`].
    ReadCard,
    /// [`Command::ReadProfile`].
    ReadProfile,
    /// [`Command::Authorize`].
    Authorize,
    /// [`Command::AuthorizeIncrement`].
    AuthorizeIncrement,
    /// [`Command::Capture`].
    Capture,
    /// [`Command::CaptureFinal`].
    CaptureFinal,
    /// [`Command::Void`].
    Void,
    /// [`Command::Refund`].
    Refund,
    /// [`Command::ReadHold`].
    ReadHold,
    /// [`Command::ReadBalanceDetail`].
    ReadBalanceDetail,
    /// [`Command::ReadReleases`].
    ReadReleases,
}

impl Kind {
    /// Every kind, in the order of their index.
    pub const ALL: [Kind; 20] = [
        Kind::OpenProfile,
        Kind::OpenAccount,
        Kind::Pay,
        Kind::Transfer,
        Kind::Deposit,
        Kind::SetCeiling,
        Kind::Block,
        Kind::Unblock,
        Kind::ReadAccount,
        Kind::ReadCard,
        Kind::ReadProfile,
        Kind::Authorize,
        Kind::AuthorizeIncrement,
        Kind::Capture,
        Kind::CaptureFinal,
        Kind::Void,
        Kind::Refund,
        Kind::ReadHold,
        Kind::ReadBalanceDetail,
        Kind::ReadReleases,
    ];

    /// The lower-case name metrics label it with.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenProfile => "open_profile",
            Kind::OpenAccount => "open_account",
            Kind::Pay => "pay",
            Kind::Transfer => "transfer",
            Kind::Deposit => "deposit",
            Kind::SetCeiling => "set_ceiling",
            Kind::Block => "block",
            Kind::Unblock => "unblock",
            Kind::ReadAccount => "read_account",
            Kind::ReadCard => "read_card",
            Kind::ReadProfile => "read_profile",
            Kind::Authorize => "authorize",
            Kind::AuthorizeIncrement => "authorize_increment",
            Kind::Capture => "capture",
            Kind::CaptureFinal => "capture_final",
            Kind::Void => "void",
            Kind::Refund => "refund",
            Kind::ReadHold => "read_hold",
            Kind::ReadBalanceDetail => "read_balance_detail",
            Kind::ReadReleases => "read_releases",
        }
    }

    /// Position in [`Kind::ALL`], for counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A command with its optional idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Request {
    /// The command.
    pub command: Command,
    /// Deduplicates retries (§6); reads ignore it.
    pub command_id: Option<CommandId>,
}

impl Request {
    /// A request without an idempotency key.
    pub fn new(command: Command) -> Request {
        Request { command, command_id: None }
    }

    /// A request with an idempotency key.
    pub fn with_id(command: Command, command_id: CommandId) -> Request {
        Request { command, command_id: Some(command_id) }
    }
}

/// Why a command was declined. A credit that would overflow a balance is `InvalidAmount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
#[repr(u8)]
pub enum Reason {
    /// No region has this id.
    UnknownRegion,
    /// No profile has this id.
    UnknownProfile,
    /// No account has this id.
    UnknownAccount,
    /// No card has this id (a savings account's id is not a card).
    UnknownCard,
    /// The card is blocked.
    CardBlocked,
    /// The debited account's balance is below the amount: no overdraft.
    InsufficientFunds,
    /// The payment would take the card's seven-day spending above its ceiling.
    CeilingExceeded,
    /// An amount outside `1 ..= 10^15`, or a credit that would overflow the balance.
    InvalidAmount,
    /// A transfer from an account to itself.
    SameAccount,
    /// The command id was first used with a different command.
    IdempotencyConflict,
    /// The shard holds [`crate::limits::SHARD_ENTRIES_MAX`] profiles (or accounts) and
    /// opens no more: run the engine with more shards. Reachable from any client that opens
    /// enough, so it is a decline, never a panic. Not counted by reason in the shard's
    /// counters ([`Reason::COUNTED`]).
    ShardFull,
    /// No hold has this id (or it closed long enough ago to be forgotten, §12).
    UnknownHold,
    /// The hold was captured in full, finally captured or voided.
    HoldClosed,
    /// The hold expired (a late clearing is posted as a payment).
    HoldExpired,
    /// A capture or void above what the hold holds.
    ExceedsHold,
    /// The account has [`crate::limits::HOLDS_PER_ACCOUNT_MAX`] open holds.
    TooManyHolds,
}

impl Reason {
    /// Every reason, in the order of their index.
    pub const ALL: [Reason; 16] = [
        Reason::UnknownRegion,
        Reason::UnknownProfile,
        Reason::UnknownAccount,
        Reason::UnknownCard,
        Reason::CardBlocked,
        Reason::InsufficientFunds,
        Reason::CeilingExceeded,
        Reason::InvalidAmount,
        Reason::SameAccount,
        Reason::IdempotencyConflict,
        Reason::ShardFull,
        Reason::UnknownHold,
        Reason::HoldClosed,
        Reason::HoldExpired,
        Reason::ExceedsHold,
        Reason::TooManyHolds,
    ];

    /// How many reasons, from the first, snapshot format 3 stores in a region's counters
    /// (`declined: [u64; 10]`); format 5 stores the later ones after the holds.
    pub const COUNTED: usize = 10;

    /// Whether a shard's counters count this reason: every one but [`Reason::ShardFull`],
    /// which came after format 3 and before format 5 and is counted by the engine alone.
    pub fn counted(self) -> bool {
        self != Reason::ShardFull
    }

    /// The upper-case word clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownRegion => "UNKNOWN_REGION",
            Reason::UnknownProfile => "UNKNOWN_PROFILE",
            Reason::UnknownAccount => "UNKNOWN_ACCOUNT",
            Reason::UnknownCard => "UNKNOWN_CARD",
            Reason::CardBlocked => "CARD_BLOCKED",
            Reason::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Reason::CeilingExceeded => "CEILING_EXCEEDED",
            Reason::InvalidAmount => "INVALID_AMOUNT",
            Reason::SameAccount => "SAME_ACCOUNT",
            Reason::IdempotencyConflict => "IDEMPOTENCY_CONFLICT",
            Reason::ShardFull => "SHARD_FULL",
            Reason::UnknownHold => "UNKNOWN_HOLD",
            Reason::HoldClosed => "HOLD_CLOSED",
            Reason::HoldExpired => "HOLD_EXPIRED",
            Reason::ExceedsHold => "EXCEEDS_HOLD",
            Reason::TooManyHolds => "TOO_MANY_HOLDS",
        }
    }

    /// Position in [`Reason::ALL`], for counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether a card accepts payments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Encode, Decode)]
pub enum CardStatus {
    /// Payments are decided against balance and ceiling.
    Active,
    /// Payments are declined with [`Reason::CardBlocked`].
    Blocked,
}

impl CardStatus {
    /// The upper-case word clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "ACTIVE",
            CardStatus::Blocked => "BLOCKED",
        }
    }
}

/// What a read of an account returns.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct AccountView {
    /// The account read.
    pub account: AccountId,
    /// The profile that owns it.
    pub profile: ProfileId,
    /// Checking or savings.
    pub kind: AccountKind,
    /// The balance, in minor units.
    pub balance_minor: u64,
    /// The card of a checking account.
    pub card: Option<CardId>,
}

/// What a read of a card returns.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct CardView {
    /// The card read.
    pub card: CardId,
    /// Its checking account (the same id as the card).
    pub account: AccountId,
    /// Whether it accepts payments.
    pub status: CardStatus,
    /// The ceiling in force: the card's own, or else the region's default.
    pub ceiling_minor: u64,
    /// Approved payments in the last seven business days, as of the read.
    pub spent_7d_minor: u64,
    /// `ceiling - spent_7d`, or 0 when a lowered ceiling is already exceeded.
    pub remaining_minor: u64,
}

/// What a read of a profile returns.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ProfileView {
    /// The profile read.
    pub profile: ProfileId,
    /// The region it was opened in.
    pub region: RegionId,
    /// The profile's accounts, oldest first.
    pub accounts: Vec<AccountId>,
}

/// What a read of a hold returns (§12).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct HoldView {
    /// The hold read.
    pub hold: HoldId,
    /// The card whose account it holds money of.
    pub card: CardId,
    /// Pending, closed or expired, as of the read.
    pub status: HoldStatus,
    /// Everything authorized on it.
    pub authorized_minor: u64,
    /// What captures debited.
    pub captured_minor: u64,
    /// What voids, a final capture's rest and expiry released.
    pub released_minor: u64,
    /// What it still holds.
    pub held_minor: u64,
    /// The business day of its authorization.
    pub business_day: Day,
    /// The business day at whose roll it expires if still open.
    pub expires_day: Day,
}

/// What a read of an account's detail returns (§12).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct BalanceDetail {
    /// The ledger balance.
    pub balance_minor: u64,
    /// `balance - held`: what payments, authorizations and transfers may spend.
    pub available_minor: u64,
    /// What the account's open holds hold.
    pub held_minor: u64,
    /// How many open holds it has.
    pub open_holds: u32,
}

/// Ceiling room a card gets back on a business day (§12, `CARD.RELEASES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Release {
    /// The business day on which the room comes back.
    pub business_day: Day,
    /// How much room comes back, in minor units.
    pub amount_minor: u64,
}

/// The outcome of a command.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum Outcome {
    /// A profile was opened.
    ProfileOpened {
        /// The new profile's id.
        profile: ProfileId,
    },
    /// An account was opened.
    AccountOpened {
        /// The new account's id.
        account: AccountId,
        /// The card of a checking account (same id as the account); `None` for savings.
        card: Option<CardId>,
    },
    /// A payment went through.
    Approved {
        /// The account's balance after the debit, in minor units.
        balance_minor: u64,
        /// The card's seven-day spending including this payment, in minor units.
        spent_7d_minor: u64,
    },
    /// A transfer (the source's balance) or a deposit (the account's balance) went through.
    Done {
        /// That balance right after the command, in minor units.
        balance_minor: u64,
    },
    /// A card was changed.
    Updated,
    /// What [`Command::ReadAccount`] found.
    Account(AccountView),
    /// What [`Command::ReadCard`] found.
    Card(CardView),
    /// What [`Command::ReadProfile`] found.
    Profile(ProfileView),
    /// The command was refused and changed no balance.
    Declined(Reason),
    /// An authorization placed a hold.
    Authorized {
        /// The new hold's id.
        hold: HoldId,
        /// The account's available money after it, in minor units.
        available_minor: u64,
        /// The card's seven-day spending including it, in minor units.
        spent_7d_minor: u64,
    },
    /// An increment added to a hold.
    Incremented {
        /// What the hold holds now.
        held_minor: u64,
        /// The account's available money after it.
        available_minor: u64,
        /// The card's seven-day spending including it.
        spent_7d_minor: u64,
    },
    /// A capture debited the account.
    Captured {
        /// The account's balance after it.
        balance_minor: u64,
        /// What the hold still holds (0 after a final capture).
        held_minor: u64,
    },
    /// A void released money.
    Voided {
        /// The account's available money after it.
        available_minor: u64,
        /// What the hold still holds.
        held_minor: u64,
    },
    /// What [`Command::ReadHold`] found.
    Hold(HoldView),
    /// What [`Command::ReadBalanceDetail`] found.
    BalanceDetail(BalanceDetail),
    /// What [`Command::ReadReleases`] found: the days of the next seven on which room
    /// comes back, in order.
    Releases(Vec<Release>),
    /// What an epoch's chunk (`Input::Roll`) changed, logged with it for the change stream
    /// (§13: its `INTEREST` and `EXPIRE` entries); never a client's answer. Last, so that
    /// the outcomes written before it decode as they were.
    Rolled(Rolled),
}

/// What one roll changed: the interest it posted and the holds it expired, in account
/// order. Bounded by the roll's range (`ROLL_ENTRY_ACCOUNTS_MAX` accounts and
/// `ROLL_ENTRY_HOLDS_MAX` open holds, where the shard cuts an epoch's chunk). Also what a
/// command changed lazily before deciding (`Applied::lazy`): the interest of the accounts
/// it touches (two at most) and the holds of the one it spends from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Rolled {
    /// Savings interest posted, one per account that earned some.
    pub interest: Vec<Posted>,
    /// Card holds that expired.
    pub expired: Vec<ExpiredHold>,
}

impl Rolled {
    /// Whether it changed no balance and no hold.
    pub fn is_empty(&self) -> bool {
        self.interest.is_empty() && self.expired.is_empty()
    }
}

/// Interest posted to a savings account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posted {
    /// The savings account.
    pub account: AccountId,
    /// The interest, in minor units.
    pub amount_minor: u64,
    /// The account's balance after it.
    pub balance_minor: u64,
    /// The account's region (the change stream's `region`). Not part of a `Posted`'s own
    /// encoding, which is the three amounts as before: a roll's input names its region,
    /// and the log writes the regions of a command's lazy postings beside them (log
    /// format 4). `None` only for a lazy posting read from a log that did not write them.
    pub region: Option<RegionId>,
}

impl Encode for Posted {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        (self.account, self.amount_minor, self.balance_minor).encode(encoder)
    }
}

impl<Context> Decode<Context> for Posted {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Posted, bincode::error::DecodeError> {
        let (account, amount_minor, balance_minor) = Decode::decode(decoder)?;
        Ok(Posted { account, amount_minor, balance_minor, region: None })
    }
}
bincode::impl_borrow_decode!(Posted);

/// A card hold that expired (§12): what it held is released, no balance moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct ExpiredHold {
    /// The hold.
    pub hold: HoldId,
    /// Its card (and account).
    pub card: CardId,
    /// What it held and released, in minor units.
    pub released_minor: u64,
}

impl Outcome {
    /// The decline reason, if declined.
    pub fn declined(&self) -> Option<Reason> {
        match self {
            Outcome::Declined(reason) => Some(*reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: Encode>(value: &T) -> Vec<u8> {
        bincode::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<CommandId, bincode::error::DecodeError> {
        bincode::decode_from_slice(bytes, bincode::config::standard()).map(|(id, _)| id)
    }

    #[test]
    fn an_id_encodes_as_the_string_it_holds_so_older_logs_and_snapshots_still_read() {
        for text in ["a", "0123456789abcdef0123456789abcdef", &"x".repeat(COMMAND_ID_BYTES_MAX)] {
            let id = CommandId::new(text).unwrap();
            assert_eq!(encode(&id), encode(&text.to_owned()));
            assert_eq!(decode(&encode(&text.to_owned())).unwrap(), id);
            assert_eq!(id.as_str(), text);
        }
    }

    #[test]
    fn a_file_cannot_smuggle_in_an_id_new_would_refuse() {
        for text in ["", "with space", "tab\t", &"x".repeat(COMMAND_ID_BYTES_MAX + 1)] {
            assert!(CommandId::new(text).is_err(), "{text:?}");
            assert!(decode(&encode(&text.to_owned())).is_err(), "{text:?}");
        }
        // A length prefix past the bytes that follow is an error, not a read past the end.
        assert!(decode(&[40, b'a', b'b']).is_err());
    }

    #[test]
    fn ids_compare_and_hash_by_their_text_alone() {
        use std::collections::HashSet;
        let (a, b) = (CommandId::new("abc").unwrap(), CommandId::new("abd").unwrap());
        assert!(a < b && a != b);
        assert_eq!(a, CommandId::new("abc").unwrap());
        let set: HashSet<CommandId> = [a.clone(), b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(format!("{:?}", CommandId::new("q-1").unwrap()), "\"q-1\"");
    }
}
