//! The open-connection cap: at most `max_connections` client connections, over every serving
//! thread; one more is told 503 and closed, and refusals are logged at most every 10 s.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::AppState;

/// A place under the `max_connections` cap, held while the connection is open.
pub struct Slot(Arc<AppState>);

impl Slot {
    /// The server the slot is held on.
    pub fn app(&self) -> &Arc<AppState> {
        &self.0
    }

    /// A slot if fewer than `max_connections` are open (the gauge is the count, for every thread).
    pub fn take(app: &Arc<AppState>) -> Option<Slot> {
        let open = &app.metrics.connections_open;
        let cap = app.settings.max_connections as u64;
        if open.fetch_add(1, Ordering::AcqRel) >= cap {
            open.fetch_sub(1, Ordering::AcqRel);
            app.metrics
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(app.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a refused connection is told, in the data plane's envelope (the plane is not known yet).
const REFUSAL_BODY: &str = r#"{"error":{"message":"the server has too many open connections; retry shortly","type":"server_error","param":null,"code":"too_many_connections"}}"#;

/// Refuses a connection over the cap: a 503 if the socket takes it at once, then close.
pub fn refuse(stream: TcpStream) {
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    );
    let _ = stream.try_write(reply.as_bytes());
}

/// Logs refused connections and failed accepts at most once per [`Self::INTERVAL`], with how
/// many there were since the last line, so a flood of refusals cannot flood the log.
#[derive(Default)]
pub struct Refusals {
    last: Mutex<Option<Instant>>,
    refused: AtomicU64,
}

impl Refusals {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// A connection was refused at the cap.
    pub fn refused(&self, cap: usize) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if self.due() {
            let n = self.refused.swap(0, Ordering::Relaxed);
            tracing::warn!(
                refused = n,
                max_connections = cap,
                "refusing client connections: max_connections are open"
            );
        }
    }

    /// Accepting failed (e.g. the open-file limit is reached).
    pub fn accept_failed(&self, e: &io::Error) {
        if self.due() {
            tracing::error!(error = %e, "accepting a connection failed");
        }
    }

    fn due(&self) -> bool {
        let now = Instant::now();
        let mut last = self.last.lock();
        let due = last.is_none_or(|t| now.duration_since(t) >= Self::INTERVAL);
        if due {
            *last = Some(now);
        }
        due
    }
}

/// Accept errors that concern one connection only: the next accept may succeed at once.
pub fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_per_interval() {
        let r = Refusals::default();
        assert!(r.due());
        assert!(!r.due());
        *r.last.lock() = Instant::now().checked_sub(Refusals::INTERVAL);
        assert!(r.due());
    }
}
