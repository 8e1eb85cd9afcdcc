//! Throughput of the hot pure pieces: folding usage events, pricing, and Avro encoding.
//! Run: `cargo bench --bench core`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;

use tollgate::codec;
use tollgate::domain::pricing::{PriceTable, TokenUsage};
use tollgate::domain::*;

fn event(i: u128) -> UsageEvent {
    let mut metadata = Metadata::new();
    metadata.insert("department".into(), "engineering".into());
    UsageEvent {
        event_id: uuid::Uuid::from_u128(i).to_string(),
        at: Millis(1_735_689_600_000),
        organisation_id: "org".into(),
        workspace_id: format!("ws-{}", i % 10),
        api_key_id: format!("key-{}", i % 100),
        provider_id: "prov".into(),
        provider_slug: "openai-prod".into(),
        integration_id: "int".into(),
        ai_provider: "openai".into(),
        department: Some("engineering".into()),
        user: Some("u1".into()),
        metadata,
        model: "gpt-4o-mini".into(),
        endpoint: Endpoint::ChatCompletions,
        status_code: 200,
        prompt_tokens: 25,
        completion_tokens: 24,
        cached_tokens: 0,
        cost_usd: Decimal::new(1815, 8),
        priced: true,
        usage_source: UsageSource::Provider,
        latency_ms: 12,
        upstream_latency_ms: 10,
        streamed: false,
        attempt_index: 0,
        trace_id: "trace".into(),
        config_id: None,
    }
}

fn reducer(c: &mut Criterion) {
    let events: Vec<Event> = (0..10_000).map(|i| Event::Usage(event(i))).collect();
    let mut g = c.benchmark_group("reducer");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("apply 10k usage events", |b| {
        b.iter_batched(
            State::default,
            |mut s| {
                for e in &events {
                    s.apply(e);
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn pricing(c: &mut Criterion) {
    let table = PriceTable::shipped().unwrap_or_default();
    let mut g = c.benchmark_group("pricing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lookup + cost", |b| {
        b.iter(|| {
            let p = table
                .lookup(black_box("openai"), black_box("gpt-4o-mini-2024-07-18"))
                .unwrap_or_default();
            p.cost_usd(black_box(TokenUsage {
                prompt: 1234,
                completion: 567,
                cached: 100,
            }))
        })
    });
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let e = event(7);
    let bytes = codec::encode_usage(&e).unwrap_or_default();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode usage event", |b| {
        b.iter(|| codec::encode_usage(black_box(&e)))
    });
    g.bench_function("decode usage event", |b| {
        b.iter(|| codec::decode_usage(black_box(&bytes)))
    });
    g.finish();
}

criterion_group!(benches, reducer, pricing, encoding);
criterion_main!(benches);
