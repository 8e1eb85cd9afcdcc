//! A mock OpenAI-compatible provider (the only mock the tests use). Behaviour is chosen by the
//! model name so a test can ask for failures, missing usage or slow streams:
//! - `fail-500` answers 500; `fail-429` answers 429;
//! - `no-usage` omits `usage`; `zero-usage` reports zeros;
//! - `slow-stream` streams 40 chunks 25 ms apart; `slow` waits 2 s before answering;
//! - `huge-body` answers a 64 MiB body (chunked, no length) that never ends its JSON;
//!   `endless-event` streams one SSE event of 16 MiB with no blank line. Both count the bytes
//!   the connection took (`poured`) and note when they stopped (`pours_ended`).
//! - `full-output` bills the whole output allowance: completion = `max_tokens` (or
//!   `max_completion_tokens`, else 16) × `n`;
//! - reasoning models (`o1`, `o3`, `o4-mini`, `gpt-5`...) refuse `max_tokens` as OpenAI does
//!   (400 `unsupported_parameter`: they take `max_completion_tokens`);
//! - `huge-usage` reports absurd usage (prompt and completion tokens near 2^63).
//! - `long-stream` streams 2,000 chunks of about 4 KiB as fast as they are read (8 MiB).
//! - `big-events` streams [`BIG_EVENTS`] events of about [`BIG_EVENT_BYTES`] each as fast as they
//!   are read (then the usage chunk, when asked for, and `[DONE]`).
//!
//! - a (whole, not streamed) request with `tools` whose last message is the user's calls the
//!   first tool: `tool_calls` [{id [`TOOL_CALL_ID`], arguments [`TOOL_ARGUMENTS`]}].
//!
//! Azure OpenAI's paths too: `POST /openai/deployments/{deployment}/chat/completions` and
//! `/embeddings` want an `api-version` query and an `api-key` header (or an Entra ID bearer
//! token), answer as the OpenAI routes do, and note each call in [`Seen::azure`].
//!
//! Usage is always prompt 11 + messages, completion 7 (the chunks' text is 7 tokens' worth).
//! `POST /v1/responses` (OpenAI's Responses API) bills [`RESPONSES_USAGE`] (input, cached,
//! output incl. reasoning), plain or as its SSE events ending with `response.completed`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{json, Value};

#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub bodies: Mutex<Vec<Value>>,
    pub auth: Mutex<Vec<String>>,
    /// Streams whose last chunk the mock managed to write.
    pub streams_finished: AtomicUsize,
    /// Azure calls: (deployment, api-version, the credential header as `api-key: ...` or
    /// `authorization: ...`).
    pub azure: Mutex<Vec<(String, String, String)>>,
    /// Bytes of `huge-body` / `endless-event` answers accepted by the connection.
    pub poured: AtomicUsize,
    /// `huge-body` / `endless-event` answers that stopped (sent all, or the gateway hung up).
    pub pours_ended: AtomicUsize,
}

/// What `huge-body` sends at most (well past what loopback socket buffers can hold).
pub const HUGE_BODY_BYTES: usize = 64 << 20;
/// What `endless-event` sends at most.
pub const ENDLESS_EVENT_BYTES: usize = 16 << 20;
/// The content of each `big-events` event: under the default `max_stream_event_bytes` (1 MiB).
pub const BIG_EVENT_BYTES: usize = 900_000;
/// How many content events `big-events` sends.
pub const BIG_EVENTS: usize = 32;

pub struct Mock {
    pub url: String,
    pub seen: Arc<Seen>,
}

pub const COMPLETION_TOKENS: u64 = 7;

/// The id of the tool call a request with tools gets.
pub const TOOL_CALL_ID: &str = "call_mock_1";
/// Its arguments.
pub const TOOL_ARGUMENTS: &str = r#"{"query":"mock"}"#;

/// The tool call answering `body`, when it offers tools and the user spoke last.
fn tool_call(body: &Value) -> Option<Value> {
    let name = body["tools"][0]["function"]["name"].as_str()?;
    let last = body["messages"].as_array()?.last()?;
    (last["role"] == "user").then(|| {
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": TOOL_CALL_ID, "type": "function",
            "function": {"name": name, "arguments": TOOL_ARGUMENTS}}]})
    })
}

/// What `huge-usage` reports for prompt and completion tokens each.
pub const HUGE_TOKENS: u64 = 9_223_372_036_854_775_000;

/// The completion tokens `full-output` bills: the whole allowance of every choice.
pub fn full_output(body: &Value) -> u64 {
    let per_choice = body["max_tokens"]
        .as_u64()
        .or_else(|| body["max_completion_tokens"].as_u64())
        .unwrap_or(16);
    per_choice * body["n"].as_u64().unwrap_or(1).max(1)
}

pub fn prompt_tokens(body: &Value) -> u64 {
    11 + body["messages"].as_array().map_or(0, Vec::len) as u64
}

pub async fn start() -> Mock {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/openai/deployments/{deployment}/{*operation}", post(azure))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Mock { url, seen }
}

fn record(seen: &Seen, headers: &HeaderMap, body: &Value) {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.bodies.lock().push(body.clone());
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    seen.auth.lock().push(auth);
}

fn usage(body: &Value) -> Value {
    let model = body["model"].as_str().unwrap_or("");
    if model.contains("zero-usage") {
        return json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    }
    if model.contains("huge-usage") {
        let huge = HUGE_TOKENS;
        return json!({"prompt_tokens": huge, "completion_tokens": huge, "total_tokens": u64::MAX});
    }
    let p = prompt_tokens(body);
    let completion = if model.contains("full-output") {
        full_output(body)
    } else {
        COMPLETION_TOKENS
    };
    json!({"prompt_tokens": p, "completion_tokens": completion, "total_tokens": p + completion,
           "prompt_tokens_details": {"cached_tokens": 0}})
}

fn failure(model: &str) -> Option<Response> {
    let status = if model.contains("fail-500") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if model.contains("fail-429") {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        return None;
    };
    let body = json!({"error": {"message": format!("mock {status}"), "type": "mock_error", "param": null, "code": null}});
    Some((status, Json(body)).into_response())
}

async fn chat(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&seen, &headers, &body);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    if let Some(r) = failure(&model) {
        return r;
    }
    let reasoning = ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| model.starts_with(p));
    if reasoning && body.get("max_tokens").is_some() {
        let body = json!({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    if model.contains("huge-body") {
        let prefix = r#"{"id":"chatcmpl-mock","object":"chat.completion","pad":""#;
        return pour(seen, "application/json", prefix, HUGE_BODY_BYTES);
    }
    if model.contains("endless-event") {
        let prefix = r#"data: {"choices":[{"index":0,"delta":{"content":""#;
        return pour(seen, "text/event-stream", prefix, ENDLESS_EVENT_BYTES);
    }
    if model.contains("slow") && !model.contains("slow-stream") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if body["stream"].as_bool() == Some(true) {
        return stream(seen, body, model);
    }
    let (message, finish) = match tool_call(&body) {
        Some(call) => (call, "tool_calls"),
        None => (
            json!({"role": "assistant", "content": "Hello from the mock!"}),
            "stop",
        ),
    };
    let mut out = json!({
        "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": null}],
    });
    if !model.contains("no-usage") {
        out["usage"] = usage(&body);
    }
    Json(out).into_response()
}

fn stream(seen: Arc<Seen>, body: Value, model: String) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true)
        && !model.contains("no-usage");
    if model.contains("big-events") {
        return big_events(seen, usage(&body), include_usage);
    }
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let n = if model.contains("slow-stream") {
            40
        } else if model.contains("long-stream") {
            2000
        } else {
            3
        };
        let pad = if model.contains("long-stream") {
            4000
        } else {
            0
        };
        let mut frames = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        frames.extend((0..n).map(|i| {
            chunk(
                json!({"content": format!("w{i} {}", " ".repeat(pad))}),
                Value::Null,
            )
        }));
        frames.push(chunk(json!({}), json!("stop")));
        if include_usage {
            frames.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                               "model": model, "choices": [], "usage": usage(&body)}));
        }
        for f in frames {
            if model.contains("slow-stream") {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            if tx.send(Ok(format!("data: {f}\n\n"))).await.is_err() {
                return;
            }
        }
        if tx.send(Ok("data: [DONE]\n\n".into())).await.is_ok() {
            seen.streams_finished.fetch_add(1, Ordering::SeqCst);
        }
    });
    event_stream(rx)
}

/// An SSE response fed by `rx` until its sender is dropped.
fn event_stream<T>(rx: tokio::sync::mpsc::Receiver<Result<T, std::convert::Infallible>>) -> Response
where
    T: Into<bytes::Bytes> + Send + 'static,
{
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The `big-events` stream: one event text, built once and sent [`BIG_EVENTS`] times (the mock
/// itself stays small however slowly the gateway reads).
fn big_events(seen: Arc<Seen>, usage: Value, include_usage: bool) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let content = "a".repeat(BIG_EVENT_BYTES);
        let event = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]});
        let event = bytes::Bytes::from(format!("data: {event}\n\n"));
        let mut tail = Vec::new();
        if include_usage {
            let u = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "choices": [], "usage": usage});
            tail.push(bytes::Bytes::from(format!("data: {u}\n\n")));
        }
        tail.push(bytes::Bytes::from_static(b"data: [DONE]\n\n"));
        let frames = std::iter::repeat_n(event, BIG_EVENTS).chain(tail);
        for f in frames {
            if tx.send(Ok(f)).await.is_err() {
                return;
            }
        }
        seen.streams_finished.fetch_add(1, Ordering::SeqCst);
    });
    event_stream(rx)
}

/// `prefix`, then filler in 64 KiB chunks up to `total` bytes, as a chunked body: a body or an
/// SSE event that never ends within any sane cap.
fn pour(seen: Arc<Seen>, content_type: &str, prefix: &'static str, total: usize) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::convert::Infallible>>(1);
    tokio::spawn(async move {
        let filler = bytes::Bytes::from(vec![b'a'; 64 << 10]);
        let mut chunk = bytes::Bytes::from_static(prefix.as_bytes());
        while seen.poured.load(Ordering::SeqCst) < total {
            let n = chunk.len();
            if tx.send(Ok(chunk)).await.is_err() {
                break;
            }
            seen.poured.fetch_add(n, Ordering::SeqCst);
            chunk = filler.clone();
        }
        seen.pours_ended.fetch_add(1, Ordering::SeqCst);
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Response::builder()
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn completions(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&seen, &headers, &body);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    Json(json!({
        "id": "cmpl-mock", "object": "text_completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "text": "Hello!", "finish_reason": "stop", "logprobs": null}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }))
    .into_response()
}

async fn embeddings(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&seen, &headers, &body);
    let vector = [0.25f32, -0.5, 1.0];
    let embedding = if body["encoding_format"] == "base64" {
        let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
        json!(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        json!(vector)
    };
    Json(json!({
        "object": "list", "model": body["model"],
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "usage": {"prompt_tokens": 4, "total_tokens": 4},
    }))
    .into_response()
}

/// What `/v1/responses` bills: input tokens, of them cached, output tokens (of them reasoning).
pub const RESPONSES_USAGE: (u64, u64, u64, u64) = (30, 10, 12, 4);

/// OpenAI's Responses API, as documented: a `response` object, or with `stream: true` the
/// `response.created`, `response.output_text.delta` and `response.completed` events (the last
/// carrying the usage); never `stream_options`, which the API does not take.
async fn responses(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    record(&seen, &headers, &body);
    if body.get("stream_options").is_some() {
        let e = json!({"error": {"message": "Unknown parameter: 'stream_options'.", "type": "invalid_request_error", "param": "stream_options", "code": "unknown_parameter"}});
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    }
    let (input, cached, output, reasoning) = RESPONSES_USAGE;
    let usage = json!({"input_tokens": input, "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input + output});
    let response = |status: &str, usage: Value| {
        json!({"id": "resp_mock_1", "object": "response", "created_at": 1_700_000_000,
        "status": status, "model": body["model"], "output": [{"type": "message", "id": "msg_1", "role": "assistant",
        "content": [{"type": "output_text", "text": "Hello from responses"}]}], "usage": usage})
    };
    if body["stream"] != true {
        return Json(response("completed", usage)).into_response();
    }
    let events = [
        (
            "response.created",
            json!({"type": "response.created", "response": response("in_progress", Value::Null)}),
        ),
        (
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello from responses"}),
        ),
        (
            "response.completed",
            json!({"type": "response.completed", "response": response("completed", usage)}),
        ),
    ];
    let text: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    ([("content-type", "text/event-stream")], text).into_response()
}

/// Azure's checks of a call to `deployment`: the `api-version` query and a credential, noted in
/// [`Seen::azure`]; a refusal in Azure's error shape.
fn azure_call(
    seen: &Seen,
    deployment: String,
    query: &std::collections::HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let credential = match (header("api-key"), header("authorization")) {
        (Some(k), _) => format!("api-key: {k}"),
        (None, Some(b)) if b.starts_with("Bearer ") => format!("authorization: {b}"),
        _ => {
            let body = json!({"error": {"code": "401", "message": "Access denied due to missing subscription key."}});
            return Some((StatusCode::UNAUTHORIZED, Json(body)).into_response());
        }
    };
    let Some(version) = query.get("api-version") else {
        let body = json!({"error": {"code": "404", "message": "Resource not found"}});
        return Some((StatusCode::NOT_FOUND, Json(body)).into_response());
    };
    seen.azure
        .lock()
        .push((deployment, version.clone(), credential));
    None
}

async fn azure(
    State(seen): State<Arc<Seen>>,
    Path((deployment, operation)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Json<Value>,
) -> Response {
    if let Some(refused) = azure_call(&seen, deployment, &query, &headers) {
        return refused;
    }
    match operation.as_str() {
        "chat/completions" => chat(State(seen), headers, body).await,
        "embeddings" => embeddings(State(seen), headers, body).await,
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
