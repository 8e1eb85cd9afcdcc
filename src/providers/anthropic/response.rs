//! An Anthropic message carried back into an OpenAI `chat.completion`.
//!
//! Text blocks are joined into `content` (null when there are none), `tool_use` blocks become
//! `tool_calls` (arguments as a JSON string), `thinking` blocks become `reasoning_content` (the
//! field OpenAI-compatible reasoning models use; their tokens are in `output_tokens`, billed as
//! completion; signatures and redacted thinking are dropped).

use serde_json::{json, Value};

use super::usage;
use crate::domain::pricing::TokenUsage;
use crate::providers::chat_stream::created_now;
use crate::providers::Garbled;

/// The `chat.completion` for an Anthropic message body, and the usage it reports (`None` when
/// the body has no `usage` object, for the caller to estimate).
pub fn chat_response(body: &[u8]) -> Result<(Value, Option<TokenUsage>), Garbled> {
    let msg: Value = serde_json::from_slice(body)
        .map_err(|e| Garbled(format!("Anthropic answer is not JSON: {e}")))?;
    let blocks = msg["content"]
        .as_array()
        .ok_or_else(|| Garbled("Anthropic answer has no content list".into()))?;
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    for (i, b) in blocks.iter().enumerate() {
        match b["type"].as_str() {
            Some("text") => {
                let t = b["text"]
                    .as_str()
                    .ok_or_else(|| Garbled(format!("content[{i}] text block has no text")))?;
                text.push_str(t);
                has_text = true;
            }
            Some("tool_use") => calls.push(tool_call(b, i)?),
            Some("thinking") => reasoning.push_str(b["thinking"].as_str().unwrap_or("")),
            Some(_) => {}
            None => return Err(Garbled(format!("content[{i}] has no type"))),
        }
    }
    let mut message = json!({"role": "assistant", "content": has_text.then_some(text)});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let u = msg.get("usage").filter(|u| u.is_object()).map(usage);
    let mut out = json!({
        "id": msg["id"].as_str().unwrap_or("msg"),
        "object": "chat.completion",
        "created": created_now(),
        "model": msg["model"],
        "choices": [{"index": 0, "message": message, "logprobs": null,
            "finish_reason": finish_reason(&msg["stop_reason"])}],
    });
    if let Some(u) = u {
        out["usage"] = openai_usage(u);
    }
    Ok((out, u))
}

fn tool_call(b: &Value, i: usize) -> Result<Value, Garbled> {
    let field = |k: &str| {
        b[k].as_str()
            .ok_or_else(|| Garbled(format!("content[{i}] tool_use block has no {k}")))
    };
    let input = match &b["input"] {
        Value::Null => "{}".to_owned(),
        v => v.to_string(),
    };
    Ok(json!({"id": field("id")?, "type": "function",
        "function": {"name": field("name")?, "arguments": input}}))
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
pub(super) fn finish_reason(stop: &Value) -> Value {
    match stop.as_str() {
        None => Value::Null,
        Some("max_tokens" | "model_context_window_exceeded") => json!("length"),
        Some("tool_use") => json!("tool_calls"),
        Some("refusal") => json!("content_filter"),
        // end_turn, stop_sequence, pause_turn and any newer reason.
        Some(_) => json!("stop"),
    }
}

/// OpenAI's `usage` object for the gateway's usage.
pub(super) fn openai_usage(u: TokenUsage) -> Value {
    json!({"prompt_tokens": u.prompt, "completion_tokens": u.completion,
        "total_tokens": u.prompt.saturating_add(u.completion),
        "prompt_tokens_details": {"cached_tokens": u.cached}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_tool_use() {
        let body = json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "text", "text": "Let me "}, {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 30, "output_tokens": 5}});
        let (out, u) = chat_response(body.to_string().as_bytes()).unwrap();
        let u = u.unwrap();
        assert_eq!(
            (u.prompt, u.cached, u.cache_write, u.completion),
            (60, 30, 20, 5)
        );
        assert_eq!(out["id"], "msg_01");
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["model"], "claude-x");
        assert!(out["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(
            out["choices"][0],
            json!({"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me check.", "reasoning_content": "hmm",
                "tool_calls": [{"id": "toolu_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}})
        );
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 60, "completion_tokens": 5, "total_tokens": 65,
                "prompt_tokens_details": {"cached_tokens": 30}})
        );
    }

    #[test]
    fn stop_reasons() {
        for (stop, finish) in [
            (json!("end_turn"), json!("stop")),
            (json!("stop_sequence"), json!("stop")),
            (json!("max_tokens"), json!("length")),
            (json!("tool_use"), json!("tool_calls")),
            (json!("refusal"), json!("content_filter")),
            (Value::Null, Value::Null),
        ] {
            assert_eq!(finish_reason(&stop), finish);
        }
        let body = br#"{"id":"m","content":[],"stop_reason":"end_turn"}"#;
        let (out, u) = chat_response(body).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert!(u.is_none());
        assert!(out.get("usage").is_none());
    }

    #[test]
    fn garbled_answers() {
        for body in [
            &b"<html>502</html>"[..],
            br#"{"type":"message"}"#,
            br#"{"content":{}}"#,
            br#"{"content":[{"text":"x"}]}"#,
            br#"{"content":[{"type":"text"}]}"#,
            br#"{"content":[{"type":"tool_use","name":"f"}]}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                chat_response(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
