//! Budgets and rate limits end to end: 412 and 429 through the real SDKs, budgets at every level
//! and a department policy, and spend under 200 concurrent requests.

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::harness::{self, call, Server};
use crate::mock;

/// A model priced at 1 cent per token either way: the mock's 12 + 7 tokens cost $0.19.
const PRICEY: &str = "pricey";

/// A mock provider, a server and the tenant `slug` on it ([`harness::with_tenant`]) with the model
/// [`PRICEY`] priced; returns (mock, server, workspace id, key).
async fn priced_tenant(slug: &str) -> (mock::Mock, Server, String, String) {
    let (mock, server, ws, key) = harness::with_tenant(slug).await;
    server
        .admin("PUT", &format!("/integrations/{slug}/models"), Some(json!({"models": [{"slug": PRICEY, "enabled": true,
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 1}, "response_token": {"price": 1}}}}]})))
        .await;
    (mock, server, ws, key)
}

async fn chat(
    server: &Server,
    key: &str,
    slug: &str,
    extra: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let body = json!({"model": format!("@{slug}/{PRICEY}"), "max_tokens": 7, "messages": [{"role": "user", "content": "hi"}]});
    harness::post_chat(server, key, extra, &body).await
}

fn key_spend(server: &Server, key: &str) -> Decimal {
    let s = server.state();
    let id = s
        .api_keys
        .values()
        .find(|k| k.masked == tollgate::crypto::mask(key))
        .unwrap()
        .id
        .clone();
    s.usage_of(tollgate::domain::EntityKind::ApiKey, &id)
        .cost_usd
}

async fn new_key(server: &Server, ws: &str, body: Value) -> String {
    let mut b = json!({"name": "k", "workspace_id": ws, "scopes": ["completions.write"]});
    b.as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    server
        .admin("POST", "/api-keys/workspace/service", Some(b))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn burst(server: &Server, key: &str, slug: &str, n: usize) -> Vec<u16> {
    let futs = (0..n).map(|_| async { chat(server, key, slug, &[]).await.0 });
    futures_util::future::join_all(futs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_budget_never_overspends_under_200_concurrent_requests() {
    let (_mock, server, ws, _) = priced_tenant("g1").await;
    let key = new_key(
        &server,
        &ws,
        json!({"usage_limits": {"type": "cost", "credit_limit": 1, "strict": true}}),
    )
    .await;
    let statuses = burst(&server, &key, "g1", 200).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        ok >= 1 && statuses.iter().all(|s| *s == 200 || *s == 412),
        "{statuses:?}"
    );
    let spend = key_spend(&server, &key);
    // Check-then-spend would admit all 200 ($38); reservations hold spend under the limit.
    assert!(spend <= Decimal::ONE, "strict budget overspent: {spend}");
    assert_eq!(spend, Decimal::new(19, 2) * Decimal::from(ok as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_budget_overshoots_by_at_most_what_was_in_flight_then_refuses() {
    let (_mock, server, ws, _) = priced_tenant("g2").await;
    let key = new_key(
        &server,
        &ws,
        json!({"usage_limits": {"type": "cost", "credit_limit": 1}}),
    )
    .await;
    let statuses = burst(&server, &key, "g2", 200).await;
    let mut ok = statuses.iter().filter(|s| **s == 200).count() as u64;
    // Admission counts what is in flight, so the burst can be refused while its requests still
    // fit once settled: spend what is left one request at a time until the budget refuses.
    for _ in 0..1000 {
        match chat(&server, &key, "g2", &[]).await.0 {
            200 => ok += 1,
            s => {
                assert_eq!(s, 412);
                break;
            }
        }
    }
    let spend = key_spend(&server, &key);
    assert!(spend >= Decimal::ONE, "the budget was used up: {spend}");
    // Every request past the limit was admitted before the budget was used up, while in flight.
    assert!(
        spend - Decimal::ONE < Decimal::new(19, 2) * Decimal::from(ok),
        "{spend} over {ok}"
    );
    let (s, _, body) = chat(&server, &key, "g2", &[]).await;
    assert_eq!(s, 412, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("api_key") && msg.contains("of $1") && msg.contains("reset"),
        "{msg}"
    );
    assert_eq!(
        key_spend(&server, &key),
        spend,
        "a refused request costs nothing"
    );
    // The key shows as exhausted; reset_usage reactivates it.
    let id = server
        .state()
        .api_keys
        .values()
        .find(|k| k.masked == tollgate::crypto::mask(&key))
        .unwrap()
        .id
        .clone();
    let got = server.admin("GET", &format!("/api-keys/{id}"), None).await;
    assert_eq!(got["status"], "exhausted");
    assert_eq!(got["usage_limits"]["status"], "exhausted");
    let (s, _, b) = call(
        "PUT",
        &format!("{}/v1/api-keys/{id}", server.url),
        Some(&server.admin_key),
        Some(json!({"usage_limits": {"type": "cost", "credit_limit": 2}})),
    )
    .await;
    assert_eq!(s, 400, "a budget cannot be edited: {b}");
    server.reset_usage(&format!("/api-keys/{id}")).await;
    assert_eq!(chat(&server, &key, "g2", &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_at_every_level_and_a_department_policy() {
    let (_mock, server, ws, _) = priced_tenant("g3").await;
    let budget = json!({"type": "cost", "credit_limit": 1});
    // Provider (the provisioned @g3), integration access, workspace, and a department policy.
    type SetBudget<'a> = Box<dyn Fn() -> (String, Option<Value>) + 'a>;
    let cases: Vec<(&str, SetBudget)> = vec![
        (
            "provider",
            Box::new(|| {
                (
                    "/providers/g3".into(),
                    Some(json!({"usage_limits": budget})),
                )
            }),
        ),
        (
            "integration_workspace",
            Box::new(|| {
                (
                    "/integrations/g3/workspaces".into(),
                    Some(
                        json!({"workspaces": [{"id": ws, "enabled": true, "usage_limits": [budget]}]}),
                    ),
                )
            }),
        ),
        (
            "workspace",
            Box::new(|| {
                (
                    format!("/admin/workspaces/{ws}"),
                    Some(json!({"usage_limits": [budget]})),
                )
            }),
        ),
    ];
    for (kind, set) in cases {
        let key = new_key(&server, &ws, json!({})).await;
        let (path, body) = set();
        server.admin("PUT", &path, body).await;
        let mut refused = None;
        for _ in 0..10 {
            let (s, _, b) = chat(&server, &key, "g3", &[]).await;
            if s == 412 {
                refused = Some(b);
                break;
            }
        }
        let b = refused.unwrap_or_else(|| panic!("{kind} budget never refused"));
        assert!(
            b["error"]["message"].as_str().unwrap().contains(kind),
            "{kind}: {b}"
        );
        // Lift it again (remove the budget) for the next level.
        let lift = match kind {
            "integration_workspace" => {
                json!({"workspaces": [{"id": ws, "enabled": true, "usage_limits": null}]})
            }
            _ => json!({"usage_limits": null}),
        };
        server.admin("PUT", &path, Some(lift)).await;
        assert_eq!(chat(&server, &key, "g3", &[]).await.0, 200, "{kind} lifted");
    }
    // A department policy: engineering is capped, sales is not.
    server.admin("POST", "/policies/usage-limits", Some(json!({"name": "eng", "conditions": [{"key": "metadata.department", "value": "engineering"}],
        "group_by": [{"key": "metadata.department"}], "type": "cost", "credit_limit": 1}))).await;
    let key = new_key(&server, &ws, json!({})).await;
    let eng = [("x-portkey-metadata", r#"{"department":"engineering"}"#)];
    let sales = [("x-portkey-metadata", r#"{"department":"sales"}"#)];
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(chat(&server, &key, "g3", &eng).await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "$1 buys six $0.19 requests: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&412));
    assert_eq!(chat(&server, &key, "g3", &sales).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_see_412_and_429() {
    let (_mock, server, ws, _) = priced_tenant("g4").await;
    let spent = new_key(
        &server,
        &ws,
        json!({"usage_limits": {"type": "tokens", "credit_limit": 100}}),
    )
    .await;
    for _ in 0..6 {
        chat(&server, &spent, "g4", &[]).await;
    }
    let limited = new_key(
        &server,
        &ws,
        json!({"rate_limits": [{"type": "requests", "unit": "rpd", "value": 2}]}),
    )
    .await;
    let (s, h, _) = chat(&server, &limited, "g4", &[]).await;
    assert_eq!(s, 200);
    assert!(h.contains_key("x-portkey-trace-id"));
    harness::run_sdk(
        "governance.py",
        &[
            ("TOLLGATE_URL", &server.url),
            ("SPENT_KEY", &spent),
            ("LIMITED_KEY", &limited),
            ("PROVIDER", "g4"),
            ("MODEL", PRICEY),
        ],
    )
    .await;
    // Token rate limits count actual usage: 40 tokens per hour admits requests while under 40
    // (hours, not minutes: a calendar interval that rolled over mid-test would start afresh).
    let tokens = new_key(
        &server,
        &ws,
        json!({"rate_limits": [{"type": "tokens", "unit": "rph", "value": 40}]}),
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(chat(&server, &tokens, "g4", &[]).await.0);
    }
    assert_eq!(got[0], 200);
    assert!(got.contains(&429), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_workspace_access_provisions_new_workspaces_with_its_limits() {
    let mock = mock::start().await;
    let server = harness::start().await;
    server
        .admin("POST", "/integrations", Some(json!({"name": "glob", "slug": "glob", "ai_provider_id": "openai", "key": "sk-glob-000000000",
            "configurations": {"custom_host": mock.url},
            "global_workspace_access": {"enabled": true, "rate_limits": [{"type": "requests", "unit": "rph", "value": 1}]}})))
        .await;
    let ws = server
        .admin("POST", "/admin/workspaces", Some(json!({"name": "late"})))
        .await;
    let ws = ws["id"].as_str().unwrap();
    let access = server
        .admin("GET", "/integrations/glob/workspaces", None)
        .await;
    let late = access["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == ws)
        .unwrap_or_else(|| panic!("{access}"));
    assert_eq!(late["rate_limits"]["value"], 1);
    let key = new_key(&server, ws, json!({})).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let r = client
            .post(format!("{}/v1/chat/completions", server.url))
            .header("x-portkey-api-key", key.as_str())
            .json(&json!({"model": "@glob/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_rate_limit_answers_429_with_retry_after() {
    let (_mock, server, ws, key) = priced_tenant("g6").await;
    server
        .admin(
            "PUT",
            &format!("/providers/g6?workspace_id={ws}"),
            Some(json!({"rate_limits": [{"type": "requests", "unit": "rph", "value": 1}]})),
        )
        .await;
    assert_eq!(chat(&server, &key, "g6", &[]).await.0, 200);
    let (s, h, b) = chat(&server, &key, "g6", &[]).await;
    assert_eq!(s, 429, "{b}");
    assert!(
        h.get("retry-after")
            .is_some_and(|v| v.to_str().unwrap().parse::<u64>().unwrap() >= 1),
        "{h:?}"
    );
    assert_eq!(h["x-should-retry"], "false");
    assert!(h.contains_key("x-portkey-trace-id"));
}
