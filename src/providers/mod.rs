//! The upstream wire protocols, pure: how the gateway's canonical request (an OpenAI chat or
//! embeddings body) is carried into each provider's own request, and how the provider's answer,
//! its stream and its usage are carried back into what the caller speaks. No I/O here except
//! the credential exchanges a protocol needs (STS AssumeRole, an OAuth2 token), which take the
//! gateway's HTTP client; the data plane ([`crate::proxy`]) chooses the adapter, sends, meters.
//!
//! - [`anthropic`]: Anthropic Messages, both ways (an upstream, and the `/v1/messages` front
//!   door translated to OpenAI-format providers).
//! - [`bedrock`]: AWS Bedrock Converse / ConverseStream and InvokeModel, SigV4, the AWS event
//!   stream, STS AssumeRole.
//! - [`gemini`]: Google Gemini `generateContent` (API key) and Vertex AI (service-account
//!   OAuth2).
//! - [`chat_parts`]: reading an OpenAI chat request alike in the translations out of it.
//! - [`chat_stream`]: the frames of an OpenAI caller's stream, which each translation into it
//!   writes.

pub mod anthropic;
pub mod bedrock;
pub mod chat_parts;
pub mod chat_stream;
pub mod gemini;

use bytes::Bytes;
use serde_json::Value;

use crate::domain::pricing::TokenUsage;

/// A request the provider's protocol cannot carry (e.g. `n > 1` on Anthropic): the caller gets
/// a 400 with this message, and nothing is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// An answer that is not what the provider's protocol says it sends (not JSON, a missing field,
/// a broken event): the caller gets a 502, the attempt is metered with an estimate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Garbled(pub String);

/// One event of a provider's stream: the SSE `event:` name (or the AWS event stream's
/// `:event-type` header) and its data (the SSE `data:` lines joined, or the message payload).
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub name: Option<&'a str>,
    pub data: &'a [u8],
}

/// Carries one provider stream into the caller's protocol, event by event. Each output frame is
/// one whole SSE event in the caller's format (`data: {...}\n\n`, or `event: x\ndata: {...}\n\n`).
pub trait StreamTranslator: Send + Sync {
    /// What one provider event becomes: zero or more frames appended to `out`.
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled>;
    /// The frames that close the caller's stream after the provider's ended cleanly (e.g. the
    /// usage chunk a client asked for and `data: [DONE]`). The data plane sends them only once
    /// the attempt's usage event is durable.
    fn finish(&mut self, out: &mut Vec<Bytes>);
    /// The provider's own usage, once it reported any.
    fn usage(&self) -> Option<TokenUsage>;
    /// Characters of generated text (and tool-call arguments) seen so far, for an estimate when
    /// the provider never reports usage.
    fn chars(&self) -> usize;
    /// How the provider's stream ended, as far as its protocol tells (asked once its bytes
    /// ended): only a complete stream is closed with [`StreamTranslator::finish`]'s frames.
    fn end(&self) -> End;
}

/// How a provider's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// With its protocol's last event (`message_stop`, a finish reason, ...).
    Complete,
    /// Before it: the connection ended mid-answer.
    Cut,
    /// With an error event, which the translator has already turned into the caller's error frame.
    Failed,
}

/// Two translators in a row: the frames the first makes are read as the second's provider
/// events (e.g. Bedrock Converse -> OpenAI chunks -> Anthropic events for a `/v1/messages`
/// caller). Usage is the first's (the provider's own).
pub struct Chain {
    first: Box<dyn StreamTranslator>,
    second: Box<dyn StreamTranslator>,
    between: Vec<Bytes>,
}

impl Chain {
    pub fn new(first: Box<dyn StreamTranslator>, second: Box<dyn StreamTranslator>) -> Self {
        Chain {
            first,
            second,
            between: Vec::new(),
        }
    }

    fn pass_on(&mut self, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        for frame in std::mem::take(&mut self.between) {
            let (name, data) = sse_fields(&frame);
            self.second.event(
                Event {
                    name: name.as_deref(),
                    data: &data,
                },
                out,
            )?;
        }
        Ok(())
    }
}

impl StreamTranslator for Chain {
    fn event(&mut self, event: Event<'_>, out: &mut Vec<Bytes>) -> Result<(), Garbled> {
        self.first.event(event, &mut self.between)?;
        self.pass_on(out)
    }

    fn finish(&mut self, out: &mut Vec<Bytes>) {
        self.first.finish(&mut self.between);
        // What the first's closing frames say (its usage chunk, `[DONE]`) reaches the second as
        // events; the second then closes its own stream.
        if self.pass_on(out).is_err() {
            self.between.clear();
        }
        self.second.finish(out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.first.usage()
    }

    fn chars(&self) -> usize {
        self.first.chars()
    }

    fn end(&self) -> End {
        self.first.end()
    }
}

/// The `event:` name and the `data:` lines (joined by `\n`) of one whole SSE event.
pub fn sse_fields(frame: &[u8]) -> (Option<String>, Vec<u8>) {
    let mut name = None;
    let mut data: Vec<u8> = Vec::new();
    for line in frame.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let value = |rest: &[u8]| rest.strip_prefix(b" ").unwrap_or(rest).to_vec();
        if let Some(rest) = line.strip_prefix(b"event:") {
            name = String::from_utf8(value(rest)).ok();
        } else if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend(value(rest));
        }
    }
    (name, data)
}

/// Test support for the translators.
#[cfg(test)]
pub(crate) mod testing {
    use serde_json::{json, Value};

    use super::{Event, StreamTranslator};

    /// Feeds `events` (an event name, if any, and its JSON data) to `t`, then finishes it: the
    /// data of each frame it made, as JSON (`[DONE]` as that string).
    pub fn translate<'a>(
        t: &mut dyn StreamTranslator,
        events: impl IntoIterator<Item = (Option<&'a str>, &'a Value)>,
    ) -> Vec<Value> {
        let mut out = Vec::new();
        for (name, data) in events {
            let data = data.to_string();
            t.event(
                Event {
                    name,
                    data: data.as_bytes(),
                },
                &mut out,
            )
            .unwrap();
        }
        t.finish(&mut out);
        out.iter()
            .map(|f| {
                let s = std::str::from_utf8(f).unwrap();
                let d = s
                    .strip_prefix("data: ")
                    .unwrap()
                    .strip_suffix("\n\n")
                    .unwrap();
                if d == "[DONE]" {
                    json!(d)
                } else {
                    serde_json::from_str(d).unwrap()
                }
            })
            .collect()
    }

    /// [`translate`] with named events (Anthropic's SSE, the AWS event stream).
    pub fn translate_named(t: &mut dyn StreamTranslator, events: &[(&str, Value)]) -> Vec<Value> {
        translate(t, events.iter().map(|(name, data)| (Some(*name), data)))
    }
}

/// An embedding in OpenAI's answer from a provider's list of numbers: the list, or with
/// `base64` (the caller's `encoding_format: base64`, the `openai` SDK's default) its values as
/// little-endian `f32`s, base64-encoded.
pub fn embedding(values: Option<&Value>, base64: bool) -> Result<Value, Garbled> {
    let list = values
        .and_then(Value::as_array)
        .filter(|l| l.iter().all(Value::is_number))
        .ok_or_else(|| Garbled("an embedding is not a list of numbers".into()))?;
    if !base64 {
        return Ok(Value::Array(list.clone()));
    }
    let bytes: Vec<u8> = list
        .iter()
        .flat_map(|v| (v.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
        .collect();
    Ok(Value::String(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        bytes,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_fields_reads_the_name_and_joins_data_lines() {
        let (n, d) = sse_fields(b"event: message_start\r\ndata: {\"a\":\ndata: 1}\n\n");
        assert_eq!(n.as_deref(), Some("message_start"));
        assert_eq!(d, b"{\"a\":\n1}");
        let (n, d) = sse_fields(b": comment\ndata:[DONE]\n\n");
        assert_eq!(n, None);
        assert_eq!(d, b"[DONE]");
    }
}
