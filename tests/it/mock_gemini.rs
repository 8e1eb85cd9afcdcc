//! Mock Google upstreams: the Gemini API and Vertex AI (Gemini `generateContent` /
//! `streamGenerateContent?alt=sse`, `embedContent`, `batchEmbedContents`, Vertex `predict`,
//! Anthropic-on-Vertex `rawPredict` / `streamRawPredict`), and a helper that starts the Python
//! token endpoint (`tests/mocks/vertex_token.py`) which verifies service-account JWTs.
//!
//! Auth: the Gemini paths (`/v1beta/models/...`) want [`GEMINI_KEY`] in `x-goog-api-key` or the
//! `key` query (403 PERMISSION_DENIED without one, 400 INVALID_ARGUMENT for a wrong one). The
//! Vertex paths (`/v1/projects/{p}/locations/{l}/publishers/{publisher}/models/...`) want
//! `Authorization: Bearer <token>` issued by the token mock: tokens are
//! `ya29.<exp>.<nonce>.<hex HMAC-SHA256(TOKEN_SECRET, "<exp>.<nonce>")>`, checked here with the
//! shared [`TOKEN_SECRET`] and refused (401 UNAUTHENTICATED) once `exp` has passed.
//!
//! Behaviour by model name: `fail-429`, `fail-500` (Google's error shape), `garbage` (not JSON;
//! in a stream, an event that is not JSON), `truncated` (a stream cut inside an event, no
//! finish, no usage), `no-usage` (no `usageMetadata`), `blocked` (promptFeedback.blockReason
//! SAFETY, no candidates, prompt usage only), `tool-call` (a `functionCall` weather(Paris)
//! signed with [`THOUGHT_SIGNATURE`]). Requests are checked for what Gemini refuses (see
//! `checks`).
//!
//! Usage billed (every Gemini answer, streams' last event): [`PROMPT`] prompt tokens of which
//! [`CACHED`] cached, [`CANDIDATES`] candidate and [`THOUGHTS`] thought tokens; Vertex `predict`
//! bills [`EMBED_TOKENS`] per instance; Claude on Vertex bills [`CLAUDE_USAGE`]; its
//! `count-tokens:rawPredict` counts 3 tokens a message.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

pub const GEMINI_KEY: &str = "gemini-test-key";
pub const TOKEN_SECRET: &str = "vertex-mock-token-secret";
pub const PROMPT: u64 = 20;
pub const CACHED: u64 = 5;
pub const CANDIDATES: u64 = 7;
pub const THOUGHTS: u64 = 3;
pub const EMBED_TOKENS: u64 = 4;
/// What every Gemini answer bills: thoughts are output.
pub const BILLED: tollgate::domain::pricing::TokenUsage = tollgate::domain::pricing::TokenUsage {
    prompt: PROMPT,
    completion: CANDIDATES + THOUGHTS,
    cached: CACHED,
    cache_write: 0,
};
/// Claude on Vertex: input, output, cache read, cache write tokens.
pub const CLAUDE_USAGE: (u64, u64, u64, u64) = (12, 6, 2, 3);
/// The `thoughtSignature` of the mock's function calls (standard base64, with `+` and `/`),
/// required back on every `functionCall` part a request carries.
pub const THOUGHT_SIGNATURE: &str = "++++ESL7/wE=";
/// The text every Gemini answer (and stream, joined) carries.
pub const TEXT: &str = "Hello from Gemini!";

#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    /// (path, body) of every request that passed auth.
    pub bodies: Mutex<Vec<(String, Value)>>,
}

pub struct GeminiMock {
    /// `http://127.0.0.1:port`.
    pub root: String,
    pub seen: Arc<Seen>,
}

impl GeminiMock {
    /// The Gemini API base (in place of `GEMINI_BASE_URL`).
    pub fn gemini_url(&self) -> String {
        format!("{}/v1beta", self.root)
    }
    /// A Vertex base for a publisher (in place of `vertex_base_url`).
    pub fn vertex_url(&self, publisher: &str) -> String {
        format!(
            "{}/v1/projects/mock-project/locations/us-central1/publishers/{publisher}",
            self.root
        )
    }
}

pub async fn start() -> GeminiMock {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/v1beta/models/{action}", post(gemini))
        .route(
            "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{action}",
            post(vertex),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    GeminiMock { root, seen }
}

fn google_error(status: StatusCode, name: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    (status, Json(body)).into_response()
}

async fn gemini(
    State(seen): State<Arc<Seen>>,
    Path(action): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or(query.get("key").map(String::as_str));
    match key {
        None => {
            return google_error(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers. Please use an API Key.",
            )
        }
        Some(k) if k != GEMINI_KEY => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
            )
        }
        Some(_) => {}
    }
    dispatch(&seen, "google", &action, &query, &body)
}

async fn vertex(
    State(seen): State<Arc<Seen>>,
    Path((_project, _location, publisher, action)): Path<(String, String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(token_is_valid) {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        );
    }
    dispatch(&seen, &publisher, &action, &query, &body)
}

/// Whether a bearer token is one the token mock issued and it has not expired.
pub fn token_is_valid(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    let [ya29, exp, nonce, mac] = parts[..] else {
        return false;
    };
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(TOKEN_SECRET.as_bytes()).unwrap();
    m.update(format!("{exp}.{nonce}").as_bytes());
    let want: String = m
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    ya29 == "ya29" && mac == want && exp.parse::<u64>().is_ok_and(|e| e > now)
}

fn dispatch(
    seen: &Seen,
    publisher: &str,
    action: &str,
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
        );
    };
    seen.bodies.lock().push((action.to_owned(), body.clone()));
    let (model, method) = action.split_once(':').unwrap_or((action, ""));
    if model.contains("fail-429") {
        return google_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Resource has been exhausted (e.g. check quota).",
        );
    }
    if model.contains("fail-500") {
        return google_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "An internal error has occurred.",
        );
    }
    let sse = query.get("alt").map(String::as_str) == Some("sse");
    match (publisher, method) {
        ("anthropic", "rawPredict") if model == "count-tokens" => count_tokens(&body),
        ("anthropic", "rawPredict") => claude(&body, model, false),
        ("anthropic", "streamRawPredict") => claude(&body, model, true),
        ("google", "generateContent") => generate(&body, model),
        ("google", "streamGenerateContent") if sse => stream(&body, model),
        ("google", "embedContent") => embed_one(&body),
        ("google", "batchEmbedContents") => embed_batch(&body, model),
        ("google", "predict") => predict(&body),
        _ => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("{action} is not found"),
        ),
    }
}

pub fn usage_metadata() -> Value {
    json!({"promptTokenCount": PROMPT, "cachedContentTokenCount": CACHED,
           "candidatesTokenCount": CANDIDATES, "thoughtsTokenCount": THOUGHTS,
           "totalTokenCount": PROMPT + CANDIDATES + THOUGHTS,
           "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT}]})
}

/// A 400 for what Gemini refuses, so a test passing through the mock proves the adapter's body
/// is one Gemini takes: unknown top-level or `generationConfig` fields, empty `contents` or
/// `parts`, roles other than user/model, empty text, parts of no known kind, and schema
/// keywords Gemini's `Schema` lacks (`additionalProperties`, `$schema`, `$ref`).
fn checks(body: &Value) -> Option<Response> {
    invalid(body).map(|m| {
        google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &format!("Invalid JSON payload received. {m}"),
        )
    })
}

const TOP: &[&str] = &[
    "contents",
    "systemInstruction",
    "tools",
    "toolConfig",
    "generationConfig",
    "safetySettings",
    "cachedContent",
];
const CONFIG: &[&str] = &[
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "stopSequences",
    "candidateCount",
    "responseMimeType",
    "responseSchema",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "thinkingConfig",
    "responseLogprobs",
    "logprobs",
];
const PART: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
];

fn invalid(body: &Value) -> Option<String> {
    let obj = body.as_object()?;
    if let Some(k) = obj.keys().find(|k| !TOP.contains(&k.as_str())) {
        return Some(format!("Unknown name \"{k}\": Cannot find field."));
    }
    if let Some(k) = body["generationConfig"]
        .as_object()
        .and_then(|g| g.keys().find(|k| !CONFIG.contains(&k.as_str())))
    {
        return Some(format!(
            "Unknown name \"{k}\" at 'generation_config': Cannot find field."
        ));
    }
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Some("* GenerateContentRequest.contents: contents is not specified".into());
    };
    for c in contents {
        if !matches!(c["role"].as_str(), Some("user" | "model")) {
            return Some(format!(
                "Please use a valid role: user, model (got {}).",
                c["role"]
            ));
        }
        let Some(parts) = c["parts"].as_array().filter(|p| !p.is_empty()) else {
            return Some(
                "* GenerateContentRequest.contents.parts: contents.parts must not be empty.".into(),
            );
        };
        for p in parts {
            if p["text"] == "" {
                return Some(
                    "Unable to submit request because it has an empty text parameter.".into(),
                );
            }
            // As Gemini 3 does: a function call sent back must carry its signature.
            if p.get("functionCall").is_some() && p["thoughtSignature"] != THOUGHT_SIGNATURE {
                return Some(
                    "Function call is missing a thought_signature in functionCall parts.".into(),
                );
            }
            let kinds = p
                .as_object()?
                .keys()
                .filter(|k| PART.contains(&k.as_str()))
                .count();
            if kinds != 1 {
                return Some(format!("a part must have exactly one data field: {p}"));
            }
        }
    }
    for schema_holder in [&body["tools"], &body["generationConfig"]["responseSchema"]] {
        if let Some(k) = forbidden_key(schema_holder) {
            return Some(format!("Unknown name \"{k}\": Cannot find field."));
        }
    }
    None
}

fn forbidden_key(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            if ["additionalProperties", "$schema", "$ref"].contains(&k.as_str()) {
                Some(k.clone())
            } else {
                forbidden_key(v)
            }
        }),
        Value::Array(a) => a.iter().find_map(forbidden_key),
        _ => None,
    }
}

fn generate(body: &Value, model: &str) -> Response {
    if let Some(r) = checks(body) {
        return r;
    }
    if model.contains("garbage") {
        return ([("content-type", "application/json")], "<html>oops</html>").into_response();
    }
    let mut out = if model.contains("blocked") {
        json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},
               "usageMetadata": {"promptTokenCount": PROMPT, "totalTokenCount": PROMPT}})
    } else {
        let parts = if model.contains("tool-call") {
            json!([{"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": THOUGHT_SIGNATURE}])
        } else {
            json!([{"text": "Thinking about it.", "thought": true}, {"text": TEXT}])
        };
        json!({"candidates": [{"content": {"role": "model", "parts": parts},
                               "finishReason": "STOP", "index": 0}],
               "usageMetadata": usage_metadata(), "modelVersion": model, "responseId": "mock-resp"})
    };
    if model.contains("no-usage") {
        out.as_object_mut().unwrap().remove("usageMetadata");
    }
    Json(out).into_response()
}

fn stream(body: &Value, model: &str) -> Response {
    if let Some(r) = checks(body) {
        return r;
    }
    let no_usage = model.contains("no-usage");
    let event = |parts: Value, finish: Option<&str>, usage: Value| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        let mut e = json!({"candidates": [c], "modelVersion": model, "responseId": "mock-resp"});
        if !no_usage {
            e["usageMetadata"] = usage;
        }
        format!("data: {e}\r\n\r\n")
    };
    let mut frames = vec![event(
        json!([{"text": "Thinking.", "thought": true}]),
        None,
        json!({"promptTokenCount": PROMPT, "thoughtsTokenCount": THOUGHTS}),
    )];
    if model.contains("garbage") {
        frames.push("data: {not json\r\n\r\n".to_owned());
    } else if model.contains("truncated") {
        frames.push("data: {\"candidates\": [{\"content\": {\"ro".to_owned());
    } else if model.contains("blocked") {
        frames = vec![format!(
            "data: {}\r\n\r\n",
            json!({"promptFeedback": {"blockReason": "SAFETY"},
                   "usageMetadata": {"promptTokenCount": PROMPT, "totalTokenCount": PROMPT}})
        )];
    } else if model.contains("tool-call") {
        frames.push(event(
            json!([{"functionCall": {"name": "weather", "args": {"city": "Paris"}},
                    "thoughtSignature": THOUGHT_SIGNATURE}]),
            Some("STOP"),
            usage_metadata(),
        ));
    } else {
        frames.push(event(
            json!([{"text": "Hello"}]),
            None,
            json!({"promptTokenCount": PROMPT, "candidatesTokenCount": 2, "thoughtsTokenCount": THOUGHTS}),
        ));
        frames.push(event(
            json!([{"text": " from Gemini!"}]),
            Some("STOP"),
            usage_metadata(),
        ));
    }
    sse_response(frames)
}

fn sse_response(frames: Vec<String>) -> Response {
    let stream = futures_util::stream::iter(
        frames
            .into_iter()
            .map(|f| Ok::<_, std::convert::Infallible>(Bytes::from(f))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn vector(dims: &Value) -> Value {
    let n = dims.as_u64().unwrap_or(3).min(4096) as usize;
    json!((0..n)
        .map(|i| [0.25, -0.5, 1.0][i % 3])
        .collect::<Vec<f64>>())
}

fn embed_one(body: &Value) -> Response {
    if !body["content"]["parts"].is_array() {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "content is required",
        );
    }
    Json(json!({"embedding": {"values": vector(&body["outputDimensionality"])}})).into_response()
}

fn embed_batch(body: &Value, model: &str) -> Response {
    let Some(requests) = body["requests"].as_array() else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "requests is required",
        );
    };
    let want = format!("models/{model}");
    if requests.iter().any(|r| r["model"] != want.as_str()) {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "* BatchEmbedContentsRequest.model: each request's model must match the batch's",
        );
    }
    let embeddings: Vec<Value> = requests
        .iter()
        .map(|r| json!({"values": vector(&r["outputDimensionality"])}))
        .collect();
    Json(json!({"embeddings": embeddings})).into_response()
}

fn predict(body: &Value) -> Response {
    let Some(instances) = body["instances"].as_array() else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "instances is required",
        );
    };
    let dims = &body["parameters"]["outputDimensionality"];
    let predictions: Vec<Value> = instances
        .iter()
        .map(|_| {
            json!({"embeddings": {"values": vector(dims),
                        "statistics": {"token_count": EMBED_TOKENS, "truncated": false}}})
        })
        .collect();
    Json(json!({"predictions": predictions, "metadata": {"billableCharacterCount": 10}}))
        .into_response()
}

fn claude(body: &Value, model: &str, stream: bool) -> Response {
    if body["anthropic_version"] != "vertex-2023-10-16" || body.get("model").is_some() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": "anthropic_version must be vertex-2023-10-16 and model must not be in the body"}})),
        )
            .into_response();
    }
    let (input, output, read, write) = CLAUDE_USAGE;
    let usage = json!({"input_tokens": input, "output_tokens": output,
                       "cache_read_input_tokens": read, "cache_creation_input_tokens": write});
    if !stream {
        return Json(
            json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Hello from Claude on Vertex!"}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage}),
        )
        .into_response();
    }
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let start_usage = json!({"input_tokens": input, "output_tokens": 1,
                             "cache_read_input_tokens": read, "cache_creation_input_tokens": write});
    sse_response(vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": start_usage}}),
        ),
        ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        ev("ping", json!({"type": "ping"})),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Hello from "}}),
        ),
        ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": "Claude on Vertex!"}}),
        ),
        ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        ev(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}}),
        ),
        ev("message_stop", json!({"type": "message_stop"})),
    ])
}

/// Vertex's Claude token counter: the model must be in the body; 3 tokens a message.
fn count_tokens(body: &Value) -> Response {
    let (Some(_), Some(messages)) = (body["model"].as_str(), body["messages"].as_array()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"type": "error", "error": {"type": "invalid_request_error",
                "message": "model and messages are required"}}),
            ),
        )
            .into_response();
    };
    Json(json!({"input_tokens": 3 * messages.len()})).into_response()
}

/// The Python token endpoint (tests/mocks/vertex_token.py), killed when dropped.
pub struct VertexToken {
    /// Its token endpoint (the service account's `token_uri`).
    pub url: String,
    /// The throwaway service account it generated (TEST-ONLY), as a key file's JSON.
    pub service_account_json: String,
    _child: tokio::process::Child,
}

impl VertexToken {
    /// `{"issued": N, "refused": M}`.
    pub async fn stats(&self) -> Value {
        let url = self.url.replace("/token", "/stats");
        reqwest::get(url).await.unwrap().json().await.unwrap()
    }
}

/// Starts the token endpoint; its tokens live `expires_in` seconds.
pub async fn start_vertex_token(expires_in: u64) -> VertexToken {
    start_vertex_token_signing(expires_in, TOKEN_SECRET).await
}

/// Starts a token endpoint that signs its tokens with `secret`: with another than
/// [`TOKEN_SECRET`], a Google that the Vertex mock does not trust (its tokens are refused, 401).
pub async fn start_vertex_token_signing(expires_in: u64, secret: &str) -> VertexToken {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mocks/vertex_token.py");
    let mut child = tokio::process::Command::new(crate::harness::python())
        .arg(script)
        .args(["--port", "0", "--expires-in", &expires_in.to_string()])
        .args(["--token-secret", secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start tests/mocks/vertex_token.py (TG_PYTHON needs PyJWT and cryptography)");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the token mock did not start")
            .unwrap()
            .expect("the token mock exited")
    };
    let port: u16 = next().await.trim().parse().unwrap();
    let service_account_json = next().await;
    VertexToken {
        url: format!("http://127.0.0.1:{port}/token"),
        service_account_json,
        _child: child,
    }
}

#[cfg(test)]
#[path = "mock_gemini_tests.rs"]
mod tests;
