//! `/analytics/graphs/*`, `/analytics/groups/*` and `/analytics/summary/cache` over the usage store.
//! Buckets: minutes for ranges up to 2 hours, hours up to 2 days, days beyond. Cost is in US cents,
//! as Portkey reports it; group figures are strings, as in Portkey's spec.
//! In embedded mode every query first waits (bounded) for the store to take in the usage logged
//! before it ([`crate::ledger::Ledger::await_store`]), so a client reads its own writes.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::error::{ApiError, Plane};
use super::extract::{Admin, QueryMap};
use super::AppState;
use crate::control::Caller;
use crate::domain::pricing::decimal_json as num;
use crate::domain::{Metadata, Millis};
use crate::store::{Bucket, Filter, GroupBy, Stats};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/analytics/graphs/{*metric}", get(graph))
        .route("/analytics/groups/{*dimension}", get(group))
        .route("/analytics/summary/cache", get(summary_cache))
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::control(StatusCode::BAD_REQUEST, m)
}

fn list(q: &HashMap<String, String>, k: &str) -> Vec<String> {
    q.get(k)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The filter of an analytics query: every key needs `analytics.view` (a data-plane key reads
/// nothing), and a workspace key only ever sees its own workspace.
pub(super) fn filter_of(
    app: &AppState,
    caller: &Caller,
    q: &HashMap<String, String>,
) -> Result<Filter, ApiError> {
    caller.require("analytics.view")?;
    let (from, to) = time_range(q)?;
    let workspace_id = {
        let state = app.ledger.state();
        caller.workspace_filter(
            &state,
            q.get("workspace_slug")
                .map(String::as_str)
                .filter(|s| !s.is_empty()),
        )?
    };
    Ok(Filter {
        from,
        to: Millis(to.0 + 1),
        workspace_id,
        api_key_ids: list(q, "api_key_ids"),
        provider_slugs: list(q, "virtual_keys"),
        models: models(q)?,
        status_codes: status_codes(q)?,
        metadata: metadata(q)?,
        trace_id: q.get("trace_id").filter(|t| !t.is_empty()).cloned(),
        config_ids: list(q, "configs"),
    })
}

fn cents(d: Decimal) -> Decimal {
    (d * Decimal::ONE_HUNDRED).normalize()
}

fn avg(total: Decimal, n: u64) -> Decimal {
    if n == 0 {
        Decimal::ZERO
    } else {
        (total / Decimal::from(n)).round_dp(6).normalize()
    }
}

fn sum(series: &[(Millis, Stats)], f: impl Fn(&Stats) -> Decimal) -> Decimal {
    series.iter().map(|(_, s)| f(s)).sum()
}

fn store_err(e: crate::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "analytics query failed");
    ApiError::control(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the analytics query failed",
    )
}

/// `time_of_generation_min` and `_max` (ISO-8601, both required, in order).
fn time_range(q: &HashMap<String, String>) -> Result<(Millis, Millis), ApiError> {
    let time = |k: &str| {
        let v = q
            .get(k)
            .ok_or_else(|| bad(format!("{k} is required (ISO-8601)")))?;
        Millis::parse_iso(v).ok_or_else(|| bad(format!("{k}: {v:?} is not an ISO-8601 timestamp")))
    };
    let (from, to) = (
        time("time_of_generation_min")?,
        time("time_of_generation_max")?,
    );
    if to < from {
        return Err(bad(
            "time_of_generation_max is before time_of_generation_min",
        ));
    }
    Ok((from, to))
}

/// `metadata`: a JSON object of strings (other values are matched as their JSON text).
fn metadata(q: &HashMap<String, String>) -> Result<Metadata, ApiError> {
    let Some(m) = q.get("metadata").filter(|m| !m.is_empty()) else {
        return Ok(Metadata::new());
    };
    let v: serde_json::Map<String, Value> =
        serde_json::from_str(m).map_err(|_| bad("metadata must be a JSON object of strings"))?;
    Ok(v.into_iter()
        .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect())
}

/// `ai_org_model`: `provider__model` pairs.
fn models(q: &HashMap<String, String>) -> Result<Vec<(String, String)>, ApiError> {
    list(q, "ai_org_model")
        .into_iter()
        .map(|pm| {
            pm.split_once("__")
                .map(|(p, m)| (p.to_owned(), m.to_owned()))
                .ok_or_else(|| bad(format!("ai_org_model: {pm:?} is not provider__model")))
        })
        .collect()
}

fn status_codes(q: &HashMap<String, String>) -> Result<Vec<u16>, ApiError> {
    list(q, "status_code")
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|_| bad(format!("status_code: {s:?} is not a number")))
        })
        .collect()
}

/// A graph's answer: its summary and its data points.
type Graph = (Value, Vec<Value>);

async fn graph(
    State(app): State<Arc<AppState>>,
    Admin(caller): Admin,
    Path(metric): Path<String>,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let f = filter_of(&app, &caller, &q)?;
    app.ledger.await_store().await;
    let bucket = Bucket::for_range(f.from, f.to);
    let (summary, points) = match metric.as_str() {
        "latency" => latency_graph(&app, f, bucket).await?,
        "errors/status-codes" => status_code_graph(&app, f).await?,
        _ => series_graph(&app, &metric, f, bucket).await?,
    };
    Ok(Json(
        json!({"object": "analytics-graph", "summary": summary, "data_points": points}),
    ))
}

async fn latency_graph(app: &AppState, f: Filter, bucket: Bucket) -> Result<Graph, ApiError> {
    let (all, per) = app.store.latency(f, bucket).await.map_err(store_err)?;
    let point = |t: Option<Millis>, l: &crate::store::Latency| {
        let mut v = json!({"avg": (l.avg * 1000.0).round() / 1000.0, "p50": l.p50, "p90": l.p90, "p99": l.p99});
        if let Some(t) = t {
            v["timestamp"] = json!(t.to_iso());
        }
        v
    };
    let points = per.iter().map(|(t, l)| point(Some(*t), l)).collect();
    Ok((point(None, &all), points))
}

async fn status_code_graph(app: &AppState, f: Filter) -> Result<Graph, ApiError> {
    let groups = app
        .store
        .groups(f, GroupBy::StatusCode)
        .await
        .map_err(store_err)?;
    let errors: Vec<_> = groups
        .into_iter()
        .filter(|(c, _)| c.parse::<u16>().is_ok_and(|c| c >= 400))
        .collect();
    let total: u64 = errors.iter().map(|(_, s)| s.requests).sum();
    let points = errors
        .iter()
        .map(|(c, s)| json!({"status_code": c.parse::<u16>().unwrap_or(0), "count": s.requests}))
        .collect();
    Ok((
        json!({"total_errors": total, "unique_error_codes": errors.len()}),
        points,
    ))
}

/// The graphs drawn from the time series (and, for users, the distinct users).
async fn series_graph(
    app: &AppState,
    metric: &str,
    f: Filter,
    bucket: Bucket,
) -> Result<Graph, ApiError> {
    let series = app
        .store
        .series(f.clone(), bucket)
        .await
        .map_err(store_err)?;
    let graph = match metric {
        "requests" => count_graph(&series, |s| s.requests),
        "errors" => count_graph(&series, |s| s.errors),
        "cost" => total_and_avg_graph(&series, |s| cents(s.cost_usd)),
        "tokens" => total_and_avg_graph(&series, |s| Decimal::from(s.tokens())),
        "errors/rate" => error_rate_graph(&series),
        "users" | "users/requests" => {
            let users = app
                .store
                .groups(f, GroupBy::User)
                .await
                .map_err(store_err)?;
            let unique = users.iter().filter(|(u, _)| !u.is_empty()).count() as u64;
            users_graph(metric == "users", &series, unique)
        }
        other => {
            return Err(ApiError::not_found(
                Plane::Control,
                &format!("analytics graph {other}"),
            ))
        }
    };
    Ok(graph)
}

fn ts(t: &Millis) -> Value {
    json!(t.to_iso())
}

fn requests(series: &[(Millis, Stats)]) -> u64 {
    series.iter().map(|(_, s)| s.requests).sum()
}

/// A count per bucket and its total.
fn count_graph(series: &[(Millis, Stats)], count: impl Fn(&Stats) -> u64) -> Graph {
    let total: u64 = series.iter().map(|(_, s)| count(s)).sum();
    let points = series
        .iter()
        .map(|(t, s)| json!({"timestamp": ts(t), "total": count(s)}))
        .collect();
    (json!({"total": total}), points)
}

/// An amount per bucket with its average per request, and their totals.
fn total_and_avg_graph(series: &[(Millis, Stats)], amount: impl Fn(&Stats) -> Decimal) -> Graph {
    let total = sum(series, &amount);
    let points = series
        .iter()
        .map(|(t, s)| json!({"timestamp": ts(t), "total": num(amount(s)), "avg": num(avg(amount(s), s.requests))}))
        .collect();
    (
        json!({"total": num(total), "avg": num(avg(total, requests(series)))}),
        points,
    )
}

fn error_rate_graph(series: &[(Millis, Stats)]) -> Graph {
    let errors: u64 = series.iter().map(|(_, s)| s.errors).sum();
    let rate = |e: u64, n: u64| avg(Decimal::from(e) * Decimal::ONE_HUNDRED, n);
    let points = series
        .iter()
        .map(|(t, s)| json!({"timestamp": ts(t), "rate": num(rate(s.errors, s.requests))}))
        .collect();
    (json!({"rate": num(rate(errors, requests(series)))}), points)
}

/// Distinct users per bucket (`per_bucket`), or requests per user.
fn users_graph(per_bucket: bool, series: &[(Millis, Stats)], unique: u64) -> Graph {
    if per_bucket {
        let (_, points) = count_graph(series, |s| s.users);
        return (json!({"total": unique}), points);
    }
    let requests = requests(series);
    let points = series
        .iter()
        .map(|(t, s)| json!({"timestamp": ts(t), "avg": num(avg(Decimal::from(s.requests), s.users))}))
        .collect();
    (
        json!({"total": requests, "unique": unique, "avg": num(avg(Decimal::from(requests), unique))}),
        points,
    )
}

fn group_by(dimension: &str) -> Option<(GroupBy, &'static str)> {
    Some(match dimension {
        "users" => (GroupBy::User, "user"),
        "ai-models" => (GroupBy::Model, "ai_model"),
        "workspaces" | "workspace" => (GroupBy::Workspace, "workspace_slug"),
        "model" => (GroupBy::Model, "model"),
        "ai_service" | "ai-service" => (GroupBy::AiProvider, "ai_service"),
        "provider" => (GroupBy::Provider, "provider"),
        "api_key" => (GroupBy::ApiKey, "api_key"),
        "status_code" => (GroupBy::StatusCode, "status_code"),
        "config" => (GroupBy::Config, "config"),
        "department" => (GroupBy::Department, "department"),
        _ => return None,
    })
}

async fn group(
    State(app): State<Arc<AppState>>,
    Admin(caller): Admin,
    Path(dimension): Path<String>,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let f = filter_of(&app, &caller, &q)?;
    app.ledger.await_store().await;
    let page = crate::control::Page::from_query(&q, 20)?;
    let (by, label) = match dimension.strip_prefix("metadata/") {
        Some(key) if !key.is_empty() => (GroupBy::Metadata(key.to_owned()), "metadata_value"),
        _ => group_by(&dimension).ok_or_else(|| {
            ApiError::not_found(Plane::Control, &format!("analytics group {dimension}"))
        })?,
    };
    let rows = app.store.groups(f, by.clone()).await.map_err(store_err)?;
    let slugs: HashMap<String, String> = app
        .ledger
        .state()
        .workspaces
        .values()
        .map(|w| (w.id.clone(), w.slug.clone()))
        .collect();
    let items = rows
        .into_iter()
        .map(|(value, s)| {
            let value = if by == GroupBy::Workspace {
                slugs.get(&value).cloned().unwrap_or(value)
            } else {
                value
            };
            json!({
                label: value,
                "requests": s.requests.to_string(),
                "cost": cents(s.cost_usd).to_string(),
                "tokens": s.tokens().to_string(),
                "avg_tokens": avg(Decimal::from(s.tokens()), s.requests).to_string(),
                "avg_weighted_feedback": "0",
                "requests_with_feedback": "0",
                "last_seen": s.last_seen.to_iso(),
                "object": "analytics-group",
            })
        })
        .collect();
    let mut out = page.list(items);
    out["object"] = json!("list");
    Ok(Json(out))
}

/// Tollgate has no response cache, so every request is a miss; the figures are real, not a stub.
async fn summary_cache(
    State(app): State<Arc<AppState>>,
    Admin(caller): Admin,
    QueryMap(q): QueryMap,
) -> Result<Json<Value>, ApiError> {
    let f = filter_of(&app, &caller, &q)?;
    app.ledger.await_store().await;
    let series = app.store.series(f, Bucket::Day).await.map_err(store_err)?;
    let total: u64 = series.iter().map(|(_, s)| s.requests).sum();
    Ok(Json(
        json!({"object": "analytics-summary", "summary": {"hits": 0, "avg_latency": 0, "total_requests": total, "cache_speedup": 0}}),
    ))
}
