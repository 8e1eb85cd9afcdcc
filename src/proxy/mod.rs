//! The data plane. A request passes a chain of checks before any upstream call
//! (auth → route → per target: status, model access, then the governance checks) and is settled
//! after it: every upstream attempt is metered into one usage event, appended durably before the
//! client gets its final byte.

pub mod auth;
pub mod client;
pub mod credentials;
mod error;
pub mod meter;
pub mod models;
pub mod refusals;
pub mod route;
pub mod stream;
pub mod target;
pub mod upstream;

use std::time::Instant;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde_json::Value;

use crate::crypto::Sealer;
use crate::domain::pricing::PriceTable;
use crate::domain::{ApiKey, Endpoint, Metadata};
use crate::ledger::Ledger;
use crate::settings::Settings;
use crate::telemetry::Metrics;

/// What the data plane uses: the ledger (state, admission, metering), the credential sealer, the
/// price table, the upstream client and the settings it serves by.
pub struct DataPlane {
    ledger: std::sync::Arc<Ledger>,
    sealer: Sealer,
    prices: PriceTable,
    /// Provider calls (see [`client`]).
    http: reqwest::Client,
    settings: std::sync::Arc<Settings>,
    metrics: std::sync::Arc<Metrics>,
    /// Exchanged credentials (assumed roles, Google tokens), cached.
    exchanged: credentials::Exchanged,
}

impl DataPlane {
    pub fn new(
        ledger: std::sync::Arc<Ledger>,
        sealer: Sealer,
        prices: PriceTable,
        http: reqwest::Client,
        settings: std::sync::Arc<Settings>,
        metrics: std::sync::Arc<Metrics>,
    ) -> Self {
        DataPlane {
            ledger,
            sealer,
            prices,
            http,
            settings,
            metrics,
            exchanged: credentials::Exchanged::default(),
        }
    }
}

pub use error::{DataError, GatewayException};

/// What the gateway answers: a whole body, or a stream fed by a metering task.
pub enum Reply {
    Full {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    Stream {
        headers: HeaderMap,
        frames: stream::Frames,
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
    /// The caller's `anthropic-beta` header, passed on to Anthropic-native upstreams.
    pub anthropic_beta: Option<HeaderValue>,
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

/// Bounds of `x-portkey-metadata` (the header is written into every usage event).
pub const METADATA_MAX_BYTES: usize = 8 * 1024;
/// The most keys `x-portkey-metadata` may carry.
pub const METADATA_MAX_KEYS: usize = 64;
/// The longest metadata key, in bytes.
pub const METADATA_MAX_KEY_BYTES: usize = 128;
/// The longest metadata value, in bytes (after non-string values are written as JSON).
pub const METADATA_MAX_VALUE_BYTES: usize = 512;

/// The metadata of a request: the workspace's defaults (set by the organisation), then the key's
/// and its ancestors' (farthest first), then `x-portkey-metadata`. Budgets and policies match on
/// metadata (e.g. `department`), and no one below the organisation may choose which budget is
/// charged: key defaults the organisation set (`limits_set_by`) overwrite what came before;
/// ones a workspace key set, and the header, may only add keys.
fn metadata_of(
    state: &crate::domain::State,
    ws: &crate::domain::Workspace,
    key: &ApiKey,
    headers: &HeaderMap,
) -> Result<Metadata, DataError> {
    let mut m = ws.default_metadata();
    let ancestors = state.key_ancestors(key).unwrap_or_default();
    let chain = ancestors.iter().rev().map(|a| a.as_ref()).chain([key]);
    for k in chain {
        let org_set = k.limits_set_by == crate::domain::Authority::Organisation;
        for (name, v) in k.default_metadata() {
            if org_set {
                m.insert(name, v);
            } else {
                m.entry(name).or_insert(v);
            }
        }
    }
    if let Some(raw) = headers.get("x-portkey-metadata") {
        for (k, v) in header_metadata(raw)? {
            m.entry(k).or_insert(v);
        }
    }
    Ok(m)
}

/// The entries of `x-portkey-metadata` (non-string values written as JSON, nulls dropped),
/// within the bounds; past a bound it is a 400 naming it.
fn header_metadata(raw: &HeaderValue) -> Result<Vec<(String, String)>, DataError> {
    let too_big =
        |what: String| DataError::bad_request(format!("x-portkey-metadata is too large: {what}"));
    if raw.len() > METADATA_MAX_BYTES {
        return Err(too_big(format!("at most {METADATA_MAX_BYTES} bytes")));
    }
    let text = raw
        .to_str()
        .map_err(|_| DataError::bad_request("x-portkey-metadata must be text"))?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Map<String, Value> = serde_json::from_str(text)
        .map_err(|_| DataError::bad_request("x-portkey-metadata must be a JSON object"))?;
    if v.len() > METADATA_MAX_KEYS {
        return Err(too_big(format!("at most {METADATA_MAX_KEYS} keys")));
    }
    let mut out = Vec::with_capacity(v.len());
    for (k, v) in v {
        let v = match v {
            Value::String(s) => s,
            Value::Null => continue,
            other => other.to_string(),
        };
        if k == meter::USAGE_CLAMPED_KEY {
            return Err(DataError::bad_request(format!(
                "x-portkey-metadata: {k} is reserved for the gateway"
            )));
        }
        if k.len() > METADATA_MAX_KEY_BYTES {
            return Err(too_big(format!(
                "keys of at most {METADATA_MAX_KEY_BYTES} bytes"
            )));
        }
        if v.len() > METADATA_MAX_VALUE_BYTES {
            return Err(too_big(format!(
                "values of at most {METADATA_MAX_VALUE_BYTES} bytes ({k})"
            )));
        }
        out.push((k, v));
    }
    Ok(out)
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

/// Checks the data-plane caller from the headers alone, so a request can be refused before its
/// body is read ([`handle`] checks again against the state it routes with).
pub fn authenticate(plane: &crate::proxy::DataPlane, headers: &HeaderMap) -> Result<(), DataError> {
    caller(&plane.ledger.state(), headers).map(drop)
}

/// Checks that the caller holds any valid Tollgate key (data-plane or admin).
pub fn authenticate_any(
    plane: &crate::proxy::DataPlane,
    headers: &HeaderMap,
) -> Result<(), DataError> {
    auth::authenticate(&plane.ledger.state(), headers, crate::domain::Millis::now())
        .map(drop)
        .map_err(|e| DataError::unauthorized(e.message()))
}

/// An error body in Anthropic's shape for `/v1/messages` callers: one already in it (from an
/// Anthropic upstream) as it is; OpenAI's envelope (the gateway's own errors, an
/// OpenAI-format provider's) and AWS's (`message`, from Bedrock InvokeModel passed through)
/// carried over with its message.
pub fn anthropic_error(status: StatusCode, body: &[u8]) -> Bytes {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if v.as_ref()
        .and_then(|v| v.get("type"))
        .and_then(Value::as_str)
        == Some("error")
    {
        return Bytes::copy_from_slice(body);
    }
    let message = upstream::wire::provider_message(body)
        .unwrap_or_else(|| format!("the request failed with status {}", status.as_u16()));
    let kind = crate::providers::anthropic::error_type_for_status(status.as_u16());
    Bytes::from(crate::providers::anthropic::error_body(kind, &message).to_string())
}

/// `/v1/messages/count_tokens`: the prompt's input tokens, counted where the request would
/// go (see [`upstream::count`]).
pub async fn count_tokens(
    plane: std::sync::Arc<crate::proxy::DataPlane>,
    headers: &HeaderMap,
    body: &[u8],
    trace_id: String,
) -> Result<Reply, DataError> {
    let mut body = RequestBody::parse(body)?;
    let (ctx, plan) = prepare(
        &plane,
        Endpoint::Messages,
        headers,
        &mut body,
        trace_id,
        Instant::now(),
    )?;
    upstream::count(plane, ctx, plan, body).await
}

/// The `Retry-After` of a `metering_unavailable` refusal: the log retries every half second, so
/// a few seconds is when space freed (or Kafka back) is usually noticed.
const METERING_RETRY_AFTER_SECS: u64 = 5;

/// Serves a completion or embedding request end to end.
pub async fn handle(
    plane: std::sync::Arc<crate::proxy::DataPlane>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &[u8],
    trace_id: String,
) -> Result<Reply, DataError> {
    let started = Instant::now();
    let mut body = RequestBody::parse(body)?;
    // Never serve what cannot be metered: refuse before any upstream call. `x-should-retry:
    // false` (with `Retry-After`) so SDKs do not resend on their own.
    if !plane.ledger.log().accepts_usage() {
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
    let (ctx, plan) = prepare(&plane, endpoint, headers, &mut body, trace_id, started)?;
    upstream::run(plane, ctx, plan, body).await
}

/// Who calls, with what metadata, and the routing plan (`body` may lose routing fields).
fn prepare(
    plane: &crate::proxy::DataPlane,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: &mut RequestBody,
    trace_id: String,
    started: Instant,
) -> Result<(RequestCtx, route::Plan), DataError> {
    let state = plane.ledger.state();
    let (key, ws, organisation_id) = caller(&state, headers)?;
    let metadata = metadata_of(&state, &ws, &key, headers)?;
    let plan = route::plan(&state, &key, &ws.id, headers, body)?;
    let ctx = RequestCtx {
        trace_id,
        started,
        workspace_id: ws.id.clone(),
        organisation_id,
        metadata,
        endpoint,
        config_id: plan.config_id.clone(),
        anthropic_beta: headers.get("anthropic-beta").cloned(),
        key,
    };
    Ok((ctx, plan))
}

/// `GET /v1/models` and `GET /v1/models/{id}`.
pub fn list_models(
    plane: &crate::proxy::DataPlane,
    headers: &HeaderMap,
    provider: Option<&str>,
    id: Option<&str>,
) -> Result<Value, DataError> {
    let state = plane.ledger.state();
    let (_, ws, _) = caller(&state, headers)?;
    let all = models::list(&state, &plane.prices, &ws.id, provider);
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
