//! Usage events (schema `usage_event.v2`; v1 records, before `cache_write_tokens`, still read),
//! one per upstream attempt: on the request path, so written and read field by field with
//! [`super::binary`] rather than apache-avro's generic values.

use std::sync::OnceLock;

use rust_decimal::Decimal;

use super::binary;
use super::{fingerprint_u64, CodecError, Family, USAGE_SCHEMA, USAGE_SCHEMA_V1};
use crate::domain::*;

/// Scale of `cost_usd` on the wire (Avro `decimal(38, 12)`); prices have at most 12 places in dollars.
const COST_SCALE: u32 = 12;

fn usage_family() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| Family::new(USAGE_SCHEMA, &[USAGE_SCHEMA_V1]))
}

/// The single-object header of v1 records (the fields of v2 but the last).
fn v1_header() -> &'static [u8; 10] {
    static H: OnceLock<[u8; 10]> = OnceLock::new();
    H.get_or_init(|| Family::new(USAGE_SCHEMA_V1, &[]).header)
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

/// Encodes a usage event (schema `usage_event.v2`), field by field.
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
    binary::long(&mut out, e.cache_write_tokens as i64);
    Ok(out)
}

/// Decodes a usage event written with the current schema or v1 (whose fields are v2's but the
/// last, `cache_write_tokens`, read as 0).
pub fn decode_usage(bytes: &[u8]) -> Result<UsageEvent, CodecError> {
    let family = usage_family();
    if bytes.len() < 10 || bytes[0] != 0xC3 || bytes[1] != 0x01 {
        return Err(CodecError::Marker);
    }
    let v2 = bytes[..10] == family.header;
    if !v2 && bytes[..10] != v1_header()[..] {
        return Err(CodecError::UnknownSchema(fingerprint_u64(&bytes[2..10])));
    }
    let mut r = binary::Reader::new(&bytes[10..]);
    // In schema order: a struct expression evaluates its fields in the order they are written.
    let e = UsageEvent {
        event_id: r.string("event_id")?,
        at: Millis(r.long("at")?),
        organisation_id: r.string("organisation_id")?,
        workspace_id: r.string("workspace_id")?,
        api_key_id: r.string("api_key_id")?,
        provider_id: r.string("provider_id")?,
        provider_slug: r.string("provider_slug")?,
        integration_id: r.string("integration_id")?,
        ai_provider: r.string("ai_provider")?,
        department: r.opt_string("department")?,
        user: r.opt_string("user")?,
        metadata: r.string_map("metadata")?.into_iter().collect(),
        model: r.string("model")?,
        endpoint: {
            let name = r.string("endpoint")?;
            Endpoint::parse(&name).ok_or(CodecError::Field("endpoint", name))?
        },
        status_code: r.int("status_code")?,
        prompt_tokens: r.int("prompt_tokens")?,
        completion_tokens: r.int("completion_tokens")?,
        cached_tokens: r.int("cached_tokens")?,
        cost_usd: cost_from_wire(r.bytes("cost_usd")?)?,
        priced: r.boolean("priced")?,
        usage_source: match r.long("usage_source")? {
            0 => UsageSource::Provider,
            1 => UsageSource::Estimated,
            _ => return Err(CodecError::Field("usage_source", "unknown symbol".into())),
        },
        latency_ms: r.int("latency_ms")?,
        upstream_latency_ms: r.int("upstream_latency_ms")?,
        streamed: r.boolean("streamed")?,
        attempt_index: r.int("attempt_index")?,
        trace_id: r.string("trace_id")?,
        config_id: r.opt_string("config_id")?,
        cache_write_tokens: if v2 { r.int("cache_write_tokens")? } else { 0 },
    };
    if !r.is_empty() {
        return Err(CodecError::Field("(record)", "trailing bytes".into()));
    }
    Ok(e)
}

/// The cost from its wire form: a big-endian two's-complement mantissa at [`COST_SCALE`].
fn cost_from_wire(cost: &[u8]) -> Result<Decimal, CodecError> {
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
    Decimal::try_from_i128_with_scale(i128::from_be_bytes(wide), COST_SCALE)
        .map(|d| d.normalize())
        .map_err(|source| CodecError::Decimal {
            field: "cost_usd",
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use apache_avro::types::Value;

    use super::*;
    use crate::codec::value::{opt, s};

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
            cache_write_tokens: 2,
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
            (
                "cache_write_tokens".into(),
                Value::Long(e.cache_write_tokens as i64),
            ),
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
            assert_eq!(fields.len(), 28);
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
    fn v1_records_still_decode_with_no_cache_writes() {
        let mut e = sample_usage();
        e.cache_write_tokens = 0;
        let v2 = encode_usage(&e).unwrap();
        // A v1 record: v2's bytes without the last field (a zero long is one byte), under v1's
        // header.
        let mut v1 = v1_header().to_vec();
        v1.extend_from_slice(&v2[10..v2.len() - 1]);
        assert_eq!(decode_usage(&v1).unwrap(), e);
        // apache-avro resolves it to the current schema the same way.
        let fields = usage_family().decode(&v1).unwrap();
        assert_eq!(fields.last().unwrap().1, Value::Long(0));
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
}
