//! The usage spool: while Kafka is unreachable, usage goes to a local [`FileLog`] in
//! `<data dir>/spool` (synced like the embedded log); a drainer produces it to Kafka in order,
//! recording how far it got in `<spool>/drained` (rewritten atomically), then ends spooling.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use rdkafka::producer::Producer;

use super::Inner;
use crate::log::file::FileLog;
use crate::log::{EventLog, LogError, Offset, Topic};
use crate::settings::Fsync;

/// The spool's log and where its drainer has got to, kept in `<spool>/drained`.
pub(super) struct Spool {
    pub(super) log: FileLog,
    drained_path: PathBuf,
    drained: AtomicU64,
}

impl Spool {
    /// Opens the spool in `dir`; also says whether it holds usage not yet drained.
    pub(super) fn open(dir: &Path, fsync: Fsync) -> Result<(Spool, bool), LogError> {
        let log = FileLog::open(dir, fsync)?;
        let drained_path = dir.join("drained");
        let drained = std::fs::read_to_string(&drained_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let pending = *log.watch_end(Topic::Usage).borrow() > drained;
        let spool = Spool {
            log,
            drained_path,
            drained: AtomicU64::new(drained),
        };
        Ok((spool, pending))
    }
}

impl Inner {
    /// Spools a usage record (and every later one, until the drainer catches up), unless the
    /// spool is full.
    pub(super) async fn spool_usage(
        &self,
        key: Vec<u8>,
        payload: Vec<u8>,
    ) -> Result<Offset, LogError> {
        self.spooling.store(true, Ordering::Release);
        if self.spooled_bytes() >= self.spool_max {
            return Err(LogError::SpoolFull);
        }
        self.spool.log.append(Topic::Usage, key, payload).await
    }

    /// Usage spooled and not yet drained, in bytes.
    pub(super) fn spooled_bytes(&self) -> u64 {
        let end = *self.spool.log.watch_end(Topic::Usage).borrow();
        end.saturating_sub(self.spool.drained.load(Ordering::Acquire))
    }

    /// Whether the broker answers a metadata request for the usage topic.
    fn reachable(&self) -> bool {
        let producer = self.producer.read().clone();
        producer
            .client()
            .fetch_metadata(
                Some(&self.names[Topic::Usage.index()]),
                Duration::from_secs(2),
            )
            .is_ok()
    }

    /// While Kafka is marked down, asks whether it answers again, and clears the mark if so.
    async fn probe_if_down(self: &std::sync::Arc<Self>) {
        if !self.down.load(Ordering::Acquire) {
            return;
        }
        let probe = self.clone();
        let reachable = tokio::task::spawn_blocking(move || probe.reachable())
            .await
            .unwrap_or(false);
        if reachable {
            self.down.store(false, Ordering::Release);
            tracing::info!("kafka answers again");
        }
    }

    /// Produces the spooled records from `at` (one read's worth) and records the new drained
    /// position. False when the spool could not be read or Kafka did not take every record:
    /// the caller waits before trying again (from the same position).
    async fn drain_from(&self, at: Offset) -> bool {
        let batch = match self.spool.log.read(Topic::Usage, at, 1 << 20).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "spool: read failed");
                return false;
            }
        };
        let Some(next) = batch.last().map(|r| r.next) else {
            return true;
        };
        let sends = batch
            .iter()
            .map(|r| self.produce(Topic::Usage, &r.key, &r.payload));
        let results = futures_util::future::join_all(sends).await;
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            tracing::debug!(error = %e, "spool: kafka still unreachable");
            return false;
        }
        self.spool.drained.store(next, Ordering::Release);
        if let Err(e) = write_atomically(&self.spool.drained_path, next.to_string().as_bytes()) {
            tracing::error!(error = %e, "spool: could not record the drained position");
        }
        tracing::info!(bytes = next - at, "spool: drained usage to kafka");
        true
    }
}

/// Produces spooled usage to Kafka in order, then ends spooling. A record produced but not yet
/// marked drained when the process dies is produced again after restart; the aggregators drop
/// the duplicate by `event_id`.
pub(super) async fn drain_spool(log: Weak<Inner>) {
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
            l.probe_if_down().await;
            drop(l);
            match tokio::time::timeout(Duration::from_secs(1), end.changed()).await {
                Ok(Err(_)) => return,
                Ok(Ok(())) | Err(_) => continue,
            }
        }
        if !l.drain_from(at).await {
            drop(l);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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
