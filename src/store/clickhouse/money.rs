//! Money as ClickHouse stores it: Decimal(38, 12), an i128 of picodollars.

use rust_decimal::Decimal;

/// Money as ClickHouse's Decimal(38, 12) (an i128 of 10^-12 dollars); exact for any event cost.
pub(super) fn to_d12(d: Decimal) -> i128 {
    let mut d = d;
    d.rescale(12);
    d.mantissa()
}

pub(super) fn from_d12(v: i128) -> Decimal {
    Decimal::try_from_i128_with_scale(v, 12)
        .unwrap_or(Decimal::MAX)
        .normalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_12_round_trips_exactly() {
        for text in ["0", "0.000000000001", "1.5", "123456789.123456789012"] {
            let d: Decimal = text.parse().unwrap();
            assert_eq!(from_d12(to_d12(d)), d.normalize());
        }
    }
}
