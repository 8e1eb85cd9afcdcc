//! The embedded aggregator: two sinks that tail the file log into the SQLite store, each on a
//! thread of its own: the usage log into usage events (at background priority, raised while a
//! reader waits: [`crate::ledger::sync`]) and the config log into the audit trail.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use super::super::Node;
use crate::codec;
use crate::domain::{AuditEntry, Event};
use crate::ledger::replay::read_events;
use crate::ledger::sync::{Sink, StoreSync, AUDIT_CONSUMER, STORE_CONSUMER};
use crate::ledger::LedgerError;
use crate::log::Topic;
use crate::priority::Priority;

/// How long the store sink lets events accumulate after a wake-up, so it commits one transaction
/// per many events rather than one per request (the commit, not the rows, is what costs).
const SINK_BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

/// Starts the usage sink on a thread of its own at background priority, with its own
/// single-threaded runtime, so reading and decoding batches never holds up a request-path worker;
/// and the audit sink on another at normal priority: admin changes are rare, and a trail that
/// starved behind busy cores would answer an audit query without the change just made.
/// The returned future resolves when both have stopped (after `shutdown`, once caught up).
pub fn spawn_sinks(
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let sync = node
        .sync
        .clone()
        .ok_or_else(|| std::io::Error::other("the embedded sinks run on an embedded node"))?;
    let usage = sink_thread("store-sink", true, {
        let (node, sync, shutdown) = (node.clone(), sync.clone(), shutdown.clone());
        move || async move {
            let hurry = sync.sink_thread().clone();
            hurry.enter();
            run_sink(node, sync, Sink::Usage, shutdown).await;
            hurry.leave();
        }
    })?;
    let audit = sink_thread("audit-sink", false, move || {
        run_sink(node, sync, Sink::Audit, shutdown)
    })?;
    Ok(async move {
        let _ = tokio::join!(usage, audit);
    })
}

/// Runs `sink` on a thread of its own with a single-threaded runtime (at background priority when
/// `background`); the receiver completes when it has returned.
fn sink_thread<F, Fut>(
    name: &str,
    background: bool,
    sink: F,
) -> std::io::Result<tokio::sync::oneshot::Receiver<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_time();
    if background {
        builder.on_thread_start(crate::priority::background_priority);
    }
    let runtime = builder.build()?;
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if background {
                crate::priority::background_priority();
            }
            runtime.block_on(sink());
            drop(done);
        })?;
    Ok(stopped)
}

/// One sink: tails its topic's log into the store (the usage log into usage events, the config
/// log into the audit trail).
///
/// Delivery order: read a batch from the log, write its rows *and* the new offset in one store
/// transaction, then continue. A crash before the commit replays the batch, and the store drops
/// what it already has (idempotent on `event_id`), so the store ends up with each event, and the
/// trail with each admin change, exactly once, whatever becomes of the log. Usage waits out a
/// batching window after a wake-up (unless a reader waits) and runs in the background unless a
/// reader waits; config events are rare, so a change is in the trail as soon as the store
/// takes it.
async fn run_sink(
    node: Arc<Node>,
    sync: Arc<StoreSync>,
    sink: Sink,
    mut shutdown: watch::Receiver<bool>,
) {
    let (topic, consumer) = match sink {
        Sink::Usage => (Topic::Usage, STORE_CONSUMER),
        Sink::Audit => (Topic::Config, AUDIT_CONSUMER),
    };
    let mut end = node.log.watch_end(topic);
    let mut at = match node.store.offset(consumer).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, sink = consumer, "store sink: cannot read its offset; not running");
            return;
        }
    };
    sync.progressed(sink, at);
    let mut wanted = sync.wanted();
    loop {
        if at >= *end.borrow_and_update() {
            if *shutdown.borrow() {
                return;
            }
            tokio::select! {
                r = end.changed() => if r.is_err() { return },
                r = shutdown.changed() => if r.is_err() { return },
            }
            if sink == Sink::Usage {
                batching_window(&mut wanted, at).await;
            }
            continue;
        }
        if sink == Sink::Usage {
            // Work a reader waits for runs at normal priority, the rest in the background.
            let waited_for = *wanted.borrow() > at;
            Priority::apply(if waited_for {
                Priority::Normal
            } else {
                Priority::Background
            });
        }
        match batch(&node, sink, at).await {
            Ok(next) => {
                at = next;
                sync.progressed(sink, at);
            }
            Err(e) => {
                failed_batch(&node, &sync, sink, &e, &mut shutdown).await;
                if *shutdown.borrow() && batch(&node, sink, at).await.is_err() {
                    return; // stopping: the log keeps the events for the next start
                }
            }
        }
    }
}

/// The usage sink's batching window after a wake-up, unless (or until) a reader waits for
/// events past `at`.
async fn batching_window(wanted: &mut watch::Receiver<u64>, at: u64) {
    if *wanted.borrow_and_update() <= at {
        tokio::select! {
            _ = tokio::time::sleep(SINK_BATCH_WINDOW) => {}
            _ = wanted.wait_for(|w| *w > at) => {}
        }
    }
}

async fn batch(node: &Node, sink: Sink, at: u64) -> Result<u64, LedgerError> {
    match sink {
        Sink::Usage => sink_batch(node, at).await,
        Sink::Audit => audit_batch(node, at).await,
    }
}

/// A sink's batch failed. Nothing is skipped: the batch is retried until it goes in (a full disk
/// frees up), and meanwhile readiness says why (`reason`), the metric counts it and the log
/// says it. Waits [`SINK_RETRY`], or less when the process is stopping.
async fn failed_batch(
    node: &Node,
    sync: &StoreSync,
    sink: Sink,
    e: &LedgerError,
    shutdown: &mut watch::Receiver<bool>,
) {
    let what = match sink {
        Sink::Usage => "usage store",
        Sink::Audit => "audit trail",
    };
    tracing::error!(error = %e, sink = what, "store sink: batch failed; retrying");
    node.metrics
        .store_sink_errors
        .fetch_add(1, Ordering::Relaxed);
    sync.failed(sink, format!("{what}: {e}"));
    tokio::select! {
        _ = tokio::time::sleep(SINK_RETRY) => {}
        _ = shutdown.changed() => {}
    }
}

async fn audit_batch(node: &Node, at: u64) -> Result<u64, LedgerError> {
    let (events, next) = read_events(node.log.as_ref(), Topic::Config, at).await?;
    let rows = events
        .iter()
        .filter_map(|e| match e {
            Event::Config(c) => Some(AuditEntry::of(c)),
            _ => None,
        })
        .collect();
    node.store.record_audit(rows, AUDIT_CONSUMER, next).await?;
    Ok(next)
}

/// How long the sink waits before retrying a batch that failed.
const SINK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

async fn sink_batch(node: &Node, at: u64) -> Result<u64, LedgerError> {
    let batch = node.log.read(Topic::Usage, at, 4 << 20).await?;
    let Some(next) = batch.last().map(|r| r.next) else {
        return Ok(at);
    };
    let mut events = Vec::with_capacity(batch.len());
    for r in &batch {
        // An undecodable record is never skipped: the sink stops before it, readiness reports
        // it, and `tollgate log salvage` (server stopped) is the way past it.
        events.push(
            codec::decode_usage(&r.payload).map_err(|e| LedgerError::Undecodable {
                offset: r.offset,
                source: e,
            })?,
        );
    }
    let new = node.store.ingest(events, STORE_CONSUMER, next).await?;
    node.metrics
        .usage_events_stored
        .fetch_add(new as u64, Ordering::Relaxed);
    Ok(next)
}
