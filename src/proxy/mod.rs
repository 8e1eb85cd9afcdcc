//! The data plane. A request passes a chain of checks before any upstream call
//! (auth → route → per target: status, model access, then the governance checks) and is settled
//! after it: every upstream attempt is metered into one usage event, appended durably before the
//! client gets its final byte.

pub mod auth;
pub mod govern;
pub mod meter;
pub mod models;
pub mod route;
pub mod stream;
pub mod upstream;

use std::time::Instant;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::domain::{ApiKey, Endpoint, Metadata};

/// A refusal or failure on the data plane, rendered in the OpenAI error envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `type`: `invalid_request_error`, `authentication_error`, `permission_error`, ...
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub retry_after_secs: Option<u64>,
}

impl DataError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        DataError {
            status,
            message: message.into(),
            kind,
            code,
            retry_after_secs: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            None,
            message,
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            Some("invalid_api_key"),
            message,
        )
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            Some(code),
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            message,
        )
    }

    /// The OpenAI error envelope, the one body every data-plane error is written with.
    pub fn envelope(&self) -> Value {
        serde_json::json!({"error": {"message": self.message, "type": self.kind, "param": null, "code": self.code}})
    }

    /// `Retry-After` and `x-should-retry: false` for refusals that say when to come back.
    pub fn add_retry_headers(&self, h: &mut HeaderMap) {
        if let Some(s) = self.retry_after_secs {
            h.insert(reqwest::header::RETRY_AFTER, HeaderValue::from(s));
            h.insert(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
    }
}

/// What the gateway answers: a whole body, or a stream fed by a metering task.
pub enum Reply {
    Full {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    Stream {
        headers: HeaderMap,
        frames: mpsc::Receiver<Bytes>,
    },
}

/// Facts about the request that every attempt's usage event carries.
#[derive(Clone, Debug)]
pub struct RequestCtx {
    pub trace_id: String,
    pub started: Instant,
    pub key: std::sync::Arc<ApiKey>,
    pub workspace_id: String,
    pub organisation_id: String,
    pub metadata: Metadata,
    pub endpoint: Endpoint,
    /// The saved config used, if any.
    pub config_id: Option<String>,
}

/// The parts of the request body the gateway reads; the rest passes through untouched.
#[derive(Clone, Debug)]
pub struct RequestBody {
    pub json: serde_json::Map<String, Value>,
    pub stream: bool,
    /// Whether the client itself asked for the usage chunk.
    pub client_wants_usage: bool,
}

impl RequestBody {
    pub fn parse(bytes: &[u8]) -> Result<Self, DataError> {
        let json: serde_json::Map<String, Value> = serde_json::from_slice(bytes).map_err(|e| {
            DataError::bad_request(format!("the request body is not a valid JSON object: {e}"))
        })?;
        let stream = match json.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(DataError::bad_request("stream must be a boolean")),
        };
        let client_wants_usage = json
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(RequestBody {
            json,
            stream,
            client_wants_usage,
        })
    }

    /// The `model` field, if a non-empty string.
    pub fn model(&self) -> Option<&str> {
        self.json
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
    }
}

/// Adds a header when the value is a valid header value.
pub fn set_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// The metadata of a request: workspace defaults < key defaults < `x-portkey-metadata`.
fn metadata_of(
    ws: &crate::domain::Workspace,
    key: &ApiKey,
    headers: &HeaderMap,
) -> Result<Metadata, DataError> {
    let mut m = ws.default_metadata();
    m.extend(key.default_metadata());
    if let Some(raw) = headers.get("x-portkey-metadata") {
        let text = raw
            .to_str()
            .map_err(|_| DataError::bad_request("x-portkey-metadata must be text"))?;
        if !text.trim().is_empty() {
            let v: serde_json::Map<String, Value> = serde_json::from_str(text)
                .map_err(|_| DataError::bad_request("x-portkey-metadata must be a JSON object"))?;
            for (k, v) in v {
                match v {
                    Value::String(s) => m.insert(k, s),
                    Value::Null => continue,
                    other => m.insert(k, other.to_string()),
                };
            }
        }
    }
    Ok(m)
}

/// The trace id of a request: the client's `x-portkey-trace-id`, or a new one.
pub fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-portkey-trace-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 128)
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}

/// The authenticated data-plane caller: key, its workspace and organisation.
fn caller(
    state: &crate::domain::State,
    headers: &HeaderMap,
) -> Result<
    (
        std::sync::Arc<ApiKey>,
        std::sync::Arc<crate::domain::Workspace>,
        String,
    ),
    DataError,
> {
    let key = auth::authenticate(state, headers, crate::domain::Millis::now())
        .map_err(|e| DataError::unauthorized(e.message()))?;
    auth::authorize_data_plane(&key)?;
    let ws = key
        .workspace_id
        .as_deref()
        .and_then(|w| state.workspaces.get(w))
        .cloned()
        .ok_or_else(|| DataError::unauthorized("this API key's workspace no longer exists"))?;
    let org = state
        .organisation
        .as_ref()
        .map(|o| o.id.clone())
        .unwrap_or_default();
    Ok((key, ws, org))
}

/// The `Retry-After` of a `metering_unavailable` refusal: the log retries every half second, so
/// a few seconds is when space freed (or Kafka back) is usually noticed.
const METERING_RETRY_AFTER_SECS: u64 = 5;

/// Serves a completion or embedding request end to end.
pub async fn handle(
    core: std::sync::Arc<crate::app::Core>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    trace_id: String,
) -> Result<Reply, DataError> {
    let started = Instant::now();
    let mut body = RequestBody::parse(body)?;
    // Never serve what cannot be metered: refuse before any upstream call. `x-should-retry:
    // false` (with `Retry-After`) so SDKs do not resend on their own.
    if !core.log.accepts_usage() {
        let mut e = DataError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("metering_unavailable"),
            "usage cannot be recorded right now (the usage log cannot take events: its disk is \
             full, or the event log is unreachable); the provider was not called",
        );
        e.retry_after_secs = Some(METERING_RETRY_AFTER_SECS);
        return Err(e);
    }
    let (ctx, plan) = {
        let state = core.state.read();
        let (key, ws, organisation_id) = caller(&state, headers)?;
        let metadata = metadata_of(&ws, &key, headers)?;
        let plan = route::plan(&state, &key, &ws.id, headers, &mut body)?;
        let ctx = RequestCtx {
            trace_id,
            started,
            workspace_id: ws.id.clone(),
            organisation_id,
            metadata,
            endpoint,
            config_id: plan.config_id.clone(),
            key,
        };
        (ctx, plan)
    };
    upstream::run(core, ctx, plan, body).await
}

/// `GET /v1/models` and `GET /v1/models/{id}`.
pub fn list_models(
    core: &crate::app::Core,
    headers: &HeaderMap,
    provider: Option<&str>,
    id: Option<&str>,
) -> Result<Value, DataError> {
    let state = core.state.read();
    let (_, ws, _) = caller(&state, headers)?;
    let all = models::list(&state, &core.prices, &ws.id, provider);
    match id {
        None => Ok(serde_json::json!({"object": "list", "total": all.len(), "data": all})),
        Some(id) => all
            .into_iter()
            .find(|m| m["id"] == id || m["slug"] == id)
            .ok_or_else(|| {
                DataError::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("model_not_found"),
                    format!("model {id} not found"),
                )
            }),
    }
}
