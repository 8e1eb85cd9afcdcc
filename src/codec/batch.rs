//! Records that must commit together, carried as one value (schema `log_batch.v1`): the Kafka
//! adapter writes a command's config changes as one Kafka record.

use std::sync::OnceLock;

use apache_avro::types::Value;

use super::value::record;
use super::{CodecError, Family, LOG_BATCH_SCHEMA};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_usage;
    use crate::codec::tests::sample_usage;

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
}
