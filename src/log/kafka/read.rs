//! Reading the config and limits topics (one partition each) through an unmanaged consumer
//! assigned at the asked offset, unpacking batches; and the topics' ends, polled into
//! `watch_end` by a thread of their own.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset as KOffset, TopicPartitionList};

use super::{client_config, kafka_err, Inner};
use crate::codec;
use crate::log::{LogError, Offset, Record, Topic};

/// How often the ends of the config and limits topics are looked up.
const END_POLL: Duration = Duration::from_millis(50);

/// Looks up the ends of config and limits once (replay reads up to them, so before `open`
/// returns), then starts the thread that keeps looking every [`END_POLL`] while the log lives.
pub(super) async fn follow_ends(log: &Arc<Inner>) -> Result<(), LogError> {
    let ends: BaseConsumer = client_config(&log.brokers)
        .set("group.id", "tollgate-ends")
        .create()
        .map_err(kafka_err("creating the ends consumer"))?;
    let (first, ends) = {
        let inner = log.clone();
        crate::log::blocking("kafka topic ends", move || {
            (inner.refresh_ends(&ends), ends)
        })
        .await?
    };
    first?;
    let weak = Arc::downgrade(log);
    std::thread::Builder::new()
        .name("kafka-ends".into())
        .spawn(move || {
            while let Some(log) = weak.upgrade() {
                if let Err(e) = log.refresh_ends(&ends) {
                    tracing::debug!(error = %e, "kafka: topic ends not refreshed");
                }
                drop(log);
                std::thread::sleep(END_POLL);
            }
        })
        .map(drop)
        .map_err(|source| LogError::Thread {
            name: "kafka-ends",
            source,
        })
}

impl Inner {
    /// The partition-0 high watermarks of config and limits, published to `watch_end`.
    fn refresh_ends(&self, consumer: &BaseConsumer) -> Result<(), LogError> {
        for t in [Topic::Config, Topic::Limits] {
            self.look_up_end(consumer, t)?;
        }
        Ok(())
    }

    /// The end of `topic` (config or limits) looked up with `consumer`, published to `watch_end`.
    fn look_up_end(&self, consumer: &BaseConsumer, t: Topic) -> Result<Offset, LogError> {
        let (_, high) = consumer
            .fetch_watermarks(&self.names[t.index()], 0, Duration::from_secs(5))
            .map_err(kafka_err("fetching the topic ends"))?;
        let high = u64::try_from(high).unwrap_or(0);
        self.ends[t.index()].send_if_modified(|end| {
            let moved = high > *end;
            *end = high.max(*end);
            moved
        });
        Ok(high)
    }

    /// [`crate::log::EventLog::fetch_end`]: the end of config or limits looked up now.
    pub(super) fn fetch_end_blocking(&self, t: Topic) -> Result<Offset, LogError> {
        if t == Topic::Usage {
            return Err(LogError::NotReadable(t.name()));
        }
        let mut reader = self.end_reader.lock();
        let consumer = match reader.take() {
            Some(c) => c,
            None => client_config(&self.brokers)
                .set("group.id", "tollgate-ends")
                .create()
                .map_err(kafka_err("creating the ends consumer"))?,
        };
        let end = self.look_up_end(&consumer, t);
        *reader = Some(consumer);
        end
    }

    /// Reads from `from` up to the known end (or about `max_bytes`) with the topic's reader, kept
    /// between calls while each read resumes where the last ended, made anew otherwise.
    pub(super) fn read_blocking(
        &self,
        topic: Topic,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let slot = match topic {
            Topic::Config => 0,
            Topic::Limits => 1,
            Topic::Usage => return Err(LogError::NotReadable(topic.name())),
        };
        let mut guard = self.readers[slot].lock();
        if guard.as_ref().is_none_or(|(_, at)| *at != from) {
            *guard = Some((self.reader_at(topic, from)?, from));
        }
        let Some((consumer, at)) = guard.as_mut() else {
            return Ok(vec![]);
        };
        let end = *self.ends[topic.index()].borrow();
        let mut out = Vec::new();
        let mut bytes = 0;
        while *at < end && bytes < max_bytes {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    let offset = u64::try_from(m.offset()).unwrap_or(0);
                    let payload = m.payload().unwrap_or_default();
                    bytes += payload.len();
                    out.extend(unpack(offset, m.key().unwrap_or_default(), payload)?);
                    *at = offset + 1;
                }
                Some(Err(e)) => {
                    // The next read makes a new reader.
                    *guard = None;
                    return Err(kafka_err("reading")(e));
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// A consumer of partition 0 of `topic`, assigned at `from`, committing nothing.
    fn reader_at(&self, topic: Topic, from: Offset) -> Result<BaseConsumer, LogError> {
        let consumer: BaseConsumer = client_config(&self.brokers)
            .set("group.id", "tollgate-reader")
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kafka_err("creating a reader"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.names[topic.index()], 0, KOffset::Offset(from as i64))
            .map_err(kafka_err("assigning a reader"))?;
        consumer
            .assign(&tpl)
            .map_err(kafka_err("assigning a reader"))?;
        Ok(consumer)
    }
}

/// The records of the Kafka record at `offset`: a batch's, in order, or the record itself. Every
/// record of a batch but the last says to resume at the batch (`next` = its offset), so a reader
/// that stops inside it reads the whole batch again.
pub fn unpack(offset: Offset, key: &[u8], payload: &[u8]) -> Result<Vec<Record>, LogError> {
    let Some(batch) = codec::decode_log_batch(payload) else {
        return Ok(vec![Record {
            offset,
            next: offset + 1,
            key: key.to_vec(),
            payload: payload.to_vec(),
        }]);
    };
    let records = batch.map_err(|source| LogError::Unpack {
        offset,
        source: Box::new(source),
    })?;
    let last = records.len().saturating_sub(1);
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(i, (key, payload))| Record {
            offset,
            next: if i == last { offset + 1 } else { offset },
            key,
            payload,
        })
        .collect())
}
