//! What happened: the alert deliveries (e-mail and webhook: status, attempts, errors) and the
//! audit log of every admin change, as the API lists them.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};
use serde_json::Value;

use super::layout::{self, page, text};
use super::refusal;
use super::session::Signed;
use crate::control::audit_logs;
use crate::http::admin::notification_views;
use crate::http::extract::QueryMap;
use crate::http::AppState;

type App = State<Arc<AppState>>;

/// The alert deliveries as a table.
pub fn alerts_table(rows: &[Value]) -> Markup {
    html! {
        table {
            caption.sr { "Alert deliveries" }
            thead { tr { th { "When" } th { "Alert" } th { "Budget" } th { "Channel" } th { "Recipients" } th { "Status" } th { "Attempts" } th { "Error" } } }
            tbody {
                @for n in rows {
                    tr {
                        td { (text(&n["created_at"])) }
                        td { (text(&n["kind"])) }
                        td.mono { (text(&n["budget"])) }
                        td { (text(&n["channel"])) }
                        td { (text(&n["recipients"])) }
                        td { span class={ "status " (text(&n["status"])) } { (text(&n["status"])) } }
                        td { (text(&n["attempts"])) }
                        td { (text(&n["error"])) }
                    }
                }
            }
        }
        @if rows.is_empty() { p.muted { "No alerts have been sent." } }
    }
}

/// `GET /console/alerts`.
pub async fn alerts(State(app): App, s: Signed) -> Response {
    let body = match notification_views(&app, &s.caller, 500).await {
        Ok(rows) => alerts_table(&rows),
        Err(e) => html! { p.error role="alert" { (e.error.message) } },
    };
    page(&s, "Alerts", "/console/alerts", body).into_response()
}

/// `GET /console/audit`: filters by resource type and action, a page at a time.
pub async fn audit(State(app): App, s: Signed, QueryMap(mut q): QueryMap) -> Response {
    q.insert("page_size".into(), "50".into());
    let listed = audit_logs::list(&app.control, &s.caller, &q).await;
    let body = match listed {
        Ok(v) => {
            let empty = vec![];
            let rows = v["data"].as_array().unwrap_or(&empty);
            html! {
                form.search method="get" action="/console/audit" {
                    label for="resource_type" { "Resource" }
                    input #resource_type name="resource_type" value=[q.get("resource_type")] placeholder="api_key, integration, …";
                    label for="action" { "Action" }
                    input #action name="action" value=[q.get("action")] placeholder="create, update, delete";
                    button type="submit" { "Filter" }
                }
                table {
                    caption.sr { "Audit log" }
                    thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Resource" } th { "Name" } th { "Workspace" } th { "Changed" } } }
                    tbody {
                        @for e in rows {
                            tr {
                                td { (text(&e["timestamp"])) }
                                td { (text(&e["actor"]["name"])) }
                                td { (text(&e["action"])) }
                                td { (text(&e["resource_type"])) " " span.mono { (text(&e["resource_id"])) } }
                                td { (text(&e["resource_name"])) }
                                td { (text(&e["workspace_id"])) }
                                td { (e["changed_fields"].as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default()) }
                            }
                        }
                    }
                }
                (layout::pager("/console/audit", &q, v["total"].as_u64().unwrap_or(0), 50))
            }
        }
        Err(e) => layout::alert(&refusal(&e).1),
    };
    page(&s, "Audit log", "/console/audit", body).into_response()
}
