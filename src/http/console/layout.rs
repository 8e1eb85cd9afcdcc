//! The console's page shell (navigation, who is signed in, sign-out) and the pieces every page
//! shares: lists that search and paginate, the budget and rate-limit fields, a budget's usage
//! bar, and an API refusal shown next to the field it concerns.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::session::Signed;
use crate::control::ControlError;

/// The sections of the navigation: path and label.
const NAV: &[(&str, &str)] = &[
    ("/console", "Overview"),
    ("/console/analytics", "Analytics"),
    ("/console/keys", "API keys"),
    ("/console/integrations", "Integrations"),
    ("/console/providers", "Providers"),
    ("/console/workspaces", "Workspaces"),
    ("/console/configs", "Configs"),
    ("/console/alerts", "Alerts"),
    ("/console/audit", "Audit log"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Tollgate" }
            link rel="stylesheet" href="/console/assets/console.css";
            script src="/console/assets/console.js" defer {}
        }
    }
}

/// A page without navigation (sign-in, refusals before a session).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare { main #main { (body) } }
        }
    }
}

/// A console page: the navigation with `active` marked, who is signed in, and `body`.
pub fn page(s: &Signed, title: &str, active: &str, body: Markup) -> Markup {
    let key = &s.caller.key;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/console" { "Tollgate" }
                    nav aria-label="Sections" {
                        ul {
                            @for (path, label) in NAV {
                                li { a href=(path) aria-current=[(*path == active).then_some("page")] { (label) } }
                            }
                        }
                    }
                    div.who {
                        span title="Signed in with this key" { (key.name) " · " (key.masked) }
                        @if let Some(w) = s.workspace() { span.badge title="Only this workspace is visible" { "workspace " (w) } }
                        form method="post" action="/console/logout" {
                            input type="hidden" name="_csrf" value=(s.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page with a status (a refused form is shown again with 400, 403, 404 or 409).
pub fn answer(status: StatusCode, page: Markup) -> Response {
    (status, page).into_response()
}

/// A message in words, announced to screen readers (a refusal, a failed query).
pub fn alert(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

/// An API refusal as the whole of a page, with its status.
pub fn refused(s: &Signed, title: &str, active: &str, e: &ControlError) -> Response {
    let (status, m) = super::refusal(e);
    answer(status, page(s, title, active, alert(&m)))
}

/// The hidden CSRF field every form carries.
pub fn csrf(s: &Signed) -> Markup {
    html! { input type="hidden" name="_csrf" value=(s.csrf); }
}

/// What went wrong with a posted form: the API's message and the field it concerns, if any.
#[derive(Default)]
pub struct Problem {
    pub field: Option<&'static str>,
    pub message: String,
}

impl Problem {
    pub fn new(message: String, fields: &[&'static str]) -> Problem {
        Problem {
            field: super::form::field_of(&message, fields),
            message,
        }
    }

    /// The message, under the field it concerns (`name`), if it is this one.
    pub fn at(&self, name: &str) -> Markup {
        html! {
            @if self.field == Some(name) && !self.message.is_empty() {
                p.error id={ "err-" (name) } role="alert" { (self.message) }
            }
        }
    }

    /// The message at the top of the form when it names no field.
    pub fn general(&self) -> Markup {
        html! {
            @if self.field.is_none() && !self.message.is_empty() {
                p.error role="alert" { (self.message) }
            }
        }
    }

    /// `aria-describedby` of `name`'s control while the message concerns it.
    pub fn described(&self, name: &str) -> Option<String> {
        (self.field == Some(name)).then(|| format!("err-{name}"))
    }
}

/// The search box of a list page (`search`), keeping its other filters.
pub fn search_box(path: &str, q: &HashMap<String, String>, keep: &[&str], hint: &str) -> Markup {
    html! {
        form.search method="get" action=(path) role="search" {
            @for k in keep { @if let Some(v) = q.get(*k) { input type="hidden" name=(k) value=(v); } }
            label for="search" { "Search" }
            input #search type="search" name="search" value=[q.get("search")] placeholder=(hint);
            button type="submit" { "Search" }
        }
    }
}

/// Page links under a list of `total` items shown `size` at a time.
pub fn pager(path: &str, q: &HashMap<String, String>, total: u64, size: usize) -> Markup {
    let current: u64 = q
        .get("current_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let pages = total.div_ceil(size.max(1) as u64).max(1);
    let link = |page: u64| {
        let mut q = q.clone();
        q.insert("current_page".into(), page.to_string());
        let mut pairs: Vec<_> = q.into_iter().collect();
        pairs.sort();
        format!(
            "{path}?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    };
    html! {
        nav.pager aria-label="Pages" {
            span { (total) " in all · page " (current.saturating_add(1)) " of " (pages) }
            @if current > 0 { a href=(link(current - 1)) rel="prev" { "← Previous" } }
            @if current.saturating_add(1) < pages { a href=(link(current + 1)) rel="next" { "Next →" } }
        }
    }
}

/// A JSON value as text for a cell: strings bare, null empty.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A budget (`usage_limits` as the API shows it) as a usage bar with its status and next reset.
pub fn usage_bar(limit: &Value) -> Markup {
    if limit.is_null() {
        return html! { span.muted { "no budget" } };
    }
    let used = text(&limit["current_usage"]);
    let max = text(&limit["credit_limit"]);
    let unit = if limit["type"] == "tokens" {
        " tokens"
    } else {
        " USD"
    };
    let status = text(&limit["status"]);
    html! {
        div.usage {
            meter min="0" max=(max) value=(used) high=[limit.get("alert_threshold").filter(|t| !t.is_null()).map(text)]
                aria-label="Budget used" { (used) " of " (max) }
            span.figures { (used) " / " (max) (unit) }
            span class={ "status " (status) } { (status) }
            @if let Some(r) = limit["next_usage_reset_at"].as_str() { span.muted { "resets " (r) } }
        }
    }
}

/// The "Add Budget Limit" toggle and its fields (names prefixed by `prefix`).
pub fn budget_fields(prefix: &str, p: &Problem) -> Markup {
    let id = |n: &str| format!("{prefix}{n}");
    html! {
        fieldset.toggle {
            legend {
                input type="checkbox" id=(id("budget_on")) name=(id("budget_on")) data-toggle=(id("budget-fields"));
                label for=(id("budget_on")) { "Add Budget Limit" }
            }
            div id=(id("budget-fields")) {
                label for=(id("budget_type")) { "Limit on" }
                select id=(id("budget_type")) name=(id("budget_type")) {
                    option value="cost" { "Cost (USD)" }
                    option value="tokens" { "Tokens" }
                }
                label for=(id("credit_limit")) { "Budget limit" }
                input id=(id("credit_limit")) name=(id("credit_limit")) inputmode="decimal" aria-describedby=[p.described("credit_limit")];
                (p.at("credit_limit"))
                label for=(id("alert_threshold")) { "Alert threshold" }
                input id=(id("alert_threshold")) name=(id("alert_threshold")) inputmode="decimal" aria-describedby=[p.described("alert_threshold")];
                (p.at("alert_threshold"))
                label for=(id("periodic_reset")) { "Periodic reset" }
                select id=(id("periodic_reset")) name=(id("periodic_reset")) {
                    option value="" { "Never" }
                    option value="weekly" { "Weekly (Sunday 00:00 UTC)" }
                    option value="monthly" { "Monthly (1st, 00:00 UTC)" }
                }
                (p.at("periodic_reset"))
            }
        }
    }
}

/// The "Add Rate Limit" toggle and its fields (names prefixed by `prefix`).
pub fn rate_fields(prefix: &str, p: &Problem) -> Markup {
    let id = |n: &str| format!("{prefix}{n}");
    html! {
        fieldset.toggle {
            legend {
                input type="checkbox" id=(id("rate_on")) name=(id("rate_on")) data-toggle=(id("rate-fields"));
                label for=(id("rate_on")) { "Add Rate Limit" }
            }
            div id=(id("rate-fields")) {
                label for=(id("rate_type")) { "Limit" }
                select id=(id("rate_type")) name=(id("rate_type")) {
                    option value="requests" { "Requests" }
                    option value="tokens" { "Tokens" }
                }
                label for=(id("rate_value")) { "Rate limit value" }
                input id=(id("rate_value")) name=(id("rate_value")) inputmode="numeric" aria-describedby=[p.described("rate_limits")];
                label for=(id("rate_unit")) { "Per" }
                select id=(id("rate_unit")) name=(id("rate_unit")) {
                    option value="rpm" { "minute" }
                    option value="rph" { "hour" }
                    option value="rpd" { "day" }
                }
                (p.at("rate_limits"))
            }
        }
    }
}

/// A rate limit in words: "300 requests per minute".
pub fn rate_text(r: &Value) -> String {
    let per = match r["unit"].as_str().unwrap_or("") {
        "rps" => "second",
        "rpm" => "minute",
        "rph" => "hour",
        "rpd" => "day",
        "rpw" => "week",
        other => other,
    };
    format!("{} {} per {per}", text(&r["value"]), text(&r["type"]))
}

/// Limits already set, shown read-only (the API refuses to change a set budget or rate limit
/// through an update; they are removed and set again, or reset).
pub fn limits_summary(usage: &Value, rates: &Value) -> Markup {
    let rates: Vec<&Value> = match rates {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        one => vec![one],
    };
    html! {
        dl.limits {
            dt { "Budget" }
            dd { (usage_bar(usage))
                @if !usage.is_null() {
                    span.muted { " · " (text(&usage["type"])) " · alert at " (text(&usage["alert_threshold"])) " · reset " (usage["periodic_reset"].as_str().unwrap_or("never")) }
                }
            }
            dt { "Rate limits" }
            dd {
                @if rates.is_empty() { span.muted { "none" } }
                @for r in rates { span.chip { (rate_text(r)) } }
            }
        }
    }
}
