//! An Anthropic Messages stream carried into OpenAI `chat.completion.chunk` frames.
//!
//! Anthropic's events, in order: `message_start` (the message skeleton, input usage), then per
//! content block `content_block_start`, `content_block_delta`s (`text_delta`,
//! `input_json_delta`, `thinking_delta`, ...), `content_block_stop`; `message_delta` (the
//! `stop_reason`, cumulative usage), `message_stop`; `ping`s anywhere; `error` instead of the
//! rest. Each `tool_use` block becomes one OpenAI tool call, numbered in order of appearance:
//! its first delta carries the id and name, the following ones the argument text. Extended
//! thinking streams as `reasoning_content` deltas (the field OpenAI-compatible reasoning
//! models use; OpenAI's own SDK keeps it as an extra field); signatures are dropped. Unknown
//! events and delta types are skipped (Anthropic documents that new ones may appear).

use bytes::Bytes;
use serde_json::{json, Value};

use super::observe_usage;
use super::response::{finish_reason, openai_usage};
use crate::domain::pricing::TokenUsage;
use crate::providers::chat_stream::{self, chunk_frame, created_now, error_frame};
use crate::providers::{End, Event, Garbled, StreamTranslator};

/// The most content blocks one message may open; past it the stream is garbled (bounds the
/// block table against a hostile upstream).
const MAX_BLOCKS: usize = 4096;

/// Translates one Anthropic stream for an OpenAI caller.
pub struct ChatStream {
    model: String,
    client_wants_usage: bool,
    id: String,
    created: u64,
    /// Per Anthropic block index (in order of `content_block_start`), the OpenAI tool-call index
    /// of a `tool_use` block.
    blocks: Vec<(u64, Option<u64>)>,
    tools: u64,
    usage: Option<Value>,
    chars: usize,
    end: End,
}

impl ChatStream {
    /// A translator for a stream from `model`; `client_wants_usage` is the caller's
    /// `stream_options.include_usage`.
    pub fn new(model: &str, client_wants_usage: bool) -> Self {
        ChatStream {
            model: model.to_owned(),
            client_wants_usage,
            id: "msg".to_owned(),
            created: created_now(),
            blocks: Vec::new(),
            tools: 0,
            usage: None,
            chars: 0,
            end: End::Cut,
        }
    }

    fn chunk(&self, delta: Value, finish: Value) -> Bytes {
        let choices = json!([{"index": 0, "delta": delta, "finish_reason": finish}]);
        chunk_frame(&self.id, self.created, &self.model, choices)
    }

    fn block_start(&mut self, ev: &Value, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        let index = ev["index"]
            .as_u64()
            .ok_or_else(|| Garbled("content_block_start without an index".into()))?;
        if self.blocks.len() >= MAX_BLOCKS {
            return Err(Garbled(format!("more than {MAX_BLOCKS} content blocks")));
        }
        let block = &ev["content_block"];
        let tool = match block["type"].as_str() {
            Some("tool_use") => {
                let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else {
                    return Err(Garbled("tool_use block without id or name".into()));
                };
                let n = self.tools;
                self.tools += 1;
                out.push(self.chunk(
                    json!({"tool_calls": [{"index": n, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                    Value::Null,
                ));
                Some(n)
            }
            Some("text") => {
                if let Some(t) = block["text"].as_str().filter(|t| !t.is_empty()) {
                    self.chars += t.chars().count();
                    out.push(self.chunk(json!({"content": t}), Value::Null));
                }
                None
            }
            _ => None,
        };
        self.blocks.push((index, tool));
        Ok(())
    }

    fn block_delta(&mut self, ev: &Value, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        let delta = &ev["delta"];
        match delta["type"].as_str() {
            Some("text_delta") => {
                let t = delta["text"]
                    .as_str()
                    .ok_or_else(|| Garbled("text_delta without text".into()))?;
                self.chars += t.chars().count();
                out.push(self.chunk(json!({"content": t}), Value::Null));
            }
            Some("input_json_delta") => {
                let part = delta["partial_json"]
                    .as_str()
                    .ok_or_else(|| Garbled("input_json_delta without partial_json".into()))?;
                self.chars += part.chars().count();
                let index = ev["index"].as_u64();
                let tool = self
                    .blocks
                    .iter()
                    .rev()
                    .find(|(i, _)| Some(*i) == index)
                    .and_then(|(_, t)| *t)
                    .ok_or_else(|| Garbled("input_json_delta outside a tool_use block".into()))?;
                if !part.is_empty() {
                    out.push(self.chunk(
                        json!({"tool_calls": [{"index": tool, "function": {"arguments": part}}]}),
                        Value::Null,
                    ));
                }
            }
            Some("thinking_delta") => {
                if let Some(t) = delta["thinking"].as_str().filter(|t| !t.is_empty()) {
                    self.chars += t.chars().count();
                    out.push(self.chunk(json!({"reasoning_content": t}), Value::Null));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl StreamTranslator for ChatStream {
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        let ev: Value = serde_json::from_slice(event.data)
            .map_err(|e| Garbled(format!("Anthropic stream event is not JSON: {e}")))?;
        let kind = ev["type"].as_str().or(event.name).unwrap_or("");
        match kind {
            "message_start" => {
                let m = &ev["message"];
                if let Some(id) = m["id"].as_str() {
                    id.clone_into(&mut self.id);
                }
                if let Some(model) = m["model"].as_str() {
                    model.clone_into(&mut self.model);
                }
                observe_usage(&mut self.usage, &m["usage"]);
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
            }
            "content_block_start" => self.block_start(&ev, out)?,
            "content_block_delta" => self.block_delta(&ev, out)?,
            "message_delta" => {
                observe_usage(&mut self.usage, &ev["usage"]);
                let finish = finish_reason(&ev["delta"]["stop_reason"]);
                if !finish.is_null() {
                    out.push(self.chunk(json!({}), finish));
                }
            }
            "message_stop" => self.end = End::Complete,
            "error" => {
                self.end = End::Failed;
                let e = &ev["error"];
                let message = e["message"].as_str().unwrap_or("upstream stream error");
                let kind = e["type"].as_str().unwrap_or("api_error");
                out.push(error_frame(message, kind));
            }
            // content_block_stop, ping and events added after this was written.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        let usage = self.usage().filter(|_| self.client_wants_usage);
        let at = (self.id.as_str(), self.created, self.model.as_str());
        chat_stream::close(out, at, usage.map(openai_usage));
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.as_ref().map(super::usage)
    }

    fn chars(&self) -> usize {
        self.chars
    }

    fn end(&self) -> End {
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::providers::testing::translate_named as run;

    /// The tool-use stream of Anthropic's streaming documentation (abridged).
    fn tool_stream() -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_sequence": null,
                "usage": {"input_tokens": 472, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 2},
                "content": [], "stop_reason": null}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Okay"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ", let's check"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
                "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"location\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"San Francisco, CA\"}"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 1}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 89}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]
    }

    #[test]
    fn text_then_a_tool_call() {
        let mut t = ChatStream::new("claude-x", true);
        let frames = run(&mut t, &tool_stream());
        let deltas: Vec<_> = frames
            .iter()
            .map(|f| f["choices"][0]["delta"].clone())
            .collect();
        assert_eq!(frames[0]["id"], "msg_014p7gG3wDgGV9EUtLvnow3U");
        assert_eq!(frames[0]["object"], "chat.completion.chunk");
        assert_eq!(frames[0]["model"], "claude-sonnet-4-5");
        assert_eq!(deltas[0], json!({"role": "assistant", "content": ""}));
        assert_eq!(deltas[1], json!({"content": "Okay"}));
        assert_eq!(deltas[2], json!({"content": ", let's check"}));
        assert_eq!(
            deltas[3],
            json!({"tool_calls": [{"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[4],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]})
        );
        assert_eq!(
            deltas[5],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"San Francisco, CA\"}"}}]})
        );
        assert_eq!(frames[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(frames[7]["choices"], json!([]));
        assert_eq!(
            frames[7]["usage"],
            json!({"prompt_tokens": 1572, "completion_tokens": 89, "total_tokens": 1661,
                "prompt_tokens_details": {"cached_tokens": 1000}})
        );
        assert_eq!(frames[8], json!("[DONE]"));
        assert_eq!(frames.len(), 9);
        assert_eq!(
            t.usage(),
            Some(TokenUsage {
                prompt: 1572,
                completion: 89,
                cached: 1000,
                cache_write: 100
            })
        );
        assert_eq!(
            t.chars(),
            "Okay, let's check{\"location\": \"San Francisco, CA\"}".len()
        );
    }

    #[test]
    fn usage_chunk_only_when_asked_and_cumulative_input_in_message_delta() {
        let mut events = tool_stream();
        events[11].1["usage"] = json!({"input_tokens": 500, "output_tokens": 90});
        let mut t = ChatStream::new("claude-x", false);
        let frames = run(&mut t, &events);
        assert!(frames.iter().all(|f| f.get("usage").is_none()));
        assert_eq!(frames.last().unwrap(), &json!("[DONE]"));
        assert_eq!(
            t.usage().map(|u| (u.prompt, u.completion)),
            Some((1600, 90))
        );
    }

    #[test]
    fn error_event_and_unknown_events() {
        let mut t = ChatStream::new("claude-x", true);
        let frames = run(
            &mut t,
            &[
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "m", "usage": {"input_tokens": 3}}}),
                ),
                ("future_event", json!({"type": "future_event"})),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "abc"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "zz"}}),
                ),
                (
                    "error",
                    json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                ),
            ],
        );
        assert_eq!(
            frames[1]["choices"][0]["delta"],
            json!({"reasoning_content": "abc"})
        );
        assert_eq!(
            frames[2],
            json!({"error": {"message": "Overloaded", "type": "overloaded_error"}})
        );
        assert_eq!(frames[3]["usage"]["prompt_tokens"], 3);
        assert_eq!(t.chars(), 3);
    }

    #[test]
    fn garbled_events() {
        let bad: [&[u8]; 6] = [
            b"not json",
            br#"{"type":"content_block_start","content_block":{"type":"text"}}"#,
            br#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use"}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{"}}"#,
            br#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta"}}"#,
        ];
        for data in bad {
            let mut t = ChatStream::new("m", false);
            let mut out = Vec::new();
            let r = t.event(Event { name: None, data }, &mut out);
            assert!(r.is_err(), "{}", String::from_utf8_lossy(data));
        }
        let mut t = ChatStream::new("m", true);
        let mut out = Vec::new();
        t.finish(&mut out);
        assert_eq!(out, vec![Bytes::from_static(b"data: [DONE]\n\n")]);
        assert_eq!(t.usage(), None);
    }

    #[test]
    fn block_table_is_bounded() {
        let mut t = ChatStream::new("m", false);
        let mut out = Vec::new();
        let data = br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#;
        let results: Vec<_> = (0..=MAX_BLOCKS)
            .map(|_| t.event(Event { name: None, data }, &mut out).is_ok())
            .collect();
        assert!(results[..MAX_BLOCKS].iter().all(|&ok| ok));
        assert!(!results[MAX_BLOCKS]);
    }
}
