//! The broker's own ceiling, for the pipeline benchmark (`benches/pipeline.sh` runs it in the same
//! run): how many real usage events per second the broker takes from one producer configured as
//! the gateway's (acks=all, idempotent unless TOLLGATE_KAFKA_IDEMPOTENCE=false) and hands back to
//! one consumer. Needs TG_KAFKA_BROKERS; EVENTS (default 100000) sets the count. Under
//! `cargo test` (no `--bench` argument) it is a quick smoke run of 1000 events.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tollgate::log::kafka::client_config;

mod common;

fn main() -> anyhow::Result<()> {
    let brokers = std::env::var("TG_KAFKA_BROKERS")
        .map_err(|_| anyhow::anyhow!("TG_KAFKA_BROKERS is not set (scripts/services.sh env)"))?;
    let benching = std::env::args().any(|a| a == "--bench");
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|_| benching)
        .unwrap_or(if benching { 100_000 } else { 1_000 });
    let idempotent = std::env::var("TOLLGATE_KAFKA_IDEMPOTENCE").map_or(true, |v| v != "false");
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&brokers, events, idempotent))
}

#[expect(clippy::print_stdout, reason = "a benchmark reports its figures")]
async fn run(brokers: &str, events: usize, idempotent: bool) -> anyhow::Result<()> {
    let topic = format!("bench.broker.{}", uuid::Uuid::new_v4().simple());
    let settings = tollgate::settings::Settings {
        topic_prefix: format!("{topic}."),
        ..Default::default()
    };
    tollgate::log::kafka::ensure_topics(&settings, brokers).await?;
    let topic = format!("{topic}.usage");
    let payload = tollgate::codec::encode_usage(&common::event(1))?;
    let producer: FutureProducer = client_config(brokers)
        .set("enable.idempotence", idempotent.to_string())
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?;
    let started = Instant::now();
    let keys: Vec<String> = (0..64).map(|k| format!("key-{k}")).collect();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..events {
        let record = FutureRecord::to(&topic)
            .key(&keys[i % keys.len()])
            .payload(&payload);
        pending.push(producer.send(record, Duration::from_secs(30)));
        // Keep a bounded number in flight, as many gateways' requests would.
        while pending.len() >= 10_000 {
            if let Some(Err((e, _))) = pending.next().await {
                anyhow::bail!("produce failed: {e}");
            }
        }
    }
    while let Some(r) = pending.next().await {
        if let Err((e, _)) = r {
            anyhow::bail!("produce failed: {e}");
        }
    }
    let produce_s = started.elapsed().as_secs_f64();
    let consumer: StreamConsumer = client_config(brokers)
        .set("group.id", format!("{topic}.bench"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let started = Instant::now();
    let mut got = 0;
    let mut stream = consumer.stream();
    while got < events {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(_))) => got += 1,
            Ok(Some(Err(e))) => anyhow::bail!("consume failed: {e}"),
            _ => anyhow::bail!("consumed {got} of {events} before a 30 s stall"),
        }
    }
    let consume_s = started.elapsed().as_secs_f64();
    println!(
        "broker ceiling: {events} events of {} bytes: produce {:.0}/s (acks=all, idempotent={idempotent}), consume {:.0}/s",
        payload.len(),
        events as f64 / produce_s,
        events as f64 / consume_s
    );
    Ok(())
}
