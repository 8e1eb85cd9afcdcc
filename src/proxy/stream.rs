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

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::meter::{self, Attempt, WireUsage};
use super::route::Target;
use super::{DataError, RequestCtx};
use crate::domain::pricing::TokenUsage;
use crate::domain::UsageSource;
use crate::proxy::DataPlane;

/// The most the task reads from a provider after the client left.
const DRAIN_MAX_BYTES: usize = 16 << 20;
/// Frames buffered towards a slow client before reading from the provider pauses.
const CLIENT_BUFFER: usize = 64;
/// Bytes of frames buffered towards a slow client before reading from the provider pauses: a few
/// MiB per stream, whatever the events' size (a frame larger than this waits for an empty buffer).
pub const CLIENT_BUFFER_BYTES: usize = 4 << 20;

/// A frame on its way to the client, holding its bytes' share of the buffer until it is taken.
type Queued = (Bytes, OwnedSemaphorePermit);

/// Everything the stream task needs to meter the attempt.
pub struct Job {
    pub core: Arc<DataPlane>,
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

/// Starts the stream task; the returned stream yields the frames for the client.
pub fn spawn(job: Job, target: &Target, resp: reqwest::Response) -> Frames {
    let (client, frames) = Client::new(job.core.settings.client_stall_timeout);
    let mut target = target.clone();
    target.headers.clear(); // the credential is not needed past the request
    job.core
        .ledger
        .tasks()
        .clone()
        .spawn(pump(job, target, resp, client));
    frames
}

/// The client's frames. If the task gave up on a stalled client, the stream ends in an error,
/// so the connection is broken off rather than the stream looking complete.
pub struct Frames {
    rx: mpsc::Receiver<Queued>,
    abandoned: Arc<AtomicBool>,
}

/// Why a client's stream was broken off.
#[derive(Debug, thiserror::Error)]
#[error("the client stopped reading the stream (client_stall_timeout_ms)")]
pub struct ClientStalled;

impl futures_util::Stream for Frames {
    type Item = Result<Bytes, ClientStalled>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.abandoned.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(ClientStalled)));
        }
        // The frame's share of the buffer is freed as it is handed on (hyper bounds its own).
        self.rx
            .poll_recv(cx)
            .map(|f| f.map(|(frame, _room)| Ok(frame)))
    }
}

/// The task's end of the channel to the client; `None` once the client is gone.
struct Client {
    tx: Option<mpsc::Sender<Queued>>,
    /// The bytes the buffer towards the client has room for (`room_bytes` in all).
    room: Arc<Semaphore>,
    room_bytes: usize,
    abandoned: Arc<AtomicBool>,
    /// How long the client may hold the stream back in all.
    stall: Duration,
    /// How long frames have waited for room so far.
    waited: Duration,
}

impl Client {
    /// The task's end and the client's end of a new stream, with `stall` as the allowance.
    fn new(stall: Duration) -> (Client, Frames) {
        Self::with_buffer(stall, CLIENT_BUFFER, CLIENT_BUFFER_BYTES)
    }

    fn with_buffer(stall: Duration, frames: usize, bytes: usize) -> (Client, Frames) {
        let (tx, rx) = mpsc::channel(frames);
        let abandoned = Arc::new(AtomicBool::new(false));
        let client = Client {
            tx: Some(tx),
            room: Arc::new(Semaphore::new(bytes)),
            room_bytes: bytes,
            abandoned: abandoned.clone(),
            stall,
            waited: Duration::ZERO,
        };
        (client, Frames { rx, abandoned })
    }

    /// Sends a frame, waiting for room (in frames and in bytes) at most what is left of `stall`.
    /// Returns false when the client is gone: it went away, or it held the stream back too long
    /// and is given up on (its stream then ends in an error and the sender is dropped at once, so
    /// its connection closes). A client reading a trickle cannot hold metering up longer than one
    /// that stopped.
    async fn send(&mut self, frame: Bytes, trace_id: &str) -> bool {
        let Some(tx) = &self.tx else { return false };
        // A frame larger than the whole buffer takes all of it: it waits for an empty buffer.
        let cost = u32::try_from(frame.len().min(self.room_bytes)).unwrap_or(u32::MAX);
        // Room at once is the common case, and needs no timer.
        let frame = match self.room.clone().try_acquire_many_owned(cost) {
            Ok(permit) => match tx.try_send((frame, permit)) {
                Ok(()) => return true,
                Err(TrySendError::Full((frame, _))) => frame,
                Err(TrySendError::Closed(_)) => return self.gone(trace_id, false),
            },
            Err(_) => frame,
        };
        let started = Instant::now();
        let room = self.room.clone();
        let wait = async move {
            // The semaphore is never closed; a client that left frees its frames' room.
            let permit = room.acquire_many_owned(cost).await.ok()?;
            tx.send((frame, permit)).await.ok()
        };
        let sent = tokio::time::timeout(self.stall.saturating_sub(self.waited), wait).await;
        self.waited += started.elapsed();
        match sent {
            Ok(Some(())) => true,
            Ok(None) => self.gone(trace_id, false),
            Err(_) => self.gone(trace_id, true),
        }
    }

    fn gone(&mut self, trace_id: &str, stalled: bool) -> bool {
        if stalled {
            tracing::warn!(trace_id, stall_ms = self.stall.as_millis() as u64,
                "client stopped reading mid-stream; dropping it and reading on to meter the real usage");
            self.abandoned.store(true, Ordering::Release);
        } else {
            tracing::info!(
                trace_id,
                "client left mid-stream; reading on to meter the real usage"
            );
        }
        self.tx = None;
        false
    }
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
    let mut split = SseSplitter::new(job.core.settings.max_stream_event_bytes);
    let drain = job.core.settings.stream_drain_timeout;
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
    let recorded = job
        .core
        .ledger
        .record_usage(event, Some(job.reservation))
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_that_stops_reading_is_given_up_on_and_its_stream_errs() {
        let (mut client, mut frames) = Client::with_buffer(Duration::from_millis(20), 1, 1 << 20);
        assert!(client.send(Bytes::from_static(b"a"), "t").await);
        // Nobody reads: the second frame waits `stall`, then the client is gone.
        assert!(!client.send(Bytes::from_static(b"b"), "t").await);
        assert!(client.tx.is_none());
        assert!(!client.send(Bytes::from_static(b"c"), "t").await);
        assert!(matches!(frames.next().await, Some(Err(ClientStalled))));
    }

    #[tokio::test]
    async fn a_client_reading_a_trickle_is_given_up_on_too() {
        let (mut client, mut frames) = Client::with_buffer(Duration::from_millis(100), 1, 1 << 20);
        let abandoned = client.abandoned.clone();
        // One frame taken every 10 ms: no single wait is long, but they add up.
        let reader = tokio::spawn(async move {
            while frames.rx.recv().await.is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut sent = 0;
        while client.send(Bytes::from_static(b"x"), "t").await {
            sent += 1;
            assert!(sent < 10_000, "the trickle was never given up on");
        }
        assert!(abandoned.load(Ordering::Acquire));
        assert!(client.waited >= Duration::from_millis(100));
        reader.await.unwrap();
    }

    #[tokio::test]
    async fn a_client_that_left_is_gone_without_waiting() {
        let (mut client, frames) = Client::with_buffer(Duration::from_secs(3600), 1, 1 << 20);
        drop(frames);
        assert!(!client.send(Bytes::from_static(b"a"), "t").await);
        assert!(!client.abandoned.load(Ordering::Acquire));
    }

    /// The buffer towards the client is bounded in bytes: frames wait for room once the queued
    /// ones hold the buffer's bytes, however few frames that is, and go on as they are taken.
    #[tokio::test]
    async fn the_client_buffer_is_bounded_in_bytes() {
        let (mut client, mut frames) = Client::with_buffer(Duration::from_secs(3600), 64, 1000);
        let frame = Bytes::from(vec![b'x'; 400]);
        assert!(client.send(frame.clone(), "t").await);
        assert!(client.send(frame.clone(), "t").await);
        assert_eq!(client.room.available_permits(), 200);
        let third = tokio::spawn(async move {
            let sent = client.send(frame, "t").await;
            (sent, client)
        });
        tokio::task::yield_now().await;
        assert!(
            !third.is_finished(),
            "a third frame does not fit in 1000 bytes"
        );
        assert_eq!(frames.next().await.unwrap().unwrap().len(), 400);
        let (sent, client) = third.await.unwrap();
        assert!(sent);
        assert_eq!(client.room.available_permits(), 200);
        // A frame larger than the whole buffer waits for an empty one, then goes.
        let (mut client, mut frames) = Client::with_buffer(Duration::from_secs(3600), 64, 1000);
        assert!(client.send(Bytes::from(vec![b'y'; 5000]), "t").await);
        assert_eq!(client.room.available_permits(), 0);
        assert_eq!(frames.next().await.unwrap().unwrap().len(), 5000);
        assert_eq!(client.room.available_permits(), 1000);
    }

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
