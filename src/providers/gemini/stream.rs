//! `streamGenerateContent?alt=sse` into OpenAI `chat.completion.chunk` frames.
//!
//! Each SSE event's data is one whole `GenerateContentResponse` holding the next piece of each
//! candidate. A candidate's first chunk carries `role: assistant`; text parts (not thoughts)
//! become `content` deltas; a `functionCall` arrives whole and becomes one whole tool-call
//! delta (id, name and all the arguments); a `finishReason` becomes the chunk's
//! `finish_reason` (mapped as in [`super::response`]). `usageMetadata` is cumulative, so the
//! last one seen is the stream's usage. A prompt blocked before generation is a chunk with
//! `finish_reason: content_filter`. An `{"error": ...}` event becomes an OpenAI error frame.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::response::{
    answer_text, completion_id, finish_reason, openai_usage, parts, tool_call, usage,
};
use crate::domain::pricing::TokenUsage;
use crate::providers::chat_stream::{self, chunk_frame, created_now, data_frame};
use crate::providers::{End, Event, Garbled, StreamTranslator};

/// The most candidates a stream may carry (Gemini allows 8; more is a broken upstream).
const MAX_CANDIDATES: usize = 16;

#[derive(Default, Clone, Copy)]
struct Candidate {
    started: bool,
    finished: bool,
    calls: usize,
}

/// The stream translator for one Gemini (or Vertex Gemini) streaming answer.
pub struct ChatStream {
    model: String,
    wants_usage: bool,
    id: Option<String>,
    created: u64,
    candidates: Vec<Candidate>,
    usage: Option<TokenUsage>,
    usage_json: Option<Value>,
    chars: usize,
    blocked: bool,
    /// An `error` event came.
    failed: bool,
}

impl ChatStream {
    /// A translator answering as `model`; `client_wants_usage` is the caller's
    /// `stream_options.include_usage` (the usage chunk before `[DONE]`).
    pub fn new(model: &str, client_wants_usage: bool) -> ChatStream {
        ChatStream {
            model: model.to_owned(),
            wants_usage: client_wants_usage,
            id: None,
            created: created_now(),
            candidates: Vec::new(),
            usage: None,
            usage_json: None,
            chars: 0,
            blocked: false,
            failed: false,
        }
    }

    /// Whether the stream said it was done: every candidate it started has a finish reason, or
    /// the prompt was blocked. A stream whose body ended without it was cut short.
    pub fn ended_cleanly(&self) -> bool {
        self.blocked
            || (!self.candidates.is_empty()
                && self.candidates.iter().all(|c| c.finished || !c.started))
    }

    fn id(&self) -> &str {
        self.id.as_deref().unwrap_or("chatcmpl-gemini")
    }

    fn frame(&self, choices: Vec<Value>) -> Bytes {
        chunk_frame(self.id(), self.created, &self.model, Value::Array(choices))
    }

    fn candidate(&mut self, c: &Value, i: usize) -> Result<Option<Value>, Garbled> {
        let index = c
            .get("index")
            .and_then(Value::as_u64)
            .map_or(i, |n| usize::try_from(n).unwrap_or(usize::MAX));
        if index >= MAX_CANDIDATES {
            return Err(Garbled(format!(
                "Gemini: candidate index {index} is out of range"
            )));
        }
        if self.candidates.len() <= index {
            self.candidates.resize(index + 1, Candidate::default());
        }
        let mut state = self.candidates[index];
        let mut delta = Map::new();
        if !state.started {
            delta.insert("role".into(), json!("assistant"));
        }
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in parts(c)? {
            if let Some(t) = answer_text(part) {
                text.push_str(t);
            } else if let Some(t) = part.get("text").and_then(Value::as_str) {
                // A thought: not content, but billed as output, so it counts for an estimate.
                self.chars += t.len();
            } else if let Some(mut call) = tool_call(part)? {
                self.chars += call["function"]["arguments"].as_str().map_or(0, str::len);
                call["index"] = json!(state.calls);
                state.calls += 1;
                calls.push(call);
            }
        }
        self.chars += text.len();
        if !text.is_empty() || (!state.started && calls.is_empty()) {
            delta.insert("content".into(), json!(text));
        }
        if !calls.is_empty() {
            delta.insert("tool_calls".into(), Value::Array(calls));
        }
        let finish = c
            .get("finishReason")
            .and_then(Value::as_str)
            .map(|r| finish_reason(r, state.calls > 0));
        state.started = true;
        state.finished |= finish.is_some();
        self.candidates[index] = state;
        if delta.is_empty() && finish.is_none() {
            return Ok(None);
        }
        Ok(Some(json!({
            "index": index, "delta": delta, "finish_reason": finish, "logprobs": null,
        })))
    }
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        if event.data.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let resp: Value = serde_json::from_slice(event.data)
            .map_err(|e| Garbled(format!("Gemini stream event is not JSON: {e}")))?;
        if let Some(err) = resp.get("error") {
            self.failed = true;
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("Gemini reported an error");
            let kind = err
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("upstream_error");
            let frame =
                json!({ "error": { "message": message, "type": kind, "code": err.get("code") } });
            out.push(data_frame(&frame));
            return Ok(());
        }
        if !resp.is_object() {
            return Err(Garbled("Gemini stream event is not a JSON object".into()));
        }
        if self.id.is_none() {
            self.id = Some(completion_id(&resp));
        }
        if let Some(meta) = resp.get("usageMetadata").filter(|m| m.is_object()) {
            self.usage = Some(usage(meta));
            self.usage_json = Some(openai_usage(meta));
        }
        let candidates = match resp.get("candidates") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(c)) => c,
            Some(_) => return Err(Garbled("Gemini: candidates is not an array".into())),
        };
        let mut choices = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            choices.extend(self.candidate(c, i)?);
        }
        let blocked = resp
            .get("promptFeedback")
            .and_then(|f| f.get("blockReason"))
            .and_then(Value::as_str);
        if let (true, Some(reason)) = (candidates.is_empty(), blocked) {
            self.blocked = true;
            choices.push(json!({
                "index": 0, "finish_reason": "content_filter", "logprobs": null,
                "delta": { "role": "assistant", "content": null,
                           "refusal": format!("Gemini blocked the prompt ({reason})") },
            }));
        }
        if !choices.is_empty() {
            out.push(self.frame(choices));
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        let usage = self.usage_json.clone().filter(|_| self.wants_usage);
        chat_stream::close(out, (self.id(), self.created, &self.model), usage);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    fn chars(&self) -> usize {
        self.chars
    }

    fn end(&self) -> End {
        if self.failed {
            End::Failed
        } else if self.ended_cleanly() {
            End::Complete
        } else {
            End::Cut
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
