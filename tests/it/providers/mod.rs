//! Native providers end to end: a real server routes OpenAI and Anthropic callers to mocks that
//! speak each provider's protocol, and every attempt is metered from what the mock billed, at the
//! shipped price table's rates, exactly.

mod anthropic;
mod bedrock;
mod catalog;
mod fallback;
mod gemini;
mod sdk;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use tollgate::domain::pricing::{PriceTable, TokenUsage};

use crate::harness::{self, Server};

/// A workspace, an integration of `ai_provider_id` with `fields` (its `key`, `configurations`)
/// provisioned to it as provider `@<slug>`, and a workspace service key with
/// `completions.write`. Returns the key.
pub async fn native_tenant(
    server: &Server,
    slug: &str,
    ai_provider_id: &str,
    fields: Value,
) -> String {
    let ws = harness::create_workspace(&server.url, &format!("team {slug}")).await;
    let mut body = json!({"name": slug, "slug": slug, "ai_provider_id": ai_provider_id});
    for (k, v) in fields.as_object().unwrap() {
        body[k] = v.clone();
    }
    server.admin("POST", "/integrations", Some(body)).await;
    server
        .admin(
            "PUT",
            &format!("/integrations/{slug}/workspaces"),
            Some(json!({"workspaces": [{"id": ws, "enabled": true}]})),
        )
        .await;
    let key = harness::completions_key(&server.url, &ws, &format!("svc-{slug}")).await;
    key["key"].as_str().unwrap().to_owned()
}

/// What one usage event of `trace` recorded: tokens (prompt, completion, cached, cache write),
/// cost, `usage_source`, status, `streamed`, `endpoint`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metered {
    pub usage: TokenUsage,
    pub cost: Decimal,
    pub source: String,
    pub status: i64,
    pub streamed: bool,
    pub endpoint: String,
    pub model: String,
}

/// The usage events of `trace`, once the store holds at least `n`.
pub async fn metered(server: &Server, trace: &str, n: usize) -> Vec<Metered> {
    let found = harness::eventually_some(std::time::Duration::from_millis(25), || async move {
        server.store_caught_up().await;
        let rows = read_metered(server, trace);
        (rows.len() >= n).then_some(rows)
    })
    .await;
    found.unwrap_or_else(|| panic!("fewer than {n} usage events for {trace}"))
}

fn read_metered(server: &Server, trace: &str) -> Vec<Metered> {
    let db = rusqlite::Connection::open(server.dir.path().join("usage.sqlite")).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, cost_pico,
                    usage_source, status_code, streamed, endpoint, model
             FROM usage_events WHERE trace_id = ? ORDER BY attempt_index",
        )
        .unwrap();
    stmt.query_map([trace], |r| {
        let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
        Ok(Metered {
            usage: TokenUsage {
                prompt: n(0)?,
                completion: n(1)?,
                cached: n(2)?,
                cache_write: n(3)?,
            },
            cost: Decimal::from_i128_with_scale(i128::from(r.get::<_, i64>(4)?), 12).normalize(),
            source: r.get(5)?,
            status: r.get(6)?,
            streamed: r.get::<_, i64>(7)? == 1,
            endpoint: r.get(8)?,
            model: r.get(9)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The cost of `usage` of `model` at `provider` by the shipped price table.
pub fn priced(provider: &str, model: &str, usage: TokenUsage) -> Decimal {
    let price = PriceTable::shipped()
        .unwrap()
        .lookup(provider, model)
        .unwrap_or_else(|| panic!("no shipped price for {provider} {model}"));
    price.cost_usd(usage)
}

/// `POST /v1{path}` with `key` (as `x-portkey-api-key`), trace `trace` and `body`: status,
/// headers and the raw body.
pub async fn post(
    server: &Server,
    path: &str,
    key: &str,
    trace: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1{path}", server.url))
        .header("x-portkey-api-key", key)
        .header("x-portkey-trace-id", trace)
        .json(body)
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap())
}

/// The JSON payloads of the `data:` lines of an SSE body (without `[DONE]`), with their `event:`
/// names.
pub fn sse_events(text: &str) -> Vec<(Option<String>, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter_map(|e| {
            let (name, data) = tollgate::providers::sse_fields(e.as_bytes());
            let data = String::from_utf8(data).ok()?;
            (data != "[DONE]").then(|| (name, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}
