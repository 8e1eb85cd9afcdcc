//! See [`super`]: the limits area of the security suite. Budgets count what is in flight and
//! reserve what is actually sent upstream; metadata defaults cannot be relabelled; rate limits
//! bind per calendar interval; unpriced models cannot slip past cost budgets; absurd usage and
//! unbounded metadata cannot poison the meter.

use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::common::ws_key;
use crate::harness::{self, Server};
use crate::mock;
use tollgate::domain::{EntityKind, Millis};

/// A chat request for `@slug/model` with extra body fields and headers.
async fn chat(
    server: &Server,
    key: &str,
    model: &str,
    extra: Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().cloned().unwrap_or_default());
    harness::post_chat(server, key, headers, &body).await
}

/// A workspace service key `limited` with `completions.write` and the given extra fields.
async fn new_key(server: &Server, ws: &str, extra: Value) -> (String, String) {
    let mut fields = json!({"scopes": ["completions.write"]});
    fields
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    ws_key(server, ws, "limited", fields).await
}

/// A chat request for `model` with `max_tokens` 7 and no extra headers.
async fn short_chat(
    server: &Server,
    key: &str,
    model: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    chat(server, key, model, json!({"max_tokens": 7}), &[]).await
}

/// A key [`new_key`] with a budget (`usage_limits`) of `limit` of `kind` (`cost`, `tokens`).
async fn budgeted_key(server: &Server, ws: &str, kind: &str, limit: u64) -> (String, String) {
    new_key(
        server,
        ws,
        json!({"usage_limits": {"type": kind, "credit_limit": limit}}),
    )
    .await
}

/// Chats with `key` for `model` (`max_tokens` 7) until one is refused with 412, `tries` at most;
/// returns the last status.
async fn chat_until_refused(server: &Server, key: &str, model: &str, tries: usize) -> u16 {
    let mut last = 0;
    for _ in 0..tries {
        last = short_chat(server, key, model).await.0;
        if last == 412 {
            break;
        }
    }
    last
}

/// Prices `models` on the integration `slug` (US cents per input and output token).
async fn price(server: &Server, slug: &str, models: &[(&str, Value)]) {
    let models: Vec<Value> = models
        .iter()
        .map(|(m, extra)| {
            let mut e = json!({"slug": m, "enabled": true});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            e
        })
        .collect();
    server
        .admin(
            "PUT",
            &format!("/integrations/{slug}/models"),
            Some(json!({"allow_all_models": true, "models": models})),
        )
        .await;
}

fn payg(input: &str, output: &str) -> Value {
    json!({"pricing_config": {"type": "static", "pay_as_you_go": {
        "request_token": {"price": input}, "response_token": {"price": output}}}})
}

fn usage_of_key(server: &Server, id: &str) -> tollgate::domain::Totals {
    server.state().usage_of(EntityKind::ApiKey, id)
}

/// Item 5: default-mode admission counts reservations. 50 concurrent requests of exactly $0.25
/// against a $1 budget: before, about 30 were admitted ($7.50); now spend stays within $1 plus
/// one request's maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_budget_counts_requests_in_flight() {
    let (_mock, server, ws, _) = harness::with_tenant("inflight").await;
    // The mock bills 12 prompt + 7 completion tokens: 12 × 1.5 + 7 × 1 = 25 cents exactly; it
    // answers `slow` models after 2 s, so the whole burst is in flight at once.
    price(&server, "inflight", &[("slow-quarter", payg("1.5", "1"))]).await;
    let (id, key) = budgeted_key(&server, &ws, "cost", 1).await;
    let burst = (0..50).map(|_| short_chat(&server, &key, "@inflight/slow-quarter"));
    let statuses: Vec<u16> = futures_util::future::join_all(burst)
        .await
        .into_iter()
        .map(|(s, _, _)| s)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 412),
        "{statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let spent = usage_of_key(&server, &id).cost_usd;
    assert_eq!(spent, Decimal::new(25, 2) * Decimal::from(ok));
    // One request's maximum: the prompt's upper bound at 1.5 cents plus 7 output tokens at 1.
    let body = json!({"messages": [{"role": "user", "content": "hi"}]});
    let prompt_max = tollgate::proxy::meter::max_prompt_tokens(body.as_object().unwrap());
    let one_max =
        (Decimal::from(prompt_max) * Decimal::new(15, 1) + Decimal::from(7)) / Decimal::from(100);
    assert!(
        spent <= Decimal::ONE + one_max,
        "spent ${spent} with {ok} of 50 admitted; at most $1 + ${one_max}"
    );
    // Sequentially the budget is still used up, then refused.
    let last = chat_until_refused(&server, &key, "@inflight/slow-quarter", 10).await;
    assert_eq!(last, 412);
    let spent = usage_of_key(&server, &id).cost_usd;
    assert!(
        spent >= Decimal::ONE && spent <= Decimal::ONE + one_max,
        "{spent}"
    );
}

/// Item 6: strict budgets reserve what is sent upstream: a config's `override_params.max_tokens`
/// and `n` choices. Before, a strict 1000-token budget reached 1224 (the reservation read only
/// the client's `max_tokens: 10`); now it never passes 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_budget_reserves_the_override_and_every_choice() {
    let (mock, server, ws, _) = harness::with_tenant("strict6").await;
    let (id, key) = new_key(
        &server,
        &ws,
        json!({"usage_limits": {"type": "tokens", "credit_limit": 1000, "strict": true}}),
    )
    .await;
    let config =
        json!({"provider": "@strict6", "override_params": {"max_tokens": 200}}).to_string();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (s, _, b) = chat(
            &server,
            &key,
            "full-output",
            json!({"max_tokens": 10, "n": 3}),
            &[("x-portkey-config", &config)],
        )
        .await;
        assert!(s == 200 || s == 412, "{s} {b}");
        statuses.push(s);
    }
    let used = usage_of_key(&server, &id).tokens;
    assert_eq!(statuses[0], 200, "{statuses:?}");
    // Each answer bills 12 + 200 × 3 tokens.
    assert_eq!(
        used,
        612 * statuses.iter().filter(|s| **s == 200).count() as u64
    );
    assert!(used <= 1000, "a strict 1000-token budget used {used}");
    let upstream = mock.seen.bodies.lock();
    assert!(upstream
        .iter()
        .all(|b| b["max_tokens"] == 200 && b["n"] == 3));
}

/// Item 8: metadata defaults win for governance. The key's default `department: engineering` is
/// capped by an exhausted policy; relabelling it with `x-portkey-metadata` was served (200), now
/// it stays 412. The request may still add keys of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_header_cannot_relabel_a_default_department() {
    let mock = mock::start().await;
    let server = harness::start().await;
    // The tenant's key has defaults.metadata.department = engineering.
    let (_, key) = server.tenant(&mock.url, "dept8").await;
    price(&server, "dept8", &[("pricey", payg("1", "1"))]).await;
    server
        .admin(
            "POST",
            "/policies/usage-limits",
            Some(json!({"name": "eng",
        "conditions": [{"key": "metadata.department", "value": "engineering"}],
        "group_by": [{"key": "metadata.department"}], "type": "cost", "credit_limit": 1})),
        )
        .await;
    let last = chat_until_refused(&server, &key, "@dept8/pricey", 12).await;
    assert_eq!(last, 412, "the department's budget runs out");
    let (s, _, b) = chat(
        &server,
        &key,
        "@dept8/pricey",
        json!({"max_tokens": 7}),
        &[(
            "x-portkey-metadata",
            r#"{"department":"other","_user":"u1"}"#,
        )],
    )
    .await;
    assert_eq!(s, 412, "relabelled department: {b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("policy"),
        "{b}"
    );
}

/// Item 9 (integration): a 5-per-minute key's 6th request in the same UTC minute gets 429 with
/// `Retry-After` equal to the seconds left in that minute (before: GCRA answered about 12 s, a
/// fifth of the minute, and let requests through before the minute ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limit_binds_for_the_calendar_minute() {
    let (_mock, server, ws, _) = harness::with_tenant("rpm9").await;
    // A scenario that straddles a minute boundary proves nothing: run it again (once suffices,
    // it takes well under a minute).
    for attempt in 0..2 {
        let (_, key) = new_key(
            &server,
            &ws,
            json!({"rate_limits": [{"type": "requests", "unit": "rpm", "value": 5}]}),
        )
        .await;
        let started = Millis::now();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            statuses.push(chat(&server, &key, "@rpm9/m", json!({}), &[]).await.0);
        }
        let asked = Millis::now();
        let (s, h, b) = chat(&server, &key, "@rpm9/m", json!({}), &[]).await;
        let answered = Millis::now();
        if started.floor_minute() != answered.floor_minute() {
            assert_eq!(attempt, 0, "two scenarios in a row straddled a minute");
            continue;
        }
        assert_eq!(statuses, vec![200; 5]);
        assert_eq!(s, 429, "{b}");
        // The server decided between `asked` and `answered`: Retry-After is the seconds then left
        // in the minute, rounded up.
        let retry: i64 = h["retry-after"].to_str().unwrap().parse().unwrap();
        let end = answered.floor_minute().0 + 60_000;
        let (least, most) = ((end - answered.0) / 1000, (end - asked.0 + 999) / 1000);
        assert!(
            (least..=most.max(1)).contains(&retry),
            "Retry-After {retry} s; between {least} and {most} s were left in the minute"
        );
        return;
    }
}

/// Item 11: a custom model priced as its base model, a free model not blocked by an exhausted
/// cost budget, and an unpriced model refused (400) on a path with a cost budget unless the
/// integration meters unpriced models at zero. Before: all three were served at $0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpriced_models_cannot_pass_cost_budgets() {
    let (_mock, server, ws, _) = harness::with_tenant("price11").await;
    price(
        &server,
        "price11",
        &[
            ("pricey", payg("10", "10")),
            ("free-model", payg("0", "0")),
            (
                "my-ft",
                json!({"is_custom": true, "base_model_slug": "gpt-4o"}),
            ),
        ],
    )
    .await;
    let (id, key) = new_key(&server, &ws, json!({})).await;
    let (s, _, _) = short_chat(&server, &key, "@price11/my-ft").await;
    assert_eq!(s, 200);
    let gpt4o = tollgate::domain::pricing::PriceTable::shipped()
        .unwrap()
        .lookup("openai", "gpt-4o")
        .unwrap();
    let expected = gpt4o.cost_usd(tollgate::domain::pricing::TokenUsage {
        prompt: 12,
        completion: 7,
        cached: 0,
        cache_write: 0,
    });
    assert_eq!(
        usage_of_key(&server, &id).cost_usd,
        expected,
        "priced as gpt-4o"
    );

    let (_, budgeted) = budgeted_key(&server, &ws, "cost", 1).await;
    // $1.90 a request: one exhausts the budget.
    assert_eq!(
        short_chat(&server, &budgeted, "@price11/pricey").await.0,
        200
    );
    assert_eq!(
        short_chat(&server, &budgeted, "@price11/pricey").await.0,
        412
    );
    let (s, _, b) = short_chat(&server, &budgeted, "@price11/free-model").await;
    assert_eq!(s, 200, "explicitly free: {b}");
    let (s, _, b) = short_chat(&server, &budgeted, "@price11/unknown-model").await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "model_unpriced");
    let msg = b["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("pricing") && msg.contains("meter_unpriced_at_zero"),
        "{msg}"
    );
    // A token budget still binds the free model.
    let (_, tokens) = budgeted_key(&server, &ws, "tokens", 100).await;
    let last = chat_until_refused(&server, &tokens, "@price11/free-model", 10).await;
    assert_eq!(last, 412, "token budgets apply to free models");

    // The opt-in: meter unpriced models at $0 (a non-boolean is refused).
    let (s, _, _) = harness::call(
        "PUT",
        &format!("{}/v1/integrations/price11", server.url),
        Some(&server.admin_key),
        Some(json!({"configurations": {"meter_unpriced_at_zero": "yes"}})),
    )
    .await;
    assert_eq!(s, 400);
    server
        .admin(
            "PUT",
            "/integrations/price11",
            Some(json!({"configurations": {"meter_unpriced_at_zero": true}})),
        )
        .await;
    let (_, fresh) = budgeted_key(&server, &ws, "cost", 1).await;
    let (s, _, b) = short_chat(&server, &fresh, "@price11/unknown-model").await;
    assert_eq!(s, 200, "{b}");
}

/// Item 20: an upstream reporting usage near 2^63 tokens. Before: in-memory totals overflowed
/// and every organisation-wide analytics query answered 500 (SQLite `sum` overflow). Now the
/// usage is clamped to the plausibility bound, the event flagged, and analytics answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_usage_is_clamped_and_analytics_still_answer() {
    let (_mock, server, ws, key) = harness::with_tenant("huge20").await;
    for _ in 0..3 {
        let (s, _, b) = chat(&server, &key, "@huge20/huge-usage", json!({}), &[]).await;
        assert_eq!(s, 200, "{b}");
    }
    // And once streamed: the usage chunk is clamped the same way.
    let streamed = chat(
        &server,
        &key,
        "@huge20/huge-usage",
        json!({"stream": true}),
        &[],
    )
    .await;
    assert_eq!(streamed.0, 200);
    assert_eq!(
        chat(&server, &key, "@huge20/m", json!({}), &[]).await.0,
        200
    );
    let bound = tollgate::domain::pricing::MAX_PLAUSIBLE_TOKENS;
    let totals = server.state().usage_of(EntityKind::Workspace, &ws);
    assert_eq!(totals.tokens, 4 * 2 * bound + 19);
    server.store_caught_up().await;
    let range =
        "time_of_generation_min=2020-01-01T00:00:00Z&time_of_generation_max=2100-01-01T00:00:00Z";
    for path in [
        "graphs/tokens",
        "graphs/requests",
        "groups/workspaces",
        "groups/ai-models",
    ] {
        let (s, _, b) = harness::call(
            "GET",
            &format!("{}/v1/analytics/{path}?{range}", server.url),
            Some(&server.admin_key),
            None,
        )
        .await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (_, _, b) = harness::call(
        "GET",
        &format!("{}/v1/analytics/graphs/tokens?{range}", server.url),
        Some(&server.admin_key),
        None,
    )
    .await;
    assert_eq!(b["summary"]["total"], json!(4 * 2 * bound + 19), "{b}");
    // The clamped events say so, with what the upstream reported.
    let (s, _, b) = harness::call(
        "GET",
        &format!(
            "{}/v1/analytics/groups/metadata/_usage_clamped?{range}",
            server.url
        ),
        Some(&server.admin_key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let text = b.to_string();
    assert!(text.contains(&mock::HUGE_TOKENS.to_string()), "{text}");
    // Clients cannot forge the flag.
    let (s, _, _) = chat(
        &server,
        &key,
        "@huge20/m",
        json!({}),
        &[("x-portkey-metadata", r#"{"_usage_clamped":"no"}"#)],
    )
    .await;
    assert_eq!(s, 400);
}

/// Item 21: `x-portkey-metadata` is bounded, with a 400 naming the bound (before: a 355 KB header
/// was accepted and written into every usage event). Nothing reaches the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_header_is_bounded() {
    let (mock, server, _, key) = harness::with_tenant("meta21").await;
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (json!({"blob": "x".repeat(9000)}).to_string(), "8192 bytes"),
        (Value::Object(many).to_string(), "64 keys"),
        (json!({"k".repeat(129): "v"}).to_string(), "128 bytes"),
        (json!({"note": "v".repeat(513)}).to_string(), "512 bytes"),
    ];
    for (header, bound) in cases {
        let (s, _, b) = chat(
            &server,
            &key,
            "@meta21/m",
            json!({}),
            &[("x-portkey-metadata", &header)],
        )
        .await;
        assert_eq!(s, 400, "{bound}: {b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(bound), "{bound}: {msg}");
    }
    assert_eq!(
        mock.seen.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let fits = json!({"note": "v".repeat(512), "_user": "u1"}).to_string();
    let (s, _, _) = chat(
        &server,
        &key,
        "@meta21/m",
        json!({}),
        &[("x-portkey-metadata", &fits)],
    )
    .await;
    assert_eq!(s, 200, "within the bounds");
}

/// Review finding 7: a workspace's own keys cannot relabel themselves. A key minted by a
/// workspace key with `defaults.metadata.department = "free"` still carries the department the
/// organisation set on the workspace (before: its default won, the department's policy did not
/// match it, and it was served with 200 past the department's budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_key_cannot_relabel_the_workspace_department() {
    let (_mock, server, ws, _) = harness::with_tenant("dept7").await;
    server
        .admin(
            "PUT",
            &format!("/admin/workspaces/{ws}"),
            Some(json!({"defaults": {"metadata": {"department": "engineering"}}})),
        )
        .await;
    server
        .admin(
            "POST",
            "/policies/usage-limits",
            Some(json!({"name": "eng",
        "conditions": [{"key": "metadata.department", "value": "engineering"}],
        "type": "tokens", "credit_limit": 100})),
        )
        .await;
    let (_, lead) = new_key(
        &server,
        &ws,
        json!({"scopes": ["completions.write", "workspace_service_api_keys.create"]}),
    )
    .await;
    let (s, _, v) = harness::call(
        "POST",
        &format!("{}/v1/api-keys/workspace/service", server.url),
        Some(&lead),
        Some(
            json!({"name": "free", "workspace_id": ws, "scopes": ["completions.write"],
            "defaults": {"metadata": {"department": "free", "team": "a"}}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let free = v["key"].as_str().unwrap().to_owned();
    let last = chat_until_refused(&server, &lead, "@dept7/gpt-4o-mini", 40).await;
    assert_eq!(last, 412, "the department's budget runs out");
    let (s, _, b) = short_chat(&server, &free, "@dept7/gpt-4o-mini").await;
    assert_eq!(s, 412, "the relabelled key is still in the department: {b}");
    // A key the organisation labelled keeps its own department.
    let (_, labelled) = new_key(
        &server,
        &ws,
        json!({"defaults": {"metadata": {"department": "research"}}}),
    )
    .await;
    let (s, _, b) = short_chat(&server, &labelled, "@dept7/gpt-4o-mini").await;
    assert_eq!(s, 200, "{b}");
}
