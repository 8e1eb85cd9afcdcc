//! Rebuilding state from the log, and following it: [`Ledger::replay`] folds each topic from its
//! start at startup; [`Ledger::follow`] (distributed mode) keeps folding what every replica
//! appends.

use super::{Ledger, LedgerError};
use crate::codec;
use crate::domain::{Event, State};
use crate::log::{EventLog, Topic};

/// The topics a distributed process folds into its state: config and limit state (usage reaches
/// gateways as limit state from the aggregators).
pub const DISTRIBUTED_TOPICS: [Topic; 2] = [Topic::Config, Topic::Limits];

/// How many empty reads in a row end a replay short of the end (on Kafka each waits out a
/// 500 ms poll).
const EMPTY_READS: u32 = 10;

/// Reads the events of a topic from `at`; returns them and the offset after them.
pub async fn read_events(
    log: &dyn EventLog,
    topic: Topic,
    at: u64,
) -> Result<(Vec<Event>, u64), LedgerError> {
    let batch = log.read(topic, at, 4 << 20).await?;
    let next = batch.last().map_or(at, |r| r.next);
    let mut events = Vec::with_capacity(batch.len());
    for r in &batch {
        events.push(match topic {
            Topic::Config => Event::Config(codec::decode_config(&r.payload)?),
            Topic::Usage => Event::Usage(codec::decode_usage(&r.payload)?),
            Topic::Limits => Event::Limit(codec::decode_limit(&r.payload)?),
        });
    }
    Ok((events, next))
}

impl Ledger {
    /// Folds the topics' whole logs into state, in the order given (config first).
    pub async fn replay(&self, topics: &[Topic]) -> Result<(), LedgerError> {
        let mut state = State::default();
        for &topic in topics {
            let at = self.fold_to_end(&mut state, topic).await?;
            self.folded[topic.index()].send_replace(at);
        }
        tracing::info!(
            workspaces = state.workspaces.len(),
            api_keys = state.api_keys.len(),
            usage_ids_remembered = state.usage_ids_remembered(),
            "state rebuilt from the log"
        );
        *self.state.write() = state;
        Ok(())
    }

    /// Folds `topic` from its start up to the end it has now; returns the offset reached. A read
    /// may come back empty before the end (a Kafka poll that timed out), so an empty read ends
    /// the replay only at the end, or after [`EMPTY_READS`] in a row (a compacted tail leaves a
    /// gap no record fills: the follower reads on from there).
    async fn fold_to_end(&self, state: &mut State, topic: Topic) -> Result<u64, LedgerError> {
        let end = *self.log.watch_end(topic).borrow();
        let (mut at, mut empty) = (0, 0);
        while at < end {
            let (events, next) = read_events(self.log.as_ref(), topic, at).await?;
            if events.is_empty() {
                empty += 1;
                if empty >= EMPTY_READS {
                    tracing::warn!(
                        topic = topic.name(),
                        at,
                        end,
                        "replay: no records before the end; the follower reads on"
                    );
                    break;
                }
                continue;
            }
            empty = 0;
            at = next;
            for e in &events {
                state.apply(e);
            }
        }
        Ok(at)
    }

    /// Distributed mode: keeps folding the config and limit events every process appends (this
    /// one included), in the log's order, so an admin change made on any replica, and the
    /// aggregators' limit state, reach this one. Runs until the log is gone.
    pub async fn follow(&self) {
        let mut ends = DISTRIBUTED_TOPICS.map(|t| self.log.watch_end(t));
        loop {
            let mut progressed = false;
            for (topic, end) in DISTRIBUTED_TOPICS.iter().zip(ends.iter_mut()) {
                let at = *self.folded[topic.index()].borrow();
                if at >= *end.borrow_and_update() {
                    continue;
                }
                match read_events(self.log.as_ref(), *topic, at).await {
                    Ok((events, next)) => {
                        let mut state = self.state.write();
                        for e in &events {
                            state.apply(e);
                        }
                        drop(state);
                        self.folded[topic.index()].send_replace(next);
                        // A read may come back short, even empty, before the end (a Kafka poll
                        // that timed out): still behind means read again, not wait for the end
                        // to move, which it may not do until the next change anywhere.
                        progressed |= !events.is_empty() || next < *end.borrow();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, topic = topic.name(), "follower: read failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                }
            }
            if !progressed {
                let [config, limits] = &mut ends;
                let changed = tokio::select! {
                    r = config.changed() => r,
                    r = limits.changed() => r,
                };
                if changed.is_err() {
                    return; // the log is gone: the process is ending
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::*;
    use crate::domain::{Change, Entity};
    use crate::log::file::FileLog;
    use crate::log::LogError;

    /// A log whose reads come back short, as Kafka polls that time out do: every other one
    /// empty (`alternate`), or every one while `held` (a follower lagging behind the log).
    struct ShortReads {
        inner: FileLog,
        reads: std::sync::atomic::AtomicUsize,
        alternate: bool,
        held: std::sync::atomic::AtomicBool,
    }

    impl ShortReads {
        fn over(dir: &std::path::Path, alternate: bool) -> ShortReads {
            ShortReads {
                inner: FileLog::open(dir, crate::settings::Fsync::Always).unwrap(),
                reads: Default::default(),
                alternate,
                held: Default::default(),
            }
        }
    }

    impl EventLog for ShortReads {
        fn append(
            &self,
            topic: Topic,
            key: Vec<u8>,
            payload: Vec<u8>,
        ) -> futures_util::future::BoxFuture<'static, Result<u64, LogError>> {
            self.inner.append(topic, key, payload)
        }
        fn append_batch(
            &self,
            topic: Topic,
            records: Vec<(Vec<u8>, Vec<u8>)>,
        ) -> futures_util::future::BoxFuture<'static, Result<u64, LogError>> {
            self.inner.append_batch(topic, records)
        }
        fn read(
            &self,
            topic: Topic,
            from: u64,
            max_bytes: usize,
        ) -> futures_util::future::BoxFuture<'static, Result<Vec<crate::log::Record>, LogError>>
        {
            if self.held.load(Ordering::Acquire) {
                // As a Kafka poll that timed out: empty, after a while.
                return Box::pin(async {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    Ok(Vec::new())
                });
            }
            if self.alternate && self.reads.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
                return Box::pin(async { Ok(Vec::new()) });
            }
            self.inner.read(topic, from, max_bytes)
        }
        fn watch_end(&self, topic: Topic) -> watch::Receiver<u64> {
            self.inner.watch_end(topic)
        }
    }

    #[tokio::test]
    async fn a_short_read_does_not_stall_the_follower() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShortReads::over(dir.path(), true);
        let ledger = Arc::new(Ledger::distributed(Arc::new(log), Arc::default()));
        tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.follow().await }
        });
        for i in 0..3 {
            let mut k = crate::domain::state::tests::api_key_fixture(None);
            k.id = format!("k{i}");
            let commit = async {
                let command = ledger.command().await;
                command
                    .commit(None, vec![Change::Upsert(Entity::ApiKey(k))])
                    .await
            };
            tokio::time::timeout(std::time::Duration::from_secs(10), commit)
                .await
                .expect("the change is read back although a read came back empty")
                .unwrap();
        }
        assert_eq!(ledger.state().api_keys.len(), 3);
    }

    /// Appends the creation of API key `id` to the config topic of `log`, as another process.
    async fn append_key(log: &FileLog, id: &str) {
        let mut k = crate::domain::state::tests::api_key_fixture(None);
        k.id = id.into();
        let event = crate::domain::ConfigEvent {
            event_id: format!("e-{id}"),
            at: crate::domain::Millis(0),
            audit: Default::default(),
            change: Change::Upsert(Entity::ApiKey(k)),
        };
        let bytes = crate::codec::encode_config(&event).unwrap();
        log.append(Topic::Config, vec![], bytes).await.unwrap();
    }

    /// The aggregator attributes usage to budgets only once its state has every config event
    /// the log has: a key made (by another process) just before its usage arrived is known
    /// then, though the follower lags. Before, a lagging aggregator counted such usage toward
    /// no budget, and the budget's exhaustion was never published.
    #[tokio::test]
    async fn config_caught_up_waits_for_the_follower_to_reach_the_logs_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(ShortReads::over(dir.path(), false));
        let ledger = Arc::new(Ledger::distributed(log.clone(), Arc::default()));
        ledger.replay(&DISTRIBUTED_TOPICS).await.unwrap();
        tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.follow().await }
        });
        let within = std::time::Duration::from_secs(10);
        assert!(ledger.config_caught_up(within).await, "nothing to fold");
        // Another process appends a key while this one's reads lag.
        log.held.store(true, Ordering::Release);
        append_key(&log.inner, "fresh").await;
        let short = std::time::Duration::from_millis(50);
        assert!(!ledger.config_caught_up(short).await, "reads are held");
        assert!(!ledger.state().api_keys.contains_key("fresh"));
        log.held.store(false, Ordering::Release);
        assert!(ledger.config_caught_up(within).await);
        assert!(ledger.state().api_keys.contains_key("fresh"));
    }

    /// Replay reads to the end it saw at start, though a read comes back empty before it: a
    /// gateway must not serve from a state that stopped at the first poll that timed out.
    #[tokio::test]
    async fn a_short_read_does_not_cut_the_replay_short() {
        let dir = tempfile::tempdir().unwrap();
        let log = ShortReads::over(dir.path(), true);
        for i in 0..3 {
            append_key(&log.inner, &format!("k{i}")).await;
        }
        let ledger = Ledger::distributed(Arc::new(log), Arc::default());
        ledger.replay(&[Topic::Config]).await.unwrap();
        assert_eq!(ledger.state().api_keys.len(), 3);
    }
}
