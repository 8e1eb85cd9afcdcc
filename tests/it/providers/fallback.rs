//! Routing and governance across providers of different protocols: a fallback from an
//! OpenAI-format provider's 429 to Anthropic, a load balance across the two, and budgets, rate
//! limits and model allow-lists on `/v1/messages` as on chat (in Anthropic's error shape).

use serde_json::{json, Value};
use tollgate::domain::pricing::TokenUsage;

use super::{metered, priced, provision, sse_events};
use crate::harness::{self, Server};
use crate::{mock, mock_anthropic};

const CLAUDE: &str = "claude-3-7-sonnet-20250219";
const GPT: &str = "gpt-4o-mini";
/// A model priced (on `@ant`, in [`budgets_rate_limits_and_allow_lists_hold_on_messages`]) at
/// a cent a token either way.
const PRICEY: &str = "pricey";

/// One workspace with both providers: `@oai` (the OpenAI-format mock, as `openai`) and `@ant`
/// (the Anthropic mock). Returns the workspace id and a key with `key_fields`.
struct Two {
    oai: mock::Mock,
    ant: mock_anthropic::MockAnthropic,
    server: Server,
    ws: String,
    key: String,
}

async fn two(key_fields: Value) -> Two {
    let oai = mock::start().await;
    let ant = mock_anthropic::start().await;
    let server = harness::start().await;
    let ws = harness::create_workspace(&server.url, "team two").await;
    let integrations = [
        json!({"name": "oai", "slug": "oai", "ai_provider_id": "openai", "key": "sk-mock-provider-key-0123456789",
               "configurations": {"custom_host": oai.url}}),
        json!({"name": "ant", "slug": "ant", "ai_provider_id": "anthropic", "key": "sk-ant-test-0123456789",
               "configurations": {"custom_host": ant.url}}),
    ];
    for body in integrations {
        provision(&server, &ws, body).await;
    }
    let mut b = json!({"name": "k", "workspace_id": ws, "scopes": ["completions.write"]});
    b.as_object_mut()
        .unwrap()
        .extend(key_fields.as_object().unwrap().clone());
    let key = server
        .admin("POST", "/api-keys/workspace/service", Some(b))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    Two {
        oai,
        ant,
        server,
        ws,
        key,
    }
}

/// `POST /v1{path}` with the key, a trace and `extra` headers: status, headers, JSON body.
async fn send(
    t: &Two,
    path: &str,
    trace: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1{path}", t.server.url))
        .header("x-api-key", &t.key)
        .header("x-portkey-trace-id", trace);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.json(body).send().await.unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap();
    (
        s,
        h,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn option(h: &reqwest::header::HeaderMap) -> &str {
    h["x-portkey-last-used-option-index"].to_str().unwrap()
}

/// What the OpenAI-format mock bills one user message.
fn gpt_usage() -> TokenUsage {
    TokenUsage {
        prompt: 12,
        completion: mock::COMPLETION_TOKENS,
        ..TokenUsage::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_from_an_openai_format_429_to_anthropic_meters_both_attempts() {
    let t = two(json!({})).await;
    let config = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@oai"},
        {"provider": "@ant", "override_params": {"model": CLAUDE}}]})
    .to_string();
    let cfg = [("x-portkey-config", config.as_str())];
    let hi = json!([{"role": "user", "content": "hi"}]);
    let (s, h, v) = send(
        &t,
        "/chat/completions",
        "fb-chat",
        &cfg,
        &json!({"model": "fail-429", "messages": hi}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(option(&h), "config.targets[1]");
    assert_eq!(v["object"], "chat.completion", "an OpenAI answer: {v}");
    assert_eq!(v["choices"][0]["message"]["content"], mock_anthropic::TEXT);
    assert_eq!(t.oai.seen.bodies.lock()[0]["model"], "fail-429");
    assert_eq!(t.ant.seen.bodies.lock()[0]["model"], CLAUDE);
    let billed = mock_anthropic::billed();
    let m = metered(&t.server, "fb-chat", 2).await;
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(
        (m[0].status, m[0].usage, m[0].model.as_str()),
        (429, TokenUsage::default(), "fail-429")
    );
    assert_eq!(m[0].cost, rust_decimal::Decimal::ZERO);
    assert_eq!(
        (m[1].status, m[1].usage, m[1].model.as_str()),
        (200, billed, CLAUDE)
    );
    assert_eq!(m[1].cost, priced("anthropic", CLAUDE, billed));

    // The same fallback for an Anthropic caller: the OpenAI-format 429 first, then Anthropic's
    // answer passed through.
    let body = json!({"model": "fail-429", "max_tokens": 50, "messages": hi});
    let (s, h, v) = send(&t, "/messages", "fb-messages", &cfg, &body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(option(&h), "config.targets[1]");
    assert_eq!(
        (v["type"].as_str(), v["content"][0]["text"].as_str()),
        (Some("message"), Some(mock_anthropic::TEXT))
    );
    let m = metered(&t.server, "fb-messages", 2).await;
    assert_eq!((m[0].status, m[0].usage), (429, TokenUsage::default()));
    assert_eq!(
        (m[1].status, m[1].usage, m[1].endpoint.as_str()),
        (200, billed, "messages")
    );
    assert_eq!(m[1].cost, priced("anthropic", CLAUDE, billed));
    // A stream falls back too: Anthropic's events become OpenAI chunks, usage last.
    let stream = json!({"model": "fail-429", "stream": true, "stream_options": {"include_usage": true}, "messages": hi});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", t.server.url))
        .header("x-api-key", &t.key)
        .header("x-portkey-trace-id", "fb-stream")
        .header("x-portkey-config", &config)
        .json(&stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(option(r.headers()), "config.targets[1]");
    let text = r.text().await.unwrap();
    let events = sse_events(&text);
    let content: String = events
        .iter()
        .filter_map(|(_, e)| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, mock_anthropic::TEXT, "{text}");
    let usage = &events.last().unwrap().1["usage"];
    assert_eq!(
        usage["prompt_tokens"].as_u64(),
        Some(billed.prompt),
        "{text}"
    );
    let m = metered(&t.server, "fb-stream", 2).await;
    assert_eq!((m[0].status, m[0].usage), (429, TokenUsage::default()));
    assert_eq!(
        (m[1].status, m[1].usage, m[1].streamed),
        (200, billed, true)
    );
    assert_eq!(m[1].cost, priced("anthropic", CLAUDE, billed));
    // Both targets failing: the last one's error, in the caller's shape.
    let both = json!({"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "@oai"}, {"provider": "@ant"}]})
    .to_string();
    let (s, h, v) = send(
        &t,
        "/messages",
        "fb-both",
        &[("x-portkey-config", both.as_str())],
        &body,
    )
    .await;
    assert_eq!(s, 429, "{v}");
    assert_eq!(option(&h), "config.targets[1]");
    assert_eq!(
        (v["type"].as_str(), v["error"]["type"].as_str()),
        (Some("error"), Some("rate_limit_error")),
        "{v}"
    );
    let m = metered(&t.server, "fb-both", 2).await;
    assert_eq!(
        m.iter().map(|m| (m.status, m.usage)).collect::<Vec<_>>(),
        [(429, TokenUsage::default()); 2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadbalance_across_anthropic_and_openai_format_meters_each_by_its_target() {
    let t = two(json!({})).await;
    let config = json!({"strategy": {"mode": "loadbalance"}, "targets": [
        {"provider": "@oai", "weight": 1, "override_params": {"model": GPT}},
        {"provider": "@ant", "weight": 1, "override_params": {"model": CLAUDE}}]})
    .to_string();
    let cfg = [("x-portkey-config", config.as_str())];
    let mut picked = [0usize; 2];
    for i in 0..24 {
        let messages = i % 2 == 1;
        let (path, body) = if messages {
            (
                "/messages",
                json!({"model": "any", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}),
            )
        } else {
            (
                "/chat/completions",
                json!({"model": "any", "messages": [{"role": "user", "content": "hi"}]}),
            )
        };
        let trace = format!("lb-{i}");
        let (s, h, v) = send(&t, path, &trace, &cfg, &body).await;
        assert_eq!(s, 200, "{v}");
        let target = match option(&h) {
            "config.targets[0]" => 0,
            "config.targets[1]" => 1,
            other => panic!("{other}"),
        };
        picked[target] += 1;
        // The caller's shape whichever provider answered.
        let text = if messages {
            assert_eq!(v["type"], "message", "{v}");
            v["content"][0]["text"].clone()
        } else {
            assert_eq!(v["object"], "chat.completion", "{v}");
            v["choices"][0]["message"]["content"].clone()
        };
        let want = [json!("Hello from the mock!"), json!(mock_anthropic::TEXT)];
        assert_eq!(text, want[target], "{trace}");
        let (provider, model, usage) = [
            ("openai", GPT, gpt_usage()),
            ("anthropic", CLAUDE, mock_anthropic::billed()),
        ][target];
        let m = metered(&t.server, &trace, 1).await;
        assert_eq!(m.len(), 1);
        assert_eq!(
            (m[0].usage, m[0].model.as_str(), m[0].status),
            (usage, model, 200),
            "{trace}"
        );
        assert_eq!(m[0].cost, priced(provider, model, usage), "{trace}");
    }
    assert!(
        picked[0] > 0 && picked[1] > 0,
        "both targets served: {picked:?}"
    );
    assert_eq!(t.oai.seen.bodies.lock().len(), picked[0]);
    assert_eq!(t.ant.seen.bodies.lock().len(), picked[1]);
}

/// `/v1/messages` to `@ant` with `model`.
async fn message(t: &Two, trace: &str, model: &str) -> (u16, Value) {
    let body = json!({"model": format!("@ant/{model}"), "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = send(t, "/messages", trace, &[], &body).await;
    (s, v)
}

fn anthropic_error(v: &Value, kind: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_rate_limits_and_allow_lists_hold_on_messages() {
    // A workspace budget of one US dollar, and a model on @ant priced at a cent a token (an
    // answer of the mock costs about $60).
    let t = two(json!({})).await;
    t.server
        .admin(
            "PUT",
            &format!("/admin/workspaces/{}", t.ws),
            Some(json!({"usage_limits": [{"type": "cost", "credit_limit": 1}]})),
        )
        .await;
    t.server
        .admin("PUT", "/integrations/ant/models", Some(json!({"models": [{"slug": PRICEY, "enabled": true,
            "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 1}, "response_token": {"price": 1}}}}]})))
        .await;
    let mut refused = None;
    for i in 0..10 {
        let (s, v) = message(&t, &format!("bud-{i}"), PRICEY).await;
        if s == 412 {
            refused = Some((i, v));
            break;
        }
        assert_eq!(s, 200, "{v}");
    }
    let (i, v) = refused.expect("the workspace budget never refused");
    anthropic_error(&v, "invalid_request_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("workspace"),
        "{v}"
    );
    assert!(
        t.ant.seen.bodies.lock().len() == i,
        "nothing sent once refused"
    );
    assert!(i >= 1, "refused only once spent");
    let m = metered(&t.server, "bud-0", 1).await;
    assert!(m[0].cost >= rust_decimal::Decimal::ONE, "{m:?}");
    // So is counting, which is free but spends the integration's counter quota.
    let count =
        json!({"model": format!("@ant/{PRICEY}"), "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = send(&t, "/messages/count_tokens", "bud-count", &[], &count).await;
    assert_eq!(s, 412, "{v}");
    anthropic_error(&v, "invalid_request_error");
    // Chat is refused by the same budget.
    let chat =
        json!({"model": format!("@ant/{PRICEY}"), "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = send(&t, "/chat/completions", "bud-chat", &[], &chat).await;
    assert_eq!(s, 412, "{v}");
    assert!(
        v["error"]["message"].is_string() && v.get("type").is_none(),
        "OpenAI's shape: {v}"
    );

    // A request rate limit: two a day, then 429 rate_limit_error.
    let t = two(json!({"rate_limits": [{"type": "requests", "unit": "rpd", "value": 2}]})).await;
    for i in 0..2 {
        assert_eq!(message(&t, &format!("rl-{i}"), CLAUDE).await.0, 200);
    }
    let (s, v) = message(&t, "rl-2", CLAUDE).await;
    assert_eq!(s, 429, "{v}");
    anthropic_error(&v, "rate_limit_error");
    assert_eq!(t.ant.seen.bodies.lock().len(), 2);
    // Counting is a request too: refused once the limit is spent, and counted by it.
    let count =
        json!({"model": format!("@ant/{CLAUDE}"), "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, v) = send(&t, "/messages/count_tokens", "rl-count", &[], &count).await;
    assert_eq!(s, 429, "{v}");
    anthropic_error(&v, "rate_limit_error");
    let t = two(json!({"rate_limits": [{"type": "requests", "unit": "rpd", "value": 1}]})).await;
    let (s, _, v) = send(&t, "/messages/count_tokens", "rl1-count", &[], &count).await;
    assert_eq!(
        (s, v["input_tokens"].as_u64()),
        (200, Some(mock_anthropic::COUNT_TOKENS))
    );
    assert_eq!(message(&t, "rl1-msg", CLAUDE).await.0, 429);
    assert!(metered(&t.server, "rl1-count", 0).await.is_empty());

    // An allow-list: only CLAUDE is enabled on @ant.
    let t2 = two(json!({})).await;
    t2.server
        .admin(
            "PUT",
            "/integrations/ant/models",
            Some(json!({"allow_all_models": false, "models": [{"slug": CLAUDE, "enabled": true}]})),
        )
        .await;
    let (s, v) = message(&t2, "al-1", "claude-3-5-haiku-20241022").await;
    assert_eq!(s, 403, "{v}");
    anthropic_error(&v, "permission_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-3-5-haiku-20241022"),
        "{v}"
    );
    assert!(
        t2.ant.seen.bodies.lock().is_empty(),
        "a refused model is never sent"
    );
    let (s, v) = message(&t2, "al-2", CLAUDE).await;
    assert_eq!(s, 200, "{v}");
    let billed = mock_anthropic::billed();
    let m = metered(&t2.server, "al-2", 1).await;
    assert_eq!(
        (m[0].usage, m[0].cost),
        (billed, priced("anthropic", CLAUDE, billed))
    );
}
