//! Native providers end to end: a real server routes OpenAI and Anthropic callers to mocks that
//! speak each provider's protocol, and every attempt is metered from what the mock billed, at the
//! shipped price table's rates, exactly.

mod anthropic;
mod azure;
mod bedrock;
mod catalog;
mod fallback;
mod gemini;
mod responses;
mod sdk;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use tollgate::domain::pricing::{PriceTable, TokenUsage};

use crate::harness::{self, Server};
use crate::mock_bedrock::{self, MockBedrock};
use crate::mock_gemini::GeminiMock;

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
    provision(server, &ws, body).await;
    let key = harness::completions_key(&server.url, &ws, &format!("svc-{slug}")).await;
    key["key"].as_str().unwrap().to_owned()
}

/// Creates the integration `body` (which names its `slug`) and provisions it to workspace `ws`.
pub async fn provision(server: &Server, ws: &str, body: Value) {
    let slug = body["slug"].as_str().unwrap().to_owned();
    server.admin("POST", "/integrations", Some(body)).await;
    server
        .admin(
            "PUT",
            &format!("/integrations/{slug}/workspaces"),
            Some(json!({"workspaces": [{"id": ws, "enabled": true}]})),
        )
        .await;
}

/// The integration fields of an Anthropic integration at `url` (the mock's).
pub fn anthropic_fields(url: &str) -> Value {
    json!({"key": "sk-ant-test-0123456789", "configurations": {"custom_host": url}})
}

/// The integration fields of an access-key Bedrock integration at `mock` with `secret`.
pub fn bedrock_fields(mock: &MockBedrock, secret: &str) -> Value {
    json!({"configurations": {"custom_host": mock.url, "aws_region": "us-east-1",
        "aws_access_key_id": mock_bedrock::ACCESS_KEY_ID, "aws_secret_access_key": secret}})
}

/// The integration fields of a Gemini API integration at `mock` with API key `key`.
pub fn gemini_fields(mock: &GeminiMock, key: &str) -> Value {
    json!({"key": key, "configurations": {"custom_host": mock.gemini_url()}})
}

/// An OpenAI chat body for `@{slug}/{model}`: a system message and a user message.
pub fn chat(slug: &str, model: &str) -> Value {
    json!({"model": format!("@{slug}/{model}"), "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]})
}

/// `body` (a chat body) streamed, with the usage chunk asked for.
pub fn streamed(mut body: Value) -> Value {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

/// An Anthropic messages body for `@{slug}/{model}`: one user message.
pub fn messages(slug: &str, model: &str, stream: bool) -> Value {
    json!({"model": format!("@{slug}/{model}"), "max_tokens": 100, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
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

/// [`post`] that asserts the answer's status (the body in the message): the raw body.
pub async fn post_status(
    server: &Server,
    path: &str,
    key: &str,
    trace: &str,
    body: &Value,
    status: u16,
) -> String {
    let (got, _, text) = post(server, path, key, trace, body).await;
    assert_eq!(got, status, "{trace}: {text}");
    text
}

/// The JSON of a body.
pub fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The text of an OpenAI chat stream's content deltas.
pub fn text_of(events: &[(Option<String>, Value)]) -> String {
    events
        .iter()
        .filter_map(|(_, e)| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// The arguments of the first tool call of an OpenAI chat stream, its deltas joined and parsed.
pub fn tool_args(events: &[(Option<String>, Value)]) -> Value {
    let args: String = events
        .iter()
        .filter_map(|(_, e)| {
            e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        })
        .collect();
    serde_json::from_str(&args).unwrap_or_else(|e| panic!("{e}: {args}"))
}

/// A complete OpenAI chat stream (it ends with `[DONE]`): its text and its last chunk's usage.
pub fn chat_stream(text: &str) -> (String, Value) {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events = sse_events(text);
    let usage = events.last().unwrap().1["usage"].clone();
    (text_of(&events), usage)
}

/// A complete Anthropic messages stream (from `message_start` to `message_stop`): its text.
pub fn message_stream(text: &str) -> String {
    let events = sse_events(text);
    let names: Vec<_> = events.iter().filter_map(|(n, _)| n.as_deref()).collect();
    assert_eq!(
        (names.first(), names.last()),
        (Some(&"message_start"), Some(&"message_stop")),
        "{text}"
    );
    events
        .iter()
        .filter_map(|(_, e)| e["delta"]["text"].as_str())
        .collect()
}

/// A chat stream the provider cut or broke: a 200 that ends with an error frame and never with
/// `[DONE]`, metered once, as streamed. Returns the usage event.
pub async fn cut_chat_stream(server: &Server, key: &str, trace: &str, body: &Value) -> Metered {
    let text = post_status(server, "/chat/completions", key, trace, body, 200).await;
    assert!(
        !text.contains("[DONE]"),
        "{trace}: an incomplete stream never looks complete: {text}"
    );
    let last = sse_events(&text).pop().unwrap().1;
    assert!(
        last["error"]["message"].is_string(),
        "{trace} ends with an error frame: {text}"
    );
    let m = metered(server, trace, 1).await;
    assert_eq!((m.len(), m[0].streamed), (1, true), "{trace}: {m:?}");
    m[0].clone()
}

/// A messages stream the provider cut: Anthropic's `error` event last, no `message_stop`,
/// metered.
pub async fn cut_messages_stream(server: &Server, key: &str, trace: &str, body: &Value) {
    let text = post_status(server, "/messages", key, trace, body, 200).await;
    let events = sse_events(&text);
    assert_eq!(events.last().unwrap().0.as_deref(), Some("error"), "{text}");
    assert!(!text.contains("message_stop"), "{text}");
    metered(server, trace, 1).await;
}

/// An OpenAI error body: its `error.type` is `kind` (when given) and its message says `says`.
pub fn openai_error(text: &str, kind: Option<&str>, says: &str) {
    let v = json_of(text);
    if let Some(kind) = kind {
        assert_eq!(v["error"]["type"], kind, "{v}");
    }
    let message = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(message.contains(says), "{v}");
}

/// An OpenAI error body for credentials the gateway could not get (`provider_credentials`):
/// its message.
pub fn credentials_error(text: &str) -> String {
    let v = json_of(text);
    assert_eq!(v["error"]["code"], "provider_credentials", "{v}");
    v["error"]["message"].as_str().unwrap().to_owned()
}

/// The one usage event of `trace`: a 200 of `endpoint`, streamed or not, with exactly `usage`
/// from the provider, costing what the shipped table says for `provider`/`model`.
pub async fn billed_once(
    server: &Server,
    trace: &str,
    (provider, model): (&str, &str),
    endpoint: &str,
    streamed: bool,
    usage: TokenUsage,
) {
    let m = metered(server, trace, 1).await;
    assert_eq!(m.len(), 1, "one attempt, one event: {trace} {m:?}");
    let want = Metered {
        usage,
        cost: priced(provider, model, usage),
        source: "provider".into(),
        status: 200,
        streamed,
        endpoint: endpoint.into(),
        model: model.into(),
    };
    assert_eq!(m[0], want, "{trace}");
    assert!(m[0].cost > Decimal::ZERO, "{trace}");
}

/// The one usage event of `trace`: a failed attempt (`status`) that billed nothing.
pub async fn unbilled(server: &Server, trace: &str, status: i64) {
    let m = metered(server, trace, 1).await;
    assert_eq!(m.len(), 1, "{trace}: {m:?}");
    assert_eq!(
        (m[0].status, m[0].usage, m[0].cost),
        (status, TokenUsage::default(), Decimal::ZERO),
        "{trace}"
    );
}
