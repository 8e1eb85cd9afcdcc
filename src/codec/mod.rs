//! The wire form of events: Avro single-object encoding (`C3 01`, the writer schema's 8-byte
//! CRC-64-AVRO fingerprint, then the Avro body), with the schemas in `schemas/`. A reader looks up
//! the writer schema by fingerprint and resolves it to the current schema, so compatible schema
//! evolution (new optional fields) reads old and new records alike.

mod binary;

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Schema};
use rust_decimal::Decimal;

use crate::domain::*;

/// The current writer schemas.
pub const USAGE_SCHEMA: &str = include_str!("../../schemas/usage_event.v1.avsc");
pub const CONFIG_SCHEMA: &str = include_str!("../../schemas/config_event.v2.avsc");
pub const LIMIT_SCHEMA: &str = include_str!("../../schemas/limit_event.v2.avsc");
pub const LOG_BATCH_SCHEMA: &str = include_str!("../../schemas/log_batch.v1.avsc");
/// Earlier writer schemas of config events (before the audit fields), still readable.
const CONFIG_SCHEMA_V1: &str = include_str!("../../schemas/config_event.v1.avsc");
/// Earlier writer schemas of limit events, still readable.
const LIMIT_SCHEMA_V1: &str = include_str!("../../schemas/limit_event.v1.avsc");

/// Scale of `cost_usd` on the wire (Avro `decimal(38, 12)`); prices have at most 12 places in dollars.
const COST_SCALE: u32 = 12;

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("avro: {0}")]
    Avro(Box<apache_avro::Error>),
    #[error("not single-object encoded (bad marker)")]
    Marker,
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownSchema(u64),
    #[error("field {0}: {1}")]
    Field(&'static str, String),
    #[error("entity json: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<apache_avro::Error> for CodecError {
    fn from(e: apache_avro::Error) -> Self {
        CodecError::Avro(Box::new(e))
    }
}

struct Family {
    current: Schema,
    header: [u8; 10],
    writers: HashMap<u64, Schema>,
}

impl Family {
    /// The current schema, and the earlier writer schemas it still reads.
    fn new(text: &str, older: &[&str]) -> Self {
        // The schemas are compiled in and checked by tests; a parse failure is a build defect.
        #[allow(clippy::expect_used)]
        let parse = |t: &str| Schema::parse_str(t).expect("embedded schema parses");
        let current = parse(text);
        let fp = current.fingerprint::<Rabin>().bytes;
        let mut header = [0u8; 10];
        header[0] = 0xC3;
        header[1] = 0x01;
        header[2..].copy_from_slice(&fp[..8]);
        let mut writers = HashMap::new();
        writers.insert(fingerprint_u64(&header[2..]), current.clone());
        for t in older {
            let s = parse(t);
            writers.insert(fingerprint_u64(&s.fingerprint::<Rabin>().bytes), s);
        }
        Family {
            current,
            header,
            writers,
        }
    }

    fn encode(&self, value: Value) -> Result<Vec<u8>, CodecError> {
        let body = to_avro_datum(&self.current, value)?;
        let mut out = Vec::with_capacity(10 + body.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<(String, Value)>, CodecError> {
        if bytes.len() < 10 || bytes[0] != 0xC3 || bytes[1] != 0x01 {
            return Err(CodecError::Marker);
        }
        let fp = fingerprint_u64(&bytes[2..10]);
        let writer = self.writers.get(&fp).ok_or(CodecError::UnknownSchema(fp))?;
        let mut body = &bytes[10..];
        match from_avro_datum(writer, &mut body, Some(&self.current))? {
            Value::Record(fields) => Ok(fields),
            _ => Err(CodecError::Field("(record)", "not a record".into())),
        }
    }
}

fn fingerprint_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn usage_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(USAGE_SCHEMA, &[]))
}

fn config_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(CONFIG_SCHEMA, &[CONFIG_SCHEMA_V1]))
}

fn limit_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(LIMIT_SCHEMA, &[LIMIT_SCHEMA_V1]))
}

fn log_batch_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(LOG_BATCH_SCHEMA, &[]))
}

/// A record's key and value, as a batch holds them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Records that must commit together, as one value (schema `log_batch.v1`).
pub fn encode_log_batch(records: &[KeyValue]) -> Result<Vec<u8>, CodecError> {
    let items = records
        .iter()
        .map(|(key, value)| {
            Value::Record(vec![
                ("key".into(), Value::Bytes(key.clone())),
                ("value".into(), Value::Bytes(value.clone())),
            ])
        })
        .collect();
    log_batch_family().encode(Value::Record(vec![("records".into(), Value::Array(items))]))
}

/// The records of a value written by [`encode_log_batch`]; None when the value is not a batch
/// (any other single-object encoded record), so a reader passes it on as it is.
pub fn decode_log_batch(bytes: &[u8]) -> Option<Result<Vec<KeyValue>, CodecError>> {
    let family = log_batch_family();
    if bytes.get(..10) != Some(&family.header[..]) {
        return None;
    }
    let unpack = || {
        let mut f = record(family.decode(bytes)?);
        let Value::Array(items) = f.take("records")? else {
            return Err(CodecError::Field("records", "not an array".into()));
        };
        items
            .into_iter()
            .map(|item| {
                let Value::Record(fields) = item else {
                    return Err(CodecError::Field("records", "not a record".into()));
                };
                let mut r = record(fields);
                Ok((r.bytes("key")?, r.bytes("value")?))
            })
            .collect()
    };
    Some(unpack())
}

fn opt(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Field access on a decoded record.
struct Fields(HashMap<String, Value>);

impl Fields {
    fn take(&mut self, name: &'static str) -> Result<Value, CodecError> {
        let v = self
            .0
            .remove(name)
            .ok_or(CodecError::Field(name, "missing".into()))?;
        Ok(match v {
            Value::Union(_, inner) => *inner,
            other => other,
        })
    }

    fn string(&mut self, name: &'static str) -> Result<String, CodecError> {
        match self.take(name)? {
            Value::String(s) | Value::Enum(_, s) => Ok(s),
            other => Err(CodecError::Field(
                name,
                format!("expected string, got {other:?}"),
            )),
        }
    }

    fn opt_string(&mut self, name: &'static str) -> Result<Option<String>, CodecError> {
        match self.take(name)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(CodecError::Field(
                name,
                format!("expected string or null, got {other:?}"),
            )),
        }
    }

    fn bytes(&mut self, name: &'static str) -> Result<Vec<u8>, CodecError> {
        match self.take(name)? {
            Value::Bytes(b) => Ok(b),
            other => Err(CodecError::Field(
                name,
                format!("expected bytes, got {other:?}"),
            )),
        }
    }

    fn long(&mut self, name: &'static str) -> Result<i64, CodecError> {
        match self.take(name)? {
            Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
            Value::Int(n) => Ok(i64::from(n)),
            other => Err(CodecError::Field(
                name,
                format!("expected number, got {other:?}"),
            )),
        }
    }
}

fn record(fields: Vec<(String, Value)>) -> Fields {
    Fields(fields.into_iter().collect())
}

/// The cost at the wire's scale; a cost with more places is refused, never rounded.
fn wire_cost(d: Decimal) -> Result<Decimal, CodecError> {
    let mut cost = d;
    cost.rescale(COST_SCALE);
    if cost != d {
        return Err(CodecError::Field(
            "cost_usd",
            format!("{d} has more than 12 decimal places"),
        ));
    }
    Ok(cost)
}

/// Encodes a usage event (schema `usage_event.v1`), field by field.
pub fn encode_usage(e: &UsageEvent) -> Result<Vec<u8>, CodecError> {
    let cost = wire_cost(e.cost_usd)?;
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&usage_family().header);
    binary::string(&mut out, &e.event_id);
    binary::long(&mut out, e.at.0);
    for s in [
        &e.organisation_id,
        &e.workspace_id,
        &e.api_key_id,
        &e.provider_id,
        &e.provider_slug,
        &e.integration_id,
        &e.ai_provider,
    ] {
        binary::string(&mut out, s);
    }
    binary::opt_string(&mut out, e.department.as_deref());
    binary::opt_string(&mut out, e.user.as_deref());
    if !e.metadata.is_empty() {
        binary::long(&mut out, e.metadata.len() as i64);
        for (k, v) in &e.metadata {
            binary::string(&mut out, k);
            binary::string(&mut out, v);
        }
    }
    binary::long(&mut out, 0);
    binary::string(&mut out, &e.model);
    binary::string(&mut out, e.endpoint.as_str());
    binary::long(&mut out, i64::from(e.status_code));
    for n in [e.prompt_tokens, e.completion_tokens, e.cached_tokens] {
        binary::long(&mut out, n as i64);
    }
    binary::bytes(&mut out, &cost.mantissa().to_be_bytes());
    binary::boolean(&mut out, e.priced);
    binary::long(
        &mut out,
        i64::from(e.usage_source == UsageSource::Estimated),
    );
    binary::long(&mut out, i64::from(e.latency_ms.min(i32::MAX as u32)));
    binary::long(
        &mut out,
        i64::from(e.upstream_latency_ms.min(i32::MAX as u32)),
    );
    binary::boolean(&mut out, e.streamed);
    binary::long(&mut out, i64::from(e.attempt_index.min(i32::MAX as u32)));
    binary::string(&mut out, &e.trace_id);
    binary::opt_string(&mut out, e.config_id.as_deref());
    Ok(out)
}

/// Decodes a usage event written with the current schema.
pub fn decode_usage(bytes: &[u8]) -> Result<UsageEvent, CodecError> {
    let family = usage_family();
    if bytes.len() < 10 || bytes[0] != 0xC3 || bytes[1] != 0x01 {
        return Err(CodecError::Marker);
    }
    if bytes[..10] != family.header {
        return Err(CodecError::UnknownSchema(fingerprint_u64(&bytes[2..10])));
    }
    let mut r = binary::Reader::new(&bytes[10..]);
    let event_id = r.string("event_id")?;
    let at = Millis(r.long("at")?);
    let mut ids = Vec::with_capacity(7);
    for f in [
        "organisation_id",
        "workspace_id",
        "api_key_id",
        "provider_id",
        "provider_slug",
        "integration_id",
        "ai_provider",
    ] {
        ids.push(r.string(f)?);
    }
    let department = r.opt_string("department")?;
    let user = r.opt_string("user")?;
    let metadata = r.string_map("metadata")?.into_iter().collect();
    let model = r.string("model")?;
    let endpoint = r.string("endpoint")?;
    let endpoint = Endpoint::parse(&endpoint).ok_or(CodecError::Field("endpoint", endpoint))?;
    let status_code = r.int("status_code")?;
    let prompt_tokens = r.int("prompt_tokens")?;
    let completion_tokens = r.int("completion_tokens")?;
    let cached_tokens = r.int("cached_tokens")?;
    let cost = r.bytes("cost_usd")?;
    if cost.len() > 16 {
        return Err(CodecError::Field("cost_usd", "wider than 128 bits".into()));
    }
    let fill = if cost.first().is_some_and(|x| x & 0x80 != 0) {
        0xFF
    } else {
        0
    };
    let mut wide = [fill; 16];
    wide[16 - cost.len()..].copy_from_slice(cost);
    let cost_usd = Decimal::try_from_i128_with_scale(i128::from_be_bytes(wide), COST_SCALE)
        .map_err(|e| CodecError::Field("cost_usd", e.to_string()))?
        .normalize();
    let priced = r.boolean("priced")?;
    let usage_source = match r.long("usage_source")? {
        0 => UsageSource::Provider,
        1 => UsageSource::Estimated,
        _ => return Err(CodecError::Field("usage_source", "unknown symbol".into())),
    };
    let latency_ms = r.int("latency_ms")?;
    let upstream_latency_ms = r.int("upstream_latency_ms")?;
    let streamed = r.boolean("streamed")?;
    let attempt_index = r.int("attempt_index")?;
    let trace_id = r.string("trace_id")?;
    let config_id = r.opt_string("config_id")?;
    if !r.is_empty() {
        return Err(CodecError::Field("(record)", "trailing bytes".into()));
    }
    let mut ids = ids.into_iter();
    let mut next = || ids.next().unwrap_or_default();
    Ok(UsageEvent {
        event_id,
        at,
        organisation_id: next(),
        workspace_id: next(),
        api_key_id: next(),
        provider_id: next(),
        provider_slug: next(),
        integration_id: next(),
        ai_provider: next(),
        department,
        user,
        metadata,
        model,
        endpoint,
        status_code,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        cost_usd,
        priced,
        usage_source,
        latency_ms,
        upstream_latency_ms,
        streamed,
        attempt_index,
        trace_id,
        config_id,
    })
}

fn entity_json(e: &Entity) -> Result<String, serde_json::Error> {
    match e {
        Entity::Organisation(x) => serde_json::to_string(x),
        Entity::Workspace(x) => serde_json::to_string(x),
        Entity::Integration(x) => serde_json::to_string(x),
        Entity::Provider(x) => serde_json::to_string(x),
        Entity::Config(x) => serde_json::to_string(x),
        Entity::ApiKey(x) => serde_json::to_string(x),
        Entity::Policy(x) => serde_json::to_string(x),
    }
}

fn entity_from_json(kind: EntityKind, json: &str) -> Result<Entity, serde_json::Error> {
    Ok(match kind {
        EntityKind::Organisation => Entity::Organisation(serde_json::from_str(json)?),
        EntityKind::Workspace => Entity::Workspace(serde_json::from_str(json)?),
        EntityKind::Integration => Entity::Integration(serde_json::from_str(json)?),
        EntityKind::Provider => Entity::Provider(serde_json::from_str(json)?),
        EntityKind::Config => Entity::Config(serde_json::from_str(json)?),
        EntityKind::ApiKey => Entity::ApiKey(serde_json::from_str(json)?),
        EntityKind::Policy => Entity::Policy(serde_json::from_str(json)?),
    })
}

/// Encodes a config event.
pub fn encode_config(e: &ConfigEvent) -> Result<Vec<u8>, CodecError> {
    let (kind, id, body) = match &e.change {
        Change::Upsert(entity) => (
            entity.kind(),
            entity.id().to_owned(),
            Some(entity_json(entity)?),
        ),
        Change::Delete { kind, id } => (*kind, id.clone(), None),
    };
    let index = EntityKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u32;
    let fields = vec![
        ("event_id".into(), s(&e.event_id)),
        ("at".into(), Value::TimestampMillis(e.at.0)),
        ("kind".into(), Value::Enum(index, kind.as_str().into())),
        ("entity_id".into(), Value::String(id)),
        ("entity".into(), opt(&body)),
    ];
    let mut fields = fields;
    fields.extend(audit_fields(&e.audit));
    config_family().encode(Value::Record(fields))
}

/// The audit fields of a config event (schema v2).
fn audit_fields(a: &Audit) -> Vec<(String, Value)> {
    let actor = match &a.actor {
        Some(x) => Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("key_id".into(), s(&x.key_id)),
                ("key_name".into(), s(&x.key_name)),
                ("created_by".into(), opt(&x.created_by)),
                ("workspace_id".into(), opt(&x.workspace_id)),
            ])),
        ),
        None => Value::Union(0, Box::new(Value::Null)),
    };
    let action = match a.action {
        Some(x) => {
            let index = Action::ALL.iter().position(|y| *y == x).unwrap_or(0) as u32;
            Value::Union(1, Box::new(Value::Enum(index, x.as_str().into())))
        }
        None => Value::Union(0, Box::new(Value::Null)),
    };
    vec![
        ("actor".into(), actor),
        ("action".into(), action),
        ("resource_name".into(), opt(&a.resource_name)),
        ("workspace_id".into(), opt(&a.workspace_id)),
        (
            "changed_fields".into(),
            Value::Array(a.changed_fields.iter().map(|f| s(f)).collect()),
        ),
    ]
}

/// Reads the audit fields of a decoded config event (defaults for a v1 record).
fn audit_from(f: &mut Fields) -> Result<Audit, CodecError> {
    let actor = match f.take("actor")? {
        Value::Record(fields) => {
            let mut r = record(fields);
            Some(Actor {
                key_id: r.string("key_id")?,
                key_name: r.string("key_name")?,
                created_by: r.opt_string("created_by")?,
                workspace_id: r.opt_string("workspace_id")?,
            })
        }
        _ => None,
    };
    let action = match f.take("action")? {
        Value::Enum(_, name) => {
            Some(Action::parse(&name).ok_or(CodecError::Field("action", name))?)
        }
        _ => None,
    };
    let changed_fields = match f.take("changed_fields")? {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Audit {
        actor,
        action,
        resource_name: f.opt_string("resource_name")?,
        workspace_id: f.opt_string("workspace_id")?,
        changed_fields,
    })
}

/// Decodes a config event.
pub fn decode_config(bytes: &[u8]) -> Result<ConfigEvent, CodecError> {
    let mut f = record(config_family().decode(bytes)?);
    let kind_name = f.string("kind")?;
    let kind = EntityKind::parse(&kind_name).ok_or(CodecError::Field("kind", kind_name))?;
    let id = f.string("entity_id")?;
    let change = match f.opt_string("entity")? {
        Some(json) => Change::Upsert(entity_from_json(kind, &json)?),
        None => Change::Delete { kind, id },
    };
    Ok(ConfigEvent {
        audit: Box::new(audit_from(&mut f)?),
        event_id: f.string("event_id")?,
        at: Millis(f.long("at")?),
        change,
    })
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
        v.parse::<Decimal>()
            .map_err(|e| CodecError::Field(name, e.to_string()))
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_log_batch_round_trips_and_other_values_are_not_batches() {
        let records: Vec<KeyValue> = vec![
            (b"k1".to_vec(), encode_usage(&sample_usage()).unwrap()),
            (Vec::new(), Vec::new()),
            (b"k3".to_vec(), vec![0xC3, 0x01, 0xff]),
        ];
        let bytes = encode_log_batch(&records).unwrap();
        assert_eq!(decode_log_batch(&bytes).unwrap().unwrap(), records);
        assert!(decode_log_batch(&records[0].1).is_none(), "a usage event");
        assert!(decode_log_batch(b"short").is_none());
        // A batch cut short is a batch that does not decode, never a plain record.
        let cut = &bytes[..bytes.len() - 3];
        assert!(matches!(decode_log_batch(cut), Some(Err(_))));
    }

    pub(crate) fn sample_usage() -> UsageEvent {
        let mut metadata = Metadata::new();
        metadata.insert("department".into(), "engineering".into());
        UsageEvent {
            event_id: uuid::Uuid::new_v4().to_string(),
            at: Millis(1_735_689_600_123),
            organisation_id: "org".into(),
            workspace_id: "ws".into(),
            api_key_id: "key".into(),
            provider_id: "prov".into(),
            provider_slug: "team".into(),
            integration_id: "int".into(),
            ai_provider: "openai".into(),
            department: Some("engineering".into()),
            user: None,
            metadata,
            model: "gpt-4o-mini".into(),
            endpoint: Endpoint::ChatCompletions,
            status_code: 200,
            prompt_tokens: 25,
            completion_tokens: 24,
            cached_tokens: 3,
            cost_usd: "0.000018150001".parse().unwrap(),
            priced: true,
            usage_source: UsageSource::Estimated,
            latency_ms: 12,
            upstream_latency_ms: 10,
            streamed: true,
            attempt_index: 1,
            trace_id: "trace".into(),
            config_id: Some("pc-1".into()),
        }
    }

    /// The reference: the same event through apache-avro's generic writer.
    fn apache_encode_usage(e: &UsageEvent) -> Result<Vec<u8>, CodecError> {
        let cost = wire_cost(e.cost_usd)?;
        let metadata = e.metadata.iter().map(|(k, v)| (k.clone(), s(v))).collect();
        let fields = vec![
            ("event_id".into(), s(&e.event_id)),
            ("at".into(), Value::TimestampMillis(e.at.0)),
            ("organisation_id".into(), s(&e.organisation_id)),
            ("workspace_id".into(), s(&e.workspace_id)),
            ("api_key_id".into(), s(&e.api_key_id)),
            ("provider_id".into(), s(&e.provider_id)),
            ("provider_slug".into(), s(&e.provider_slug)),
            ("integration_id".into(), s(&e.integration_id)),
            ("ai_provider".into(), s(&e.ai_provider)),
            ("department".into(), opt(&e.department)),
            ("user".into(), opt(&e.user)),
            ("metadata".into(), Value::Map(metadata)),
            ("model".into(), s(&e.model)),
            ("endpoint".into(), s(e.endpoint.as_str())),
            ("status_code".into(), Value::Int(i32::from(e.status_code))),
            ("prompt_tokens".into(), Value::Long(e.prompt_tokens as i64)),
            (
                "completion_tokens".into(),
                Value::Long(e.completion_tokens as i64),
            ),
            ("cached_tokens".into(), Value::Long(e.cached_tokens as i64)),
            (
                "cost_usd".into(),
                Value::Decimal(apache_avro::Decimal::from(cost.mantissa().to_be_bytes())),
            ),
            ("priced".into(), Value::Boolean(e.priced)),
            (
                "usage_source".into(),
                Value::Enum(
                    u32::from(e.usage_source == UsageSource::Estimated),
                    e.usage_source.as_str().into(),
                ),
            ),
            (
                "latency_ms".into(),
                Value::Int(e.latency_ms.min(i32::MAX as u32) as i32),
            ),
            (
                "upstream_latency_ms".into(),
                Value::Int(e.upstream_latency_ms.min(i32::MAX as u32) as i32),
            ),
            ("streamed".into(), Value::Boolean(e.streamed)),
            ("attempt_index".into(), Value::Int(e.attempt_index as i32)),
            ("trace_id".into(), s(&e.trace_id)),
            ("config_id".into(), opt(&e.config_id)),
        ];
        usage_family().encode(Value::Record(fields))
    }

    #[test]
    fn direct_encoding_is_byte_identical_to_apache_avro() {
        let mut e = sample_usage();
        for (dept, meta, cost) in [
            (None, false, "0"),
            (Some("x"), true, "-12.5"),
            (Some("y"), true, "123456789.000000000001"),
        ] {
            e.department = dept.map(str::to_owned);
            if !meta {
                e.metadata.clear();
            }
            e.cost_usd = cost.parse().unwrap();
            let ours = encode_usage(&e).unwrap();
            assert_eq!(ours, apache_encode_usage(&e).unwrap());
            // And apache-avro reads ours back to the same values.
            let fields = usage_family().decode(&ours).unwrap();
            assert_eq!(fields.len(), 27);
            assert_eq!(decode_usage(&ours).unwrap(), e);
        }
    }

    #[test]
    fn usage_round_trip_is_exact() {
        let e = sample_usage();
        let bytes = encode_usage(&e).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(decode_usage(&bytes).unwrap(), e);
        let mut neg = e.clone();
        neg.cost_usd = "-1.5".parse().unwrap();
        assert_eq!(
            decode_usage(&encode_usage(&neg).unwrap()).unwrap().cost_usd,
            neg.cost_usd
        );
    }

    #[test]
    fn too_precise_cost_is_refused_not_rounded() {
        let mut e = sample_usage();
        e.cost_usd = "0.0000000000001".parse().unwrap();
        assert!(matches!(
            encode_usage(&e),
            Err(CodecError::Field("cost_usd", _))
        ));
    }

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

    #[test]
    fn config_round_trip() {
        let ws = Workspace {
            id: "w1".into(),
            slug: "ws-a".into(),
            name: "A".into(),
            description: None,
            defaults: Default::default(),
            usage_limits: None,
            rate_limits: vec![],
            created_at: Millis(1),
            updated_at: Millis(2),
        };
        let actor = Actor {
            key_id: "k".into(),
            key_name: "Team key".into(),
            created_by: Some("admin".into()),
            workspace_id: Some("w1".into()),
        };
        let audits = [
            Audit::default(),
            Audit {
                actor: Some(actor),
                action: Some(Action::Updated),
                resource_name: Some("A".into()),
                workspace_id: Some("w1".into()),
                changed_fields: vec!["name".into(), "usage_limits".into()],
            },
        ];
        for audit in audits {
            for change in [
                Change::Upsert(Entity::Workspace(ws.clone())),
                Change::Delete {
                    kind: EntityKind::Workspace,
                    id: "w1".into(),
                },
            ] {
                let e = ConfigEvent {
                    audit: Box::new(audit.clone()),
                    event_id: "e".into(),
                    at: Millis(5),
                    change,
                };
                assert_eq!(decode_config(&encode_config(&e).unwrap()).unwrap(), e);
            }
        }
    }

    #[test]
    fn config_events_written_with_v1_still_decode() {
        let v1 = Family::new(CONFIG_SCHEMA_V1, &[]);
        let fields = vec![
            ("event_id".into(), s("e")),
            ("at".into(), Value::TimestampMillis(5)),
            ("kind".into(), Value::Enum(1, "workspace".into())),
            ("entity_id".into(), s("w1")),
            ("entity".into(), opt(&None)),
        ];
        let bytes = v1.encode(Value::Record(fields)).unwrap();
        assert_ne!(bytes[..10], config_family().header);
        let e = decode_config(&bytes).unwrap();
        assert_eq!(*e.audit, Audit::default());
        assert_eq!(
            e.change,
            Change::Delete {
                kind: EntityKind::Workspace,
                id: "w1".into()
            }
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_usage(b"").is_err());
        assert!(decode_usage(&[0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut bytes = encode_usage(&sample_usage()).unwrap();
        bytes.truncate(bytes.len() / 2);
        assert!(decode_usage(&bytes).is_err());
        assert!(decode_config(&bytes).is_err());
    }
}
