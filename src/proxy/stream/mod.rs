//! Streaming pass-through with metering. A task reads the provider's SSE stream and forwards
//! each event as it completes (never buffering the response), notes the usage chunk (hiding it
//! from clients that did not ask for it), and holds back only the final `data: [DONE]` until
//! the attempt's usage event is durable. If the client goes away, the task keeps reading the
//! provider (bounded in time and bytes) to learn the real usage; if none arrives, the event
//! carries an estimate and says so. A client that stops reading counts as gone once it has held
//! the stream back for `client_stall_timeout` in all (at once, or a trickle at a time): metering
//! never waits on a client for longer.
//!
//! A stream's memory is bounded by bytes, not by events: one event holds at most
//! `max_stream_event_bytes` (much less than a whole non-stream body), and the events waiting for a
//! slow client hold at most [`CLIENT_BUFFER_BYTES`] in all; past that, reading from the provider
//! waits (and the provider's sending with it, through TCP).
//!
//! This module is the task that meters; `sse` splits and reads the events, `client` is the
//! bounded channel to the client.

mod client;
mod sse;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;

use client::Client;
pub use client::{ClientStalled, Frames, CLIENT_BUFFER_BYTES};
pub use sse::{classify, EventTooLarge, Frame, SseSplitter};

use super::meter::{self, Attempt};
use super::route::Target;
use super::{DataError, RequestCtx};
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;
use crate::providers::bedrock::EventStreamDecoder;
use crate::providers::{sse_fields, End, Event, StreamTranslator};
use crate::proxy::DataPlane;

/// The most the task reads from a provider after the client left.
const DRAIN_MAX_BYTES: usize = 16 << 20;

/// How the provider frames its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Server-sent events.
    Sse,
    /// AWS's binary event stream, each message one event named by its `:event-type`.
    AwsEvents,
    /// AWS's event stream of `chunk` messages wrapping another protocol's events (Bedrock
    /// InvokeModel with a response stream: Anthropic's events).
    AwsChunks,
}

/// Everything the stream task needs to meter the attempt.
pub struct Job {
    /// Carries the provider's events into the caller's protocol; `None` passes OpenAI's
    /// chunks through.
    pub translator: Option<Box<dyn StreamTranslator>>,
    pub framing: Framing,
    pub plane: Arc<DataPlane>,
    pub ctx: RequestCtx,
    pub target_model: String,
    pub prompt_estimate: u64,
    /// Released when the attempt is settled (or if the task dies).
    pub reservation: crate::ledger::governor::Reservation,
    pub client_wants_usage: bool,
    pub index: u32,
    pub event_id: String,
    pub started: Instant,
}

/// Starts the stream task; the returned stream yields the frames for the client.
pub fn spawn(job: Job, target: &Target, resp: reqwest::Response) -> Frames {
    let (client, frames) = Client::new(job.plane.settings.client_stall_timeout);
    let mut target = target.clone();
    target.headers.clear(); // the credential is not needed past the request
    job.plane
        .ledger
        .tasks()
        .clone()
        .spawn(pump(job, target, resp, client));
    frames
}

struct Progress {
    usage: Option<TokenUsage>,
    chars: usize,
    /// The frames held back until the usage event is durable (`data: [DONE]`, or what a
    /// translator closes its stream with).
    done: Vec<Bytes>,
    client: Client,
    client_gone_at: Option<Instant>,
    drained: usize,
    /// Why the provider's stream ended early, for the client's error frame.
    failed: Option<String>,
    translator: Option<Box<dyn StreamTranslator>>,
    /// A translator's frames, reused from event to event.
    out: Vec<Bytes>,
}

/// Splits the provider's bytes into events, as its framing says.
enum Decoder {
    Sse(SseSplitter),
    Aws(EventStreamDecoder),
}

/// What the decoder found that ends the stream.
enum Broken {
    TooLarge(usize),
    Garbled(String),
}

impl Broken {
    /// What the client's error frame says.
    fn why(&self) -> String {
        match self {
            Broken::TooLarge(_) => "an event of the provider's stream is larger than this gateway accepts (max_stream_event_bytes)".into(),
            Broken::Garbled(why) => format!("the provider's stream could not be read: {why}"),
        }
    }
}

async fn pump(mut job: Job, target: Target, resp: reqwest::Response, client: Client) {
    let mut upstream = resp.bytes_stream();
    let max_event = job.plane.settings.max_stream_event_bytes;
    let mut decoder = match job.framing {
        Framing::Sse => Decoder::Sse(SseSplitter::new(max_event)),
        Framing::AwsEvents | Framing::AwsChunks => Decoder::Aws(EventStreamDecoder::new(max_event)),
    };
    let drain = job.plane.settings.stream_drain_timeout;
    let mut p = Progress {
        usage: None,
        chars: 0,
        done: Vec::new(),
        client,
        client_gone_at: None,
        drained: 0,
        failed: None,
        translator: job.translator.take(),
        out: Vec::new(),
    };
    loop {
        let next = match p.client_gone_at {
            None => upstream.next().await,
            Some(t) => {
                match tokio::time::timeout(drain.saturating_sub(t.elapsed()), upstream.next()).await
                {
                    Ok(n) => n,
                    Err(_) => break,
                }
            }
        };
        let chunk = match next {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                tracing::warn!(trace_id = %job.ctx.trace_id, error = %e.without_url(), "provider stream broke off");
                p.failed = Some("the provider's stream broke off".into());
                break;
            }
        };
        if p.client_gone_at.is_some() {
            p.drained += chunk.len();
        }
        match forward_events(&job, &mut p, &mut decoder, &chunk).await {
            Ok(()) => {}
            Err(broken) => {
                if let Broken::TooLarge(bytes) = broken {
                    // The provider generated what it sent: estimated like text (about a char a byte).
                    p.chars += bytes;
                }
                tracing::warn!(trace_id = %job.ctx.trace_id, error = %broken.why(), "provider stream ended by the gateway");
                p.failed = Some(broken.why());
                break;
            }
        }
        // Known once final: OpenAI's usage chunk comes last; other protocols may report part
        // of it early (Anthropic's `message_start` has the input, not the output), so theirs is
        // final only once the translator has seen the answer end.
        let usage_known = match &p.translator {
            None => p.usage.is_some(),
            Some(t) => t.usage().is_some() && t.end() != End::Cut,
        };
        if p.client_gone_at.is_some() && (usage_known || p.drained > DRAIN_MAX_BYTES) {
            break;
        }
    }
    if p.failed.is_none() {
        finish_decoding(&job, &mut p, decoder).await;
    }
    settle(job, &target, p).await;
}

/// Forwards every whole event of `chunk` (with what was buffered before it).
async fn forward_events(
    job: &Job,
    p: &mut Progress,
    decoder: &mut Decoder,
    chunk: &[u8],
) -> Result<(), Broken> {
    match decoder {
        Decoder::Sse(split) => {
            split.push(chunk);
            while let Some(event) = split
                .next_event()
                .map_err(|EventTooLarge(n)| Broken::TooLarge(n))?
            {
                forward_event(job, p, event).await?;
            }
        }
        Decoder::Aws(d) => {
            d.push(chunk);
            while let Some(m) = d.next().map_err(|e| Broken::Garbled(e.0))? {
                let inner;
                let (name, data) = if job.framing == Framing::AwsChunks {
                    if m.message_type != "event" {
                        return Err(Broken::Garbled(aws_exception(&m)));
                    }
                    inner = crate::providers::bedrock::invoke_chunk(&m.payload)
                        .map_err(|e| Broken::Garbled(e.0))?;
                    (event_type(&inner), &inner[..])
                } else {
                    (Some(m.event_type.clone()), &m.payload[..])
                };
                translate(
                    job,
                    p,
                    Event {
                        name: name.as_deref(),
                        data,
                    },
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// What an AWS exception message says (`{"message": ...}`), with its type.
fn aws_exception(m: &crate::providers::bedrock::Message) -> String {
    #[derive(serde::Deserialize)]
    struct Said {
        message: Option<String>,
    }
    let said = serde_json::from_slice::<Said>(&m.payload)
        .ok()
        .and_then(|s| s.message);
    format!(
        "{}: {}",
        m.event_type,
        said.as_deref().unwrap_or("(no message)")
    )
}

/// The `type` of an Anthropic event JSON (its SSE event name).
fn event_type(json: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Typed>(json).ok().map(|t| t.kind)
}

/// What is left when the provider's stream ended cleanly: SSE's last event without its blank
/// line; an AWS frame cut short is a broken stream.
async fn finish_decoding(job: &Job, p: &mut Progress, decoder: Decoder) {
    match decoder {
        Decoder::Sse(mut split) => {
            if let Some(rest) = split.rest() {
                if let Err(broken) = forward_event(job, p, rest).await {
                    p.failed = Some(broken.why());
                }
            }
        }
        Decoder::Aws(d) if d.has_partial() => {
            p.failed = Some("the provider's stream broke off".into());
        }
        Decoder::Aws(_) => {}
    }
}

/// Forwards one SSE event: OpenAI's passed through (the usage chunk hidden from a client
/// that did not ask for it, `[DONE]` held back), any other protocol's translated.
async fn forward_event(job: &Job, p: &mut Progress, event: Bytes) -> Result<(), Broken> {
    if p.translator.is_some() {
        let (name, data) = sse_fields(&event);
        return translate(
            job,
            p,
            Event {
                name: name.as_deref(),
                data: &data,
            },
        )
        .await;
    }
    let forward = match classify(&event) {
        Frame::Done => {
            p.done = vec![event];
            return Ok(());
        }
        Frame::Data {
            usage,
            chars,
            usage_only,
        } => {
            if usage.is_some() {
                p.usage = usage;
            }
            p.chars += chars;
            !usage_only || job.client_wants_usage
        }
        Frame::Other => true,
    };
    if forward {
        send(job, p, event).await;
    }
    Ok(())
}

/// Carries one provider event into the caller's protocol and sends what it became.
async fn translate(job: &Job, p: &mut Progress, event: Event<'_>) -> Result<(), Broken> {
    let Some(t) = p.translator.as_mut() else {
        return Ok(());
    };
    let mut out = std::mem::take(&mut p.out);
    let translated = t.event(event, &mut out);
    for frame in out.drain(..) {
        send(job, p, frame).await;
    }
    p.out = out;
    translated.map_err(|e| Broken::Garbled(e.0))
}

async fn send(job: &Job, p: &mut Progress, frame: Bytes) {
    if p.client_gone_at.is_none() && !p.client.send(frame, &job.ctx.trace_id).await {
        p.client_gone_at = Some(Instant::now());
    }
}

/// Records the usage event, then lets the client have its last bytes.
async fn settle(job: Job, target: &Target, mut p: Progress) {
    if let Some(t) = p.translator.as_mut() {
        p.usage = t.usage();
        p.chars = t.chars();
        match (&p.failed, t.end()) {
            (Some(_), _) => {}
            (None, End::Complete) => t.finish(&mut p.done),
            (None, End::Cut) => {
                p.failed = Some("the provider's stream ended before its answer was complete".into())
            }
            // The translator sent the provider's error on: the stream ends there.
            (None, End::Failed) => {}
        }
    }
    let (usage, source) = match p.usage {
        Some(u) => (u, UsageSource::Provider),
        None => (
            TokenUsage {
                prompt: job.prompt_estimate,
                completion: meter::tokens_for_chars(p.chars),
                cached: 0,
                cache_write: 0,
            },
            UsageSource::Estimated,
        ),
    };
    let attempt = Attempt {
        target,
        model: &job.target_model,
        status: 200,
        usage,
        source,
        upstream: job.started.elapsed(),
        streamed: true,
        index: job.index,
        event_id: job.event_id.clone(),
    };
    let endpoint = job.ctx.endpoint;
    let recorded = meter::record(&job.plane, &job.ctx, attempt, job.reservation).await;
    if p.client_gone_at.is_some() {
        return;
    }
    let last = match (recorded, p.failed) {
        (Err(e), _) => {
            tracing::error!(trace_id = %job.ctx.trace_id, error = %e, "usage event could not be recorded");
            vec![error_frame(
                endpoint,
                "the request's usage could not be recorded",
                "server_error",
            )]
        }
        (Ok(()), Some(why)) => vec![error_frame(endpoint, &why, "api_error")],
        (Ok(()), None) => p.done,
    };
    for frame in last {
        p.client.send(frame, &job.ctx.trace_id).await;
    }
}

/// The frame that tells the client its stream failed, in its protocol.
fn error_frame(endpoint: crate::domain::Endpoint, message: &str, kind: &'static str) -> Bytes {
    if endpoint == crate::domain::Endpoint::Messages {
        let body = crate::providers::anthropic::error_body(kind, message);
        return Bytes::from(format!("event: error\ndata: {body}\n\n"));
    }
    let error = DataError::new(reqwest::StatusCode::OK, kind, None, message);
    Bytes::from(format!("data: {}\n\n", error.envelope()))
}
