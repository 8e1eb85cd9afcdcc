//! Read-your-writes in embedded mode: how far the store sink and the audit sink have taken the
//! log into the usage store, published by the sinks (`crate::roles::aggregator`) and waited on
//! by analytics and audit queries, so a client sees every request answered and every change made
//! before its query.

use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::log::{EventLog, Topic};
use crate::priority::Hurry;
use crate::store::UsageStore;

/// How long an analytics query waits for the store to take in the usage logged before it.
pub const READ_YOUR_WRITES: std::time::Duration = std::time::Duration::from_secs(2);

/// The store sink's name in the store's `consumer_offsets`.
pub const STORE_CONSUMER: &str = "embedded-store";
/// The notifier's name there.
pub const NOTIFIER_CONSUMER: &str = "notifier";
/// The audit sink's name there (it follows the config log into the store's `audit_log`).
pub const AUDIT_CONSUMER: &str = "audit";

/// The store's consumers and the topic each reads: their positions must be frame boundaries of
/// that topic's file, at or before its end (checked at start and by `tollgate log verify`).
pub const CONSUMERS: [(&str, Topic); 3] = [
    (STORE_CONSUMER, Topic::Usage),
    (NOTIFIER_CONSUMER, Topic::Limits),
    (AUDIT_CONSUMER, Topic::Config),
];

/// The sinks' progress and health, shared by the sinks (writers) and the ledger (readers).
pub struct StoreSync {
    store: Arc<dyn UsageStore>,
    /// How far the store has ingested the usage log.
    stored: watch::Sender<u64>,
    /// The furthest usage-log position a reader waits for the store to reach: the sink skips its
    /// batching window while it is ahead of the sink.
    wanted: watch::Sender<u64>,
    /// The store sink's thread, which a waiting reader raises from the background at once.
    sink_thread: Hurry,
    /// Why the store sink is not keeping up (a failing store, an undecodable record).
    sink_error: Mutex<Option<String>>,
    /// How far the store has taken the config log into its audit trail.
    audited: watch::Sender<u64>,
    /// Why the audit sink is not keeping up.
    audit_error: Mutex<Option<String>>,
}

/// Which sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Usage log -> usage store.
    Usage,
    /// Config log -> audit trail.
    Audit,
}

impl StoreSync {
    pub fn new(store: Arc<dyn UsageStore>) -> Self {
        StoreSync {
            store,
            stored: watch::channel(0).0,
            wanted: watch::channel(0).0,
            sink_thread: Hurry::default(),
            sink_error: Mutex::new(None),
            audited: watch::channel(0).0,
            audit_error: Mutex::new(None),
        }
    }

    /// The store the sinks feed.
    pub fn store(&self) -> &Arc<dyn UsageStore> {
        &self.store
    }

    /// The store sink's thread handle (it enters and leaves it).
    pub fn sink_thread(&self) -> &Hurry {
        &self.sink_thread
    }

    /// The positions readers wait for (the store sink watches it).
    pub fn wanted(&self) -> watch::Receiver<u64> {
        self.wanted.subscribe()
    }

    /// A sink took the log up to `at`; it is healthy.
    pub fn progressed(&self, sink: Sink, at: u64) {
        let (position, error) = self.of(sink);
        position.send_replace(at);
        error.lock().take();
    }

    /// A sink's batch failed: readiness says why until it succeeds.
    pub fn failed(&self, sink: Sink, reason: String) {
        *self.of(sink).1.lock() = Some(reason);
    }

    fn of(&self, sink: Sink) -> (&watch::Sender<u64>, &Mutex<Option<String>>) {
        match sink {
            Sink::Usage => (&self.stored, &self.sink_error),
            Sink::Audit => (&self.audited, &self.audit_error),
        }
    }

    /// Why the sinks are not keeping up (empty when they are).
    pub fn reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = self.sink_error.lock().iter().cloned().collect();
        out.extend(self.audit_error.lock().clone());
        out
    }

    /// Waits (up to [`READ_YOUR_WRITES`]) until the store has ingested the usage log up to its
    /// end as it is now. The sink is told, so it does not sit in its batching window meanwhile.
    pub async fn await_store(&self, log: &dyn EventLog) {
        let target = *log.watch_end(Topic::Usage).borrow();
        let mut stored = self.stored.subscribe();
        if *stored.borrow_and_update() >= target {
            return;
        }
        self.wanted.send_if_modified(|w| {
            let ahead = target > *w;
            *w = (*w).max(target);
            ahead
        });
        self.sink_thread.now();
        self.store.hurry();
        self.wait(stored, target, "analytics").await;
    }

    /// Waits (up to [`READ_YOUR_WRITES`]) until the audit trail has taken in the config log up
    /// to its end as it is now, so an admin reads the changes just made.
    pub async fn await_audit(&self, log: &dyn EventLog) {
        let target = *log.watch_end(Topic::Config).borrow();
        let mut audited = self.audited.subscribe();
        if *audited.borrow_and_update() < target {
            self.store.hurry();
        }
        self.wait(audited, target, "audit logs").await;
    }

    async fn wait(&self, mut position: watch::Receiver<u64>, target: u64, what: &str) {
        let caught_up = position.wait_for(|at| *at >= target);
        if tokio::time::timeout(READ_YOUR_WRITES, caught_up)
            .await
            .is_err()
        {
            tracing::warn!(
                target,
                at = *position.borrow(),
                "{what}: the usage store did not catch up within {READ_YOUR_WRITES:?}; answering with what it has"
            );
        }
    }

    /// How many bytes of the usage log the store has not ingested yet.
    pub async fn lag(&self, log: &dyn EventLog) -> u64 {
        let end = *log.watch_end(Topic::Usage).borrow();
        let done = self.store.offset(STORE_CONSUMER).await.unwrap_or(0);
        end.saturating_sub(done)
    }
}
