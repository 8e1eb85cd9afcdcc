//! `tollgate serve`: every role in one process, on the embedded backends in the data dir (the
//! file log in `log/`, the SQLite usage store `usage.sqlite`, `master.key`). [`open`] rebuilds
//! state; [`Node::serve`] runs the roles until shutdown, in the order the binary and the tests
//! share: the sinks stop after serving has, so a stream metered while serving winds down is in
//! the store before the process exits.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::{aggregator, master_key, notifier, sweep, Node, StartError};
use crate::ledger::sync::StoreSync;
use crate::log::file::FileLog;
use crate::log::{EventLog, Topic};
use crate::settings::Settings;
use crate::store::sqlite::SqliteStore;
use crate::store::UsageStore;

/// Opens the embedded backends in the data dir, rebuilds state and bootstraps.
pub async fn open(settings: Settings) -> Result<Node, StartError> {
    let dir = settings.data_dir.clone();
    crate::files::private_dir(&dir).map_err(|source| StartError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let sealer = master_key(&settings, &dir)?;
    let log: Arc<dyn EventLog> = Arc::new(FileLog::open(&dir.join("log"), settings.usage_fsync)?);
    let store_path = dir.join("usage.sqlite");
    let store: Arc<dyn UsageStore> = Arc::new(SqliteStore::open(&store_path)?);
    let sync = Arc::new(StoreSync::new(store.clone()));
    check_store_positions(log.as_ref(), &sync, &store_path).await?;
    let mut node = Node::new(settings, sealer, log, store, Some(sync))?;
    node.ledger.replay(&Topic::ALL).await?;
    node.bootstrap().await?;
    Ok(node)
}

impl Node {
    /// Runs every role of an embedded node: the store and audit sinks, the reset sweep, the
    /// notifier and HTTP, until `shutdown`; then lets the sinks catch up with the log.
    pub async fn serve(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), StartError> {
        let app = Arc::new(self.app_state()?);
        // The sinks stop after serving has: a stream whose client left is metered while serving
        // winds down, and its event belongs in the store before the process exits.
        let (served, sink_stop) = watch::channel(false);
        let sinks = aggregator::spawn_sinks(self.clone(), sink_stop)?;
        tokio::spawn(sweep::run(self.ledger.clone(), shutdown.clone()));
        tokio::spawn(notifier::run(self.clone(), shutdown.clone()));
        let result = crate::http::serve(listener, app, shutdown).await;
        let _ = served.send(true);
        result?;
        // Every acknowledged event is already in the log; let the store catch up before exiting.
        sinks.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// At start: each store consumer's position must be a position of its topic's log (at or before
/// the end, on a frame). A store ahead of the log would otherwise wait forever for events that
/// will never come, or read from the middle of a frame.
async fn check_store_positions(
    log: &dyn EventLog,
    sync: &StoreSync,
    store_path: &Path,
) -> Result<(), StartError> {
    use crate::ledger::sync::Sink;
    for (consumer, topic) in crate::ledger::sync::CONSUMERS {
        let mut at = sync.store().offset(consumer).await?;
        let end = *log.watch_end(topic).borrow();
        if at > end && topic == Topic::Config {
            // The audit trail keeps its rows of changes the log no longer has (a cut tail):
            // they were made. It reads on from the log's end, so no later change is skipped.
            tracing::warn!(
                at,
                end,
                "audit trail: ahead of the config log (the log lost its tail); it keeps what it has and reads on from the log's end"
            );
            sync.store().record_audit(Vec::new(), consumer, end).await?;
            at = end;
        }
        let reason = if at > end {
            format!("the log ends at byte {end}")
        } else if at < end && log.read(topic, at, 1).await.is_err() {
            format!("no frame of the log starts there (the log ends at byte {end})")
        } else {
            match topic {
                Topic::Usage => sync.progressed(Sink::Usage, at),
                Topic::Config => sync.progressed(Sink::Audit, at),
                Topic::Limits => {}
            };
            continue;
        };
        return Err(StartError::StoreAhead {
            store: store_path.display().to_string(),
            consumer,
            topic: topic.name(),
            at,
            reason,
        });
    }
    Ok(())
}
