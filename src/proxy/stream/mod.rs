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
use crate::proxy::DataPlane;

/// The most the task reads from a provider after the client left.
const DRAIN_MAX_BYTES: usize = 16 << 20;

/// Everything the stream task needs to meter the attempt.
pub struct Job {
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
    done: Option<Bytes>,
    client: Client,
    client_gone_at: Option<Instant>,
    drained: usize,
    /// Why the provider's stream ended early, for the client's error frame.
    failed: Option<&'static str>,
}

async fn pump(job: Job, target: Target, resp: reqwest::Response, client: Client) {
    let mut upstream = resp.bytes_stream();
    let mut split = SseSplitter::new(job.plane.settings.max_stream_event_bytes);
    let drain = job.plane.settings.stream_drain_timeout;
    let mut p = Progress {
        usage: None,
        chars: 0,
        done: None,
        client,
        client_gone_at: None,
        drained: 0,
        failed: None,
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
                p.failed = Some("the provider's stream broke off");
                break;
            }
        };
        if p.client_gone_at.is_some() {
            p.drained += chunk.len();
        }
        split.push(&chunk);
        if let Err(EventTooLarge(bytes)) = forward_events(&job, &mut p, &mut split).await {
            // The provider generated what it sent: estimated like text (about a char a byte).
            p.chars += bytes;
            tracing::warn!(trace_id = %job.ctx.trace_id, "provider stream event over max_stream_event_bytes; stream ended");
            p.failed = Some("an event of the provider's stream is larger than this gateway accepts (max_stream_event_bytes)");
            break;
        }
        if p.client_gone_at.is_some() && (p.usage.is_some() || p.drained > DRAIN_MAX_BYTES) {
            break;
        }
    }
    if let Some(rest) = split.rest() {
        forward_event(&job, &mut p, rest).await;
    }
    settle(job, &target, p).await;
}

/// Forwards every whole event buffered so far.
async fn forward_events(
    job: &Job,
    p: &mut Progress,
    split: &mut SseSplitter,
) -> Result<(), EventTooLarge> {
    while let Some(event) = split.next_event()? {
        forward_event(job, p, event).await;
    }
    Ok(())
}

async fn forward_event(job: &Job, p: &mut Progress, event: Bytes) {
    let forward = match classify(&event) {
        Frame::Done => {
            p.done = Some(event);
            return;
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
    if forward && p.client_gone_at.is_none() && !p.client.send(event, &job.ctx.trace_id).await {
        p.client_gone_at = Some(Instant::now());
    }
}

/// Records the usage event, then lets the client have its last bytes.
async fn settle(job: Job, target: &Target, mut p: Progress) {
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
    let recorded = meter::record(&job.plane, &job.ctx, attempt, job.reservation).await;
    if p.client_gone_at.is_some() {
        return;
    }
    let last = match (recorded, p.failed) {
        (Err(e), _) => {
            tracing::error!(trace_id = %job.ctx.trace_id, error = %e, "usage event could not be recorded");
            Some(error_frame(
                "the request's usage could not be recorded",
                "server_error",
            ))
        }
        (Ok(()), Some(why)) => Some(error_frame(why, "api_error")),
        (Ok(()), None) => p.done,
    };
    if let Some(frame) = last {
        p.client.send(frame, &job.ctx.trace_id).await;
    }
}

fn error_frame(message: &str, kind: &'static str) -> Bytes {
    let error = DataError::new(reqwest::StatusCode::OK, kind, None, message);
    Bytes::from(format!("data: {}\n\n", error.envelope()))
}
