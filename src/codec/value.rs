//! Building and reading apache-avro generic values: the config, limit and batch families go
//! through these (the usage family is written directly, see [`super::binary`]).

use std::collections::HashMap;

use apache_avro::types::Value;

use super::CodecError;

pub(super) fn opt(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

pub(super) fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Field access on a decoded record.
pub(super) struct Fields(HashMap<String, Value>);

impl Fields {
    pub(super) fn take(&mut self, name: &'static str) -> Result<Value, CodecError> {
        let v = self
            .0
            .remove(name)
            .ok_or(CodecError::Field(name, "missing".into()))?;
        Ok(match v {
            Value::Union(_, inner) => *inner,
            other => other,
        })
    }

    pub(super) fn string(&mut self, name: &'static str) -> Result<String, CodecError> {
        match self.take(name)? {
            Value::String(s) | Value::Enum(_, s) => Ok(s),
            other => Err(CodecError::Field(
                name,
                format!("expected string, got {other:?}"),
            )),
        }
    }

    pub(super) fn opt_string(&mut self, name: &'static str) -> Result<Option<String>, CodecError> {
        match self.take(name)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(CodecError::Field(
                name,
                format!("expected string or null, got {other:?}"),
            )),
        }
    }

    pub(super) fn bytes(&mut self, name: &'static str) -> Result<Vec<u8>, CodecError> {
        match self.take(name)? {
            Value::Bytes(b) => Ok(b),
            other => Err(CodecError::Field(
                name,
                format!("expected bytes, got {other:?}"),
            )),
        }
    }

    pub(super) fn long(&mut self, name: &'static str) -> Result<i64, CodecError> {
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

pub(super) fn record(fields: Vec<(String, Value)>) -> Fields {
    Fields(fields.into_iter().collect())
}
