//! Budgets and rate limits set through admin requests: new ones, and the rules for updating
//! them (immutable once set; removable; a budget resettable).

use serde_json::Value;

use super::body::{invalid, Body};
use super::Result;
use crate::domain::limits::{
    parse_rate_limits, parse_usage_limit, LimitOwner, RateLimit, UsageLimit,
};
use crate::domain::Millis;

/// A new budget from a request's `usage_limits`; it counts usage from `now` on.
pub fn new_budget(v: Option<&Value>, now: Millis) -> Result<Option<UsageLimit>> {
    let mut l = parse_usage_limit(v.unwrap_or(&Value::Null)).map_err(invalid)?;
    if let Some(l) = &mut l {
        l.set_at = now;
    }
    Ok(l)
}

/// New rate limits from a request's `rate_limits` (absent or null: none).
pub fn new_rate_limits(v: Option<&Value>, owner: LimitOwner) -> Result<Vec<RateLimit>> {
    parse_rate_limits(v.unwrap_or(&Value::Null), owner).map_err(invalid)
}

/// Applies an update's `usage_limits` and `reset_usage` to a budget. Budgets are immutable once
/// set: an absent or identical value changes nothing, `null` (or `[]`) removes the budget, a
/// different one is refused; `reset_usage: true` restarts the count from `now`.
pub fn update_budget(
    current: &mut Option<UsageLimit>,
    given: Option<&Value>,
    reset: bool,
    now: Millis,
) -> Result<()> {
    if let Some(v) = given {
        match (new_budget(Some(v), now)?, current.as_ref()) {
            (None, _) => *current = None,
            (Some(new), None) => *current = Some(new),
            (Some(mut new), Some(old)) => {
                new.set_at = old.set_at;
                new.reset_at = old.reset_at;
                if &new != old {
                    return Err(invalid(
                        "a budget cannot be edited once set; remove it (usage_limits: null) and set a new one, or use reset_usage",
                    ));
                }
            }
        }
    }
    if reset {
        match current {
            Some(l) => l.reset_at = Some(now),
            None => return Err(invalid("reset_usage: there is no budget to reset")),
        }
    }
    Ok(())
}

/// Applies an update's `rate_limits`. Like budgets, a rate limit cannot be edited once set:
/// absent (or null) changes nothing; `[]` removes them all; a list may keep, drop or add limits,
/// but one for a type and unit already limited must keep its value.
pub fn update_rate_limits(
    current: &mut Vec<RateLimit>,
    given: Option<&Value>,
    owner: LimitOwner,
) -> Result<()> {
    let Some(v) = given.filter(|v| !v.is_null()) else {
        return Ok(());
    };
    let new = parse_rate_limits(v, owner).map_err(invalid)?;
    let edited = new.iter().find_map(|n| {
        current
            .iter()
            .find(|c| c.kind == n.kind && c.unit == n.unit && *c != n)
    });
    if let Some(old) = edited {
        let shown = serde_json::to_value(old).unwrap_or(Value::Null);
        return Err(invalid(format!(
            "a rate limit cannot be edited once set ({shown} is in place); remove it (rate_limits: [] or a list without it) and set a new one"
        )));
    }
    *current = new;
    Ok(())
}

/// Applies an update's `rate_limits`, then its `usage_limits` and `reset_usage` (see
/// [`update_rate_limits`] and [`update_budget`]) to an object's limits.
pub fn update_limits(
    b: &Body,
    usage: &mut Option<UsageLimit>,
    rate: &mut Vec<RateLimit>,
    owner: LimitOwner,
) -> Result<()> {
    update_rate_limits(rate, b.get("rate_limits"), owner)?;
    let reset = b.bool("reset_usage")?.unwrap_or(false);
    update_budget(usage, b.0.get("usage_limits"), reset, Millis::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_immutable_but_resettable_and_removable() {
        let now = Millis(1_000);
        let v = serde_json::json!({"type": "cost", "credit_limit": 10});
        let mut b = new_budget(Some(&v), now).unwrap();
        assert_eq!(b.as_ref().unwrap().set_at, now);
        update_budget(&mut b, Some(&v), false, Millis(2_000)).unwrap();
        assert_eq!(
            b.as_ref().unwrap().set_at,
            now,
            "an identical value changes nothing"
        );
        let other = serde_json::json!({"type": "cost", "credit_limit": 11});
        assert!(update_budget(&mut b, Some(&other), false, Millis(2_000)).is_err());
        update_budget(&mut b, None, true, Millis(3_000)).unwrap();
        assert_eq!(b.as_ref().unwrap().reset_at, Some(Millis(3_000)));
        update_budget(&mut b, Some(&Value::Null), false, Millis(4_000)).unwrap();
        assert!(b.is_none());
        assert!(update_budget(&mut b, None, true, Millis(5_000)).is_err());
    }

    #[test]
    fn rate_limits_are_immutable_but_removable() {
        let rpm = |v: u64| serde_json::json!([{"type": "requests", "unit": "rpm", "value": v}]);
        let mut r = Vec::new();
        update_rate_limits(&mut r, Some(&rpm(5)), LimitOwner::Other).unwrap();
        update_rate_limits(&mut r, Some(&rpm(5)), LimitOwner::Other).unwrap();
        update_rate_limits(&mut r, None, LimitOwner::Other).unwrap();
        let err = update_rate_limits(&mut r, Some(&rpm(6)), LimitOwner::Other).unwrap_err();
        assert!(err.to_string().contains("cannot be edited"), "{err}");
        assert_eq!(r[0].value, 5);
        let both = serde_json::json!([{"type": "requests", "unit": "rpm", "value": 5},
            {"type": "tokens", "unit": "rph", "value": 1000}]);
        update_rate_limits(&mut r, Some(&both), LimitOwner::Other).unwrap();
        assert_eq!(
            r.len(),
            2,
            "adding a limit of another type or unit is not an edit"
        );
        update_rate_limits(&mut r, Some(&serde_json::json!([])), LimitOwner::Other).unwrap();
        update_rate_limits(&mut r, Some(&rpm(6)), LimitOwner::Other).unwrap();
        assert_eq!(r[0].value, 6, "removed, then set anew");
    }
}
