//! The distributed event log: Kafka through rdkafka (librdkafka, vendored).
//!
//! Topics: `<prefix>config` (one partition, compacted, keyed by entity), `<prefix>usage`
//! (`usage_partitions` partitions, keyed by API key), `<prefix>limits` (one partition, keyed by
//! budget). Values are Avro single-object encoded (see `crate::codec`). The producer is idempotent
//! with `acks=all`: an append resolves once every in-sync replica has the record. (Idempotence can
//! be turned off, `kafka_idempotence = false`, for brokers that mishandle it: tansu 0.6 answers
//! every idempotent produce with UNKNOWN_SERVER_ERROR after it restarts. Duplicates that retries
//! may then write are dropped by the aggregators, which store each `event_id` once.)
//!
//! Usage while Kafka is unreachable: with `when_kafka_down = spool` (the default) a usage record
//! that cannot be produced goes to a local spool (a [`FileLog`](crate::log::file::FileLog) in
//! `<data dir>/spool`, synced like the embedded log) and the append still resolves, so the request
//! is acknowledged; later usage goes to the spool too until a drainer has produced every spooled
//! record, in order. The spool holds at most `spool_max_bytes` not yet drained; when full,
//! [`EventLog::accepts_usage`] says no and gateways answer 503 rather than serve unmetered. With
//! `fail_closed` gateways answer 503 while Kafka is down. Config and limit events are never
//! spooled: an admin change fails (503) while Kafka is down, and limit events are retried by their
//! emitter.
//!
//! Reading (config and limits, one partition each) goes through an unmanaged consumer assigned to
//! partition 0 at the asked offset; Kafka offsets are the log's offsets.
//!
//! Here: [`KafkaLog`] and its appends; `topics` (client settings, topic names and creation),
//! `spool` (usage held locally, and its drainer) and `read` (reading and the topics' ends).

mod read;
mod spool;
mod topics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;

use self::spool::{drain_spool, Spool};
use super::frame::MAX_RECORD;
use super::{EventLog, LogError, Offset, Record, Topic};
use crate::codec;
use crate::settings::{Settings, WhenKafkaDown};

pub use read::unpack;
pub use topics::{client_config, ensure_topics, topic_name};

/// How long a produce may take before the record is spooled instead.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest Kafka message produced: a batch of config changes ([`MAX_RECORD`]) and room for
/// its key and the record overhead.
const MAX_MESSAGE: usize = MAX_RECORD + (64 << 10);

/// Maps an rdkafka error of the call `op` into the log's.
fn kafka_err(op: &'static str) -> impl Fn(rdkafka::error::KafkaError) -> LogError {
    move |source| LogError::Kafka {
        op,
        source: Box::new(source),
    }
}

/// A producer with `acks=all`; idempotent (retries without duplicates or reordering) unless
/// `kafka_idempotence` is off.
fn new_producer(brokers: &str, idempotent: bool) -> Result<FutureProducer, LogError> {
    client_config(brokers)
        .set("enable.idempotence", idempotent.to_string())
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("message.max.bytes", MAX_MESSAGE.to_string())
        .set(
            "message.timeout.ms",
            PRODUCE_TIMEOUT.as_millis().to_string(),
        )
        .create()
        .map_err(kafka_err("creating the producer"))
}

/// The Kafka event log (cheap to clone; the futures it returns own a handle).
#[derive(Clone)]
pub struct KafkaLog(Arc<Inner>);

struct Inner {
    /// Replaced when librdkafka reports a fatal error (an idempotent producer whose broker lost
    /// its producer state, e.g. after a restart, can never produce again).
    producer: parking_lot::RwLock<FutureProducer>,
    names: [String; 3],
    readers: [Mutex<Option<(BaseConsumer, Offset)>>; 2],
    ends: [watch::Sender<Offset>; 3],
    /// Looks up a topic's end on demand ([`EventLog::fetch_end`]), made at its first use.
    end_reader: Mutex<Option<BaseConsumer>>,
    brokers: String,
    spool: Spool,
    /// Usage waits in the spool: new usage goes there too, in order, until it is drained.
    spooling: AtomicBool,
    /// The last produce failed; cleared by the next that succeeds (or a reachability probe).
    down: AtomicBool,
    spool_max: u64,
    when_down: WhenKafkaDown,
    idempotent: bool,
}

impl KafkaLog {
    /// Connects (lazily: librdkafka reconnects by itself), creating the topics when the broker
    /// answers, and opens the spool in `<data_dir>/spool`.
    pub async fn open(settings: &Settings) -> Result<KafkaLog, LogError> {
        let brokers = settings.kafka_brokers.clone().ok_or(LogError::NoBrokers)?;
        ensure_topics(settings, &brokers).await?;
        let producer = new_producer(&brokers, settings.kafka_idempotence)?;
        let (spool, pending) = Spool::open(&settings.data_dir.join("spool"), settings.usage_fsync)?;
        let inner = Arc::new(Inner {
            producer: parking_lot::RwLock::new(producer),
            names: Topic::ALL.map(|t| topic_name(&settings.topic_prefix, t)),
            readers: [Mutex::new(None), Mutex::new(None)],
            ends: Topic::ALL.map(|_| watch::channel(0).0),
            end_reader: Mutex::new(None),
            brokers,
            spool,
            spooling: AtomicBool::new(pending),
            down: AtomicBool::new(false),
            spool_max: settings.spool_max_bytes,
            when_down: settings.when_kafka_down,
            idempotent: settings.kafka_idempotence,
        });
        read::follow_ends(&inner).await?;
        tokio::spawn(drain_spool(Arc::downgrade(&inner)));
        Ok(KafkaLog(inner))
    }
}

impl Inner {
    async fn produce(&self, topic: Topic, key: &[u8], payload: &[u8]) -> Result<Offset, LogError> {
        let record = FutureRecord::to(&self.names[topic.index()])
            .key(key)
            .payload(payload);
        let producer = self.producer.read().clone();
        match producer.send(record, PRODUCE_TIMEOUT).await {
            Ok((_partition, offset)) => {
                self.down.store(false, Ordering::Release);
                Ok(u64::try_from(offset).unwrap_or(0))
            }
            Err((e, _)) => {
                self.down.store(true, Ordering::Release);
                if let Some(fatal) = producer.client().fatal_error() {
                    tracing::warn!(error = ?fatal, "kafka producer failed fatally; starting a new one");
                    match new_producer(&self.brokers, self.idempotent) {
                        Ok(p) => *self.producer.write() = p,
                        Err(e) => tracing::error!(error = %e, "kafka producer not recreated"),
                    }
                }
                Err(kafka_err("producing")(e))
            }
        }
    }
}

impl EventLog for KafkaLog {
    fn append(
        &self,
        topic: Topic,
        key: Vec<u8>,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Offset, LogError>> {
        let log = self.0.clone();
        async move {
            let spoolable = topic == Topic::Usage && log.when_down == WhenKafkaDown::Spool;
            let straight_to_spool =
                log.spooling.load(Ordering::Acquire) || log.down.load(Ordering::Acquire);
            if !(spoolable && straight_to_spool) {
                match log.produce(topic, &key, &payload).await {
                    Ok(offset) => return Ok(offset),
                    Err(e) if !spoolable => return Err(e),
                    Err(e) => {
                        if !log.spooling.swap(true, Ordering::AcqRel) {
                            tracing::warn!(error = %e, "kafka unreachable: spooling usage locally until it answers");
                        }
                    }
                }
            }
            log.spool_usage(key, payload).await
        }
        .boxed()
    }

    /// Atomic: more than one record goes to the broker as one Kafka record, a
    /// [`codec::encode_log_batch`] value keyed `batch/<uuid>` (so compaction keeps it), which the
    /// broker takes whole or not at all; readers unpack it (see [`unpack`]). Never spooled.
    fn append_batch(
        &self,
        topic: Topic,
        mut records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> BoxFuture<'static, Result<Offset, LogError>> {
        let log = self.0.clone();
        async move {
            if records.len() == 1 {
                let (key, payload) = records.remove(0);
                return log.produce(topic, &key, &payload).await;
            }
            if records.is_empty() {
                return Err(LogError::Batch("an empty batch".into()));
            }
            let payload =
                codec::encode_log_batch(&records).map_err(|e| LogError::Pack(Box::new(e)))?;
            if payload.len() > MAX_RECORD {
                return Err(LogError::TooLarge(payload.len()));
            }
            let key = format!("batch/{}", uuid::Uuid::new_v4());
            log.produce(topic, key.as_bytes(), &payload).await
        }
        .boxed()
    }

    fn read(
        &self,
        topic: Topic,
        from: Offset,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<Vec<Record>, LogError>> {
        let log = self.0.clone();
        async move {
            super::blocking("kafka read", move || {
                log.read_blocking(topic, from, max_bytes)
            })
            .await?
        }
        .boxed()
    }

    fn watch_end(&self, topic: Topic) -> watch::Receiver<Offset> {
        self.0.ends[topic.index()].subscribe()
    }

    fn fetch_end(&self, topic: Topic) -> BoxFuture<'static, Result<Offset, LogError>> {
        let log = self.0.clone();
        async move { super::blocking("kafka topic end", move || log.fetch_end_blocking(topic)).await? }
            .boxed()
    }

    fn spooled_bytes(&self) -> u64 {
        self.0.spooled_bytes()
    }

    fn accepts_usage(&self) -> bool {
        let log = &self.0;
        match log.when_down {
            WhenKafkaDown::FailClosed => !log.down.load(Ordering::Acquire),
            WhenKafkaDown::Spool => {
                log.spooled_bytes() < log.spool_max
                    && (!log.spooling.load(Ordering::Acquire) || log.spool.log.accepts_usage())
            }
        }
    }

    fn unavailable(&self) -> Vec<String> {
        self.0.spool.log.unavailable()
    }
}
