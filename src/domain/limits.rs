//! Budget (`usage_limits`) and rate-limit (`rate_limits`) definitions, and their lenient parsing:
//! the contract sends each as an object or an array depending on the endpoint, and we normalise.
//! Enforcement lives in the admission chain; this module only says what a valid limit is.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::Millis;

/// What a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetKind {
    /// US dollars.
    Cost,
    /// Input plus output tokens.
    Tokens,
}

/// When a budget's usage returns to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodicReset {
    /// Sunday 00:00 UTC.
    Weekly,
    /// The 1st of the month, 00:00 UTC.
    Monthly,
}

/// A budget on an entity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageLimit {
    #[serde(rename = "type")]
    pub kind: BudgetKind,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub credit_limit: Decimal,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::arbitrary_precision_option"
    )]
    pub alert_threshold: Option<Decimal>,
    #[serde(default)]
    pub periodic_reset: Option<PeriodicReset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset_days: Option<u16>,
    /// Strict mode: refuse a request whose maximum cost does not fit (spend never exceeds the limit).
    #[serde(default)]
    pub strict: bool,
    /// When the budget was set (server-side); only usage from then on counts.
    #[serde(default)]
    pub set_at: Millis,
    /// The last `reset_usage` (server-side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<Millis>,
}

/// What a rate limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKind {
    Requests,
    Tokens,
}

/// The window of a rate limit. `rps` and `rpw` are accepted on API keys only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateUnit {
    Rps,
    Rpm,
    Rph,
    Rpd,
    Rpw,
}

impl RateUnit {
    /// The window as a duration.
    pub fn window(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.window_ms())
    }

    /// The window length in milliseconds.
    pub fn window_ms(self) -> u64 {
        match self {
            RateUnit::Rps => 1_000,
            RateUnit::Rpm => 60_000,
            RateUnit::Rph => 3_600_000,
            RateUnit::Rpd => 86_400_000,
            RateUnit::Rpw => 7 * 86_400_000,
        }
    }
}

/// A rate limit on an entity. `value: 0` disables the entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    #[serde(rename = "type")]
    pub kind: RateKind,
    pub unit: RateUnit,
    pub value: u64,
}

/// Where a limit is being set: API keys accept the extra `rps`/`rpw` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitOwner {
    ApiKey,
    Other,
}

/// Parses `usage_limits` given as an object, a one-element array, an empty array or null.
pub fn parse_usage_limit(v: &Value) -> Result<Option<UsageLimit>, String> {
    let Some(obj) = single_budget(v)? else {
        return Ok(None);
    };
    let limit: UsageLimit =
        serde_json::from_value(client_fields(obj)).map_err(|e| format!("usage_limits: {e}"))?;
    check_usage_limit(&limit)?;
    Ok(Some(limit))
}

/// The one budget given: the object itself or the element of a one-element array; `None` for
/// null or an empty array (no budget).
fn single_budget(v: &Value) -> Result<Option<&Value>, String> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Array(a) if a.is_empty() => return Ok(None),
        Value::Array(a) if a.len() == 1 => &a[0],
        Value::Array(_) => return Err("usage_limits: at most one budget per entity".into()),
        other => other,
    };
    Ok((!obj.is_null()).then_some(obj))
}

/// A budget object as the client may set it: `type` defaults to cost, null fields are dropped
/// (but `periodic_reset`'s) and the fields only the server sets are ignored.
fn client_fields(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.entry("type").or_insert_with(|| Value::from("cost"));
        map.retain(|k, v| !v.is_null() || k == "periodic_reset");
        for server_side in [
            "next_usage_reset_at",
            "set_at",
            "reset_at",
            "status",
            "current_usage",
        ] {
            map.remove(server_side);
        }
    }
    obj
}

/// The bounds of a budget: a minimum limit per type, whole tokens, an alert threshold inside the
/// limit, and one way of resetting periodically.
fn check_usage_limit(limit: &UsageLimit) -> Result<(), String> {
    let minimum = match limit.kind {
        BudgetKind::Cost => Decimal::ONE,
        BudgetKind::Tokens => Decimal::from(100),
    };
    if limit.credit_limit < minimum {
        return Err(format!(
            "usage_limits.credit_limit must be at least {minimum} for type {:?}",
            limit.kind
        )
        .to_lowercase());
    }
    if limit.kind == BudgetKind::Tokens && !limit.credit_limit.fract().is_zero() {
        return Err("usage_limits.credit_limit must be a whole number of tokens".into());
    }
    if let Some(t) = limit.alert_threshold {
        if t <= Decimal::ZERO || t >= limit.credit_limit {
            return Err(
                "usage_limits.alert_threshold must be above 0 and below credit_limit".into(),
            );
        }
    }
    match limit.periodic_reset_days {
        Some(_) if limit.periodic_reset.is_some() => Err(
            "usage_limits: periodic_reset and periodic_reset_days are mutually exclusive".into(),
        ),
        Some(d) if !(1..=365).contains(&d) => {
            Err("usage_limits.periodic_reset_days must be between 1 and 365".into())
        }
        _ => Ok(()),
    }
}

/// Parses `rate_limits` given as an object, an array or null, into a list.
pub fn parse_rate_limits(v: &Value, owner: LimitOwner) -> Result<Vec<RateLimit>, String> {
    let items: Vec<&Value> = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items.into_iter().filter(|i| !i.is_null()) {
        let mut item = item.clone();
        if let Some(map) = item.as_object_mut() {
            map.entry("type").or_insert_with(|| Value::from("requests"));
        }
        let limit: RateLimit =
            serde_json::from_value(item).map_err(|e| format!("rate_limits: {e}"))?;
        if owner == LimitOwner::Other && matches!(limit.unit, RateUnit::Rps | RateUnit::Rpw) {
            return Err("rate_limits.unit must be one of rpm, rph, rpd".into());
        }
        if out
            .iter()
            .any(|l: &RateLimit| l.kind == limit.kind && l.unit == limit.unit)
        {
            return Err("rate_limits: duplicate limit for the same type and unit".into());
        }
        out.push(limit);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_limit_object_array_and_null() {
        let one =
            json!({"type":"cost","credit_limit":10,"alert_threshold":8,"periodic_reset":"monthly"});
        let a = parse_usage_limit(&one).unwrap().unwrap();
        let b = parse_usage_limit(&json!([one])).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.credit_limit, Decimal::from(10));
        assert_eq!(a.periodic_reset, Some(PeriodicReset::Monthly));
        assert_eq!(parse_usage_limit(&json!(null)).unwrap(), None);
        assert_eq!(parse_usage_limit(&json!([])).unwrap(), None);
    }

    #[test]
    fn usage_limit_keeps_exact_decimals() {
        let l = parse_usage_limit(&json!({"credit_limit": 1.1}))
            .unwrap()
            .unwrap();
        assert_eq!(l.credit_limit.to_string(), "1.1");
        // Shown as a JSON number, not a string.
        assert_eq!(
            serde_json::to_value(&l).unwrap()["credit_limit"].to_string(),
            "1.1"
        );
        assert_eq!(l.kind, BudgetKind::Cost);
    }

    #[test]
    fn usage_limit_rejections() {
        for bad in [
            json!({"type":"cost","credit_limit":0.5}),
            json!({"type":"tokens","credit_limit":99}),
            json!({"type":"cost","credit_limit":10,"alert_threshold":10}),
            json!({"type":"dollars","credit_limit":10}),
            json!({"credit_limit":"ten"}),
            json!([{"credit_limit":5},{"credit_limit":6}]),
            json!({"credit_limit":5,"periodic_reset":"weekly","periodic_reset_days":3}),
        ] {
            assert!(parse_usage_limit(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rate_limits_object_or_array() {
        let one = json!({"type":"requests","unit":"rpm","value":100});
        assert_eq!(parse_rate_limits(&one, LimitOwner::Other).unwrap().len(), 1);
        assert_eq!(
            parse_rate_limits(&json!([one]), LimitOwner::Other)
                .unwrap()
                .len(),
            1
        );
        assert!(parse_rate_limits(&json!({"unit":"rps","value":1}), LimitOwner::Other).is_err());
        assert!(parse_rate_limits(&json!({"unit":"rps","value":1}), LimitOwner::ApiKey).is_ok());
        assert!(parse_rate_limits(&json!({"unit":"rpm","value":-1}), LimitOwner::ApiKey).is_err());
        assert!(parse_rate_limits(&json!([one, one]), LimitOwner::ApiKey).is_err());
    }
}
