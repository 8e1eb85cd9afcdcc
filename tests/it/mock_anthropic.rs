//! A mock Anthropic Messages API (`POST /v1/messages`, `POST /v1/messages/count_tokens`),
//! speaking the protocol as Anthropic documents it: it requires `x-api-key` and
//! `anthropic-version` (401 / 400 in Anthropic's error shape otherwise), `model`, `messages`
//! and (for messages) `max_tokens`; it answers a message or, with `"stream": true`, the SSE
//! events (`message_start`, `content_block_start`, `ping`, `content_block_delta`,
//! `content_block_stop`, `message_delta`, `message_stop`). When the request has `tools` the
//! answer also calls the first tool (a `tool_use` block, streamed as `input_json_delta`s).
//!
//! It bills fixed usage: [`INPUT_TOKENS`] fresh input, [`CACHE_WRITE_TOKENS`] written to and
//! [`CACHE_READ_TOKENS`] read from the cache, [`OUTPUT_TOKENS`] output ([`billed`] is the
//! gateway's view of it). Behaviour by model name:
//! - `fail-429` answers 429 `rate_limit_error` with `retry-after: 7`; `fail-529` 529
//!   `overloaded_error`; `fail-500` 500 `api_error`;
//! - `garbage` answers 200 with a body that is not JSON (a stream: an event that is not JSON);
//! - `truncated` cuts the answer mid-JSON (a stream: mid-event, with no `message_stop`);
//! - `stream-error` streams an `error` event (overloaded) after the first text delta;
//! - `no-usage` leaves `usage` out;
//! - `slow-stream` streams [`SLOW_DELTAS`] text deltas (`w0 `, `w1 `, ...), each event 25 ms
//!   after the last (usage as always).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tollgate::domain::pricing::TokenUsage;

/// Fresh input tokens every answer bills.
pub const INPUT_TOKENS: u64 = 21;
/// Input tokens written to the cache (`cache_creation_input_tokens`).
pub const CACHE_WRITE_TOKENS: u64 = 1_000;
/// Input tokens read from the cache (`cache_read_input_tokens`).
pub const CACHE_READ_TOKENS: u64 = 5_000;
/// Output tokens every answer bills.
pub const OUTPUT_TOKENS: u64 = 13;
/// What `count_tokens` answers.
pub const COUNT_TOKENS: u64 = 42;
/// The `retry-after` of `fail-429`, in seconds.
pub const RETRY_AFTER: &str = "7";
/// The answer's text, streamed in [`TEXT_PARTS`].
pub const TEXT: &str = "Hello from the Anthropic mock!";
const TEXT_PARTS: [&str; 3] = ["Hello", " from the", " Anthropic mock!"];
/// How many text deltas `slow-stream` sends.
pub const SLOW_DELTAS: usize = 40;
/// The id of the `tool_use` block and the input it gives the first tool.
pub const TOOL_ID: &str = "toolu_mock_1";
pub fn tool_input() -> Value {
    json!({"query": "mock"})
}

/// What the mock billed, as the gateway meters it.
pub fn billed() -> TokenUsage {
    TokenUsage {
        prompt: INPUT_TOKENS + CACHE_WRITE_TOKENS + CACHE_READ_TOKENS,
        completion: OUTPUT_TOKENS,
        cached: CACHE_READ_TOKENS,
        cache_write: CACHE_WRITE_TOKENS,
    }
}

#[derive(Default)]
pub struct Seen {
    /// Requests that passed the header checks.
    pub requests: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    /// The headers of every request, rejected ones included.
    pub headers: Mutex<Vec<HeaderMap>>,
    /// Streams whose last event the mock managed to write.
    pub streams_finished: AtomicUsize,
}

pub struct MockAnthropic {
    /// The API root (`http://127.0.0.1:port/v1`), as an integration's `custom_host`.
    pub url: String,
    pub seen: Arc<Seen>,
}

pub async fn start() -> MockAnthropic {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    MockAnthropic { url, seen }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, Json(body)).into_response()
}

/// An error answer: status, Anthropic error type, message.
type Refusal = (StatusCode, &'static str, &'static str);

/// Records the request; the error answer when its headers or body break the protocol.
fn check(seen: &Seen, headers: &HeaderMap, body: &[u8], messages: bool) -> Result<Value, Refusal> {
    seen.headers.lock().push(headers.clone());
    if headers.get("x-api-key").is_none_or(|k| k.is_empty()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if headers.get("anthropic-version").is_none() {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "body is not JSON",
        ));
    };
    seen.bodies.lock().push(body.clone());
    let missing = if !body["model"].is_string() {
        Some("model: Field required")
    } else if !body["messages"].is_array() {
        Some("messages: Field required")
    } else if messages && !body["max_tokens"].is_u64() {
        Some("max_tokens: Field required")
    } else {
        None
    };
    match missing {
        Some(m) => Err((StatusCode::BAD_REQUEST, "invalid_request_error", m)),
        None => Ok(body),
    }
}

fn failure(model: &str) -> Option<Response> {
    let (status, kind) = if model.contains("fail-429") {
        (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
    } else if model.contains("fail-529") {
        (StatusCode::from_u16(529).unwrap(), "overloaded_error")
    } else if model.contains("fail-500") {
        (StatusCode::INTERNAL_SERVER_ERROR, "api_error")
    } else {
        return None;
    };
    let mut r = error(status, kind, &format!("mock {kind}"));
    if status == StatusCode::TOO_MANY_REQUESTS {
        r.headers_mut()
            .insert("retry-after", RETRY_AFTER.parse().unwrap());
    }
    Some(r)
}

fn usage() -> Value {
    json!({"input_tokens": INPUT_TOKENS, "cache_creation_input_tokens": CACHE_WRITE_TOKENS,
        "cache_read_input_tokens": CACHE_READ_TOKENS, "output_tokens": OUTPUT_TOKENS})
}

/// The first tool's name, when the request has tools.
fn first_tool(body: &Value) -> Option<String> {
    body["tools"][0]["name"].as_str().map(str::to_owned)
}

async fn messages(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let body = match check(&seen, &headers, &body, true) {
        Ok(b) => b,
        Err((status, kind, message)) => return error(status, kind, message),
    };
    let model = body["model"].as_str().unwrap_or("").to_owned();
    if let Some(r) = failure(&model) {
        return r;
    }
    if body["stream"] == true {
        return stream(seen, &body, model);
    }
    if model.contains("garbage") {
        return (
            [("content-type", "application/json")],
            "<html>this is not json</html>",
        )
            .into_response();
    }
    let mut content = vec![json!({"type": "text", "text": TEXT})];
    let tool = first_tool(&body);
    if let Some(name) = &tool {
        content
            .push(json!({"type": "tool_use", "id": TOOL_ID, "name": name, "input": tool_input()}));
    }
    let mut out = json!({"id": "msg_mock_01", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": if tool.is_some() { "tool_use" } else { "end_turn" },
        "stop_sequence": null});
    if !model.contains("no-usage") {
        out["usage"] = usage();
    }
    if model.contains("truncated") {
        let text = out.to_string();
        let cut = text.get(..text.len() / 2).unwrap_or("").to_owned();
        return ([("content-type", "application/json")], cut).into_response();
    }
    Json(out).into_response()
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The events of a streamed answer, as Anthropic's streaming documentation shows them.
fn events(body: &Value, model: &str) -> Vec<String> {
    let no_usage = model.contains("no-usage");
    let mut start_usage = usage();
    start_usage["output_tokens"] = json!(1);
    let mut message = json!({"id": "msg_mock_01", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage});
    if no_usage {
        message.as_object_mut().unwrap().remove("usage");
    }
    let delta = |index: usize, d: Value| {
        event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": d}),
        )
    };
    let mut out = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ),
        event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    let parts: Vec<String> = if model.contains("slow-stream") {
        (0..SLOW_DELTAS).map(|i| format!("w{i} ")).collect()
    } else {
        TEXT_PARTS.iter().map(|p| p.to_string()).collect()
    };
    for (i, part) in parts.iter().enumerate() {
        out.push(delta(0, json!({"type": "text_delta", "text": part})));
        if i == 0 && model.contains("stream-error") {
            out.push(event(
                "error",
                &json!({"type": "error",
                "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return out;
        }
    }
    out.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    let tool = first_tool(body);
    if let Some(name) = &tool {
        out.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 1,
            "content_block": {"type": "tool_use", "id": TOOL_ID, "name": name, "input": {}}}),
        ));
        for part in ["", "{\"query\": ", "\"mock\"}"] {
            out.push(delta(
                1,
                json!({"type": "input_json_delta", "partial_json": part}),
            ));
        }
        out.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 1}),
        ));
    }
    let mut md = json!({"type": "message_delta", "delta": {
        "stop_reason": if tool.is_some() { "tool_use" } else { "end_turn" }, "stop_sequence": null}});
    if !no_usage {
        md["usage"] = usage();
    }
    out.push(event("message_delta", &md));
    out.push(event("message_stop", &json!({"type": "message_stop"})));
    out
}

fn stream(seen: Arc<Seen>, body: &Value, model: String) -> Response {
    let mut frames = events(body, &model);
    if model.contains("garbage") {
        frames = vec!["event: message_start\ndata: this is not json\n\n".to_owned()];
    }
    if model.contains("truncated") {
        frames.truncate(5);
        frames.push("event: content_block_delta\ndata: {\"type\":\"content_block_del".to_owned());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let slow = model.contains("slow-stream");
        for f in frames {
            if slow {
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
            if tx.send(Ok(f)).await.is_err() {
                return;
            }
        }
        seen.streams_finished.fetch_add(1, Ordering::SeqCst);
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn count_tokens(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    match check(&seen, &headers, &body, false) {
        Ok(b) => match b["model"].as_str().and_then(failure) {
            Some(refused) => refused,
            None => Json(json!({"input_tokens": COUNT_TOKENS})).into_response(),
        },
        Err((status, kind, message)) => error(status, kind, message),
    }
}

/// The mock driven with plain HTTP: it speaks the protocol, and the adapter's translators read
/// its answers to exactly what it billed.
mod protocol {
    use super::*;
    use tollgate::providers::anthropic::{self, ChatStream, PassStream};
    use tollgate::providers::{Event, StreamTranslator};

    async fn post(mock: &MockAnthropic, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", mock.url))
            .header("x-api-key", "sk-ant-test")
            .header("anthropic-version", anthropic::VERSION)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// The body of the answer to a plain (unstreamed, toolless) request of `model`.
    async fn answer(mock: &MockAnthropic, model: &str) -> bytes::Bytes {
        let r = post(mock, "/messages", request(model, false, false)).await;
        r.bytes().await.unwrap()
    }

    /// The text of the stream answering a toolless request of `model`.
    async fn stream(mock: &MockAnthropic, model: &str) -> String {
        let r = post(mock, "/messages", request(model, true, false)).await;
        r.text().await.unwrap()
    }

    fn request(model: &str, stream: bool, tools: bool) -> Value {
        let mut b = json!({"model": model, "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "Hi"}]});
        if tools {
            b["tools"] = json!([{"name": "search", "input_schema": {"type": "object"}}]);
        }
        b
    }

    /// `(event, data)` of each whole SSE event in `text`, and whatever trails the last one.
    fn sse(text: &str) -> (Vec<(String, String)>, String) {
        let mut events = Vec::new();
        let mut rest = text;
        while let Some((ev, tail)) = rest.split_once("\n\n") {
            let (name, data) = ev.split_once('\n').unwrap();
            events.push((
                name.strip_prefix("event: ").unwrap().to_owned(),
                data.strip_prefix("data: ").unwrap().to_owned(),
            ));
            rest = tail;
        }
        (events, rest.to_owned())
    }

    fn feed(t: &mut dyn StreamTranslator, events: &[(String, String)]) -> Vec<String> {
        let mut out = Vec::new();
        for (name, data) in events {
            t.event(
                Event {
                    name: Some(name),
                    data: data.as_bytes(),
                },
                &mut out,
            )
            .unwrap();
        }
        t.finish(&mut out);
        out.iter()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn headers_are_required() {
        let mock = start().await;
        let client = reqwest::Client::new();
        let url = format!("{}/messages", mock.url);
        let r = client
            .post(&url)
            .header("anthropic-version", "2023-06-01")
            .json(&request("m", false, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        let r = client
            .post(&url)
            .header("x-api-key", "k")
            .json(&request("m", false, false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = post(&mock, "/messages", json!({"model": "m", "messages": []})).await;
        assert_eq!(r.status(), 400, "max_tokens is required");
        assert_eq!(mock.seen.headers.lock().len(), 3);
        assert_eq!(mock.seen.requests.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_plain_message_reports_what_it_billed() {
        let mock = start().await;
        let r = post(&mock, "/messages", request("claude-x", false, true)).await;
        assert_eq!(r.status(), 200);
        let body = r.bytes().await.unwrap();
        assert_eq!(anthropic::messages_usage(&body), Some(billed()));
        let (chat, usage) = anthropic::chat_response(&body).unwrap();
        let chat: Value = serde_json::from_slice(&chat).unwrap();
        assert_eq!(usage, Some(billed()));
        assert_eq!(chat["choices"][0]["message"]["content"], TEXT);
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        let call = &chat["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], TOOL_ID);
        assert_eq!(call["function"]["name"], "search");
        let seen = &mock.seen.headers.lock()[0];
        assert_eq!(seen["x-api-key"], "sk-ant-test");
        assert_eq!(seen["anthropic-version"], "2023-06-01");
        assert_eq!(mock.seen.bodies.lock()[0]["max_tokens"], 64);
    }

    #[tokio::test]
    async fn a_stream_with_a_tool_call_translates_and_meters_exactly() {
        let mock = start().await;
        let text = post(&mock, "/messages", request("claude-x", true, true))
            .await
            .text()
            .await
            .unwrap();
        let (events, rest) = sse(&text);
        assert!(rest.is_empty());
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let mut chat = ChatStream::new("claude-x", true);
        let frames = feed(&mut chat, &events);
        assert_eq!(chat.usage(), Some(billed()));
        let joined = frames.concat();
        assert!(joined.contains(r#""arguments":"{\"query\": ""#), "{joined}");
        assert!(frames.last().unwrap() == "data: [DONE]\n\n");
        let mut pass = PassStream::new();
        let frames = feed(&mut pass, &events);
        assert_eq!(
            frames.concat(),
            text,
            "the pass-through forwards every event unchanged"
        );
        assert_eq!(pass.usage(), Some(billed()));
        assert_eq!(mock.seen.streams_finished.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn behaviours_by_model_name() {
        let mock = start().await;
        let r = post(&mock, "/messages", request("fail-429", false, false)).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], RETRY_AFTER);
        let body = r.bytes().await.unwrap();
        assert_eq!(
            anthropic::error_message(&body).unwrap().0,
            "rate_limit_error"
        );
        let r = post(&mock, "/messages", request("fail-529", true, false)).await;
        assert_eq!(r.status().as_u16(), 529);
        let body = r.bytes().await.unwrap();
        assert_eq!(
            anthropic::error_message(&body).unwrap().0,
            "overloaded_error"
        );

        let body = answer(&mock, "garbage").await;
        assert!(anthropic::chat_response(&body).is_err());
        let text = stream(&mock, "garbage").await;
        let (events, _) = sse(&text);
        let mut t = ChatStream::new("garbage", false);
        let ev = Event {
            name: Some(&events[0].0),
            data: events[0].1.as_bytes(),
        };
        assert!(t.event(ev, &mut Vec::new()).is_err());

        let body = answer(&mock, "truncated").await;
        assert!(anthropic::chat_response(&body).is_err());
        let text = stream(&mock, "truncated").await;
        let (events, rest) = sse(&text);
        assert!(events.iter().all(|(n, _)| n != "message_stop"));
        assert!(
            rest.starts_with("event: content_block_delta\ndata: {"),
            "{rest}"
        );

        let text = stream(&mock, "stream-error").await;
        let (events, _) = sse(&text);
        assert_eq!(events.last().unwrap().0, "error");

        let text = stream(&mock, "slow-stream").await;
        let (events, _) = sse(&text);
        let deltas = events
            .iter()
            .filter(|(n, _)| n == "content_block_delta")
            .count();
        assert_eq!(deltas, SLOW_DELTAS);
        assert_eq!(events.last().unwrap().0, "message_stop");

        let body = answer(&mock, "no-usage").await;
        assert_eq!(anthropic::messages_usage(&body), None);
        let text = stream(&mock, "no-usage").await;
        let (events, _) = sse(&text);
        let mut t = ChatStream::new("no-usage", true);
        feed(&mut t, &events);
        assert_eq!(t.usage(), None);
    }

    #[tokio::test]
    async fn count_tokens() {
        let mock = start().await;
        let r = post(
            &mock,
            "/messages/count_tokens",
            json!({"model": "claude-x",
            "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!({"input_tokens": COUNT_TOKENS}));
    }
}
