//! An Anthropic message carried back into an OpenAI `chat.completion`.
//!
//! Text blocks are joined into `content` (null when there are none), `tool_use` blocks become
//! `tool_calls` (arguments as a JSON string), `thinking` blocks become `reasoning_content` (the
//! field OpenAI-compatible reasoning models use; their tokens are in `output_tokens`, billed as
//! completion; signatures and redacted thinking are dropped).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::usage;
use crate::domain::pricing::TokenUsage;
use crate::providers::chat_stream::created_now;
use crate::providers::Garbled;

/// What is read of an Anthropic message: text borrowed from the body where it has no escapes,
/// so an answer is translated without building a tree of it.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    model: Value,
    content: Option<Vec<Block<'a>>>,
    #[serde(default)]
    stop_reason: Value,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(default)]
    input: Value,
}

/// The `chat.completion` written.
#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a Value,
    choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Value>,
}

#[derive(Serialize)]
struct Choice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: (),
    finish_reason: Value,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Cow<'a, str>>,
}

/// The `chat.completion` for an Anthropic message body (written), and the usage it reports
/// (`None` when the body has no `usage` object, for the caller to estimate).
pub fn chat_response(body: &[u8]) -> Result<(Vec<u8>, Option<TokenUsage>), Garbled> {
    let msg: Message<'_> = serde_json::from_slice(body)
        .map_err(|e| Garbled(format!("Anthropic answer is not in protocol: {e}")))?;
    let blocks = msg
        .content
        .ok_or_else(|| Garbled("Anthropic answer has no content list".into()))?;
    let mut text: Option<Cow<'_, str>> = None;
    let mut tool_calls = Vec::new();
    let mut reasoning: Option<Cow<'_, str>> = None;
    for (i, b) in blocks.into_iter().enumerate() {
        match b.kind.as_deref() {
            Some("text") => {
                let t = b
                    .text
                    .ok_or_else(|| Garbled(format!("content[{i}] text block has no text")))?;
                join(&mut text, t);
            }
            Some("tool_use") => tool_calls.push(tool_call(&b, i)?),
            Some("thinking") => join(&mut reasoning, b.thinking.unwrap_or_default()),
            Some(_) => {}
            None => return Err(Garbled(format!("content[{i}] has no type"))),
        }
    }
    let u = msg.usage.as_ref().filter(|u| u.is_object()).map(usage);
    let out = Completion {
        id: msg.id.as_deref().unwrap_or("msg"),
        object: "chat.completion",
        created: created_now(),
        model: &msg.model,
        choices: [Choice {
            index: 0,
            message: ChatMessage {
                role: "assistant",
                content: text,
                tool_calls,
                reasoning_content: reasoning.filter(|r| !r.is_empty()),
            },
            logprobs: (),
            finish_reason: finish_reason(&msg.stop_reason),
        }],
        usage: u.map(openai_usage),
    };
    let bytes = serde_json::to_vec(&out)
        .map_err(|e| Garbled(format!("writing the chat completion: {e}")))?;
    Ok((bytes, u))
}

/// Appends `more` to `acc` (borrowing it when it is the first part).
fn join<'a>(acc: &mut Option<Cow<'a, str>>, more: Cow<'a, str>) {
    match acc {
        None => *acc = Some(more),
        Some(s) => s.to_mut().push_str(&more),
    }
}

fn tool_call(b: &Block<'_>, i: usize) -> Result<Value, Garbled> {
    let field = |v: &Option<Cow<'_, str>>, k: &str| {
        v.as_deref()
            .map(str::to_owned)
            .ok_or_else(|| Garbled(format!("content[{i}] tool_use block has no {k}")))
    };
    let input = match &b.input {
        Value::Null => "{}".to_owned(),
        v => v.to_string(),
    };
    Ok(json!({"id": field(&b.id, "id")?, "type": "function",
        "function": {"name": field(&b.name, "name")?, "arguments": input}}))
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
        let out: Value = serde_json::from_slice(&out).unwrap();
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
        let out: Value = serde_json::from_slice(&out).unwrap();
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
