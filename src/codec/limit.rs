//! Limit events (schema `limit_event.v2`; v1 records, before the `usage` kind, still read):
//! budget thresholds crossed, budgets exhausted and reset. Rare, so through apache-avro's
//! generic writer.

use std::sync::OnceLock;

use apache_avro::types::Value;
use rust_decimal::Decimal;

use super::value::{opt, record, s};
use super::{CodecError, Family, LIMIT_SCHEMA, LIMIT_SCHEMA_V1};
use crate::domain::*;

fn limit_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(LIMIT_SCHEMA, &[LIMIT_SCHEMA_V1]))
}

/// Encodes a limit event (rare, so through apache-avro's generic writer).
pub fn encode_limit(e: &LimitEvent) -> Result<Vec<u8>, CodecError> {
    let kind = LimitKind::ALL
        .iter()
        .position(|k| *k == e.kind)
        .unwrap_or(0) as u32;
    let (type_index, type_name) = match e.budget_type {
        crate::domain::limits::BudgetKind::Cost => (0, "cost"),
        crate::domain::limits::BudgetKind::Tokens => (1, "tokens"),
    };
    let next_reset = match e.next_reset {
        Some(t) => Value::Union(1, Box::new(Value::TimestampMillis(t.0))),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let fields = vec![
        ("event_id".into(), s(&e.event_id)),
        ("at".into(), Value::TimestampMillis(e.at.0)),
        ("kind".into(), Value::Enum(kind, e.kind.as_str().into())),
        ("budget".into(), s(&e.budget)),
        ("owner_kind".into(), s(&e.owner_kind)),
        ("workspace_id".into(), opt(&e.workspace_id)),
        ("api_key_id".into(), opt(&e.api_key_id)),
        (
            "window_start".into(),
            Value::TimestampMillis(e.window_start.0),
        ),
        (
            "budget_type".into(),
            Value::Enum(type_index, type_name.into()),
        ),
        ("credit_limit".into(), s(&e.credit_limit.to_string())),
        (
            "alert_threshold".into(),
            opt(&e.alert_threshold.map(|d| d.to_string())),
        ),
        ("used".into(), s(&e.used.to_string())),
        ("next_reset".into(), next_reset),
    ];
    limit_family().encode(Value::Record(fields))
}

/// Decodes a limit event.
pub fn decode_limit(bytes: &[u8]) -> Result<LimitEvent, CodecError> {
    let mut f = record(limit_family().decode(bytes)?);
    let decimal = |name: &'static str, v: String| {
        v.parse::<Decimal>().map_err(|source| CodecError::Decimal {
            field: name,
            source,
        })
    };
    let kind = f.string("kind")?;
    let kind = LimitKind::ALL
        .into_iter()
        .find(|k| k.as_str() == kind)
        .ok_or(CodecError::Field("kind", kind))?;
    let budget_type = match f.string("budget_type")?.as_str() {
        "tokens" => crate::domain::limits::BudgetKind::Tokens,
        _ => crate::domain::limits::BudgetKind::Cost,
    };
    let next_reset = match f.take("next_reset")? {
        Value::TimestampMillis(t) | Value::Long(t) => Some(Millis(t)),
        _ => None,
    };
    Ok(LimitEvent {
        event_id: f.string("event_id")?,
        at: Millis(f.long("at")?),
        kind,
        budget: f.string("budget")?,
        owner_kind: f.string("owner_kind")?,
        workspace_id: f.opt_string("workspace_id")?,
        api_key_id: f.opt_string("api_key_id")?,
        window_start: Millis(f.long("window_start")?),
        budget_type,
        credit_limit: decimal("credit_limit", f.string("credit_limit")?)?,
        alert_threshold: f
            .opt_string("alert_threshold")?
            .map(|v| decimal("alert_threshold", v))
            .transpose()?,
        used: decimal("used", f.string("used")?)?,
        next_reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_round_trip() {
        let e = LimitEvent {
            event_id: "e".into(),
            at: Millis(10),
            kind: LimitKind::Exhausted,
            budget: "api_key:k".into(),
            owner_kind: "api_key".into(),
            workspace_id: Some("w".into()),
            api_key_id: None,
            window_start: Millis(5),
            budget_type: crate::domain::limits::BudgetKind::Tokens,
            credit_limit: "100".parse().unwrap(),
            alert_threshold: Some("80.5".parse().unwrap()),
            used: "101".parse().unwrap(),
            next_reset: Some(Millis(99)),
        };
        assert_eq!(decode_limit(&encode_limit(&e).unwrap()).unwrap(), e);
        // A record written with the v1 schema (before the `usage` kind) is still read: the body
        // is the same and the reader resolves the v1 writer schema by its fingerprint.
        let v1 = Family::new(LIMIT_SCHEMA_V1, &[]);
        let mut bytes = encode_limit(&e).unwrap();
        bytes[..10].copy_from_slice(&v1.header);
        assert_eq!(decode_limit(&bytes).unwrap(), e);
        let state = LimitEvent {
            kind: LimitKind::Usage,
            ..e
        };
        assert_eq!(decode_limit(&encode_limit(&state).unwrap()).unwrap(), state);
    }
}
