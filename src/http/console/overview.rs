//! The overview: spend today, this week and this month; cost over time stacked by department,
//! workspace, model, provider or key; request volume and error rate; latency percentiles; the
//! top keys; the budgets closest to exhaustion; the latest alerts. Figures come from the
//! analytics code ([`super::analytics`]) and budgets from the ledger's state, as the API's do.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use rust_decimal::Decimal;

use super::analytics::{self as an, usd, Picked};
use super::layout::usage_bar;
use super::session::Signed;
use crate::control::{api_keys, views};
use crate::domain::budget::BudgetRef;
use crate::domain::limits::UsageLimit;
use crate::domain::Millis;
use crate::http::extract::QueryMap;
use crate::http::AppState;
use crate::store::{Bucket, GroupBy};

type App = State<Arc<AppState>>;

/// The overview's body for the console query `q` (the range picked).
async fn body(app: &AppState, s: &Signed, q: std::collections::HashMap<String, String>) -> Markup {
    // Read your own writes, as the analytics API does: a chat answered before this page was
    // asked for is in its figures (the store ingests in batches, behind the log).
    app.ledger.await_store().await;
    let now = Millis::now();
    let p = match an::pick(app, s, q.clone()) {
        Ok(p) => p,
        Err(m) => {
            return html! { (an::filter_form("/console", &q, false)) p.error role="alert" { (m) } }
        }
    };
    if let Err(m) = an::buckets(&p) {
        return html! { (an::filter_form("/console", &p.q, false)) p.error role="alert" { (m) } };
    }
    match figures(app, s, &p, now).await {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "a console overview query failed");
            html! { p.error role="alert" { "The analytics query failed." } }
        }
    }
}

/// `GET /console`.
pub async fn page(State(app): App, s: Signed, QueryMap(q): QueryMap) -> Response {
    let body = body(&app, &s, q).await;
    super::layout::page(&s, "Overview", "/console", body).into_response()
}

async fn figures(app: &AppState, s: &Signed, p: &Picked, now: Millis) -> Result<Markup, String> {
    let at = an::buckets(p)?;
    let daily = p.bucket == Bucket::Day;
    // The queries are independent: side by side, they take the longest one's time.
    let latency = async {
        let report = app.store.latency(p.filter.clone(), p.bucket).await;
        report.map(|(all, _)| all).map_err(|e| e.to_string())
    };
    let keys = async {
        let rows = app.store.groups(p.filter.clone(), GroupBy::ApiKey).await;
        rows.map_err(|e| e.to_string())
    };
    let (spend, (costs, stats), latency, mut keys) = tokio::try_join!(
        an::spend_to_date(app, s, now),
        an::cost_stack(app, s, p, &at),
        latency,
        keys,
    )?;
    let [today, week, month] = spend;
    keys.sort_by(|a, b| b.1.cost_usd.cmp(&a.1.cost_usd).then(a.0.cmp(&b.0)));
    keys.truncate(10);
    let requests: u64 = stats.iter().map(|s| s.requests).sum();
    let errors: u64 = stats.iter().map(|s| s.errors).sum();
    let rate = if requests == 0 {
        Decimal::ZERO
    } else {
        (Decimal::from(errors) * Decimal::ONE_HUNDRED / Decimal::from(requests)).round_dp(2)
    };
    let alerts = match s.workspace() {
        None => crate::http::admin::notification_views(app, &s.caller, 5)
            .await
            .unwrap_or_default(),
        Some(_) => Vec::new(),
    };
    Ok(html! {
        section.cards aria-label="Spend" {
            div.card { h2 { "Spend today" } p.big #spend-today { (usd(today)) } }
            div.card { h2 { "This week" } p.big #spend-week { (usd(week)) } }
            div.card { h2 { "This month" } p.big #spend-month { (usd(month)) } }
            div.card { h2 { "Requests" } p.big #requests { (requests) } p.muted { "in the range below" } }
            div.card { h2 { "Error rate" } p.big #error-rate { (rate) "%" } p.muted { (errors) " failed" } }
            div.card { h2 { "Latency" } p.big { (latency.p50) " ms" } p.muted #latency { "p50 " (latency.p50) " · p95 " (latency.p95) " · p99 " (latency.p99) " ms" } }
        }
        (an::filter_form("/console", &p.q, false))
        (an::chart_with_table("Cost over time", &at, &costs, daily, usd))
        (an::chart_with_table("Request volume", &at, &an::request_series(&stats), daily, |d| d.to_string()))
        div.columns {
            section.panel {
                h2 { "Top keys" }
                table {
                    caption.sr { "Top keys by cost" }
                    thead { tr { th { "Key" } th { "Requests" } th { "Cost" } } }
                    tbody {
                        @for (id, st) in &keys {
                            tr { td { a href={ "/console/keys/" (id) } { (an::group_name(app, s, &GroupBy::ApiKey, id)) } } td.num { (st.requests) } td.num { (usd(st.cost_usd)) } }
                        }
                    }
                }
            }
            (closest_budgets(app, s, now))
        }
        @if s.workspace().is_none() {
            section.panel {
                h2 { "Recent alerts" }
                (super::activity::alerts_table(&alerts))
                p { a href="/console/alerts" { "All alerts" } }
            }
        }
    })
}

/// The budgets nearest their limit among what the signed-in key sees: keys, workspaces and
/// providers, by the share used, as their views show it.
fn closest_budgets(app: &AppState, s: &Signed, now: Millis) -> Markup {
    let state = app.ledger.state();
    // (share used, what, href, budget): labels are made for the ten shown only.
    type Candidate<'a> = (Decimal, Owner<'a>, BudgetRef, &'a Option<UsageLimit>);
    let mut found: Vec<Candidate> = Vec::new();
    let share = |r: &BudgetRef, l: &Option<UsageLimit>| {
        l.as_ref()
            .filter(|l| l.credit_limit > Decimal::ZERO)
            .map(|l| state.budget_used(r, l, now) / l.credit_limit)
    };
    let mut consider = |owner, r: BudgetRef, l| {
        if let Some(used) = share(&r, l) {
            found.push((used, owner, r, l));
        }
    };
    let may = |scope: &str| s.caller.key.has_scope(scope);
    let (workspaces, providers) = (may("workspaces.list"), may("providers.list"));
    for k in state
        .api_keys
        .values()
        .filter(|k| api_keys::may_list(&s.caller, k))
    {
        consider(
            Owner::Key(&k.name, &k.id),
            BudgetRef::ApiKey(k.id.clone()),
            &k.usage_limits,
        );
    }
    for w in state
        .workspaces
        .values()
        .filter(|w| workspaces && s.caller.sees(Some(&w.id)))
    {
        consider(
            Owner::Workspace(&w.name, &w.id),
            BudgetRef::Workspace(w.id.clone()),
            &w.usage_limits,
        );
    }
    for p in state
        .providers
        .values()
        .filter(|p| providers && s.caller.sees(Some(&p.workspace_id)))
    {
        consider(
            Owner::Provider(&p.name),
            BudgetRef::Provider(p.id.clone()),
            &p.usage_limits,
        );
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.label().cmp(&b.1.label())));
    found.truncate(10);
    let rows: Vec<(String, String, serde_json::Value)> = found
        .into_iter()
        .map(|(_, owner, r, l)| {
            (
                owner.label(),
                owner.href(),
                views::usage_limit(&state, r, l, now),
            )
        })
        .collect();
    html! {
        section.panel {
            h2 { "Budgets closest to exhaustion" }
            table {
                caption.sr { "Budgets by share used" }
                thead { tr { th { "Budget of" } th { "Used" } } }
                tbody {
                    @for (what, href, view) in &rows {
                        tr { td { a href=(href) { (what) } } td { (usage_bar(view)) } }
                    }
                }
            }
            @if rows.is_empty() { p.muted { "No budgets are set." } }
        }
    }
}

/// Whose budget a row of the overview shows.
enum Owner<'a> {
    Key(&'a str, &'a str),
    Workspace(&'a str, &'a str),
    Provider(&'a str),
}

impl Owner<'_> {
    fn label(&self) -> String {
        match self {
            Owner::Key(name, _) => format!("key {name}"),
            Owner::Workspace(name, _) => format!("workspace {name}"),
            Owner::Provider(name) => format!("provider {name}"),
        }
    }

    fn href(&self) -> String {
        match self {
            Owner::Key(_, id) => format!("/console/keys/{id}"),
            Owner::Workspace(_, id) => format!("/console/workspaces/{id}"),
            Owner::Provider(_) => "/console/providers".into(),
        }
    }
}
