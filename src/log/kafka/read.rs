//! Reading the config and limits topics (one partition each) through an unmanaged consumer
//! assigned at the asked offset, unpacking batches; and the topics' ends, polled into
//! `watch_end`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset as KOffset, TopicPartitionList};

use super::{client_config, kafka_err, Inner};
use crate::codec;
use crate::log::{LogError, Offset, Record, Topic};

/// How often the ends of the config and limits topics are looked up.
pub(super) const END_POLL: Duration = Duration::from_millis(50);

impl Inner {
    /// The partition-0 high watermarks of config and limits, published to `watch_end`.
    pub(super) fn refresh_ends(&self, consumer: &BaseConsumer) -> Result<(), LogError> {
        for t in [Topic::Config, Topic::Limits] {
            let (_, high) = consumer
                .fetch_watermarks(&self.names[t.index()], 0, Duration::from_secs(5))
                .map_err(kafka_err)?;
            let high = u64::try_from(high).unwrap_or(0);
            self.ends[t.index()].send_if_modified(|end| {
                let moved = high > *end;
                *end = high.max(*end);
                moved
            });
        }
        Ok(())
    }

    pub(super) fn read_blocking(
        &self,
        topic: Topic,
        from: Offset,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let slot = match topic {
            Topic::Config => 0,
            Topic::Limits => 1,
            Topic::Usage => {
                return Err(LogError::Kafka(
                    "the usage topic is read by the aggregators' consumer group".into(),
                ))
            }
        };
        let name = &self.names[topic.index()];
        let mut guard = self.readers[slot].lock();
        if guard.as_ref().is_none_or(|(_, at)| *at != from) {
            let consumer: BaseConsumer = client_config(&self.brokers)
                .set("group.id", "tollgate-reader")
                .set("enable.auto.commit", "false")
                .create()
                .map_err(kafka_err)?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(name, 0, KOffset::Offset(from as i64))
                .map_err(kafka_err)?;
            consumer.assign(&tpl).map_err(kafka_err)?;
            *guard = Some((consumer, from));
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
                    *guard = None;
                    return Err(kafka_err(e));
                }
                None => break,
            }
        }
        Ok(out)
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
    let records =
        batch.map_err(|e| LogError::Batch(format!("undecodable batch at offset {offset}: {e}")))?;
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
