//! The event-log port's contract, written once and run against both adapters: the embedded file
//! log (in a temporary data dir) and the Kafka log (the shared broker from `scripts/services.sh`,
//! on topics of their own). Readers see records in append order with their keys, a batch commits
//! whole or not at all, a reader that resumes from any record's `next` misses nothing, an append
//! resolves to the offset readers see for it, and reads of any size get to the end.

use std::sync::Arc;

use tollgate::log::file::FileLog;
use tollgate::log::kafka::KafkaLog;
use tollgate::log::{EventLog, LogError, Offset, Record, Topic};
use tollgate::settings::Fsync;

use crate::harness::PATIENCE;

/// A log under test, and what keeps its storage alive.
struct Subject {
    name: &'static str,
    log: Arc<dyn EventLog>,
    _dir: tempfile::TempDir,
}

async fn file_log() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), Fsync::Always).unwrap();
    Subject {
        name: "file",
        log: Arc::new(log),
        _dir: dir,
    }
}

async fn kafka_log() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::harness::settings(dir.path());
    let brokers = std::env::var("TG_KAFKA_BROKERS").expect("TG_KAFKA_BROKERS (scripts/test.sh)");
    settings.set("kafka_brokers", &brokers).unwrap();
    let id = uuid::Uuid::new_v4().simple().to_string();
    settings
        .set("topic_prefix", &format!("c{}.", &id[..12]))
        .unwrap();
    let log = KafkaLog::open(&settings).await.unwrap();
    Subject {
        name: "kafka",
        log: Arc::new(log),
        _dir: dir,
    }
}

async fn subjects() -> Vec<Subject> {
    vec![file_log().await, kafka_log().await]
}

/// Waits until the topic's end is past `offset`.
async fn end_past(log: &dyn EventLog, topic: Topic, offset: Offset) -> Offset {
    let mut end = log.watch_end(topic);
    let at = tokio::time::timeout(PATIENCE, end.wait_for(|e| *e > offset))
        .await
        .expect("the end moves past an acknowledged append")
        .unwrap();
    *at
}

/// Every record from `from` to the topic's end now, read `max_bytes` at a time (a read may
/// return fewer, even none, before the end).
async fn read_to_end(
    log: &dyn EventLog,
    topic: Topic,
    from: Offset,
    max_bytes: usize,
) -> Vec<Record> {
    let end = *log.watch_end(topic).borrow();
    let mut out: Vec<Record> = Vec::new();
    let mut at = from;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while at < end {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reading to {end} stalled at {at}"
        );
        let batch = log.read(topic, at, max_bytes).await.unwrap();
        if let Some(last) = batch.last() {
            at = last.next;
        }
        out.extend(batch);
    }
    out
}

fn pairs(records: &[Record]) -> Vec<(Vec<u8>, Vec<u8>)> {
    records
        .iter()
        .map(|r| (r.key.clone(), r.payload.clone()))
        .collect()
}

fn record(i: usize, size: usize) -> (Vec<u8>, Vec<u8>) {
    let mut payload = format!("value {i} ").into_bytes();
    payload.resize(size.max(payload.len()), b'x');
    (format!("key/{i}").into_bytes(), payload)
}

#[tokio::test]
async fn appends_and_batches_read_back_in_order_with_their_keys() {
    for s in subjects().await {
        let log = s.log.as_ref();
        let mut written = Vec::new();
        let mut last = 0;
        for i in 0..5 {
            let (k, p) = record(i, 10);
            last = log
                .append(Topic::Config, k.clone(), p.clone())
                .await
                .unwrap();
            written.push((k, p));
        }
        let batch: Vec<_> = (5..25).map(|i| record(i, 100)).collect();
        let batch_at = log
            .append_batch(Topic::Config, batch.clone())
            .await
            .unwrap();
        assert!(
            batch_at > last,
            "{}: a batch goes after what came before",
            s.name
        );
        written.extend(batch);
        let (k, p) = record(25, 10);
        let after = log
            .append(Topic::Config, k.clone(), p.clone())
            .await
            .unwrap();
        assert!(after > batch_at, "{}", s.name);
        written.push((k, p));
        end_past(log, Topic::Config, after).await;

        let read = read_to_end(log, Topic::Config, 0, 4 << 20).await;
        assert_eq!(pairs(&read), written, "{}: every record, in order", s.name);
        let batch_records: Vec<_> = read
            .iter()
            .filter(|r| r.offset <= batch_at && r.offset > last)
            .collect();
        assert_eq!(
            batch_records.last().map(|r| r.offset),
            Some(batch_at),
            "{}: a batch resolves to its last record's offset",
            s.name
        );
        // Resuming from any record's `next` reads exactly what follows it (small reads too).
        for (i, r) in read.iter().enumerate() {
            let rest = read_to_end(log, Topic::Config, r.next, 300).await;
            let from_next: Vec<_> = pairs(&rest);
            let expected = &written[i + 1..];
            assert!(
                from_next.ends_with(expected) && from_next.len() <= expected.len() + 20,
                "{}: resuming after record {i} at {} reads {} records, expected the {} after it",
                s.name,
                r.next,
                from_next.len(),
                expected.len()
            );
        }
    }
}

#[tokio::test]
async fn a_batch_with_one_record_too_large_makes_none_of_them_visible() {
    for s in subjects().await {
        let log = s.log.as_ref();
        let before = log
            .append(Topic::Config, b"k".to_vec(), b"v".to_vec())
            .await
            .unwrap();
        end_past(log, Topic::Config, before).await;
        let huge = vec![b'x'; 9 << 20];
        let batch = vec![record(1, 10), (b"huge".to_vec(), huge), record(2, 10)];
        let refused = log.append_batch(Topic::Config, batch).await;
        assert!(
            matches!(refused, Err(LogError::TooLarge(_))),
            "{}: {refused:?}",
            s.name
        );
        assert!(
            matches!(
                log.append_batch(Topic::Config, vec![]).await,
                Err(LogError::Batch(_))
            ),
            "{}: an empty batch is refused",
            s.name
        );
        // A later append lands right after the one before the refused batch: nothing of it is in
        // the topic, now or for a reader.
        let next = log
            .append(Topic::Config, b"k2".to_vec(), b"v2".to_vec())
            .await
            .unwrap();
        end_past(log, Topic::Config, next).await;
        let read = read_to_end(log, Topic::Config, 0, 4 << 20).await;
        assert_eq!(
            pairs(&read),
            vec![
                (b"k".to_vec(), b"v".to_vec()),
                (b"k2".to_vec(), b"v2".to_vec())
            ],
            "{}: the refused batch left nothing behind",
            s.name
        );
    }
}

#[tokio::test]
async fn a_large_batch_commits_whole() {
    for s in subjects().await {
        let log = s.log.as_ref();
        // 2,000 records of 2 KiB: larger than Kafka's default 1 MB message limit as one batch.
        let batch: Vec<_> = (0..2000).map(|i| record(i, 2048)).collect();
        let at = log
            .append_batch(Topic::Config, batch.clone())
            .await
            .unwrap();
        end_past(log, Topic::Config, at).await;
        let read = read_to_end(log, Topic::Config, 0, 1 << 20).await;
        assert_eq!(pairs(&read), batch, "{}", s.name);
    }
}

#[tokio::test]
async fn the_end_moves_on_every_append() {
    for s in subjects().await {
        let log = s.log.as_ref();
        let mut ends = Vec::new();
        for i in 0..3 {
            let (k, p) = record(i, 10);
            let at = log.append(Topic::Limits, k, p).await.unwrap();
            ends.push(end_past(log, Topic::Limits, at).await);
        }
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "{}: {ends:?}", s.name);
    }
}

#[tokio::test]
async fn readers_see_the_offsets_appends_resolve_to_and_tiny_reads_still_progress() {
    for s in subjects().await {
        let log = s.log.as_ref();
        let written = vec![record(0, 10), (Vec::new(), Vec::new()), record(2, 500)];
        let mut offsets = Vec::new();
        for (k, p) in &written {
            offsets.push(
                log.append(Topic::Limits, k.clone(), p.clone())
                    .await
                    .unwrap(),
            );
        }
        // Another topic's records are not this one's.
        let other = log
            .append(Topic::Config, b"c".to_vec(), b"v".to_vec())
            .await
            .unwrap();
        end_past(log, Topic::Config, other).await;
        let end = end_past(log, Topic::Limits, offsets[2]).await;

        // A read of fewer bytes than one record still returns it (or, on Kafka, may return
        // nothing before the end): a reader always gets to the end.
        let read = read_to_end(log, Topic::Limits, 0, 1).await;
        assert_eq!(
            pairs(&read),
            written,
            "{}: empty keys and values too",
            s.name
        );
        let seen: Vec<Offset> = read.iter().map(|r| r.offset).collect();
        assert_eq!(
            seen, offsets,
            "{}: an append resolves to its record's offset",
            s.name
        );
        let rest = log.read(Topic::Limits, end, 1 << 20).await.unwrap();
        assert!(rest.is_empty(), "{}: nothing is read from the end", s.name);
    }
}
