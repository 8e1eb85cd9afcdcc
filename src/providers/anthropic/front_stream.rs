//! Streams for `/v1/messages` callers, framed as Anthropic sends them
//! (`event: <type>\ndata: <json>\n\n`):
//!
//! - [`MessagesStream`]: an OpenAI-format provider's `chat.completion.chunk` stream carried
//!   into Anthropic's events. OpenAI reports usage last, so `message_start` carries the input
//!   tokens only when the first chunk already has them (else 0) and `message_delta` carries the
//!   final usage, input tokens included (Anthropic's `message_delta.usage` may carry them too;
//!   the SDKs take them from there).
//! - [`PassStream`]: an Anthropic stream passed to an Anthropic caller unchanged, observed for
//!   metering. Its `message_stop` is held back and sent by `finish`, so the caller sees the end
//!   of the message only once the data plane has made the attempt's usage durable (the same
//!   promise `data: [DONE]` keeps for OpenAI callers).

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::front::{anthropic_usage, message_id, openai_usage, stop_reason};
use super::{named_frame, observe_usage};
use crate::domain::pricing::TokenUsage;
use crate::providers::{End, Event, Garbled, StreamTranslator};

/// The most tool calls one OpenAI stream may open (bounds the work of a hostile upstream).
const MAX_TOOL_CALLS: usize = 1024;

/// The content block being streamed.
#[derive(Clone, Copy, PartialEq)]
enum Open {
    None,
    Text,
    /// A `tool_use` block, for the OpenAI tool-call index.
    Tool(u64),
}

/// Translates an OpenAI chat stream for an Anthropic caller.
pub struct MessagesStream {
    model: String,
    started: bool,
    open: Open,
    /// Anthropic blocks opened so far (the next block's index).
    blocks: u64,
    /// Tool calls begun so far, and the id of the open one.
    tools: usize,
    tool_id: String,
    stop_reason: Value,
    usage: Option<TokenUsage>,
    chars: usize,
    end: End,
}

impl MessagesStream {
    /// A translator for a stream answering as `model`.
    pub fn new(model: &str) -> Self {
        MessagesStream {
            model: model.to_owned(),
            started: false,
            open: Open::None,
            blocks: 0,
            tools: 0,
            tool_id: String::new(),
            stop_reason: Value::Null,
            usage: None,
            chars: 0,
            end: End::Cut,
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let mut u = anthropic_usage(self.usage.unwrap_or_default());
        u["output_tokens"] = json!(0);
        let model = chunk["model"].as_str().unwrap_or(&self.model);
        out.push(named_frame(
            "message_start",
            &json!({"type": "message_start", "message": {
            "id": message_id(&chunk["id"]), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": u}}),
        ));
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if self.open != Open::None {
            let index = self.blocks - 1;
            out.push(named_frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
            self.open = Open::None;
        }
    }

    fn open(&mut self, open: Open, block: Value, out: &mut Vec<Bytes>) {
        self.close(out);
        out.push(named_frame(
            "content_block_start",
            &json!({"type": "content_block_start",
            "index": self.blocks, "content_block": block}),
        ));
        self.blocks += 1;
        self.open = open;
    }

    fn delta(&self, delta: Value) -> Bytes {
        named_frame(
            "content_block_delta",
            &json!({"type": "content_block_delta",
            "index": self.blocks.saturating_sub(1), "delta": delta}),
        )
    }

    fn text(&mut self, t: &str, out: &mut Vec<Bytes>) {
        if self.open != Open::Text {
            self.open(Open::Text, json!({"type": "text", "text": ""}), out);
        }
        self.chars += t.chars().count();
        out.push(self.delta(json!({"type": "text_delta", "text": t})));
    }

    /// One tool-call delta. A delta continues the open tool call when it has the same index and
    /// no other id (some providers repeat the id, some leave the index out and give each call
    /// its own id); anything else begins a new call, which needs an id and a name. A call
    /// resumed after another began cannot be carried (Anthropic's blocks are sequential).
    fn tool_call(&mut self, call: &Value, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        let index = call["index"].as_u64().unwrap_or(0);
        let id = call["id"].as_str().filter(|id| !id.is_empty());
        let continues = self.open == Open::Tool(index) && id.is_none_or(|id| id == self.tool_id);
        if !continues {
            if self.tools >= MAX_TOOL_CALLS {
                return Err(Garbled(format!("more than {MAX_TOOL_CALLS} tool calls")));
            }
            let (Some(id), Some(name)) = (id, call["function"]["name"].as_str()) else {
                return Err(Garbled(format!(
                    "tool call {index} begins without an id and a name (or resumes after another began)"
                )));
            };
            self.tools += 1;
            id.clone_into(&mut self.tool_id);
            self.open(
                Open::Tool(index),
                json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                out,
            );
        }
        if let Some(args) = call["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        {
            self.chars += args.chars().count();
            out.push(self.delta(json!({"type": "input_json_delta", "partial_json": args})));
        }
        Ok(())
    }
}

impl StreamTranslator for MessagesStream {
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        if event.data.trim_ascii() == b"[DONE]" {
            if self.end == End::Cut {
                self.end = End::Complete;
            }
            return Ok(());
        }
        let chunk: Value = serde_json::from_slice(event.data)
            .map_err(|e| Garbled(format!("provider stream event is not JSON: {e}")))?;
        if let Some(e) = chunk.get("error") {
            self.end = End::Failed;
            let message = e["message"].as_str().unwrap_or("upstream stream error");
            let body = super::error_body("api_error", message);
            out.push(named_frame("error", &body));
            return Ok(());
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(openai_usage(u));
        }
        self.start(&chunk, out);
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(());
        };
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.text(t, out);
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for call in calls {
                self.tool_call(call, out)?;
            }
        }
        if !choice["finish_reason"].is_null() {
            self.stop_reason = stop_reason(&choice["finish_reason"]);
            if self.end == End::Cut {
                self.end = End::Complete;
            }
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.start(&Value::Null, out);
        self.close(out);
        let stop = match &self.stop_reason {
            Value::Null => json!("end_turn"),
            s => s.clone(),
        };
        out.push(named_frame(
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": anthropic_usage(self.usage.unwrap_or_default())}),
        ));
        out.push(named_frame(
            "message_stop",
            &json!({"type": "message_stop"}),
        ));
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    fn chars(&self) -> usize {
        self.chars
    }

    fn end(&self) -> End {
        self.end
    }
}

/// What [`PassStream`] reads of an event; the rest is skipped (though still checked to be
/// JSON), so forwarding a delta costs one scan and no tree.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    message: Option<ProbeMessage>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(borrow, default)]
    delta: Option<ProbeDelta<'a>>,
}

#[derive(Deserialize)]
struct ProbeMessage {
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct ProbeDelta<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    thinking: Option<Cow<'a, str>>,
}

/// Passes an Anthropic stream through unchanged (re-framed), observing its usage and text.
#[derive(Default)]
pub struct PassStream {
    usage: Option<Value>,
    chars: usize,
    /// The upstream's `message_stop`, held back for `finish`.
    stop: Option<Bytes>,
    /// An `error` event came.
    failed: bool,
}

impl PassStream {
    /// A pass-through for one stream.
    pub fn new() -> Self {
        PassStream::default()
    }
}

impl StreamTranslator for PassStream {
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        let ev: Probe<'_> = serde_json::from_slice(event.data)
            .map_err(|e| Garbled(format!("Anthropic stream event is not in protocol: {e}")))?;
        let kind = ev.kind.as_deref().or(event.name).unwrap_or("");
        match kind {
            "message_start" => {
                if let Some(u) = ev.message.and_then(|m| m.usage) {
                    observe_usage(&mut self.usage, &u);
                }
            }
            "message_delta" => {
                if let Some(u) = &ev.usage {
                    observe_usage(&mut self.usage, u);
                }
            }
            "content_block_delta" => {
                if let Some(d) = &ev.delta {
                    let text = d
                        .text
                        .as_ref()
                        .or(d.partial_json.as_ref())
                        .or(d.thinking.as_ref());
                    self.chars += text.map_or(0, |t| t.chars().count());
                }
            }
            _ => {}
        }
        let name = event.name.unwrap_or(kind);
        if name.contains(['\n', '\r']) {
            return Err(Garbled(
                "Anthropic stream event name has a line break".into(),
            ));
        }
        // The data is compact JSON re-serialised on one line only when it had line breaks
        // (JSON's own whitespace): an SSE data line cannot hold them.
        let frame = if event.data.contains(&b'\n') || event.data.contains(&b'\r') {
            let v: Value = serde_json::from_slice(event.data)
                .map_err(|e| Garbled(format!("Anthropic stream event is not JSON: {e}")))?;
            named_frame(name, &v)
        } else {
            let mut f = Vec::with_capacity(event.data.len() + name.len() + 16);
            f.extend_from_slice(b"event: ");
            f.extend_from_slice(name.as_bytes());
            f.extend_from_slice(b"\ndata: ");
            f.extend_from_slice(event.data);
            f.extend_from_slice(b"\n\n");
            Bytes::from(f)
        };
        if kind == "error" {
            self.failed = true;
        }
        if kind == "message_stop" {
            self.stop = Some(frame);
        } else {
            out.push(frame);
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        out.extend(self.stop.take());
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.as_ref().map(super::usage)
    }

    fn chars(&self) -> usize {
        self.chars
    }

    fn end(&self) -> End {
        match (self.failed, self.stop.is_some()) {
            (true, _) => End::Failed,
            (false, true) => End::Complete,
            (false, false) => End::Cut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds data-only events (OpenAI's framing) or named ones; returns `(event, data)` pairs.
    fn run(
        t: &mut dyn StreamTranslator,
        events: &[(Option<&str>, String)],
    ) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        feed(t, events, &mut out);
        t.finish(&mut out);
        out.iter().map(|f| parse(f)).collect()
    }

    /// Feeds `events` (each must be taken), the frames into `out`.
    fn feed(t: &mut dyn StreamTranslator, events: &[(Option<&str>, String)], out: &mut Vec<Bytes>) {
        for (name, data) in events {
            t.event(
                Event {
                    name: *name,
                    data: data.as_bytes(),
                },
                out,
            )
            .unwrap();
        }
    }

    fn parse(frame: &[u8]) -> (String, Value) {
        let s = std::str::from_utf8(frame).unwrap();
        assert!(s.ends_with("\n\n"), "{s:?}");
        let (event, data) = s.trim_end().split_once('\n').unwrap();
        (
            event.strip_prefix("event: ").unwrap().to_owned(),
            serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
        )
    }

    fn chunk(delta: Value, finish: Value) -> (Option<&'static str>, String) {
        let c = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "model": "gpt-x",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        (None, c.to_string())
    }

    #[test]
    fn openai_text_and_tools_become_anthropic_events() {
        let usage = json!({"id": "chatcmpl-9", "object": "chat.completion.chunk", "choices": [],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62, "prompt_tokens_details": {"cached_tokens": 20}}});
        let events = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hi"}), Value::Null),
            chunk(json!({"content": " there"}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
            (None, usage.to_string()),
            (None, "[DONE]".to_owned()),
        ];
        let mut t = MessagesStream::new("gpt-x");
        let frames = run(&mut t, &events);
        let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            frames[0].1,
            json!({"type": "message_start", "message": {"id": "msg_chatcmpl-9",
            "type": "message", "role": "assistant", "model": "gpt-x", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0,
                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}})
        );
        assert_eq!(
            frames[1].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            frames[2].1,
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})
        );
        assert_eq!(
            frames[4].1,
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            frames[5].1,
            json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": "call_a", "name": "f", "input": {}}})
        );
        assert_eq!(
            frames[6].1,
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"x\":"}})
        );
        assert_eq!(frames[9].1["content_block"]["id"], "call_b");
        assert_eq!(frames[10].1["index"], 2);
        assert_eq!(
            frames[12].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 30, "output_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 20}})
        );
        assert_eq!(frames[13].1, json!({"type": "message_stop"}));
        assert_eq!(
            t.usage(),
            Some(TokenUsage {
                prompt: 50,
                completion: 12,
                cached: 20,
                cache_write: 0
            })
        );
        assert_eq!(t.chars(), "Hi there{\"x\":1}{}".len());
    }

    #[test]
    fn empty_and_failing_openai_streams() {
        let mut t = MessagesStream::new("gpt-x");
        let frames = run(&mut t, &[]);
        let names: Vec<&str> = frames.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        assert_eq!(frames[0].1["message"]["model"], "gpt-x");
        assert_eq!(frames[1].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(t.usage(), None);

        let mut t = MessagesStream::new("gpt-x");
        let mut out = Vec::new();
        let err = br#"{"error":{"message":"boom","type":"server_error"}}"#;
        t.event(
            Event {
                name: None,
                data: err,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(
            parse(&out[0]),
            (
                "error".into(),
                json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
            )
        );
        for bad in [
            &b"{oops"[..],
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
        ] {
            let mut t = MessagesStream::new("m");
            assert!(t
                .event(
                    Event {
                        name: None,
                        data: bad
                    },
                    &mut Vec::new()
                )
                .is_err());
        }
        // A tool call resumed after another began cannot be carried (blocks are sequential).
        let mut t = MessagesStream::new("m");
        let mut out = Vec::new();
        let calls = [
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g"}}]}),
                Value::Null,
            ),
        ];
        feed(&mut t, &calls, &mut out);
        let (_, back) = chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            Value::Null,
        );
        assert!(t
            .event(
                Event {
                    name: None,
                    data: back.as_bytes()
                },
                &mut out
            )
            .is_err());
    }

    #[test]
    fn tool_calls_told_apart_by_id_when_the_index_is_missing() {
        let events = vec![
            chunk(
                json!({"tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"id": "b", "function": {"name": "g", "arguments": "{\"k\":"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"id": "b", "function": {"arguments": "2}"}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ];
        let frames = run(&mut MessagesStream::new("m"), &events);
        let starts: Vec<_> = frames
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| (d["index"].clone(), d["content_block"]["id"].clone()))
            .collect();
        assert_eq!(starts, [(json!(0), json!("a")), (json!(1), json!("b"))]);
        let args: Vec<_> = frames
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| (d["index"].clone(), d["delta"]["partial_json"].clone()))
            .collect();
        assert_eq!(
            args,
            [
                (json!(0), json!("{}")),
                (json!(1), json!("{\"k\":")),
                (json!(1), json!("2}"))
            ]
        );
    }

    #[test]
    fn pass_through_is_unchanged_and_metered() {
        let events: Vec<(Option<&str>, String)> = [
            ("message_start", r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-x","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":10,"cache_read_input_tokens":300,"output_tokens":1}}}"#),
            ("content_block_start", r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#),
            ("ping", r#"{"type": "ping"}"#),
            ("content_block_delta", r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#),
            ("content_block_stop", r#"{"type":"content_block_stop","index":0}"#),
            ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ]
        .into_iter()
        .map(|(n, d)| (Some(n), d.to_owned()))
        .collect();
        let mut t = PassStream::new();
        let mut out = Vec::new();
        feed(&mut t, &events, &mut out);
        assert_eq!(out.len(), 6, "message_stop is held back");
        for (frame, (name, data)) in out.iter().zip(&events) {
            assert_eq!(
                frame,
                &format!("event: {}\ndata: {data}\n\n", name.unwrap())
            );
        }
        let mut tail = Vec::new();
        t.finish(&mut tail);
        assert_eq!(
            tail,
            vec![Bytes::from(
                "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
            )]
        );
        assert_eq!(
            t.usage(),
            Some(TokenUsage {
                prompt: 335,
                completion: 15,
                cached: 300,
                cache_write: 10
            })
        );
        assert_eq!(t.chars(), 5);
        // A truncated stream (no message_stop) ends with nothing from finish.
        let mut t = PassStream::new();
        t.finish(&mut tail);
        assert_eq!(tail.len(), 1);
    }

    #[test]
    fn pass_through_reframes_multiline_data_and_refuses_garbage() {
        let mut t = PassStream::new();
        let mut out = Vec::new();
        let data = b"{\"type\": \"ping\",\n \"x\": 1}";
        t.event(Event { name: None, data }, &mut out).unwrap();
        assert_eq!(
            parse(&out[0]),
            ("ping".into(), json!({"type": "ping", "x": 1}))
        );
        assert!(t
            .event(
                Event {
                    name: Some("x"),
                    data: b"not json"
                },
                &mut out
            )
            .is_err());
        let bad_name = Event {
            name: Some("a\nb"),
            data: b"{}",
        };
        assert!(t.event(bad_name, &mut out).is_err());
        let error =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        t.event(
            Event {
                name: Some("error"),
                data: error,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(parse(out.last().unwrap()).0, "error");
    }
}
