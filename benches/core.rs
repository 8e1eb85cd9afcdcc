//! Throughput of the hot pure pieces: folding usage events, pricing, and Avro encoding.
//! Run: `cargo bench --bench core`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rust_decimal::Decimal;

use parking_lot::RwLock;
use std::sync::Arc;
use tollgate::codec;
use tollgate::domain::limits::{parse_rate_limits, parse_usage_limit, LimitOwner};
use tollgate::domain::pricing::{PriceTable, TokenUsage};
use tollgate::domain::*;
use tollgate::ledger::governor::{Estimate, Governor};

mod common;
use common::event;

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
                cache_write: 0,
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

/// A state where a request crosses limits at every level: key, provider, integration access,
/// workspace and a department policy, each with a budget and a rate limit.
fn governed_state() -> State {
    let budget = || {
        parse_usage_limit(&serde_json::json!({"type": "cost", "credit_limit": 1_000_000, "alert_threshold": 999_999})).ok().flatten()
    };
    let rates = || {
        parse_rate_limits(
            &serde_json::json!([{"type": "requests", "unit": "rpm", "value": 100_000_000}]),
            LimitOwner::ApiKey,
        )
        .unwrap_or_default()
    };
    let e = event(1);
    let mut s = State::default();
    let key = ApiKey {
        id: e.api_key_id.clone(),
        key_hash: "h".into(),
        masked: "m".into(),
        name: "k".into(),
        description: None,
        kind: ApiKeyType::WorkspaceService,
        workspace_id: Some(e.workspace_id.clone()),
        user_id: None,
        scopes: vec![],
        defaults: Default::default(),
        usage_limits: budget(),
        rate_limits: rates(),
        limits_set_by: Default::default(),
        alert_emails: vec![],
        rotation_policy: None,
        expires_at: None,
        creation_mode: "api".into(),
        created_by: None,
        ancestors: vec![],
        created_at: Millis(0),
        updated_at: Millis(0),
    };
    let ws = Workspace {
        id: e.workspace_id.clone(),
        slug: "ws".into(),
        name: "ws".into(),
        description: None,
        defaults: Default::default(),
        usage_limits: budget(),
        rate_limits: rates(),
        created_at: Millis(0),
        updated_at: Millis(0),
    };
    let provider = Provider {
        id: e.provider_id.clone(),
        slug: e.provider_slug.clone(),
        name: "p".into(),
        note: None,
        integration_id: e.integration_id.clone(),
        workspace_id: e.workspace_id.clone(),
        origin: ProviderOrigin::Catalog,
        usage_limits: budget(),
        rate_limits: rates(),
        limits_set_by: Default::default(),
        expires_at: None,
        created_at: Millis(0),
        updated_at: Millis(0),
    };
    let mut integration = Integration {
        id: e.integration_id.clone(),
        slug: "i".into(),
        name: "i".into(),
        description: None,
        ai_provider_id: "openai".into(),
        workspace_id: None,
        key: None,
        secrets: Default::default(),
        configurations: Default::default(),
        allow_all_models: true,
        models: Default::default(),
        workspaces: Default::default(),
        global_workspace_access: None,
        implicit: false,
        credential_set_by: Authority::Organisation,
        created_at: Millis(0),
        updated_at: Millis(0),
    };
    integration.workspaces.insert(
        e.workspace_id.clone(),
        WorkspaceAccess {
            workspace_id: e.workspace_id.clone(),
            enabled: true,
            usage_limits: budget(),
            rate_limits: rates(),
            created_at: Millis(0),
            updated_at: Millis(0),
        },
    );
    let policy = UsagePolicy {
        id: "pol".into(),
        name: "dept".into(),
        workspace_id: None,
        conditions: vec![Condition {
            key: "metadata.department".into(),
            value: "engineering".into(),
        }],
        group_by: Some("metadata.department".into()),
        usage_limits: budget(),
        rate_limits: rates(),
        limits_set_by: Default::default(),
        created_at: Millis(0),
        updated_at: Millis(0),
    };
    for entity in [
        Entity::ApiKey(key),
        Entity::Workspace(ws),
        Entity::Provider(provider),
        Entity::Integration(integration),
        Entity::Policy(policy),
    ] {
        s.apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "c".into(),
            at: Millis(0),
            change: Change::Upsert(entity),
        }));
    }
    s
}

fn governance(c: &mut Criterion) {
    let state = RwLock::new(governed_state());
    let gov = Arc::new(Governor::default());
    let mut g = c.benchmark_group("governance");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u128;
    g.bench_function("admit + settle, limits at 5 levels", |b| {
        b.iter(|| {
            i += 1;
            let e = event(i);
            let path = e.path();
            let est = Estimate {
                max_cost: Decimal::new(1, 2),
                max_tokens: 100,
                ..Default::default()
            };
            let r = gov
                .admit(&state, &path, est, Millis(1_735_689_600_000))
                .ok();
            let e2 = e.clone();
            gov.settle(&state, e2, r, true, Millis(1_735_689_600_000))
        })
    });
    g.finish();
}

criterion_group!(benches, reducer, pricing, encoding, governance);
criterion_main!(benches);
