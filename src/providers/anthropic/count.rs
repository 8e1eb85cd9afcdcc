//! Token counting (`POST /v1/messages/count_tokens`): the request fields Anthropic's counter
//! takes, and its answer (`{"input_tokens": N}`) read. Claude on Vertex counts the same body at
//! its `count-tokens:rawPredict`; Bedrock's `CountTokens` wraps it (see
//! [`crate::providers::bedrock::count_tokens_request`]).

use serde_json::{Map, Value};

use crate::providers::Garbled;

/// The fields a `count_tokens` request may carry; whatever else a config's `override_params`
/// lays over the request (`max_tokens`, `temperature`, ...) is left out, as Anthropic refuses
/// extra fields there.
const COUNTED_FIELDS: [&str; 7] = [
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
];

/// The body Anthropic's token counter is sent: `merged`'s counted fields only.
pub fn count_tokens_body(merged: &Map<String, Value>) -> Map<String, Value> {
    merged
        .iter()
        .filter(|(k, _)| COUNTED_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The tokens a counter's answer gives (Anthropic's and Vertex's shape).
pub fn counted_tokens(body: &[u8]) -> Result<u64, Garbled> {
    count_field(body, "input_tokens")
}

/// The number in `field` of a counter's JSON answer.
pub(crate) fn count_field(body: &[u8], field: &str) -> Result<u64, Garbled> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Garbled(format!("the token count is not JSON: {e}")))?;
    v[field]
        .as_u64()
        .ok_or_else(|| Garbled(format!("the token count has no {field}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_counted_fields_are_sent_and_the_answer_is_read() {
        let Value::Object(merged) = json!({"model": "claude-x", "messages": [], "system": "s",
            "max_tokens": 10, "temperature": 0.2, "tools": [], "metadata": {"user_id": "u"}})
        else {
            unreachable!()
        };
        let body = count_tokens_body(&merged);
        let mut keys: Vec<&str> = body.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["messages", "model", "system", "tools"]);
        assert_eq!(counted_tokens(br#"{"input_tokens": 42}"#).unwrap(), 42);
        for bad in [&b"<html>"[..], br#"{"input_tokens": "x"}"#, b"{}"] {
            assert!(counted_tokens(bad).is_err());
        }
    }
}
