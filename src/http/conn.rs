//! One client connection, served with hyper's HTTP/1 server, plus what hyper does not bound on
//! its own: the header-read, idle keep-alive and client-stall timeouts (the open-connection cap
//! is [`super::cap`]). (The body-read timeout is where bodies are read: [`super::extract::body_bytes`].)
//!
//! A connection is in one of three phases, tracked by [`Activity`]:
//! - *head*: bytes of a request's headers may be arriving (from connecting, or from the first
//!   byte after a response on a kept-alive connection); closed `header_read_timeout` after it began.
//! - *busy*: a request is being handled or its response written; bounded by the body-read and
//!   upstream timeouts and, while the client reads nothing, by `client_stall_timeout` ([`Guarded`]).
//! - *idle*: the last response is done and nothing has arrived; closed after `idle_timeout`.
//!
//! A watchdog per connection sleeps to the next deadline and re-reads the phase when it wakes,
//! waking at least every `header_read_timeout`, so no request pays for a timer of its own and a
//! deadline is never missed: a head that began after the last wake-up ends after the next one.

use std::convert::Infallible;
use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::cap::Slot;
use crate::settings::Settings;
use crate::telemetry::ConnTimeout;

/// The connection timeouts, from the settings.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    header_read: Duration,
    idle: Duration,
    client_stall: Duration,
}

impl Timeouts {
    pub fn of(s: &Settings) -> Self {
        Timeouts {
            header_read: s.header_read_timeout,
            idle: s.idle_timeout,
            client_stall: s.client_stall_timeout,
        }
    }
}

/// Serves one connection until it closes, a timeout closes it, or shutdown has let it finish
/// (graceful: the request in flight completes, an idle connection closes at once).
pub async fn serve(
    stream: TcpStream,
    router: Router,
    slot: Slot,
    timeouts: Timeouts,
    mut shutdown: watch::Receiver<bool>,
) {
    let app = slot.app().clone();
    let peer = stream.peer_addr().ok();
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Guarded::new(
        stream,
        activity.clone(),
        timeouts.client_stall,
    ));
    let service = Tracked {
        router,
        activity: activity.clone(),
        peer,
    };
    // hyper's own header timer would also close idle kept-alive connections after it; the
    // watchdog keeps the two timeouts apart.
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    let mut conn = pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    if is_stall(&e) {
                        app.metrics.connection_timed_out(ConnTimeout::ClientStall);
                    }
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            why = watchdog(&activity, timeouts) => {
                app.metrics.connection_timed_out(why);
                tracing::debug!(reason = ?why, "closing a connection on a timeout");
                break;
            }
            _ = shutdown.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}

/// Whether hyper gave up on the connection because [`Guarded`] found the client stalled.
fn is_stall(e: &hyper::Error) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
}

/// Returns when the connection's current phase has outlived its timeout.
async fn watchdog(activity: &Activity, t: Timeouts) -> ConnTimeout {
    loop {
        let now = Instant::now();
        let due = match activity.phase() {
            Phase::Busy => None,
            Phase::Head(since) => Some((since + t.header_read, ConnTimeout::HeaderRead)),
            Phase::Idle(since) => Some((since + t.idle, ConnTimeout::Idle)),
        };
        match due {
            Some((deadline, why)) if deadline <= now => return why,
            // Wake at least every header_read: a head may begin while this sleeps.
            Some((deadline, _)) => {
                tokio::time::sleep_until(deadline.min(now + t.header_read)).await
            }
            None => tokio::time::sleep_until(now + t.header_read).await,
        }
    }
}

enum Phase {
    Busy,
    Head(Instant),
    Idle(Instant),
}

/// What a connection is doing, written by its socket ([`Guarded`]), its service ([`Tracked`])
/// and read by its watchdog. All three run on the connection's task; atomics only because the
/// task must be `Send`.
struct Activity {
    epoch: Instant,
    /// Requests handled or being answered (at most 1 on HTTP/1).
    busy: AtomicU32,
    /// When header bytes began arriving, in µs after `epoch` plus 1; 0 when not.
    head_since: AtomicU64,
    /// When the connection last went idle, in µs after `epoch`.
    idle_since: AtomicU64,
    /// The current request has a body not yet read to its end.
    body_unread: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            epoch: Instant::now(),
            busy: AtomicU32::new(0),
            // A new connection owes its first request's headers from the moment it connected.
            head_since: AtomicU64::new(1),
            idle_since: AtomicU64::new(0),
            body_unread: AtomicBool::new(false),
        }
    }

    fn micros(&self) -> u64 {
        self.epoch
            .elapsed()
            .as_micros()
            .min(u128::from(u64::MAX - 1)) as u64
    }

    fn at(&self, micros: u64) -> Instant {
        self.epoch + Duration::from_micros(micros)
    }

    fn phase(&self) -> Phase {
        if self.busy.load(Ordering::Acquire) > 0 {
            return Phase::Busy;
        }
        match self.head_since.load(Ordering::Acquire) {
            0 => Phase::Idle(self.at(self.idle_since.load(Ordering::Acquire))),
            since => Phase::Head(self.at(since - 1)),
        }
    }

    /// Bytes arrived: outside a request they begin the next request's headers.
    fn read_some(&self) {
        if self.busy.load(Ordering::Acquire) == 0 && self.head_since.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.micros() + 1, Ordering::Release);
        }
    }

    fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
    }

    fn request_finished(&self) {
        self.idle_since.store(self.micros(), Ordering::Release);
        self.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight until its response body is dropped (or the request is, unanswered).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The router as hyper's service, marking each request busy until its response is written.
#[derive(Clone)]
struct Tracked {
    router: Router,
    activity: Arc<Activity>,
    /// The client's address, given to console requests (sign-in attempts are counted by it).
    peer: Option<std::net::SocketAddr>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Answer {
        if let Some(peer) = self
            .peer
            .filter(|_| req.uri().path().starts_with("/console"))
        {
            req.extensions_mut()
                .insert(super::console::session::ClientAddr(peer));
        }
        let activity = &self.activity;
        activity.body_unread.store(
            !hyper::body::Body::is_end_stream(req.body()),
            Ordering::Release,
        );
        let req = req.map(|inner| WatchedBody {
            inner,
            activity: activity.clone(),
        });
        let in_flight = InFlight::start(activity.clone());
        // The router is always ready (axum's `Router::poll_ready`), so `call` needs no wait.
        let mut router = self.router.clone();
        let answer = router.call(req);
        Box::pin(async move {
            let mut resp = answer.await?;
            // Answered before its body was read (a refusal that never reads an unauthenticated
            // or oversized body): hyper closes the connection after this response, so say so, or
            // a client reusing the connection would send its next request into the close.
            if in_flight.0.body_unread.load(Ordering::Acquire) {
                resp.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A request body that notes in the connection's [`Activity`] when it has been read to its end.
struct WatchedBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.activity.body_unread.store(false, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket: notes arriving bytes in the connection's [`Activity`], and fails a write
/// the client has let stall (nothing could be written) for `client_stall_timeout`, which closes
/// the connection and drops the response, so a stream's metering task goes on without it.
struct Guarded {
    stream: TcpStream,
    activity: Arc<Activity>,
    stall: Duration,
    /// Armed while a write waits for the client; allocated on the first stall only.
    stalled: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Guarded {
    fn new(stream: TcpStream, activity: Arc<Activity>, stall: Duration) -> Self {
        Guarded {
            stream,
            activity,
            stall,
            stalled: None,
            armed: false,
        }
    }

    /// A write could not proceed: Pending while the client may still catch up, then an error.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = Instant::now() + self.stall;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading the response",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn written<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.poll_stall(cx),
            ready => {
                self.armed = false;
                ready
            }
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_flush(cx);
        self.written(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.written(r, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase_name(a: &Activity) -> &'static str {
        match a.phase() {
            Phase::Busy => "busy",
            Phase::Head(_) => "head",
            Phase::Idle(_) => "idle",
        }
    }

    #[test]
    fn a_connection_owes_headers_then_is_busy_then_idle_until_bytes_arrive() {
        let a = Arc::new(Activity::new());
        assert!(
            matches!(a.phase(), Phase::Head(t) if t == a.epoch),
            "from connecting"
        );
        let in_flight = InFlight::start(a.clone());
        a.read_some(); // the body: still busy, not a new head
        assert_eq!(phase_name(&a), "busy");
        drop(in_flight);
        assert_eq!(phase_name(&a), "idle");
        a.read_some();
        assert_eq!(phase_name(&a), "head");
        let second = InFlight::start(a.clone());
        assert_eq!(phase_name(&a), "busy");
        drop(second);
        assert_eq!(phase_name(&a), "idle");
    }
}
