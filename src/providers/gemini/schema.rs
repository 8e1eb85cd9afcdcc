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
        Value::Object(map) => {
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
                let v = match k.as_str() {
                    // Property names are data, not keywords: clean the values only.
                    "properties" => match v {
                        Value::Object(props) => Value::Object(
                            props
                                .iter()
                                .map(|(name, s)| {
                                    Ok((name.clone(), clean_schema(s, field, depth + 1)?))
                                })
                                .collect::<Result<_, Unsupported>>()?,
                        ),
                        other => other.clone(),
                    },
                    "type" => match v {
                        Value::Array(types) => {
                            let real: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
                            if real.len() != 1 {
                                return Err(unsupported(format!(
                                    "{field}: a type list must be one type, optionally with \"null\""
                                )));
                            }
                            if real.len() != types.len() {
                                out.insert("nullable".into(), json!(true));
                            }
                            real[0].clone()
                        }
                        other => other.clone(),
                    },
                    _ => clean_schema(v, field, depth + 1)?,
                };
                out.insert(k.clone(), v);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => Ok(Value::Array(
            items
                .iter()
                .map(|s| clean_schema(s, field, depth + 1))
                .collect::<Result<_, _>>()?,
        )),
        other => Ok(other.clone()),
    }
}
