//! The wire form of events: Avro single-object encoding (`C3 01`, the writer schema's 8-byte
//! CRC-64-AVRO fingerprint, then the Avro body), with the schemas in `schemas/`. A reader looks up
//! the writer schema by fingerprint and resolves it to the current schema, so compatible schema
//! evolution (new optional fields) reads old and new records alike.
//!
//! One module per event family: `usage` (written field by field, see `binary`), `config`,
//! `limit` and `batch` (records that commit together); `value` is the generic-value access
//! the last three share. This module owns the schemas, the framing and [`CodecError`].

mod batch;
mod binary;
mod config;
mod limit;
mod usage;
mod value;

use std::collections::HashMap;

use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::{from_avro_datum, to_avro_datum, Schema};

pub use batch::{decode_log_batch, encode_log_batch, KeyValue};
pub use config::{decode_config, encode_config};
pub use limit::{decode_limit, encode_limit};
pub use usage::{decode_usage, encode_usage};

/// The current writer schemas.
pub const USAGE_SCHEMA: &str = include_str!("../../schemas/usage_event.v2.avsc");
pub const CONFIG_SCHEMA: &str = include_str!("../../schemas/config_event.v2.avsc");
pub const LIMIT_SCHEMA: &str = include_str!("../../schemas/limit_event.v2.avsc");
pub const LOG_BATCH_SCHEMA: &str = include_str!("../../schemas/log_batch.v1.avsc");
/// Earlier writer schemas of config events (before the audit fields), still readable.
/// Usage events before `cache_write_tokens` (read as 0).
const USAGE_SCHEMA_V1: &str = include_str!("../../schemas/usage_event.v1.avsc");
const CONFIG_SCHEMA_V1: &str = include_str!("../../schemas/config_event.v1.avsc");
/// Earlier writer schemas of limit events, still readable.
const LIMIT_SCHEMA_V1: &str = include_str!("../../schemas/limit_event.v1.avsc");

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
    #[error("field {field}: {source}")]
    Decimal {
        field: &'static str,
        #[source]
        source: rust_decimal::Error,
    },
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
        #[expect(
            clippy::expect_used,
            reason = "the schemas are compiled in and checked by tests; a parse failure is a build defect"
        )]
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::usage::tests::sample_usage;

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
