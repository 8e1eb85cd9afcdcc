//! Field access on JSON request bodies and query values, with the contract's leniencies.

use serde_json::{Map, Value};

use super::{ControlError, Result};
use crate::domain::Millis;

/// A 400 with `m` as its message.
pub(super) fn invalid(m: impl Into<String>) -> ControlError {
    ControlError::Invalid(m.into())
}

/// Field access on a JSON request body, with the contract's leniencies: null means unset,
/// and a field of the wrong type is a 400 naming it.
pub struct Body<'a>(pub &'a Map<String, Value>);

impl<'a> Body<'a> {
    /// The body, which must be a JSON object.
    pub fn of(v: &'a Value) -> Result<Self> {
        v.as_object()
            .map(Body)
            .ok_or_else(|| invalid("the request body must be a JSON object"))
    }

    /// Field `k`, unless absent or null.
    pub fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    /// A string.
    pub fn str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(invalid(format!("{k} must be a string"))),
        }
    }

    /// A string that is present and not blank.
    pub fn required_str(&self, k: &str) -> Result<&'a str> {
        self.str(k)?
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid(format!("{k} is required")))
    }

    /// A string that, when given, is not blank; trimmed.
    pub fn nonempty_str(&self, k: &str) -> Result<Option<String>> {
        match self.str(k)?.map(str::trim) {
            Some("") => Err(invalid(format!("{k} must not be empty"))),
            n => Ok(n.map(str::to_owned)),
        }
    }

    /// A boolean; also `0`/`1` and `"true"`/`"false"` in any case.
    pub fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) || n.as_u64() == Some(1) => {
                Ok(Some(n.as_u64() == Some(1)))
            }
            Some(Value::String(s)) => parse_bool(s)
                .map(Some)
                .ok_or_else(|| invalid(format!("{k} must be a boolean"))),
            Some(_) => Err(invalid(format!("{k} must be a boolean"))),
        }
    }

    /// An object.
    pub fn object(&self, k: &str) -> Result<Option<&'a Map<String, Value>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(invalid(format!("{k} must be an object"))),
        }
    }

    /// An array; absent (or null) is empty.
    pub fn array(&self, k: &str) -> Result<&'a [Value]> {
        match self.get(k) {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(invalid(format!("{k} must be an array"))),
        }
    }

    /// A list of strings.
    pub fn string_list(&self, k: &str) -> Result<Option<Vec<String>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{k} must be a list of strings")))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(invalid(format!("{k} must be a list of strings"))),
        }
    }

    /// An ISO timestamp; `Some(None)` when the field is present and null (clears it).
    pub fn timestamp(&self, k: &str) -> Result<Option<Option<Millis>>> {
        match self.0.get(k) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) => Millis::parse_iso(s)
                .map(|m| Some(Some(m)))
                .ok_or_else(|| invalid(format!("{k} must be an ISO-8601 timestamp"))),
            Some(_) => Err(invalid(format!("{k} must be an ISO-8601 timestamp"))),
        }
    }
}

/// `true`/`false` in any case, as Python sends them in query strings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_from_python() {
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("FALSE"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
