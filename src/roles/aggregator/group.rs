//! The aggregators' consumer-group members (usage into ClickHouse, config into the audit trail),
//! and how a member mends a group its coordinator left on a stale plan.
//!
//! ## Why: tansu 0.6 can keep a group on a plan made for members that are gone
//! When a member's session expires (a kill -9: it never sends LeaveGroup) and it is a heartbeat
//! that notices, tansu 0.6.0's coordinator drops the member and answers that one heartbeat
//! REBALANCE_IN_PROGRESS, but keeps the group formed at the same generation. The member rejoins
//! and is told that same generation; if it is the leader it computes a plan for the members left,
//! but the SyncGroup of a formed group ignores any plan and hands each member its previous
//! assignment. The expired member's partitions then belong to nobody until the membership changes
//! again, and with no new member that is forever: their usage is never stored. Seen in the test
//! that kills aggregators repeatedly: in generation 6 the leader computes `[0,1]` for itself and
//! `[2,3]` for the other member, then is handed `[0]`, and the other `[1]`; partitions 2 and 3,
//! one of them holding all that run's usage, are read by nobody. (tansu after 0.6.0 starts a new
//! generation when it evicts a member; no release has that yet.)
//!
//! ## The mend
//! A rebalance is a new generation. So when librdkafka hands this member an assignment in the
//! generation of its previous one, the coordinator replayed an old plan rather than making one,
//! and the member leaves the group and joins again (unsubscribe, subscribe): a LeaveGroup is a
//! membership change tansu 0.6 does handle, starting a new generation whose leader's plan it
//! stores. The other members then rebalance into new generations, so the mend happens once per
//! replayed plan (once per eviction that a heartbeat noticed). Kafka answers a rejoin in the same
//! generation only when a member rejoins a stable group unchanged, which librdkafka hardly does;
//! there the mend would cost one needless rebalance.
//!
//! Leaving drops this member's partitions for a rebalance; batches in hand are stored and their
//! commits may fail or land late, which only means a replay that the store absorbs (each event is
//! stored once, see the delivery order in the parent module).

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Weak};

use rdkafka::client::{ClientContext, NativeClient};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use tokio::sync::{watch, Notify};

use super::AggregatorError;
use crate::log::kafka::client_config;
use crate::settings::Settings;

/// A member of one of the aggregators' consumer groups.
pub(super) type GroupConsumer = StreamConsumer<GroupContext>;

/// Watches the assignments librdkafka delivers for one that replays the previous generation's.
pub(super) struct GroupContext {
    /// The generation of the last assignment delivered (-1 before the first).
    generation: AtomicI32,
    /// Told when an assignment came in the generation of the previous one.
    replayed: Arc<Notify>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Assign(_)) {
            return;
        }
        let generation = generation_of(consumer.client().native_client());
        let previous = self.generation.swap(generation, Ordering::Relaxed);
        if generation >= 0 && generation == previous {
            self.replayed.notify_one();
        }
    }
}

/// The generation of the group `client` (a consumer) last joined; -1 when it has none.
#[expect(
    unsafe_code,
    reason = "rdkafka has no safe accessor for the generation librdkafka keeps"
)]
fn generation_of(client: &NativeClient) -> i32 {
    use rdkafka::bindings::{
        rd_kafka_consumer_group_metadata, rd_kafka_consumer_group_metadata_destroy,
        rd_kafka_consumer_group_metadata_generation_id,
    };
    // SAFETY: `client.ptr()` is a live consumer handle while `client` is borrowed. The metadata
    // is a copy librdkafka allocates for the caller (or null): read, then destroyed once, here.
    unsafe {
        let metadata = rd_kafka_consumer_group_metadata(client.ptr());
        if metadata.is_null() {
            return -1;
        }
        let generation = rd_kafka_consumer_group_metadata_generation_id(metadata);
        rd_kafka_consumer_group_metadata_destroy(metadata);
        generation
    }
}

/// A member of consumer group `group` on `topic`, committing offsets itself (after the store has
/// the batch) and starting from the beginning when the group has none. Until `shutdown` (or the
/// consumer is dropped) it rejoins whenever the coordinator replays an old plan (see the module).
pub(super) fn group_consumer(
    settings: &Settings,
    group: &str,
    topic: &str,
    shutdown: watch::Receiver<bool>,
) -> Result<Arc<GroupConsumer>, AggregatorError> {
    let brokers = settings.kafka_brokers.clone().unwrap_or_default();
    let replayed = Arc::new(Notify::new());
    let context = GroupContext {
        generation: AtomicI32::new(-1),
        replayed: replayed.clone(),
    };
    let consumer: GroupConsumer = client_config(&brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    let consumer = Arc::new(consumer);
    tokio::spawn(rejoin_when_replayed(
        Arc::downgrade(&consumer),
        replayed,
        group.to_owned(),
        topic.to_owned(),
        shutdown,
    ));
    Ok(consumer)
}

/// Leaves the group and joins again each time an assignment replays the previous generation.
async fn rejoin_when_replayed(
    consumer: Weak<GroupConsumer>,
    replayed: Arc<Notify>,
    group: String,
    topic: String,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = replayed.notified() => {}
            _ = shutdown.changed() => return,
        }
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        tracing::warn!(%group, "consumer group: the coordinator handed back the previous generation's assignment instead of rebalancing (tansu 0.6 after an eviction); leaving and joining again");
        let topic = topic.clone();
        // Blocking: each call waits for librdkafka's group thread to take it.
        let done = tokio::task::spawn_blocking(move || {
            consumer.unsubscribe();
            consumer.subscribe(&[&topic])
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(%group, error = %e, "consumer group: subscribing again failed")
            }
            Err(e) => tracing::error!(%group, error = %e, "consumer group: rejoining failed"),
        }
    }
}
