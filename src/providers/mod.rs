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

pub mod anthropic;
pub mod bedrock;
pub mod gemini;

use bytes::Bytes;

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
pub trait StreamTranslator: Send {
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
}
