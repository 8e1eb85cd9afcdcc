//! The event log port. Roles talk only through it (and the usage store): the embedded adapter
//! ([`file::FileLog`], its format in [`frame`]) is a local durable log in the data dir; the
//! distributed one is Kafka ([`kafka::KafkaLog`]). Both pass the same contract suite
//! (`tests/it/logs.rs`). The adapters do not know the usage store (see `crate::recovery`).

pub mod file;
pub mod frame;
pub mod kafka;
mod writer;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::watch;

/// The log's topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Admin changes, keyed by entity (compacted on Kafka).
    Config,
    /// One event per upstream attempt, keyed by API key.
    Usage,
    /// Budget thresholds crossed, budgets exhausted and reset, keyed by budget.
    Limits,
}

impl Topic {
    pub const ALL: [Topic; 3] = [Topic::Config, Topic::Usage, Topic::Limits];

    /// The topic's position in [`Topic::ALL`], for per-topic arrays.
    pub fn index(self) -> usize {
        match self {
            Topic::Config => 0,
            Topic::Usage => 1,
            Topic::Limits => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Topic::Config => "config",
            Topic::Usage => "usage",
            Topic::Limits => "limits",
        }
    }
}

/// A position in a topic; the offset of the next record after a read is [`Record::next`].
pub type Offset = u64;

/// One stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub next: Offset,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
}

/// Why the log could not do something.
///
/// Large sources are boxed: a `Result<_, LogError>` is in every usage append's future and
/// reply channel, on the request path, so it is kept at five words, as before the Kafka variants
/// (an inline `KafkaError` alone is ten); a unit test holds it there.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("log writer for topic {0} has stopped")]
    WriterGone(&'static str),
    /// A Kafka client call failed; `op` says which.
    #[error("kafka: {op}: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The broker refused to create a topic.
    #[error("kafka: creating topic {topic}: {source}")]
    CreateTopic {
        topic: String,
        #[source]
        source: rdkafka::types::RDKafkaErrorCode,
    },
    #[error("kafka: kafka_brokers is not set")]
    NoBrokers,
    #[error("kafka is unreachable and the usage spool is full")]
    SpoolFull,
    /// The topic is not read through the log (Kafka's usage topic: the aggregators' consumer
    /// group reads it).
    #[error("the {0} topic is read by the aggregators' consumer group")]
    NotReadable(&'static str),
    /// A batch's records could not be packed into one value.
    #[error("packing a batch: {0}")]
    Pack(#[source] Box<crate::codec::CodecError>),
    /// A stored batch does not decode.
    #[error("undecodable batch at offset {offset}: {source}")]
    Unpack {
        offset: Offset,
        #[source]
        source: Box<crate::codec::CodecError>,
    },
    /// A blocking task of the log (a read, a look at the topics' ends) panicked or was cancelled.
    #[error("log task {task}: {source}")]
    Task {
        task: &'static str,
        #[source]
        source: Box<tokio::task::JoinError>,
    },
    /// A thread of the log could not be started.
    #[error("starting thread {name}: {source}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("record too large: {0} bytes")]
    TooLarge(usize),
    /// Refused: not a batch the log takes (empty, or more records than it holds).
    #[error("batch refused: {0}")]
    Batch(String),
    #[error(
        "log file {path} is damaged at byte {offset} (intact frames resume at byte {resumes}); \
         nothing was changed. Stop here and run `tollgate log verify` to see the damage, then \
         `tollgate log salvage` to keep every intact frame (the damaged file is moved aside and \
         what was lost is listed)"
    )]
    Corrupt {
        path: String,
        offset: u64,
        resumes: u64,
    },
}

/// Runs `f` on tokio's blocking pool (file reads, librdkafka's blocking calls); a panic there is
/// a [`LogError::Task`] named `task`.
async fn blocking<T: Send + 'static>(
    task: &'static str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| LogError::Task {
            task,
            source: Box::new(source),
        })
}

/// The event log.
pub trait EventLog: Send + Sync + 'static {
    /// Appends a record. Resolves once the record is durable by the log's policy; only then may the
    /// caller acknowledge anything that depends on it.
    fn append(
        &self,
        topic: Topic,
        key: Vec<u8>,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Offset, LogError>>;

    /// Appends records that must commit together: once it resolves all are durable; if it fails,
    /// none is visible, now or after a restart. Resolves to the last record's offset.
    fn append_batch(
        &self,
        topic: Topic,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> BoxFuture<'static, Result<Offset, LogError>>;

    /// Reads committed records from `from`, up to about `max_bytes`. It may return fewer, even
    /// none, before the end (Kafka's poll can time out): a reader still behind reads again.
    fn read(
        &self,
        topic: Topic,
        from: Offset,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<Vec<Record>, LogError>>;

    /// The committed end of a topic, updated on every append.
    fn watch_end(&self, topic: Topic) -> watch::Receiver<Offset>;

    /// The committed end of a topic as the log has it now, appends by other processes included
    /// (a round trip to Kafka; [`EventLog::watch_end`] may be a poll behind).
    fn fetch_end(&self, topic: Topic) -> BoxFuture<'static, Result<Offset, LogError>> {
        let end = *self.watch_end(topic).borrow();
        async move { Ok(end) }.boxed()
    }

    /// Whether a usage append would be taken now. Gateways refuse requests (503) when it would
    /// not, before any upstream call: they never serve what they cannot meter.
    fn accepts_usage(&self) -> bool {
        true
    }

    /// Why the log cannot take writes now (empty when it can), for readiness.
    fn unavailable(&self) -> Vec<String> {
        Vec::new()
    }

    /// Usage held locally because the log's backend was unreachable (0 when it never is).
    fn spooled_bytes(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::LogError;

    /// See [`LogError`]: it is on the request path, in every usage append.
    #[test]
    fn a_log_error_is_five_words() {
        assert_eq!(std::mem::size_of::<LogError>(), 40);
    }
}
