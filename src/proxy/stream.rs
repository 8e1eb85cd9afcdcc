//! Streaming pass-through with metering. A task reads the provider's SSE stream and forwards
//! each event as it completes (never buffering the response), notes the usage chunk (hiding it
//! from clients that did not ask for it), and holds back only the final `data: [DONE]` until
//! the attempt's usage event is durable. If the client goes away, the task keeps reading the
//! provider (bounded in time and bytes) to learn the real usage; if none arrives, the event
//! carries an estimate and says so.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::meter::{self, Attempt, WireUsage};
use super::route::Target;
use super::{DataError, RequestCtx};
use crate::app::Core;
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;

/// The most the task reads from a provider after the client left.
const DRAIN_MAX_BYTES: usize = 16 << 20;
/// Frames buffered towards a slow client before reading from the provider pauses.
const CLIENT_BUFFER: usize = 64;

/// Everything the stream task needs to meter the attempt.
pub struct Job {
    pub core: Arc<Core>,
    pub ctx: RequestCtx,
    pub target_model: String,
    pub prompt_estimate: u64,
    /// Released when the attempt is settled (or if the task dies).
    pub reservation: super::govern::Reservation,
    pub client_wants_usage: bool,
    pub index: u32,
    pub event_id: String,
    pub started: Instant,
}

/// Splits a byte stream into SSE events (blocks ending in a blank line), incrementally: each byte
/// is examined once however the stream is chunked (the search resumes where the last one ended),
/// and one event may hold at most `max_event` bytes.
pub struct SseSplitter {
    buf: BytesMut,
    /// How much of `buf` is known to hold no event end.
    scanned: usize,
    max_event: usize,
}

/// An event grew past the cap; it held this many bytes when it was dropped.
#[derive(Debug, PartialEq)]
pub struct EventTooLarge(pub usize);

impl SseSplitter {
    pub fn new(max_event: usize) -> Self {
        SseSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            max_event,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole event, terminator included; an error once an unfinished event passes the
    /// cap (the buffer is dropped then: nothing of it is forwarded).
    pub fn next_event(&mut self) -> Result<Option<Bytes>, EventTooLarge> {
        match find_blank_line(&self.buf, self.scanned) {
            Some(end) if end <= self.max_event => {
                self.scanned = 0;
                Ok(Some(self.buf.split_to(end).freeze()))
            }
            Some(_) => Err(self.drop_oversized()),
            None if self.buf.len() > self.max_event => Err(self.drop_oversized()),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    fn drop_oversized(&mut self) -> EventTooLarge {
        let dropped = std::mem::take(&mut self.buf);
        self.scanned = 0;
        EventTooLarge(dropped.len())
    }

    /// Whatever is left when the stream ends without a final blank line.
    pub fn rest(&mut self) -> Option<Bytes> {
        self.scanned = 0;
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// The end of the first `\n\n` or `\r\n\r\n` whose final `\n` is at or after `from`. Both end in
/// `\n`, so the first `\n` completing either is the earliest end.
fn find_blank_line(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = b[i..].iter().position(|&c| c == b'\n') {
        let n = i + off;
        let lf = n >= 1 && b[n - 1] == b'\n';
        let crlf = n >= 3 && &b[n - 3..n] == b"\r\n\r";
        if lf || crlf {
            return Some(n + 1);
        }
        i = n + 1;
    }
    None
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    delta: Option<Delta>,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Chunk {
    choices: Option<Vec<ChunkChoice>>,
    usage: Option<WireUsage>,
}

/// What an SSE event is, for metering.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Done,
    Data {
        usage: Option<TokenUsage>,
        chars: usize,
        usage_only: bool,
    },
    Other,
}

/// Reads the `data:` lines of an event.
pub fn classify(event: &[u8]) -> Frame {
    let mut data = Vec::new();
    for line in event.split(|&c| c == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(rest.strip_prefix(b" ").unwrap_or(rest));
        }
    }
    if data == b"[DONE]" {
        return Frame::Done;
    }
    match serde_json::from_slice::<Chunk>(&data) {
        Ok(c) => {
            let chars = c.choices.iter().flatten().map(|ch| {
                let d = ch.delta.as_ref().and_then(|d| d.content.as_deref());
                d.or(ch.text.as_deref()).map_or(0, |s| s.chars().count())
            });
            let usage_only = c.choices.as_ref().is_some_and(Vec::is_empty) && c.usage.is_some();
            Frame::Data {
                usage: c.usage.map(|u| u.tokens()),
                chars: chars.sum(),
                usage_only,
            }
        }
        Err(_) => Frame::Other,
    }
}

/// Starts the stream task; the returned receiver yields the frames for the client.
pub fn spawn(job: Job, target: &Target, resp: reqwest::Response) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
    let mut target = target.clone();
    target.headers.clear(); // the credential is not needed past the request
    job.core.tasks.clone().spawn(pump(job, target, resp, tx));
    rx
}

struct Progress {
    usage: Option<TokenUsage>,
    chars: usize,
    done: Option<Bytes>,
    client_gone_at: Option<Instant>,
    drained: usize,
    /// Why the provider's stream ended early, for the client's error frame.
    failed: Option<&'static str>,
}

async fn pump(job: Job, target: Target, resp: reqwest::Response, tx: mpsc::Sender<Bytes>) {
    let mut upstream = resp.bytes_stream();
    let mut split = SseSplitter::new(job.core.settings.max_upstream_body_bytes);
    let drain = job.core.settings.stream_drain_timeout;
    let mut p = Progress {
        usage: None,
        chars: 0,
        done: None,
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
        if let Err(EventTooLarge(bytes)) = forward_events(&job, &tx, &mut p, &mut split).await {
            // The provider generated what it sent: estimated like text (about a char a byte).
            p.chars += bytes;
            tracing::warn!(trace_id = %job.ctx.trace_id, "provider stream event over max_upstream_body_bytes; stream ended");
            p.failed = Some("an event of the provider's stream is larger than this gateway accepts (max_upstream_body_bytes)");
            break;
        }
        if p.client_gone_at.is_some() && (p.usage.is_some() || p.drained > DRAIN_MAX_BYTES) {
            break;
        }
    }
    if let Some(rest) = split.rest() {
        forward_event(&job, &tx, &mut p, rest).await;
    }
    settle(job, &target, &tx, p).await;
}

/// Forwards every whole event buffered so far.
async fn forward_events(
    job: &Job,
    tx: &mpsc::Sender<Bytes>,
    p: &mut Progress,
    split: &mut SseSplitter,
) -> Result<(), EventTooLarge> {
    while let Some(event) = split.next_event()? {
        forward_event(job, tx, p, event).await;
    }
    Ok(())
}

async fn forward_event(job: &Job, tx: &mpsc::Sender<Bytes>, p: &mut Progress, event: Bytes) {
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
    if forward && p.client_gone_at.is_none() && tx.send(event).await.is_err() {
        tracing::info!(trace_id = %job.ctx.trace_id, "client left mid-stream; reading on to meter the real usage");
        p.client_gone_at = Some(Instant::now());
    }
}

/// Records the usage event, then lets the client have its last bytes.
async fn settle(job: Job, target: &Target, tx: &mpsc::Sender<Bytes>, p: Progress) {
    let (usage, source) = match p.usage {
        Some(u) => (u, UsageSource::Provider),
        None => (
            TokenUsage {
                prompt: job.prompt_estimate,
                completion: meter::tokens_for_chars(p.chars),
                cached: 0,
            },
            UsageSource::Estimated,
        ),
    };
    let elapsed = job.started.elapsed();
    job.core.metrics.upstream_time.observe(elapsed);
    let attempt = Attempt {
        target,
        model: &job.target_model,
        status: 200,
        usage,
        source,
        upstream_ms: elapsed.as_millis().min(u128::from(u32::MAX)) as u32,
        streamed: true,
        index: job.index,
        event_id: job.event_id.clone(),
    };
    let event = meter::usage_event(&job.core.prices, &job.ctx, attempt);
    let recorded = job.core.record_usage(event, Some(job.reservation)).await;
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
        let _ = tx.send(frame).await;
    }
}

fn error_frame(message: &str, kind: &'static str) -> Bytes {
    let error = DataError::new(reqwest::StatusCode::OK, kind, None, message);
    Bytes::from(format!("data: {}\n\n", error.envelope()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_events_across_chunks() {
        let mut s = SseSplitter::new(1024);
        s.push(b"data: {\"a\":1}\n\nda");
        assert_eq!(
            s.next_event().unwrap().unwrap(),
            &b"data: {\"a\":1}\n\n"[..]
        );
        assert!(s.next_event().unwrap().is_none());
        s.push(b"ta: [DONE]\r\n\r");
        assert!(s.next_event().unwrap().is_none());
        s.push(b"\n: x\n");
        assert_eq!(classify(&s.next_event().unwrap().unwrap()), Frame::Done);
        s.push(b"\n");
        assert_eq!(s.next_event().unwrap().unwrap(), &b": x\n\n"[..]);
        assert!(s.rest().is_none());
    }

    /// A blank line split between chunks in every way is found, and the earliest one wins.
    #[test]
    fn finds_terminators_across_any_split() {
        let text = b"data: a\r\n\r\ndata: b\n\ndata: c\r\n\n";
        for cut in 0..text.len() {
            let mut s = SseSplitter::new(1024);
            let mut got = Vec::new();
            for part in [&text[..cut], &text[cut..]] {
                s.push(part);
                while let Some(e) = s.next_event().unwrap() {
                    got.push(e);
                }
            }
            assert_eq!(
                got,
                vec![
                    Bytes::from_static(b"data: a\r\n\r\n"),
                    Bytes::from_static(b"data: b\n\n"),
                    Bytes::from_static(b"data: c\r\n\n"),
                ],
                "cut at {cut}"
            );
        }
    }

    /// An event that never ends is an error once past the cap, however it is chunked; before
    /// that, waiting for more examines only the new bytes (the old scanner rescanned from the
    /// event's start on every chunk: quadratic in the event's size).
    #[test]
    fn an_endless_event_is_capped_and_scanned_once() {
        let mut s = SseSplitter::new(64 * 1024);
        s.push(b"data: {\"x\":\"");
        let mut pushed = 0;
        let err = loop {
            s.push(&[b'a'; 100]);
            pushed += 100;
            assert!(s.scanned <= s.buf.len());
            match s.next_event() {
                Ok(None) => assert_eq!(s.scanned, s.buf.len()),
                other => break other,
            }
        };
        assert_eq!(err, Err(EventTooLarge(12 + pushed)));
        assert!(pushed <= 64 * 1024 + 100, "{pushed}");
        assert!(s.rest().is_none(), "nothing of the oversized event is kept");
        let mut whole = SseSplitter::new(16);
        whole.push(b"data: 0123456789abcdef\n\n");
        assert_eq!(whole.next_event(), Err(EventTooLarge(24)));
    }

    #[test]
    fn classifies_usage_and_content() {
        let content =
            br#"data: {"choices":[{"index":0,"delta":{"content":"hello"}}],"usage":null}"#;
        assert_eq!(
            classify(content),
            Frame::Data {
                usage: None,
                chars: 5,
                usage_only: false
            }
        );
        let usage = br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0,"total_tokens":3}}"#;
        assert_eq!(
            classify(usage),
            Frame::Data {
                usage: Some(TokenUsage {
                    prompt: 3,
                    completion: 0,
                    cached: 0
                }),
                chars: 0,
                usage_only: true
            }
        );
        assert_eq!(classify(b": keep-alive\n\n"), Frame::Other);
        assert_eq!(
            classify(b"data: {\"choices\":[{\"text\":\"ab\"}]}"),
            Frame::Data {
                usage: None,
                chars: 2,
                usage_only: false
            }
        );
    }
}
