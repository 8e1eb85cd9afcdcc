//! Request extractors that fail in the API's own error format (axum's defaults answer in plain
//! text): JSON bodies, query strings, and the admin caller.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde_json::Value;

use super::error::{ApiError, Plane};
use super::AppState;
use crate::control::Caller;
use crate::proxy::auth;

/// Reads the body, mapping an oversized one to 413 and one that does not arrive within
/// `body_read_timeout` to 408, in the contract's format. Callers authenticate first: an
/// unauthenticated client's body is never read.
pub async fn body_bytes(
    req: Request,
    app: &Arc<AppState>,
    plane: Plane,
) -> Result<Bytes, ApiError> {
    let limit = app.settings.body_read_timeout;
    let read = tokio::time::timeout(limit, Bytes::from_request(req, &()));
    let Ok(read) = read.await else {
        let mut e = ApiError::control(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} ms (body_read_timeout_ms)",
                limit.as_millis()
            ),
        );
        e.plane = plane;
        return Err(e);
    };
    read.map_err(|r| {
        let too_large = r.status() == StatusCode::PAYLOAD_TOO_LARGE;
        let (status, msg) = if too_large {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than the configured limit".to_owned(),
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {r}"),
            )
        };
        let mut e = ApiError::control(status, msg);
        e.plane = plane;
        e
    })
}

/// A control-plane JSON body; an empty body is `{}`.
pub struct JsonBody(pub Value);

/// Handlers take it after [`Admin`] (axum runs extractors in order); it checks the caller from
/// the headers again itself, so no route can read an unauthenticated body.
impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<AppState>) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        Admin::from_request_parts(&mut parts, app).await?;
        let req = Request::from_parts(parts, body);
        let bytes = body_bytes(req, app, Plane::Control).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::control(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {e}"),
            )
        })?;
        if !v.is_object() {
            return Err(ApiError::control(
                StatusCode::BAD_REQUEST,
                "the request body must be a JSON object",
            ));
        }
        Ok(JsonBody(v))
    }
}

/// Query parameters as a map (the last value of a repeated name wins).
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).map_err(|e| {
            ApiError::control(
                StatusCode::BAD_REQUEST,
                format!("malformed query string: {e}"),
            )
        })?;
        Ok(QueryMap(pairs.into_iter().collect()))
    }
}

/// The authenticated admin caller.
pub struct Admin(pub Caller);

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, ApiError> {
        let state = app.ledger.state();
        let key = auth::authenticate(&state, &parts.headers, crate::domain::Millis::now())
            .map_err(|e| ApiError::control(StatusCode::UNAUTHORIZED, e.message()))?;
        Ok(Admin(Caller { key }))
    }
}
