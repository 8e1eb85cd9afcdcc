//! The distributed aggregator (`tollgate aggregator`, any number of them): a Kafka consumer
//! group on the usage topic that writes every event once to ClickHouse and publishes limit state.
//!
//! Per batch (up to [`BATCH_MAX`] records or [`BATCH_WINDOW`]):
//! 1. decode; once the config state has caught up with the config topic's end, attach to each
//!    event the budget windows it counts toward;
//! 2. insert the events ClickHouse does not have yet, as one atomic `INSERT`, retrying until
//!    ClickHouse takes it (a replay after a crash or rebalance finds its events there and adds
//!    nothing; rollups and budget usage are materialized from that insert);
//! 3. only then commit the batch's offsets to the group (asynchronously: a commit that is lost
//!    only means a replay, which step 2 absorbs);
//! 4. read the global usage of every budget window the batch touched and publish it on the
//!    limits topic (kind `usage`), plus threshold/exhaustion events when a budget crossed one.
//!    Gateways fold these to enforce budgets globally; the notifier mails the crossings.
//!
//! Alongside, a consumer of the config topic (a group of its own) writes every admin change's
//! audit row to ClickHouse's `audit_log` ([`run_audit_consumer`]): the trail outlives the topic's
//! compaction, which keeps only each entity's latest event.
//!
//! Here: the loops; `group` (the groups' members, and how one mends a group whose coordinator
//! kept a stale plan, as tansu 0.6 does after an eviction) and `sink` (the embedded sinks).

mod group;
mod sink;

pub use sink::spawn_sinks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use self::group::{group_consumer, GroupConsumer};
use super::Node;
use crate::codec;
use crate::domain::budget::{BudgetRef, Windowed};
use crate::domain::limits::{BudgetKind, UsageLimit};
use crate::domain::{AuditEntry, LimitEvent, LimitKind, Millis, UsageEvent};
use crate::log::kafka::{topic_name, unpack};
use crate::log::Topic;
use crate::settings::Settings;
use crate::store::clickhouse::{ClickhouseStore, EventRow, LimitRow};

/// Why an aggregator stopped.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Most records per batch.
const BATCH_MAX: usize = 5_000;
/// How long a batch gathers records after its first.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How long a batch waits for the config state to catch up with the config topic.
const CONFIG_CATCH_UP: Duration = Duration::from_secs(5);

/// One consumed record, with the budget windows its event counts toward.
struct Consumed {
    partition: i32,
    offset: i64,
    event: UsageEvent,
    windows: Vec<(BudgetRef, UsageLimit, Millis)>,
}

/// A budget window a batch touched, with the last event that counted toward it.
struct Touched {
    budget: BudgetRef,
    limit: UsageLimit,
    window_start: Millis,
    last: usize,
}

/// The consumer group's name.
pub fn group_id(settings: &Settings) -> String {
    format!("{}aggregators", settings.topic_prefix)
}

/// Runs until shutdown, finishing the batch in hand.
pub async fn run(
    node: Arc<Node>,
    store: ClickhouseStore,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AggregatorError> {
    let settings = &node.settings;
    let topic = topic_name(&settings.topic_prefix, Topic::Usage);
    let consumer = group_consumer(settings, &group_id(settings), &topic, shutdown.clone())?;
    tracing::info!(%topic, group = %group_id(settings), "aggregator consuming");
    let audit = {
        let (node, store, shutdown) = (node.clone(), store.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = run_audit_consumer(node, store, shutdown).await {
                tracing::error!(error = %e, "aggregator: the audit consumer stopped; admin changes are not recorded in clickhouse");
            }
        })
    };
    loop {
        let Some(mut batch) = gather(&consumer, &mut shutdown, "aggregator", take).await else {
            break;
        };
        // A gateway serves a key only once it has its config, so the config topic held it
        // before the key's usage was produced: caught up to the topic's end now, the state
        // knows every budget the batch counts toward (a key made just now included).
        if !node.ledger.config_caught_up(CONFIG_CATCH_UP).await {
            tracing::warn!("aggregator: the config state is behind the config topic; usage of budgets it lacks is not counted toward them in this batch");
        }
        for c in &mut batch {
            c.windows = windows_of(&node, &c.event);
        }
        if !store_batch(&node, &store, &batch, &mut shutdown).await {
            break; // shutting down with the batch not stored: it is not committed either
        }
        let positions = batch.iter().map(|c| (c.partition, c.offset));
        if let Err(e) = commit_after(&consumer, &topic, positions) {
            // Not fatal: the batch is replayed after a rebalance and found already stored.
            tracing::warn!(error = %e, "aggregator: offset commit failed");
        }
        publish_limit_state(&node, &store, &batch).await;
    }
    let _ = audit.await;
    tracing::info!("aggregator stopped");
    Ok(())
}

/// The next batch: the first record that comes, then what follows within [`BATCH_WINDOW`], up
/// to [`BATCH_MAX`] items, each record turned into items by `take`. None at shutdown.
async fn gather<T>(
    consumer: &GroupConsumer,
    shutdown: &mut watch::Receiver<bool>,
    who: &str,
    mut take: impl FnMut(&BorrowedMessage<'_>, &mut Vec<T>),
) -> Option<Vec<T>> {
    let mut batch = Vec::new();
    while batch.is_empty() {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => return None,
        };
        match first {
            Ok(m) => take(&m, &mut batch),
            Err(e) => {
                tracing::warn!(error = %e, consumer = who, "consume failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
    while batch.len() < BATCH_MAX {
        tokio::select! {
            m = consumer.recv() => match m {
                Ok(m) => take(&m, &mut batch),
                Err(e) => { tracing::warn!(error = %e, consumer = who, "consume failed"); break }
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Some(batch)
}

/// Commits, per partition, the offset after the last of `positions` (asynchronously).
fn commit_after(
    consumer: &GroupConsumer,
    topic: &str,
    positions: impl Iterator<Item = (i32, i64)>,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut next: HashMap<i32, i64> = HashMap::new();
    for (partition, offset) in positions {
        let n = next.entry(partition).or_default();
        *n = (*n).max(offset + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for (p, o) in next {
        offsets.add_partition_offset(topic, p, Offset::Offset(o))?;
    }
    consumer.commit(&offsets, CommitMode::Async)
}

/// The audit consumers' group.
fn audit_group_id(settings: &Settings) -> String {
    format!("{}audit", settings.topic_prefix)
}

/// Consumes the config topic into ClickHouse's `audit_log` until shutdown: per batch, insert the
/// rows ClickHouse does not have (retrying until it takes them), then commit the offsets. A
/// replay after a crash finds its rows there and adds nothing.
pub async fn run_audit_consumer(
    node: Arc<Node>,
    store: ClickhouseStore,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AggregatorError> {
    let settings = &node.settings;
    let topic = topic_name(&settings.topic_prefix, Topic::Config);
    let consumer = group_consumer(
        settings,
        &audit_group_id(settings),
        &topic,
        shutdown.clone(),
    )?;
    loop {
        let take = |m: &BorrowedMessage<'_>, batch: &mut Vec<_>| batch.extend(audit_entries(m));
        let Some(batch) = gather(&consumer, &mut shutdown, "audit consumer", take).await else {
            return Ok(());
        };
        let rows: Vec<AuditEntry> = batch.iter().filter_map(|(_, _, r)| r.clone()).collect();
        let mut wait = Duration::from_millis(200);
        while let Err(e) = store.insert_audit(rows.clone()).await {
            tracing::warn!(error = %e, rows = rows.len(), "audit consumer: clickhouse insert failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return Ok(()), // not stored, so not committed either
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        let positions = batch.iter().map(|(p, o, _)| (*p, *o));
        if let Err(e) = commit_after(&consumer, &topic, positions) {
            tracing::warn!(error = %e, "audit consumer: offset commit failed");
        }
    }
}

/// A config record's position and audit rows: one, or a batch's (None for what does not decode:
/// skipped loudly).
fn audit_entries(m: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(i32, i64, Option<AuditEntry>)> {
    let (partition, offset) = (m.partition(), m.offset());
    let skip = |error: &dyn std::fmt::Display| {
        tracing::error!(partition, offset, error = %error,
            "audit consumer: skipping undecodable config record");
        (partition, offset, None)
    };
    let key = m.key().unwrap_or_default();
    match unpack(
        offset.max(0).unsigned_abs(),
        key,
        m.payload().unwrap_or_default(),
    ) {
        Ok(records) => records
            .iter()
            .map(|r| match codec::decode_config(&r.payload) {
                Ok(e) => (partition, offset, Some(AuditEntry::of(&e))),
                Err(e) => skip(&e),
            })
            .collect(),
        Err(e) => vec![skip(&e)],
    }
}

/// A usage record decoded (its budget windows are attributed once the batch is whole).
fn take(m: &rdkafka::message::BorrowedMessage<'_>, batch: &mut Vec<Consumed>) {
    match codec::decode_usage(m.payload().unwrap_or_default()) {
        Ok(event) => batch.push(Consumed {
            partition: m.partition(),
            offset: m.offset(),
            windows: Vec::new(),
            event,
        }),
        // An undecodable record never becomes decodable: skipped loudly, left in the topic.
        Err(e) => tracing::error!(partition = m.partition(), offset = m.offset(), error = %e,
            "aggregator: skipping undecodable usage record"),
    }
}

/// The budget windows an event counts toward: `'<budget key>@<window start>'`.
fn windows_of(node: &Node, e: &UsageEvent) -> Vec<(BudgetRef, UsageLimit, Millis)> {
    node.ledger
        .state()
        .budgets_of_event(e)
        .into_iter()
        .filter_map(|(r, l)| {
            let w = l.window_start(e.at);
            (e.at >= w).then_some((r, l, w))
        })
        .collect()
}

fn window_key(r: &BudgetRef, w: Millis) -> String {
    format!("{}@{}", r.key(), w.0)
}

/// Inserts the batch's new events, retrying until ClickHouse takes them. False when shutdown
/// came first.
async fn store_batch(
    node: &Node,
    store: &ClickhouseStore,
    batch: &[Consumed],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let rows: Vec<EventRow> = batch
        .iter()
        .map(|c| {
            let windows = c
                .windows
                .iter()
                .map(|(r, _, w)| window_key(r, *w))
                .collect();
            EventRow::new(&c.event, windows, c.partition, c.offset)
        })
        .collect();
    let mut wait = Duration::from_millis(200);
    loop {
        match store.insert_new(&rows).await {
            Ok(new) => {
                node.metrics
                    .usage_events_stored
                    .fetch_add(new as u64, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, events = rows.len(), "aggregator: clickhouse insert failed; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return false,
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Publishes the global usage of each budget window the batch touched, and the crossings.
async fn publish_limit_state(node: &Node, store: &ClickhouseStore, batch: &[Consumed]) {
    let mut touched: HashMap<String, Touched> = HashMap::new();
    for (i, c) in batch.iter().enumerate() {
        for (budget, limit, window_start) in &c.windows {
            touched
                .entry(window_key(budget, *window_start))
                .and_modify(|t| t.last = i)
                .or_insert_with(|| Touched {
                    budget: budget.clone(),
                    limit: limit.clone(),
                    window_start: *window_start,
                    last: i,
                });
        }
    }
    if touched.is_empty() {
        return;
    }
    let totals = match store.budget_usage(touched.keys().cloned().collect()).await {
        Ok(t) => t,
        Err(e) => {
            return tracing::warn!(error = %e, "aggregator: budget usage not read; the next batch publishes it")
        }
    };
    let now = Millis::now();
    let mut published = Vec::new();
    for total in totals {
        let Some(t) = touched.get(&total.budget) else {
            continue;
        };
        let used = match t.limit.kind {
            BudgetKind::Cost => total.cost(),
            BudgetKind::Tokens => rust_decimal::Decimal::from(total.tokens),
        };
        let cause = &batch[t.last].event;
        let state_event = LimitEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            at: now,
            kind: LimitKind::Usage,
            budget: t.budget.key(),
            owner_kind: t.budget.owner_kind().to_owned(),
            workspace_id: Some(cause.workspace_id.clone()),
            api_key_id: Some(cause.api_key_id.clone()),
            window_start: t.window_start,
            budget_type: t.limit.kind,
            credit_limit: t.limit.credit_limit,
            alert_threshold: t.limit.alert_threshold,
            used,
            next_reset: t.limit.next_reset(now),
        };
        let budgets = [(t.budget.clone(), t.limit.clone())];
        let events = node
            .ledger
            .publish_usage(state_event, &budgets, &cause.path(), now);
        published.extend(events.iter().map(LimitRow::new));
    }
    if let Err(e) = store.insert_limit_events(&published).await {
        tracing::warn!(error = %e, "aggregator: limit events not recorded in clickhouse");
    }
}
