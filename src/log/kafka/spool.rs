//! The usage spool: while Kafka is unreachable, usage goes to a local [`FileLog`] in
//! `<data dir>/spool`; a drainer produces it to Kafka in order, recording how far it got in
//! `<spool>/drained` (rewritten atomically), then ends spooling.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::producer::Producer;

use super::Inner;
use crate::log::file::FileLog;
use crate::log::{EventLog, Topic};

/// Where the spool's drainer has got to, kept in `<spool>/drained`.
pub(super) struct Spool {
    pub(super) log: FileLog,
    pub(super) drained_path: std::path::PathBuf,
    pub(super) drained: AtomicU64,
}

impl Inner {
    /// Whether the broker answers a metadata request for the usage topic.
    pub(super) fn reachable(&self) -> bool {
        let producer = self.producer.read().clone();
        producer
            .client()
            .fetch_metadata(
                Some(&self.names[Topic::Usage.index()]),
                Duration::from_secs(2),
            )
            .is_ok()
    }

    pub(super) fn spooled_bytes(&self) -> u64 {
        let end = *self.spool.log.watch_end(Topic::Usage).borrow();
        end.saturating_sub(self.spool.drained.load(Ordering::Acquire))
    }
}

/// Produces spooled usage to Kafka in order, then ends spooling. A record produced but not yet
/// marked drained when the process dies is produced again after restart; the aggregators drop
/// the duplicate by `event_id`.
pub(super) async fn drain_spool(log: std::sync::Weak<Inner>) {
    let mut end = match log.upgrade() {
        Some(l) => l.spool.log.watch_end(Topic::Usage),
        None => return,
    };
    loop {
        let Some(l) = log.upgrade() else { return };
        let at = l.spool.drained.load(Ordering::Acquire);
        if at >= *end.borrow_and_update() {
            l.spooling.store(false, Ordering::Release);
            // A record spooled just before the flag dropped is still drained: its append moves
            // the end, which wakes this loop. While Kafka is down and nothing is spooled (fail
            // closed), probe it every second so gateways serve again as soon as it answers.
            if l.down.load(Ordering::Acquire) {
                let probe = l.clone();
                let reachable = tokio::task::spawn_blocking(move || probe.reachable())
                    .await
                    .unwrap_or(false);
                if reachable {
                    l.down.store(false, Ordering::Release);
                    tracing::info!("kafka answers again");
                }
            }
            drop(l);
            match tokio::time::timeout(Duration::from_secs(1), end.changed()).await {
                Ok(Err(_)) => return,
                Ok(Ok(())) | Err(_) => continue,
            }
        }
        let batch = match l.spool.log.read(Topic::Usage, at, 1 << 20).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "spool: read failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(next) = batch.last().map(|r| r.next) else {
            continue;
        };
        let sends = batch
            .iter()
            .map(|r| l.produce(Topic::Usage, &r.key, &r.payload));
        let results = futures_util::future::join_all(sends).await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            tracing::debug!(error = %e, "spool: kafka still unreachable");
            drop(l);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        l.spool.drained.store(next, Ordering::Release);
        if let Err(e) = write_atomically(&l.spool.drained_path, next.to_string().as_bytes()) {
            tracing::error!(error = %e, "spool: could not record the drained position");
        }
        tracing::info!(bytes = next - at, "spool: drained usage to kafka");
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = crate::files::private_file(&tmp)?;
    f.set_len(0)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
