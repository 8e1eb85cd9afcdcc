//! ConverseStream (`POST /model/{id}/converse-stream`) -> OpenAI `chat.completion.chunk` frames.
//!
//! The data plane decodes the event stream ([`super::EventStreamDecoder`]) and hands each
//! message over as `Event { name: Some(event_type), data: payload }`. Events, as AWS documents
//! them:
//!
//! | event | payload | becomes |
//! |---|---|---|
//! | `messageStart` | `{role}` | a chunk with `delta.role` |
//! | `contentBlockStart` | `{contentBlockIndex, start: {toolUse: {toolUseId, name}}}` | a tool-call chunk (id, name) |
//! | `contentBlockDelta` | `{contentBlockIndex, delta: {text} \| {toolUse: {input}} \| {reasoningContent: {text}}}` | a content / tool-arguments / `reasoning_content` chunk |
//! | `contentBlockStop` | `{contentBlockIndex}` | nothing |
//! | `messageStop` | `{stopReason}` | a chunk with `finish_reason` |
//! | `metadata` | `{usage, metrics}` | the usage (sent by `finish` when asked for) |
//! | `*Exception` | `{message}` | an OpenAI error frame; the stream ends there (later events are dropped, no `[DONE]`) |
//!
//! Unknown events are skipped (AWS adds event kinds); a known event whose payload is not what
//! its kind says is `Garbled`.

use bytes::Bytes;
use serde_json::{json, Value};

use super::response::{finish_reason, openai_usage, tool_use_names, usage_of};
use crate::domain::pricing::TokenUsage;
use crate::providers::chat_stream::{self, chunk_frame, error_frame};
use crate::providers::{End, Event, Garbled, StreamTranslator};

/// The id of every chunk (ConverseStream names no message).
const ID: &str = "chatcmpl-bedrock";

/// The most tool-use blocks one answer may start (a bound on a hostile stream's bookkeeping).
const MAX_TOOL_BLOCKS: usize = 1024;

/// The stream translator for ConverseStream.
#[derive(Debug)]
pub struct ConverseStream {
    model: String,
    client_wants_usage: bool,
    usage: Option<TokenUsage>,
    chars: usize,
    /// `contentBlockIndex` of each tool-use block, in order: its position is OpenAI's tool-call
    /// `index`.
    tool_blocks: Vec<u64>,
    failed: bool,
    /// `messageStop` came.
    stopped: bool,
}

impl ConverseStream {
    /// A translator for one stream answering `model`; `client_wants_usage` is the caller's
    /// `stream_options.include_usage`.
    pub fn new(model: &str, client_wants_usage: bool) -> Self {
        ConverseStream {
            model: model.to_owned(),
            client_wants_usage,
            usage: None,
            chars: 0,
            tool_blocks: Vec::new(),
            failed: false,
            stopped: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let choices =
            json!([{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }]);
        chunk_frame(ID, 0, &self.model, choices)
    }

    fn tool_index(&self, block: u64) -> Option<usize> {
        self.tool_blocks.iter().position(|b| *b == block)
    }

    fn delta(&mut self, v: &Value) -> Result<Option<Bytes>, Garbled> {
        let block = v
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let delta = v
            .get("delta")
            .ok_or_else(|| Garbled("Bedrock contentBlockDelta without delta".into()))?;
        if let Some(text) = delta.get("text") {
            let text = text
                .as_str()
                .ok_or_else(|| Garbled("Bedrock delta.text is not a string".into()))?;
            self.chars += text.chars().count();
            return Ok(Some(self.chunk(json!({ "content": text }), None)));
        }
        if let Some(tool) = delta.get("toolUse") {
            let input = tool
                .get("input")
                .and_then(Value::as_str)
                .ok_or_else(|| Garbled("Bedrock delta.toolUse without input".into()))?;
            let index = self.tool_index(block).ok_or_else(|| {
                Garbled("Bedrock toolUse delta for a block that was not started".into())
            })?;
            self.chars += input.chars().count();
            let call = json!({ "index": index, "function": { "arguments": input } });
            return Ok(Some(self.chunk(json!({ "tool_calls": [call] }), None)));
        }
        if let Some(text) = delta
            .pointer("/reasoningContent/text")
            .and_then(Value::as_str)
        {
            self.chars += text.chars().count();
            return Ok(Some(self.chunk(json!({ "reasoning_content": text }), None)));
        }
        Ok(None)
    }

    fn start(&mut self, v: &Value) -> Result<Option<Bytes>, Garbled> {
        let Some(tool) = v.pointer("/start/toolUse") else {
            return Ok(None);
        };
        let block = v
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .ok_or_else(|| Garbled("Bedrock contentBlockStart without contentBlockIndex".into()))?;
        let Some((id, name)) = tool_use_names(tool) else {
            return Err(Garbled(
                "Bedrock toolUse start without toolUseId or name".into(),
            ));
        };
        if self.tool_blocks.len() >= MAX_TOOL_BLOCKS {
            return Err(Garbled(format!(
                "Bedrock started over {MAX_TOOL_BLOCKS} tool uses"
            )));
        }
        if self.tool_index(block).is_some() {
            return Err(Garbled("Bedrock started a content block twice".into()));
        }
        self.tool_blocks.push(block);
        let call = json!({
            "index": self.tool_blocks.len() - 1,
            "id": id,
            "type": "function",
            "function": { "name": name, "arguments": "" },
        });
        Ok(Some(self.chunk(json!({ "tool_calls": [call] }), None)))
    }
}

impl StreamTranslator for ConverseStream {
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        if self.failed {
            // An exception ends the answer; nothing after it is the model's.
            return Ok(());
        }
        let name = event.name.unwrap_or_default();
        let known = matches!(
            name,
            "messageStart"
                | "contentBlockStart"
                | "contentBlockDelta"
                | "contentBlockStop"
                | "messageStop"
                | "metadata"
        );
        let exception = name.ends_with("Exception");
        if !known && !exception {
            return Ok(());
        }
        let v: Value = serde_json::from_slice(event.data)
            .map_err(|e| Garbled(format!("Bedrock {name} event is not JSON: {e}")))?;
        if exception {
            let message = v.get("message").and_then(Value::as_str).unwrap_or(name);
            self.failed = true;
            out.push(error_frame(message, name));
            return Ok(());
        }
        let chunk = match name {
            "messageStart" => Some(self.chunk(json!({ "role": "assistant", "content": "" }), None)),
            "contentBlockStart" => self.start(&v)?,
            "contentBlockDelta" => self.delta(&v)?,
            "messageStop" => {
                let stop = v
                    .get("stopReason")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Garbled("Bedrock messageStop without stopReason".into()))?;
                self.stopped = true;
                Some(self.chunk(json!({}), Some(finish_reason(stop))))
            }
            "metadata" => {
                self.usage = Some(usage_of(v.get("usage"))?);
                None
            }
            _ => None,
        };
        out.extend(chunk);
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.failed {
            return;
        }
        let usage = self.usage.filter(|_| self.client_wants_usage);
        chat_stream::close(out, (ID, 0, &self.model), usage.map(openai_usage));
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    fn chars(&self) -> usize {
        self.chars
    }

    fn end(&self) -> End {
        match (self.failed, self.stopped) {
            (true, _) => End::Failed,
            (false, true) => End::Complete,
            (false, false) => End::Cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::providers::testing::translate_named as run;

    /// The event sequence of AWS's ConverseStream documentation, text then a tool use.
    #[test]
    fn a_documented_stream_translates() {
        let mut t = ConverseStream::new("m", true);
        let frames = run(
            &mut t,
            &[
                ("messageStart", json!({"role": "assistant"})),
                (
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": "Hel"}}),
                ),
                (
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"text": "lo"}}),
                ),
                ("contentBlockStop", json!({"contentBlockIndex": 0})),
                (
                    "contentBlockStart",
                    json!({"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tu_1", "name": "f"}}}),
                ),
                (
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"a\":"}}}),
                ),
                (
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "1}"}}}),
                ),
                ("contentBlockStop", json!({"contentBlockIndex": 1})),
                ("messageStop", json!({"stopReason": "tool_use"})),
                (
                    "metadata",
                    json!({"usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 45,
                    "cacheReadInputTokens": 20, "cacheWriteInputTokens": 10}, "metrics": {"latencyMs": 9}}),
                ),
                ("someFutureEvent", json!({})),
            ],
        );
        let deltas: Vec<&Value> = frames
            .iter()
            .filter_map(|f| f.pointer("/choices/0/delta"))
            .collect();
        assert_eq!(deltas[0]["role"], "assistant");
        assert_eq!(deltas[1]["content"], "Hel");
        assert_eq!(deltas[2]["content"], "lo");
        assert_eq!(
            deltas[3]["tool_calls"][0],
            json!({"index": 0, "id": "tu_1", "type": "function", "function": {"name": "f", "arguments": ""}})
        );
        assert_eq!(
            deltas[4]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":"
        );
        assert_eq!(deltas[5]["tool_calls"][0]["index"], 0);
        assert_eq!(frames[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(frames[7]["choices"], json!([]));
        assert_eq!(frames[7]["usage"]["prompt_tokens"], 40);
        assert_eq!(
            frames[7]["usage"]["prompt_tokens_details"]["cached_tokens"],
            20
        );
        assert_eq!(frames[8], json!("[DONE]"));
        assert_eq!(frames.len(), 9);
        assert_eq!(
            t.usage(),
            Some(TokenUsage {
                prompt: 40,
                completion: 5,
                cached: 20,
                cache_write: 10
            })
        );
        assert_eq!(t.chars(), 5 + 7);
        assert!(frames
            .iter()
            .all(|f| f == "[DONE]" || f["object"] == "chat.completion.chunk"));
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let mut t = ConverseStream::new("m", false);
        let frames = run(
            &mut t,
            &[(
                "metadata",
                json!({"usage": {"inputTokens": 1, "outputTokens": 2}}),
            )],
        );
        assert_eq!(frames, vec![json!("[DONE]")]);
        assert_eq!(
            t.usage(),
            Some(TokenUsage {
                prompt: 1,
                completion: 2,
                cached: 0,
                cache_write: 0
            })
        );
    }

    #[test]
    fn exceptions_become_error_frames() {
        let mut t = ConverseStream::new("m", true);
        let frames = run(
            &mut t,
            &[
                ("messageStart", json!({"role": "assistant"})),
                (
                    "throttlingException",
                    json!({"message": "Too many requests"}),
                ),
            ],
        );
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[1],
            json!({"error": {"message": "Too many requests", "type": "throttlingException"}})
        );
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn garbled_events_are_refused() {
        for (name, data) in [
            ("contentBlockDelta", "not json"),
            ("contentBlockDelta", r#"{"contentBlockIndex": 0}"#),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex": 0, "delta": {"text": 5}}"#,
            ),
            (
                "contentBlockDelta",
                r#"{"contentBlockIndex": 3, "delta": {"toolUse": {"input": "x"}}}"#,
            ),
            (
                "contentBlockStart",
                r#"{"start": {"toolUse": {"toolUseId": "a", "name": "f"}}}"#,
            ),
            (
                "contentBlockStart",
                r#"{"contentBlockIndex": 1, "start": {"toolUse": {}}}"#,
            ),
            ("messageStop", r#"{}"#),
            ("metadata", r#"{"usage": {"inputTokens": "many"}}"#),
            ("metadata", r#"{}"#),
            ("modelStreamErrorException", "<html>"),
        ] {
            let mut t = ConverseStream::new("m", true);
            let e = t.event(
                Event {
                    name: Some(name),
                    data: data.as_bytes(),
                },
                &mut Vec::new(),
            );
            assert!(e.is_err(), "{name} {data}");
        }
    }
}
