//! A Gemini `GenerateContentResponse` into an OpenAI `chat.completion`, and `usageMetadata`
//! into [`TokenUsage`].
//!
//! Each candidate becomes a choice: its text parts joined (parts marked `thought: true` are the
//! model's reasoning, not content), its `functionCall` parts `tool_calls` (the call's `id` when
//! Gemini gives one, else a generated `call_...`, carrying the call's `thoughtSignature` if any:
//! see [`thought_signature`]; `args` as a JSON string). Finish reasons:
//! `STOP` is `stop` (`tool_calls` when the candidate called a function), `MAX_TOKENS` is
//! `length`, the safety family is `content_filter`, anything else `stop`. A prompt blocked
//! before generation (`promptFeedback.blockReason`, no candidates) is one choice with
//! `finish_reason: content_filter` and a `refusal` naming the reason.

use serde_json::{json, Map, Value};

use crate::domain::pricing::TokenUsage;
use crate::providers::chat_stream::created_now;
use crate::providers::Garbled;

/// Token counts of a `usageMetadata`. `promptTokenCount` already includes the cached part
/// (`cachedContentTokenCount`); tokens of tool-use prompts (`toolUsePromptTokenCount`, counted
/// apart from `promptTokenCount` and billed as input) are added to it. Thinking tokens
/// (`thoughtsTokenCount`) are billed as output, so `completion` is candidates + thoughts.
/// Missing or malformed counts read as 0.
pub fn usage(meta: &Value) -> TokenUsage {
    let n = |k: &str| meta.get(k).and_then(Value::as_u64).unwrap_or(0);
    TokenUsage {
        prompt: n("promptTokenCount").saturating_add(n("toolUsePromptTokenCount")),
        completion: n("candidatesTokenCount").saturating_add(n("thoughtsTokenCount")),
        cached: n("cachedContentTokenCount"),
        cache_write: 0,
    }
}

/// The OpenAI `usage` object for a usage (with the cached and reasoning details).
pub(crate) fn openai_usage(meta: &Value) -> Value {
    let u = usage(meta);
    let thoughts = meta
        .get("thoughtsTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt.saturating_add(u.completion),
        "prompt_tokens_details": { "cached_tokens": u.cached },
        "completion_tokens_details": { "reasoning_tokens": thoughts },
    })
}

/// The OpenAI finish reason for a Gemini one.
pub(crate) fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// A fresh tool-call id, for calls Gemini gives none.
pub(crate) fn call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

/// What separates a tool-call id from the `thoughtSignature` carried in it.
const SIGNATURE_MARK: &str = "__ts__";

/// The `thoughtSignature` a tool-call id carries, as Gemini sent it (standard base64).
///
/// Thinking models (Gemini 2.5, 3) sign their function calls and refuse a later turn whose
/// calls lack the signature. OpenAI's protocol has no field for it, so it rides in the id the
/// client echoes back: `<id>__ts__<signature as unpadded base64url>` (the id stays within
/// `[A-Za-z0-9_-]`, which Anthropic's tool_use ids require too).
pub(crate) fn thought_signature(id: &str) -> Option<String> {
    use base64::Engine;
    let (_, sig) = id.split_once(SIGNATURE_MARK)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn with_signature(id: String, part: &Value) -> String {
    use base64::Engine;
    let sig = part.get("thoughtSignature").and_then(Value::as_str);
    let Some(bytes) = sig.and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    else {
        return id;
    };
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("{id}{SIGNATURE_MARK}{sig}")
}

/// One `functionCall` part as an OpenAI tool call (without the stream's `index`).
pub(crate) fn tool_call(part: &Value) -> Result<Option<Value>, Garbled> {
    let Some(call) = part.get("functionCall") else {
        return Ok(None);
    };
    let name = call
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Garbled("Gemini: a functionCall has no name".into()))?;
    let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.contains(SIGNATURE_MARK))
        .map_or_else(call_id, str::to_owned);
    let id = with_signature(id, part);
    Ok(Some(json!({
        "id": id, "type": "function",
        "function": { "name": name, "arguments": args.to_string() },
    })))
}

/// The parts of a candidate's content: `[]` when it has none (a safety stop sends none).
pub(crate) fn parts(candidate: &Value) -> Result<&[Value], Garbled> {
    match candidate.get("content").and_then(|c| c.get("parts")) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(parts)) => Ok(parts),
        Some(_) => Err(Garbled(
            "Gemini: candidate content.parts is not an array".into(),
        )),
    }
}

/// Whether a part is answer text (not a thought).
pub(crate) fn answer_text(part: &Value) -> Option<&str> {
    if part.get("thought").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    part.get("text").and_then(Value::as_str)
}

pub(crate) fn completion_id(resp: &Value) -> String {
    resp.get("responseId")
        .and_then(Value::as_str)
        .filter(|id| id.len() <= 128)
        .map_or_else(
            || format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            |id| format!("chatcmpl-{id}"),
        )
}

/// The `chat.completion` for a `generateContent` answer, and the usage Gemini reported
/// (`None` when the answer has no `usageMetadata`: the data plane estimates).
pub fn chat_response(body: &[u8], model: &str) -> Result<(Value, Option<TokenUsage>), Garbled> {
    let resp: Value = serde_json::from_slice(body).map_err(|e| {
        Garbled(format!(
            "Gemini answered with something that is not JSON: {e}"
        ))
    })?;
    if !resp.is_object() {
        return Err(Garbled("Gemini's answer is not a JSON object".into()));
    }
    let candidates = match resp.get("candidates") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(c)) => c,
        Some(_) => return Err(Garbled("Gemini: candidates is not an array".into())),
    };
    let mut choices = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        choices.push(choice(c, i)?);
    }
    if choices.is_empty() {
        let reason = resp
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Garbled("Gemini answered with no candidates and no blockReason".into())
            })?;
        choices.push(json!({
            "index": 0,
            "message": { "role": "assistant", "content": null,
                         "refusal": format!("Gemini blocked the prompt ({reason})") },
            "finish_reason": "content_filter", "logprobs": null,
        }));
    }
    let meta = resp.get("usageMetadata").filter(|m| m.is_object());
    let mut out = json!({
        "id": completion_id(&resp), "object": "chat.completion", "created": created_now(),
        "model": model, "choices": choices,
    });
    if let Some(meta) = meta {
        out["usage"] = openai_usage(meta);
    }
    Ok((out, meta.map(usage)))
}

fn choice(c: &Value, i: usize) -> Result<Value, Garbled> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for part in parts(c)? {
        if let Some(t) = answer_text(part) {
            text.push_str(t);
        } else if let Some(call) = tool_call(part)? {
            calls.push(call);
        }
    }
    let index = c.get("index").and_then(Value::as_u64).unwrap_or(i as u64);
    let reason = c
        .get("finishReason")
        .and_then(Value::as_str)
        .unwrap_or("STOP");
    let mut message = Map::new();
    message.insert("role".into(), json!("assistant"));
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        json!(text)
    };
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls.clone()));
    }
    Ok(json!({
        "index": index, "message": message,
        "finish_reason": finish_reason(reason, !calls.is_empty()), "logprobs": null,
    }))
}

#[cfg(test)]
#[path = "response_tests.rs"]
mod tests;
