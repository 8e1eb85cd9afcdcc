//! InvokeModel for Anthropic models on Bedrock, used when the caller speaks Anthropic's
//! `/v1/messages`: the body is Anthropic's Messages request less `model` (it is in the path)
//! and `stream` (the action says it: `invoke` or `invoke-with-response-stream`), with
//! `anthropic_version: "bedrock-2023-05-31"`. The plain answer is Anthropic's message JSON as
//! is. The streamed answer is an AWS event stream whose `chunk` events carry
//! `{"bytes": base64}`, each one Anthropic stream event (`message_start`, ...; the last,
//! `message_stop`, also carries `amazon-bedrock-invocationMetrics`); [`invoke_chunk`] unwraps
//! one ([`anthropic_event_type`] names it), and the Anthropic translator takes it from there.

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::providers::Garbled;

/// The `anthropic_version` Bedrock requires in an Anthropic InvokeModel body.
pub const BEDROCK_ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";

/// The InvokeModel body for an Anthropic Messages request.
pub fn invoke_anthropic_body(messages_req: &Map<String, Value>) -> Value {
    let mut body: Map<String, Value> = messages_req
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "model" | "stream"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    body.insert(
        "anthropic_version".into(),
        Value::from(BEDROCK_ANTHROPIC_VERSION),
    );
    Value::Object(body)
}

/// Carries the caller's `anthropic-beta` header (comma-separated flags) into the InvokeModel
/// body, where Bedrock takes it: `anthropic_beta: ["flag", ...]`.
pub fn set_anthropic_beta(body: &mut Value, header: &str) {
    let flags: Vec<Value> = header
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(Value::from)
        .collect();
    if let (Some(obj), false) = (body.as_object_mut(), flags.is_empty()) {
        obj.insert("anthropic_beta".into(), Value::Array(flags));
    }
}

/// The Anthropic event JSON inside a `chunk` event's payload `{"bytes": base64}`.
pub fn invoke_chunk(payload: &[u8]) -> Result<Bytes, Garbled> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| Garbled(format!("Bedrock chunk event is not JSON: {e}")))?;
    let b64 = v
        .get("bytes")
        .and_then(Value::as_str)
        .ok_or_else(|| Garbled("Bedrock chunk event has no bytes".into()))?;
    let inner = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| Garbled("Bedrock chunk bytes are not base64".into()))?;
    Ok(Bytes::from(inner))
}

/// The `type` of an unwrapped Anthropic event (`message_start`, ...): its SSE event name for
/// the Anthropic translator.
pub fn anthropic_event_type(event: &[u8]) -> Result<String, Garbled> {
    let v: Value = serde_json::from_slice(event)
        .map_err(|e| Garbled(format!("Bedrock chunk is not an Anthropic event: {e}")))?;
    v.get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Garbled("Bedrock chunk's Anthropic event has no type".into()))
}

/// Bedrock's `CountTokens` for an Anthropic model: the path and body counting what
/// InvokeModel would be sent for `counted` (an Anthropic `count_tokens` body, see
/// [`crate::providers::anthropic::count_tokens_body`]). The body is InvokeModel's, base64 in
/// `input.invokeModel.body`, with `max_tokens` (which InvokeModel requires and counting
/// ignores): the caller's, else the default or, when more, one past the thinking budget (which
/// InvokeModel wants below it); the caller's `anthropic-beta` flags go in as on InvokeModel. The
/// counter takes foundation-model ids only, so a cross-region inference profile's
/// (`us.anthropic...`) is counted as its model's.
pub fn count_tokens_request(
    model: &str,
    counted: &Map<String, Value>,
    max_tokens: Option<u64>,
    beta: Option<&str>,
) -> (String, Value) {
    let mut invoke = invoke_anthropic_body(counted);
    let thinking = counted
        .get("thinking")
        .and_then(|t| t.get("budget_tokens"))
        .and_then(Value::as_u64)
        .map_or(0, |b| b.saturating_add(1));
    let max_tokens =
        max_tokens.unwrap_or(crate::providers::anthropic::DEFAULT_MAX_TOKENS.max(thinking));
    if let Some(b) = invoke.as_object_mut() {
        b.insert("max_tokens".into(), Value::from(max_tokens));
    }
    if let Some(beta) = beta {
        set_anthropic_beta(&mut invoke, beta);
    }
    let bytes = serde_json::to_vec(&invoke).unwrap_or_default();
    let body = serde_json::json!({"input": {"invokeModel": {
        "body": base64::engine::general_purpose::STANDARD.encode(bytes)}}});
    (
        super::model_path(foundation_model(model), "count-tokens"),
        body,
    )
}

/// The foundation model of a cross-region inference profile id (`us.anthropic.claude-...`
/// is `anthropic.claude-...`); any other id (an ARN included) as it is.
fn foundation_model(model: &str) -> &str {
    match model.split_once('.') {
        Some((geo, rest))
            if rest.starts_with("anthropic.")
                && !geo.is_empty()
                && geo.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') =>
        {
            rest
        }
        _ => model,
    }
}

/// The tokens a `CountTokens` answer (`{"inputTokens": N}`) gives.
pub fn count_tokens_response(body: &[u8]) -> Result<u64, Garbled> {
    crate::providers::anthropic::count_field(body, "inputTokens")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn body_drops_model_and_stream() {
        let req = json!({"model": "claude", "stream": true, "max_tokens": 10, "anthropic_version": "2023-06-01",
                         "messages": [{"role": "user", "content": "hi"}]});
        let Value::Object(req) = req else {
            unreachable!()
        };
        assert_eq!(
            invoke_anthropic_body(&req),
            json!({"max_tokens": 10, "anthropic_version": "bedrock-2023-05-31",
                   "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn beta_flags_go_in_the_body() {
        let mut body = json!({"max_tokens": 1});
        set_anthropic_beta(&mut body, "");
        assert_eq!(body, json!({"max_tokens": 1}));
        set_anthropic_beta(&mut body, "a-2025, b-2024 ");
        assert_eq!(body["anthropic_beta"], json!(["a-2025", "b-2024"]));
    }

    #[test]
    fn chunks_unwrap() {
        let inner = r#"{"type":"message_start","message":{"usage":{"input_tokens":3}}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let payload = json!({"bytes": b64}).to_string();
        assert_eq!(
            &invoke_chunk(payload.as_bytes()).unwrap()[..],
            inner.as_bytes()
        );
        for bad in ["", "{}", r#"{"bytes": 5}"#, r#"{"bytes": "%%%"}"#] {
            assert!(invoke_chunk(bad.as_bytes()).is_err(), "{bad}");
        }
    }
    #[test]
    fn count_tokens_wraps_the_invoke_body_for_the_foundation_model() {
        let Value::Object(counted) =
            json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        else {
            unreachable!()
        };
        for (model, path) in [
            ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", "/model/anthropic.claude-3-7-sonnet-20250219-v1%3A0/count-tokens"),
            ("anthropic.claude-x", "/model/anthropic.claude-x/count-tokens"),
            ("arn:aws:bedrock:us-east-1:1:application-inference-profile/p", "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Aapplication-inference-profile%2Fp/count-tokens"),
        ] {
            let (p, body) = count_tokens_request(model, &counted, None, None);
            assert_eq!(p, path);
            let b64 = body["input"]["invokeModel"]["body"].as_str().unwrap();
            let invoke: Value = serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
            )
            .unwrap();
            assert_eq!(
                invoke,
                json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 4096,
                       "messages": [{"role": "user", "content": "hi"}]})
            );
        }
        // A thinking budget past the default, the caller's max_tokens, beta flags.
        let Value::Object(thinking) =
            json!({"messages": [], "thinking": {"type": "enabled", "budget_tokens": 10000}})
        else {
            unreachable!()
        };
        let invoke = |body: Value| -> Value {
            let b64 = body["input"]["invokeModel"]["body"]
                .as_str()
                .unwrap()
                .to_owned();
            serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            )
            .unwrap()
        };
        let (_, body) = count_tokens_request("anthropic.c", &thinking, None, Some("b1, b2"));
        let sent = invoke(body);
        assert_eq!(sent["max_tokens"], 10001);
        assert_eq!(sent["anthropic_beta"], json!(["b1", "b2"]));
        let (_, body) = count_tokens_request("anthropic.c", &thinking, Some(20000), None);
        assert_eq!(invoke(body)["max_tokens"], 20000);
        assert_eq!(count_tokens_response(br#"{"inputTokens": 9}"#).unwrap(), 9);
        assert!(count_tokens_response(br#"{"input_tokens": 9}"#).is_err());
        assert!(count_tokens_response(b"garbage").is_err());
    }
}
