//! Anthropic Messages (`POST /v1/messages`, `anthropic-version: 2023-06-01`), both ways:
//!
//! - as an upstream for OpenAI callers: [`chat_request`] carries a chat-completions body into a
//!   Messages body, [`chat_response`] and [`ChatStream`] carry the answer back
//!   ([`request`], [`response`], [`stream`]);
//! - as the `/v1/messages` front door: [`messages_to_chat`] carries a Messages body to an
//!   OpenAI-format provider, [`chat_to_messages_response`] and [`MessagesStream`] carry its
//!   answer back into Anthropic's shapes ([`front`], [`front_stream`]); [`PassStream`] meters a
//!   native Anthropic stream passed through unchanged.
//!
//! Usage: Anthropic's `input_tokens` excludes the prompt tokens read from or written to the
//! cache, so the gateway's `prompt` is the sum of the three (see [`usage`]).

mod count;
mod front;
mod front_stream;
mod request;
mod response;
mod stream;

pub(crate) use count::count_field;
pub use count::{count_tokens_body, counted_tokens};
pub use front::{chat_to_messages_response, messages_to_chat};
pub use front_stream::{MessagesStream, PassStream};
pub use request::chat_request;
pub use response::chat_response;
pub use stream::ChatStream;

use serde_json::{json, Value};

use crate::domain::pricing::TokenUsage;
use crate::providers::Unsupported;

/// Anthropic's API root; an integration's `custom_host` replaces it.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";

/// The `anthropic-version` header every request carries.
pub const VERSION: &str = "2023-06-01";

/// The `max_tokens` sent when an OpenAI caller gives neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires it; OpenAI's default is "as many as fit").
/// 4,096 is the largest output every Claude model accepts, the oldest included.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The headers that authenticate a request to Anthropic (`x-api-key`) and choose the API
/// version; the caller's `anthropic-beta`, if any, is passed on beside them.
pub fn request_headers(api_key: &str) -> [(&'static str, &str); 2] {
    [("x-api-key", api_key), ("anthropic-version", VERSION)]
}

/// The gateway's usage from an Anthropic `usage` object: the prompt is fresh input plus cache
/// writes plus cache reads; missing or non-numeric counts are 0, sums saturate.
pub fn usage(u: &Value) -> TokenUsage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let cache_write = n("cache_creation_input_tokens");
    TokenUsage {
        prompt: n("input_tokens")
            .saturating_add(cache_write)
            .saturating_add(cached),
        completion: n("output_tokens"),
        cached,
        cache_write,
    }
}

/// The tools of a request, either way (OpenAI's or Anthropic's `tools`): none when absent, and
/// refused when not a list.
fn tool_list(v: &Value) -> Result<Option<&Vec<Value>>, Unsupported> {
    match v {
        Value::Null => Ok(None),
        Value::Array(list) => Ok(Some(list)),
        _ => Err(Unsupported("tools: must be a list".into())),
    }
}

/// Lays the counts of a stream's usage object `u` over the usage `seen` so far (`message_delta`
/// counts are cumulative and may repeat the input counts of `message_start`).
fn observe_usage(seen: &mut Option<Value>, u: &Value) {
    let Some(u) = u.as_object() else { return };
    let seen = seen.get_or_insert_with(|| json!({}));
    for (k, v) in u {
        if v.is_u64() {
            seen[k.as_str()] = v.clone();
        }
    }
}

/// The usage of a whole (non-streamed) Anthropic message, if it is JSON with a `usage` object.
pub fn messages_usage(body: &[u8]) -> Option<TokenUsage> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("usage").filter(|u| u.is_object()).map(usage)
}

/// `(type, message)` of an Anthropic error body `{"type":"error","error":{"type","message"}}`,
/// for the OpenAI error envelope an OpenAI caller gets.
pub fn error_message(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let kind = e.get("type")?.as_str()?;
    let message = e.get("message")?.as_str()?;
    Some((kind.to_owned(), message.to_owned()))
}

/// Anthropic's error body, as the `/v1/messages` front door answers errors.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error `type` for an HTTP status (its documented table, with the newer 402
/// `billing_error` and 504 `timeout_error`; other 4xx are `invalid_request_error`, as
/// Anthropic's errors page says, other 5xx `api_error`).
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// A frame of an Anthropic caller's stream: `event: {name}\ndata: {json}\n\n`.
fn named_frame(name: &str, v: &Value) -> bytes::Bytes {
    bytes::Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(
            request_headers("sk-ant-1"),
            [
                ("x-api-key", "sk-ant-1"),
                ("anthropic-version", "2023-06-01")
            ]
        );
    }

    #[test]
    fn usage_sums_the_three_input_counts() {
        let u = usage(
            &json!({"input_tokens": 10, "cache_creation_input_tokens": 200,
            "cache_read_input_tokens": 3000, "output_tokens": 7}),
        );
        assert_eq!(
            u,
            TokenUsage {
                prompt: 3210,
                completion: 7,
                cached: 3000,
                cache_write: 200
            }
        );
        assert_eq!(usage(&json!({"input_tokens": "x"})), TokenUsage::default());
        let huge = usage(&json!({"input_tokens": u64::MAX, "cache_read_input_tokens": 5}));
        assert_eq!(huge.prompt, u64::MAX);
    }

    #[test]
    fn messages_usage_reads_a_whole_message() {
        let body = br#"{"type":"message","usage":{"input_tokens":3,"output_tokens":4}}"#;
        assert_eq!(
            messages_usage(body).map(|u| (u.prompt, u.completion)),
            Some((3, 4))
        );
        assert_eq!(messages_usage(b"not json"), None);
        assert_eq!(messages_usage(br#"{"usage":7}"#), None);
    }

    #[test]
    fn errors_both_ways() {
        let body =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            error_message(body),
            Some(("overloaded_error".into(), "Overloaded".into()))
        );
        assert_eq!(error_message(b"<html>"), None);
        assert_eq!(error_message(br#"{"error":{"type":1}}"#), None);
        let v = error_body("rate_limit_error", "slow down");
        assert_eq!(
            error_message(v.to_string().as_bytes()),
            Some(("rate_limit_error".into(), "slow down".into()))
        );
        let table = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (529, "overloaded_error"),
            (502, "api_error"),
            (422, "invalid_request_error"),
        ];
        for (status, kind) in table {
            assert_eq!(error_type_for_status(status), kind, "{status}");
        }
    }

    mod hostile {
        //! Any JSON built from the protocols' own words, fed to every entry point: an answer or
        //! an error, never a panic.
        use proptest::prelude::*;
        use serde_json::{Map, Value};

        use super::super::*;
        use crate::providers::{Event, StreamTranslator};

        const WORDS: &[&str] = &[
            "type",
            "role",
            "content",
            "messages",
            "text",
            "tool_calls",
            "function",
            "name",
            "arguments",
            "id",
            "index",
            "delta",
            "usage",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "message",
            "content_block",
            "partial_json",
            "tools",
            "tool_choice",
            "image_url",
            "url",
            "source",
            "stop",
            "choices",
            "finish_reason",
            "tool_use_id",
            "tool_call_id",
            "system",
            "input",
            "user",
            "assistant",
            "tool",
            "tool_use",
            "tool_result",
            "image",
            "message_start",
            "content_block_start",
            "content_block_delta",
            "text_delta",
            "input_json_delta",
            "message_delta",
            "error",
            "base64",
            "data:image/png;base64,AA",
            "https://x",
            "{",
            "",
        ];

        fn word() -> impl Strategy<Value = String> {
            prop::sample::select(WORDS).prop_map(str::to_owned)
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                (0u64..5).prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                word().prop_map(Value::from),
            ];
            leaf.prop_recursive(5, 96, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::vec((word(), inner), 0..7)
                        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
                ]
            })
        }

        fn stream_all(events: &[Value]) {
            let mut translators: Vec<Box<dyn StreamTranslator>> = vec![
                Box::new(ChatStream::new("m", true)),
                Box::new(MessagesStream::new("m")),
                Box::new(PassStream::new()),
            ];
            for t in &mut translators {
                let mut out = Vec::new();
                for e in events {
                    let data = e.to_string();
                    let _ = t.event(
                        Event {
                            name: None,
                            data: data.as_bytes(),
                        },
                        &mut out,
                    );
                }
                t.finish(&mut out);
                let _ = (t.usage(), t.chars());
            }
        }

        proptest! {
            #[test]
            fn nothing_panics(v in json(), events in prop::collection::vec(json(), 0..12)) {
                let bytes = v.to_string();
                let _ = chat_response(bytes.as_bytes());
                let _ = chat_to_messages_response(bytes.as_bytes());
                let _ = (messages_usage(bytes.as_bytes()), error_message(bytes.as_bytes()), usage(&v));
                if let Some(m) = v.as_object() {
                    let _ = chat_request(m, "m", true);
                    let _ = messages_to_chat(m);
                }
                stream_all(&events);
            }
        }
    }
}
