//! Bedrock Converse answer -> OpenAI `chat.completion`, and Converse usage -> [`TokenUsage`].
//!
//! `output.message.content` -> one assistant message (text joined, `toolUse` ->
//! `tool_calls`), `stopReason` -> `finish_reason`, `usage` -> [`TokenUsage`].
//!
//! ## Usage and the prompt cache
//! Bedrock's `inputTokens` counts only the input that was neither read from nor written to the
//! prompt cache; `cacheReadInputTokens` and `cacheWriteInputTokens` are reported beside it, not
//! inside it (AWS's Bedrock prompt-caching guide; Anthropic's Messages usage splits the same
//! way). So the prompt is `inputTokens + cacheReadInputTokens + cacheWriteInputTokens`, with
//! `cached` = cache reads and `cache_write` = cache writes; absent cache counts are 0.

use serde_json::{json, Value};

use crate::domain::pricing::TokenUsage;
use crate::providers::Garbled;

/// The `toolUseId` and `name` of a Converse `toolUse` (an answer's block, or a stream's
/// `contentBlockStart`).
pub(crate) fn tool_use_names(tool: &Value) -> Option<(&str, &str)> {
    Some((
        tool.get("toolUseId")?.as_str()?,
        tool.get("name")?.as_str()?,
    ))
}

/// The OpenAI `chat.completion` for a Converse response, and its usage. The answer has no id or
/// timestamp of Bedrock's: `id` is `chatcmpl-bedrock` and `created` 0, for the data plane to
/// replace if it wants.
pub fn converse_response(body: &[u8], model: &str) -> Result<(Value, TokenUsage), Garbled> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Garbled(format!("Bedrock Converse answer is not JSON: {e}")))?;
    let content = v
        .pointer("/output/message/content")
        .and_then(Value::as_array)
        .ok_or_else(|| Garbled("Bedrock Converse answer has no output.message.content".into()))?;
    let usage = usage_of(v.get("usage"))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in content {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            text.push_str(t);
        } else if let Some(tool) = block.get("toolUse") {
            let Some((id, name)) = tool_use_names(tool) else {
                return Err(Garbled(
                    "Bedrock toolUse block without toolUseId or name".into(),
                ));
            };
            let args = tool
                .get("input")
                .map_or_else(|| "{}".to_owned(), Value::to_string);
            calls.push(json!({
                "id": id, "type": "function", "function": { "name": name, "arguments": args }
            }));
        }
    }
    let stop = v
        .get("stopReason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut message = json!({ "role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) } });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let completion = json!({
        "id": "chatcmpl-bedrock",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason(stop), "logprobs": null }],
        "usage": openai_usage(usage),
    });
    Ok((completion, usage))
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
pub(crate) fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "guardrail_intervened" | "content_filtered" => "content_filter",
        _ => "stop",
    }
}

/// [`TokenUsage`] of a Converse `usage` object (see the module doc for the cache counts).
pub(crate) fn usage_of(v: Option<&Value>) -> Result<TokenUsage, Garbled> {
    let u = v
        .filter(|u| u.is_object())
        .ok_or_else(|| Garbled("Bedrock answer has no usage".into()))?;
    let count = |name: &str, required: bool| -> Result<u64, Garbled> {
        match u.get(name) {
            None | Some(Value::Null) if !required => Ok(0),
            Some(n) => n
                .as_u64()
                .ok_or_else(|| Garbled(format!("Bedrock usage.{name} is not a count"))),
            None => Err(Garbled(format!("Bedrock usage has no {name}"))),
        }
    };
    let input = count("inputTokens", true)?;
    let cached = count("cacheReadInputTokens", false)?;
    let cache_write = count("cacheWriteInputTokens", false)?;
    Ok(TokenUsage {
        prompt: input.saturating_add(cached).saturating_add(cache_write),
        completion: count("outputTokens", true)?,
        cached,
        cache_write,
    })
}

/// OpenAI's `usage` object for a [`TokenUsage`].
pub(crate) fn openai_usage(u: TokenUsage) -> Value {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt.saturating_add(u.completion),
        "prompt_tokens_details": { "cached_tokens": u.cached },
    })
}
