//! The channel from the stream task to the client: bounded in frames and in bytes, and given up
//! on once the client has held the stream back for its stall allowance in all.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames buffered towards a slow client before reading from the provider pauses.
const CLIENT_BUFFER: usize = 64;
/// Bytes of frames buffered towards a slow client before reading from the provider pauses: a few
/// MiB per stream, whatever the events' size (a frame larger than this waits for an empty buffer).
pub const CLIENT_BUFFER_BYTES: usize = 4 << 20;

/// A frame on its way to the client, holding its bytes' share of the buffer until it is taken.
type Queued = (Bytes, OwnedSemaphorePermit);

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
pub(super) struct Client {
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
    pub(super) fn new(stall: Duration) -> (Client, Frames) {
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
    pub(super) async fn send(&mut self, frame: Bytes, trace_id: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

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
}
