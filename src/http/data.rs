//! Data-plane handlers: OpenAI-compatible endpoints.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::{ApiError, Plane};
use super::extract::{body_bytes, QueryMap};
use super::AppState;
use crate::domain::Endpoint;
use crate::proxy::{self, Reply};

/// The data-plane routes (under `/v1`).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/chat/completions", post(chat))
        .route("/completions", post(completions))
        .route("/embeddings", post(embeddings))
        .route("/responses", post(responses))
        .route("/messages", post(messages))
        .route("/messages/count_tokens", post(count_tokens))
        .route("/ai-providers", get(ai_providers))
        .route("/models", get(models))
        .route("/models/{*id}", get(model))
}

async fn serve(app: Arc<AppState>, endpoint: Endpoint, req: Request) -> Response {
    let headers = req.headers().clone();
    let trace_id = proxy::trace_id(&headers);
    let reply = answer(app, Door::Serve(endpoint), req, &headers, trace_id).await;
    if endpoint == Endpoint::Messages {
        return anthropic_errors(reply).await;
    }
    reply
}

/// What a data-plane request asks for.
#[derive(Clone, Copy)]
enum Door {
    /// A completion, embedding or message, served and metered.
    Serve(Endpoint),
    /// `/v1/messages/count_tokens`.
    CountTokens,
}

/// The answer to a data-plane request, in OpenAI's shapes.
async fn answer(
    app: Arc<AppState>,
    door: Door,
    req: Request,
    headers: &HeaderMap,
    trace_id: String,
) -> Response {
    // Who is calling is known from the headers: an unauthenticated body is never read.
    if let Err(e) = proxy::authenticate(&app.plane, headers) {
        return ApiError::data(e, Some(trace_id)).into_response();
    }
    let body = match body_bytes(req, &app, Plane::Data).await {
        Ok(b) => b,
        Err(mut e) => {
            e.trace_id = Some(trace_id);
            return e.into_response();
        }
    };
    let plane = app.plane.clone();
    let reply = match door {
        Door::Serve(endpoint) => {
            proxy::handle(plane, endpoint, headers, &body, trace_id.clone()).await
        }
        Door::CountTokens => proxy::count_tokens(plane, headers, &body, trace_id.clone()).await,
    };
    match reply {
        Ok(Reply::Full {
            status,
            headers,
            body,
        }) => (status, headers, body).into_response(),
        Ok(Reply::Stream { headers, frames }) => {
            (headers, Body::from_stream(frames)).into_response()
        }
        Err(e) => ApiError::data(e, Some(trace_id)).into_response(),
    }
}

async fn chat(State(app): State<Arc<AppState>>, req: Request) -> Response {
    serve(app, Endpoint::ChatCompletions, req).await
}

async fn completions(State(app): State<Arc<AppState>>, req: Request) -> Response {
    serve(app, Endpoint::Completions, req).await
}

async fn embeddings(State(app): State<Arc<AppState>>, req: Request) -> Response {
    serve(app, Endpoint::Embeddings, req).await
}

async fn responses(State(app): State<Arc<AppState>>, req: Request) -> Response {
    serve(app, Endpoint::Responses, req).await
}

async fn messages(State(app): State<Arc<AppState>>, req: Request) -> Response {
    serve(app, Endpoint::Messages, req).await
}

/// An error answer of `/v1/messages` in Anthropic's shape (`{"type": "error", "error": {type,
/// message}}`); one already in it (from an Anthropic upstream) and every success pass as they are.
async fn anthropic_errors(reply: Response) -> Response {
    if reply.status().is_success() {
        return reply;
    }
    let (mut parts, body) = reply.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_MAX).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let converted = proxy::anthropic_error(parts.status, &bytes);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(converted))
}

/// The largest error body converted (errors are small; a provider's is capped upstream).
const ERROR_BODY_MAX: usize = 1 << 20;

/// `POST /v1/messages/count_tokens`: the prompt's tokens, counted by the provider the request
/// would go to where it counts them, else estimated (nothing is metered).
async fn count_tokens(State(app): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let trace_id = proxy::trace_id(&headers);
    let reply = answer(app, Door::CountTokens, req, &headers, trace_id).await;
    anthropic_errors(reply).await
}

/// `GET /v1/ai-providers`: the provider catalog (any valid key may read it).
async fn ai_providers(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    proxy::authenticate_any(&app.plane, &headers).map_err(|e| ApiError::data(e, None))?;
    let data: Vec<_> = crate::domain::catalog::CATALOG
        .iter()
        .map(|k| k.view())
        .collect();
    Ok(Json(
        serde_json::json!({"object": "list", "total": data.len(), "data": data}),
    ))
}

async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    QueryMap(q): QueryMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let provider = q.get("provider").map(String::as_str);
    let mut list = proxy::list_models(&app.plane, &headers, provider, None)
        .map_err(|e| ApiError::data(e, None))?;
    let offset: usize = q.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    if let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) {
        let page: Vec<_> = data.drain(..).skip(offset).take(limit).collect();
        *data = page;
    }
    Ok(Json(list))
}

async fn model(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    proxy::list_models(&app.plane, &headers, None, Some(&id))
        .map(Json)
        .map_err(|e| ApiError::data(e, None))
}
