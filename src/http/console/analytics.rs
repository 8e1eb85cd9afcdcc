//! Analytics: filters (time range, workspace, key, model, provider, any metadata key such as the
//! department), charts with a table under each, groups, and CSV export. The filter is made by
//! the analytics API's own code ([`crate::http::analytics::filter_of`]: its scope check and
//! workspace isolation) from the same query the API takes, and read from the same store
//! queries, so every figure is the API's.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use rust_decimal::Decimal;
use serde_json::json;

use super::chart::{self, Series};

use super::session::Signed;
use crate::control::api_keys;
use crate::domain::budget::period;
use crate::domain::limits::PeriodicReset;
use crate::domain::Millis;
use crate::http::analytics::filter_of;
use crate::http::extract::QueryMap;
use crate::http::AppState;
use crate::store::{Bucket, Filter, GroupBy, Stats};

type App = State<Arc<AppState>>;

/// How many groups a stacked chart draws; the rest are summed as "other".
const STACKED: usize = 6;

/// The time ranges of the picker: value, label, length in days.
const RANGES: &[(&str, &str, i64)] = &[
    ("24h", "Last 24 hours", 1),
    ("7d", "Last 7 days", 7),
    ("30d", "Last 30 days", 30),
    ("90d", "Last 90 days", 90),
];

/// What charts may stack and group by: value, label.
pub const DIMENSIONS: &[(&str, &str)] = &[
    ("department", "Department"),
    ("workspace", "Workspace"),
    ("model", "Model"),
    ("provider", "Provider"),
    ("key", "API key"),
    ("ai_service", "AI service"),
];

/// A console analytics query: the range picked and the store filter the API's code made of it.
pub struct Picked {
    pub filter: Filter,
    pub bucket: Bucket,
    /// The console's own query, to keep in links and forms.
    pub q: HashMap<String, String>,
    pub by: GroupBy,
}

const DAY_MS: i64 = 86_400_000;

/// The API's analytics query for a console query (`range` or `from`/`to` dates, and filters).
fn api_query(q: &HashMap<String, String>, now: Millis) -> HashMap<String, String> {
    let days = |r: &str| RANGES.iter().find(|(v, _, _)| *v == r).map(|(_, _, d)| *d);
    let (from, to) = match (q.get("from"), q.get("to")) {
        (Some(f), Some(t)) if !f.is_empty() && !t.is_empty() => {
            (format!("{f}T00:00:00Z"), format!("{t}T23:59:59.999Z"))
        }
        _ => {
            let d = days(q.get("range").map_or("30d", String::as_str)).unwrap_or(30);
            (Millis(now.0 - d * DAY_MS).to_iso(), now.to_iso())
        }
    };
    let mut api = HashMap::from([
        ("time_of_generation_min".to_owned(), from),
        ("time_of_generation_max".to_owned(), to),
    ]);
    for (console, key) in [
        ("workspace", "workspace_slug"),
        ("key", "api_key_ids"),
        ("model", "ai_org_model"),
        ("provider", "virtual_keys"),
    ] {
        if let Some(v) = q.get(console).filter(|v| !v.is_empty()) {
            api.insert(key.to_owned(), v.clone());
        }
    }
    if let (Some(k), Some(v)) = (q.get("meta_key"), q.get("meta_value")) {
        if !k.is_empty() && !v.is_empty() {
            api.insert("metadata".into(), json!({ k: v }).to_string());
        }
    }
    api
}

fn group_by(q: &HashMap<String, String>) -> GroupBy {
    match q.get("by").map_or("department", String::as_str) {
        "workspace" => GroupBy::Workspace,
        "model" => GroupBy::Model,
        "provider" => GroupBy::Provider,
        "key" => GroupBy::ApiKey,
        "ai_service" => GroupBy::AiProvider,
        _ => GroupBy::Department,
    }
}

/// The console query's filter, made and checked by the analytics API's code.
pub fn pick(app: &AppState, s: &Signed, q: HashMap<String, String>) -> Result<Picked, String> {
    let api = api_query(&q, Millis::now());
    let filter = filter_of(app, &s.caller, &api).map_err(|e| e.error.message)?;
    let bucket = Bucket::for_range(filter.from, filter.to);
    Ok(Picked {
        by: group_by(&q),
        filter,
        bucket,
        q,
    })
}

/// The longest range a chart draws (a bar a day); the CSV export takes any range.
const MAX_CHART_DAYS: i64 = 400;

/// Every bucket start of the filter's range, so a chart's axis has no gaps; a range too long to
/// draw is refused.
pub fn buckets(p: &Picked) -> Result<Vec<Millis>, String> {
    if p.filter.to.0 - p.filter.from.0 > MAX_CHART_DAYS * DAY_MS {
        return Err(format!(
            "pick a range of at most {MAX_CHART_DAYS} days to chart (the CSV export takes any range)"
        ));
    }
    let ms = p.bucket.ms();
    let first = p.filter.from.0.div_euclid(ms) * ms;
    Ok((0..)
        .map(|i| first + i * ms)
        .take_while(|t| *t < p.filter.to.0)
        .map(Millis)
        .collect())
}

/// The name a group value is shown with: a workspace's or a key's name when the signed-in key
/// may list it (the API's analytics answer ids; names are what the lists show), "(none)" for
/// empty, else the value itself.
pub fn group_name(app: &AppState, s: &Signed, by: &GroupBy, value: &str) -> String {
    let state = app.ledger.state();
    let named = match by {
        GroupBy::Workspace => state
            .workspaces
            .get(value)
            .filter(|_| s.caller.key.has_scope("workspaces.list"))
            .map(|w| w.name.clone()),
        GroupBy::ApiKey => state
            .api_keys
            .get(value)
            .filter(|k| api_keys::may_list(&s.caller, k))
            .map(|k| k.name.clone()),
        _ => None,
    };
    named.unwrap_or_else(|| {
        if value.is_empty() {
            "(none)".into()
        } else {
            value.to_owned()
        }
    })
}

/// US dollars, exact.
pub fn usd(d: Decimal) -> String {
    format!("${}", d.normalize())
}

fn count(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The cost per bucket of the top groups (most cost first) and the rest as "other", and each
/// bucket's totals (requests, errors, tokens and cost; not distinct users).
pub async fn cost_stack(
    app: &AppState,
    s: &Signed,
    p: &Picked,
    at: &[Millis],
) -> Result<(Vec<Series>, Vec<Stats>), String> {
    let rows = app
        .store
        .series_by(p.filter.clone(), p.bucket, p.by.clone())
        .await
        .map_err(|e| e.to_string())?;
    let mut totals: HashMap<&str, Decimal> = HashMap::new();
    for (_, g, s) in &rows {
        *totals.entry(g.as_str()).or_default() += s.cost_usd;
    }
    let mut ranked: Vec<(&str, Decimal)> = totals.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let top: Vec<&str> = ranked.iter().take(STACKED).map(|(g, _)| *g).collect();
    let index: HashMap<Millis, usize> = at.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut series: Vec<Series> = top
        .iter()
        .map(|g| Series {
            name: group_name(app, s, &p.by, g),
            values: vec![Decimal::ZERO; at.len()],
        })
        .collect();
    let mut other = vec![Decimal::ZERO; at.len()];
    // Each bucket's totals are its groups' sums, so the request chart needs no query of its own.
    let mut totals = vec![Stats::default(); at.len()];
    for (t, g, s) in &rows {
        let Some(&i) = index.get(t) else { continue };
        match top.iter().position(|x| x == g) {
            Some(k) => series[k].values[i] += s.cost_usd,
            None => other[i] += s.cost_usd,
        }
        let total = &mut totals[i];
        total.requests += s.requests;
        total.errors += s.errors;
        total.prompt_tokens = total.prompt_tokens.saturating_add(s.prompt_tokens);
        total.completion_tokens = total.completion_tokens.saturating_add(s.completion_tokens);
        total.cost_usd += s.cost_usd;
    }
    if other.iter().any(|v| !v.is_zero()) {
        series.push(Series {
            name: "other".into(),
            values: other,
        });
    }
    Ok((series, totals))
}

/// A chart and the table of its figures under it.
pub fn chart_with_table(
    title: &str,
    at: &[Millis],
    series: &[Series],
    daily: bool,
    unit: fn(Decimal) -> String,
) -> Markup {
    html! {
        section.panel {
            h2 { (title) }
            (chart::stacked(title, at, series, daily, unit))
            details {
                summary { "Table" }
                table {
                    caption.sr { (title) }
                    thead { tr { th { "Bucket" } @for s in series { th { (s.name) } } th { "Total" } } }
                    tbody {
                        @for (i, t) in at.iter().enumerate() {
                            @let total: Decimal = series.iter().filter_map(|s| s.values.get(i)).sum();
                            @if !total.is_zero() {
                                tr {
                                    td { (chart::label(*t, daily)) }
                                    @for s in series { td.num { (unit(s.values.get(i).copied().unwrap_or_default())) } }
                                    td.num { (unit(total)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Requests per bucket, the errors among them stacked on top.
pub fn request_series(stats: &[Stats]) -> Vec<Series> {
    let n = |f: fn(&Stats) -> u64| stats.iter().map(|s| Decimal::from(f(s))).collect();
    vec![
        Series {
            name: "succeeded".into(),
            values: n(|s| s.requests - s.errors.min(s.requests)),
        },
        Series {
            name: "failed".into(),
            values: n(|s| s.errors),
        },
    ]
}

/// The filter form: range or dates, the filters, and what to stack by.
pub fn filter_form(action: &str, q: &HashMap<String, String>, full: bool) -> Markup {
    let v = |k: &str| q.get(k).cloned().unwrap_or_default();
    let range = q.get("range").map_or("30d", String::as_str);
    let by = q.get("by").map_or("department", String::as_str);
    html! {
        form.filters method="get" action=(action) {
            label for="range" { "Time range" }
            select #range name="range" {
                @for (val, label, _) in RANGES { option value=(val) selected[*val == range] { (label) } }
            }
            label for="from" { "From" }
            input #from type="date" name="from" value=(v("from"));
            label for="to" { "To" }
            input #to type="date" name="to" value=(v("to"));
            label for="by" { "Stack by" }
            select #by name="by" {
                @for (val, label) in DIMENSIONS { option value=(val) selected[*val == by] { (label) } }
            }
            @if full {
                label for="f-workspace" { "Workspace (slug)" }
                input #f-workspace name="workspace" value=(v("workspace"));
                label for="f-key" { "API key id" }
                input #f-key name="key" value=(v("key"));
                label for="f-model" { "Model (provider__model)" }
                input #f-model name="model" value=(v("model")) placeholder="openai__gpt-4o";
                label for="f-provider" { "Provider (slug)" }
                input #f-provider name="provider" value=(v("provider"));
                label for="f-meta-key" { "Metadata key" }
                input #f-meta-key name="meta_key" value=(v("meta_key")) placeholder="department";
                label for="f-meta-value" { "Metadata value" }
                input #f-meta-value name="meta_value" value=(v("meta_value"));
            }
            button type="submit" { "Apply" }
        }
    }
}

/// The analytics page's body for the console query `q`.
async fn page_of(app: &AppState, s: &Signed, q: HashMap<String, String>) -> Markup {
    let p = match pick(app, s, q.clone()) {
        Ok(p) => p,
        Err(m) => {
            return html! { (filter_form("/console/analytics", &q, true)) p.error role="alert" { (m) } }
        }
    };
    app.ledger.await_store().await; // read your own writes, as the API does
    let at = match buckets(&p) {
        Ok(at) => at,
        Err(m) => {
            return html! { (filter_form("/console/analytics", &p.q, true)) p.error role="alert" { (m) } }
        }
    };
    let daily = p.bucket == Bucket::Day;
    let figures = async {
        let (costs, stats) = cost_stack(app, s, &p, &at).await?;
        let groups = app
            .store
            .groups(p.filter.clone(), p.by.clone())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((costs, stats, groups))
    };
    let (costs, stats, groups) = match figures.await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "a console analytics query failed");
            return html! { p.error role="alert" { "The analytics query failed." } };
        }
    };
    let tokens = vec![
        Series {
            name: "prompt".into(),
            values: stats
                .iter()
                .map(|s| Decimal::from(s.prompt_tokens))
                .collect(),
        },
        Series {
            name: "completion".into(),
            values: stats
                .iter()
                .map(|s| Decimal::from(s.completion_tokens))
                .collect(),
        },
    ];
    let csv = serde_urlencoded::to_string(sorted(&p.q)).unwrap_or_default();
    html! {
        (filter_form("/console/analytics", &p.q, true))
        p.actions {
            a.button href={ "/console/analytics.csv?table=series&" (csv) } download { "Export series (CSV)" }
            a.button href={ "/console/analytics.csv?table=groups&" (csv) } download { "Export groups (CSV)" }
        }
        (chart_with_table("Cost", &at, &costs, daily, usd))
        (chart_with_table("Requests", &at, &request_series(&stats), daily, count))
        (chart_with_table("Tokens", &at, &tokens, daily, count))
        (groups_table(app, s, &p.by, &groups))
    }
}

fn sorted(q: &HashMap<String, String>) -> Vec<(&String, &String)> {
    let mut v: Vec<_> = q.iter().filter(|(k, _)| *k != "table").collect();
    v.sort();
    v
}

/// The group totals of the filter.
/// The most groups the page lists; the CSV export has them all.
const GROUP_ROWS: usize = 50;

/// The group totals of the filter (the first [`GROUP_ROWS`]).
pub fn groups_table(app: &AppState, s: &Signed, by: &GroupBy, rows: &[(String, Stats)]) -> Markup {
    html! {
        section.panel {
            h2 { "By group" }
            @if rows.len() > GROUP_ROWS { p.muted { "The " (GROUP_ROWS) " with the most requests of " (rows.len()) "; the CSV export has them all." } }
            table {
                caption.sr { "Totals by group" }
                thead { tr { th { "Group" } th { "Requests" } th { "Errors" } th { "Tokens" } th { "Cost" } th { "Last seen" } } }
                tbody {
                    @for (g, st) in rows.iter().take(GROUP_ROWS) {
                        tr {
                            td { (group_name(app, s, by, g)) }
                            td.num { (st.requests) }
                            td.num { (st.errors) }
                            td.num { (st.tokens()) }
                            td.num { (usd(st.cost_usd)) }
                            td { (st.last_seen.to_iso()) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/analytics`.
pub async fn page(State(app): App, s: Signed, QueryMap(q): QueryMap) -> Response {
    let body = page_of(&app, &s, q).await;
    super::layout::page(&s, "Analytics", "/console/analytics", body).into_response()
}

/// Quotes a CSV field when it needs it; a leading formula character is neutralised, so an
/// exported name never runs as a spreadsheet formula.
fn csv_field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// `GET /console/analytics.csv?table=series|groups&…`: the figures of the page, exact.
pub async fn csv(State(app): App, s: Signed, QueryMap(q): QueryMap) -> Response {
    let table = match q.get("table").map(String::as_str) {
        Some("groups") => "groups",
        _ => "series",
    };
    let p = match pick(&app, &s, q) {
        Ok(p) => p,
        Err(m) => return (StatusCode::BAD_REQUEST, m).into_response(),
    };
    app.ledger.await_store().await; // read your own writes, as the API does
    let mut out = String::new();
    let stats = |s: &Stats| {
        format!(
            "{},{},{},{},{}",
            s.requests,
            s.errors,
            s.prompt_tokens,
            s.completion_tokens,
            s.cost_usd.normalize()
        )
    };
    let head = "requests,errors,prompt_tokens,completion_tokens,cost_usd";
    let read = if table == "groups" {
        app.store
            .groups(p.filter.clone(), p.by.clone())
            .await
            .map(|rows| {
                out.push_str(&format!("group,name,{head},last_seen\n"));
                for (g, st) in rows {
                    let name = group_name(&app, &s, &p.by, &g);
                    let line = format!(
                        "{},{},{},{}\n",
                        csv_field(&g),
                        csv_field(&name),
                        stats(&st),
                        st.last_seen.to_iso()
                    );
                    out.push_str(&line);
                }
            })
    } else {
        app.store
            .series(p.filter.clone(), p.bucket)
            .await
            .map(|rows| {
                out.push_str(&format!("bucket,{head}\n"));
                for (t, s) in rows {
                    out.push_str(&format!("{},{}\n", t.to_iso(), stats(&s)));
                }
            })
    };
    if let Err(e) = read {
        tracing::error!(error = %e, "a console CSV export failed");
        return (StatusCode::INTERNAL_SERVER_ERROR, "the export failed").into_response();
    }
    let name = format!("attachment; filename=\"tollgate-{table}.csv\"");
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        out,
    )
        .into_response()
}

/// Spend since the start of today, this week (Sunday, as weekly budgets reset) and this month.
pub async fn spend_to_date(
    app: &AppState,
    s: &Signed,
    now: Millis,
) -> Result<[Decimal; 3], String> {
    let week = period(Some(PeriodicReset::Weekly), None, Millis(0), now).0;
    let month = period(Some(PeriodicReset::Monthly), None, Millis(0), now).0;
    let today = now.floor_day();
    let from = week.min(month);
    let q = HashMap::from([
        ("time_of_generation_min".to_owned(), from.to_iso()),
        ("time_of_generation_max".to_owned(), now.to_iso()),
    ]);
    let f = filter_of(app, &s.caller, &q).map_err(|e| e.error.message)?;
    let days = app
        .store
        .series(f, Bucket::Day)
        .await
        .map_err(|e| e.to_string())?;
    let since = |start: Millis| -> Decimal {
        days.iter()
            .filter(|(t, _)| *t >= start)
            .map(|(_, s)| s.cost_usd)
            .sum()
    };
    Ok([since(today), since(week), since(month)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_query_becomes_the_apis() {
        let q = HashMap::from([
            ("from".to_owned(), "2026-11-01".to_owned()),
            ("to".to_owned(), "2026-11-30".to_owned()),
            ("workspace".to_owned(), "research".to_owned()),
            ("meta_key".to_owned(), "department".to_owned()),
            ("meta_value".to_owned(), "r&d".to_owned()),
            ("key".to_owned(), String::new()),
        ]);
        let api = api_query(&q, Millis(0));
        assert_eq!(api["time_of_generation_min"], "2026-11-01T00:00:00Z");
        assert_eq!(api["time_of_generation_max"], "2026-11-30T23:59:59.999Z");
        assert_eq!(api["workspace_slug"], "research");
        assert_eq!(api["metadata"], r#"{"department":"r&d"}"#);
        assert!(
            !api.contains_key("api_key_ids"),
            "an empty filter is no filter"
        );
        let api = api_query(
            &HashMap::from([("range".into(), "7d".into())]),
            Millis(8 * DAY_MS),
        );
        assert_eq!(api["time_of_generation_min"], Millis(DAY_MS).to_iso());
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("\t=1"), "'\t=1");
    }
}
