//! Money: integer minor units, checked everywhere.

pub use crate::limits::AMOUNT_MAX_MINOR;

/// Whether `amount_minor` is an acceptable command amount (`1 ..= 10^15`).
pub fn amount_is_valid(amount_minor: u64) -> bool {
    (1..=AMOUNT_MAX_MINOR).contains(&amount_minor)
}

/// Rounds `numerator / denominator` half to even. `denominator` must be positive.
///
/// Used for the yearly interest posting (§5), where `A / 240_000` is rounded once.
pub fn div_round_half_even(numerator: i128, denominator: i128) -> i128 {
    assert!(denominator > 0, "denominator must be positive");
    let quotient = numerator.div_euclid(denominator);
    let remainder = numerator.rem_euclid(denominator);
    let twice = remainder * 2;
    if twice > denominator || (twice == denominator && quotient % 2 != 0) {
        quotient + 1
    } else {
        quotient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_bounds() {
        assert!(!amount_is_valid(0));
        assert!(amount_is_valid(1));
        assert!(amount_is_valid(AMOUNT_MAX_MINOR));
        assert!(!amount_is_valid(AMOUNT_MAX_MINOR + 1));
    }

    #[test]
    fn half_even_rounding() {
        assert_eq!(div_round_half_even(5, 2), 2);
        assert_eq!(div_round_half_even(7, 2), 4);
        assert_eq!(div_round_half_even(6, 4), 2);
        assert_eq!(div_round_half_even(5, 4), 1);
        assert_eq!(div_round_half_even(0, 3), 0);
        assert_eq!(div_round_half_even(-5, 2), -2);
    }
}
