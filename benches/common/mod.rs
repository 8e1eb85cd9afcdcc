//! What the benchmarks share.

use rust_decimal::Decimal;
use tollgate::domain::*;

/// A typical chat usage event; `i` varies its id, workspace and key.
pub fn event(i: u128) -> UsageEvent {
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
        cache_write_tokens: 0,
    }
}
