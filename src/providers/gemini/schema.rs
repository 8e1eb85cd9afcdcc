//! JSON schemas (tool parameters, a `json_schema` response format) cleaned for Gemini's
//! OpenAPI-subset `Schema`, which answers 400 to keywords it does not know.

use serde_json::{json, Map, Value};

use super::request::unsupported;
use crate::providers::Unsupported;

/// Schema keywords removed before a schema goes to Gemini, which answers 400 to them.
pub const DROPPED_SCHEMA_KEYS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "additionalProperties",
    "unevaluatedProperties",
    "patternProperties",
    "strict",
    "examples",
    "const",
    "default",
];

/// A JSON schema in Gemini's subset (see the module doc); `depth` bounds hostile nesting.
pub(super) fn clean_schema(
    schema: &Value,
    field: &str,
    depth: usize,
) -> Result<Value, Unsupported> {
    if depth > 64 {
        return Err(unsupported(format!("{field}: the schema nests too deeply")));
    }
    match schema {
        Value::Object(map) => clean_object(map, field, depth),
        Value::Array(items) => Ok(Value::Array(
            items
                .iter()
                .map(|s| clean_schema(s, field, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(other.clone()),
    }
}

fn clean_object(map: &Map<String, Value>, field: &str, depth: usize) -> Result<Value, Unsupported> {
    if map.contains_key("$ref") {
        return Err(unsupported(format!(
            "{field}: $ref is not supported by Gemini; inline the definition"
        )));
    }
    let mut out = Map::new();
    for (k, v) in map {
        if DROPPED_SCHEMA_KEYS.contains(&k.as_str()) || k == "$defs" || k == "definitions" {
            continue;
        }
        let v = match (k.as_str(), v) {
            // Property names are data, not keywords: clean the values only.
            ("properties", Value::Object(props)) => Value::Object(
                props
                    .iter()
                    .map(|(name, s)| Ok((name.clone(), clean_schema(s, field, depth + 1)?)))
                    .collect::<Result<_, Unsupported>>()?,
            ),
            ("type", Value::Array(types)) => {
                let (t, nullable) = one_type(types, field)?;
                if nullable {
                    out.insert("nullable".into(), json!(true));
                }
                t
            }
            _ => clean_schema(v, field, depth + 1)?,
        };
        out.insert(k.clone(), v);
    }
    Ok(Value::Object(out))
}

/// `type: [T, "null"]` as Gemini says it: `T` and `nullable`.
fn one_type(types: &[Value], field: &str) -> Result<(Value, bool), Unsupported> {
    let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
    match real.as_slice() {
        [t] => Ok(((*t).clone(), real.len() != types.len())),
        _ => Err(unsupported(format!(
            "{field}: a type list must be one type, optionally with \"null\""
        ))),
    }
}
