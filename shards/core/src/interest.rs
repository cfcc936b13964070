//! Savings interest by the half-month rule (§5).
//!
//! For half-month k the eligible balance is `E_k = max(0, S_k - W_k)`: the balance when k
//! started less what was debited during k, so money credited during k earns from k + 1.
//! `A += E_k * rate_bp` at each close, in i128; on the first day of a year
//! `round_half_even(A / 240_000)` is posted once and A starts again.
//!
//! The state advances lazily (on every access to the account, with the command's
//! business day) and eagerly (by the batch service); both run [`Savings::advance_to`] with
//! the same half-month, so they give the same result.

use bincode::{Decode, Encode};

use crate::money::div_round_half_even;

/// Half-months in a year.
pub const HALF_MONTHS_PER_YEAR: i32 = 24;
/// `A / POSTING_DIVISOR` is the posted interest: 10_000 bp × 24 half-months.
pub const POSTING_DIVISOR: i128 = 240_000;

/// Interest state of a savings account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Savings {
    /// The half-month being accumulated (`year * 24 + k`).
    half_month: i32,
    /// S_k: the balance when `half_month` started.
    start_minor: u64,
    /// W_k: debited so far during `half_month`.
    debited_minor: u64,
    /// A, split in two words so that an account stays 8-byte aligned.
    accrued: [u64; 2],
}

impl Savings {
    /// A new account, opened during `half_month` with a zero balance at its start.
    pub fn opened(half_month: i32) -> Savings {
        Savings { half_month, start_minor: 0, debited_minor: 0, accrued: [0, 0] }
    }

    /// The stored parts, in the encoding order: `half_month`, `start_minor`,
    /// `debited_minor`, `accrued` (for the snapshot codec).
    pub fn parts(&self) -> (i32, u64, u64, [u64; 2]) {
        (self.half_month, self.start_minor, self.debited_minor, self.accrued)
    }

    /// A savings state from its stored parts (see [`Savings::parts`]).
    pub fn from_parts(
        half_month: i32,
        start_minor: u64,
        debited_minor: u64,
        accrued: [u64; 2],
    ) -> Savings {
        Savings { half_month, start_minor, debited_minor, accrued }
    }

    /// The interest accrued and not yet posted (`A`).
    pub fn accrued(&self) -> i128 {
        (i128::from(self.accrued[1] as i64) << 64) | i128::from(self.accrued[0])
    }

    fn set_accrued(&mut self, value: i128) {
        self.accrued = [value as u64, (value >> 64) as u64];
    }

    /// The half-month being accumulated.
    pub fn half_month(&self) -> i32 {
        self.half_month
    }

    /// Counts a debit toward W of the current half-month.
    pub fn record_debit(&mut self, amount_minor: u64) {
        self.debited_minor = self.debited_minor.saturating_add(amount_minor);
    }

    /// Closes every half-month before `half_month`, accruing at `rate_bp`, and returns
    /// the interest to post (non-zero only when a year boundary was crossed). The caller
    /// credits it; `balance_minor` is the balance now, before that credit.
    pub fn advance_to(&mut self, half_month: i32, balance_minor: u64, rate_bp: u32) -> u64 {
        let mut balance = balance_minor;
        let mut posted_total = 0u64;
        while self.half_month < half_month {
            let eligible = self.start_minor.saturating_sub(self.debited_minor);
            let accrued = self.accrued() + i128::from(eligible) * i128::from(rate_bp);
            self.set_accrued(accrued);
            self.half_month += 1;
            if self.half_month.rem_euclid(HALF_MONTHS_PER_YEAR) == 0 {
                let posted = div_round_half_even(self.accrued(), POSTING_DIVISOR);
                let posted = u64::try_from(posted.max(0)).unwrap_or(u64::MAX);
                // A balance that cannot take the interest keeps it accrued.
                if let Some(next) = balance.checked_add(posted) {
                    balance = next;
                    posted_total += posted;
                    self.set_accrued(0);
                }
            }
            self.start_minor = balance;
            self.debited_minor = 0;
            // Whole idle years cost one step each at most 24 times; beyond that the state
            // is periodic, but years of downtime are rare enough to walk.
        }
        posted_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{day_of_date, half_month_of};
    use jiff::civil::Date;

    fn hm(y: i16, m: i8, d: i8) -> i32 {
        half_month_of(day_of_date(Date::new(y, m, d).unwrap()))
    }

    /// The test vector of §5: rate 600 bp, open 20 Feb with 100_000, deposit 10_000 on
    /// 25 Aug, withdraw 10_000 on 29 Nov: 5_125 posted for the year.
    #[test]
    fn spec_test_vector_posts_5125() {
        let rate = 600;
        let mut balance = 0u64;
        let mut savings = Savings::opened(hm(2027, 2, 20));
        balance += 100_000;
        balance += savings.advance_to(hm(2027, 8, 25), balance, rate);
        balance += 10_000;
        balance += savings.advance_to(hm(2027, 11, 29), balance, rate);
        balance -= 10_000;
        savings.record_debit(10_000);
        let posted = savings.advance_to(hm(2028, 1, 1), balance, rate);
        assert_eq!(posted, 5_125);
        assert_eq!(savings.accrued(), 0);
    }

    #[test]
    fn accrued_survives_the_split_words() {
        let mut savings = Savings::opened(0);
        for value in [0i128, 1, -1, i128::from(u64::MAX) * 1000, -(1 << 100)] {
            savings.set_accrued(value);
            assert_eq!(savings.accrued(), value);
        }
    }
}
