//! `GET /v1/audit-logs`: the audit trail of admin changes, newest first, from the usage store
//! (where it outlives the config topic's compaction). Organisation keys see every entry; a
//! workspace key only its own workspace's, whatever it asks for.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::Control;
use super::{invalid, Caller, Page, Result};
use crate::domain::{Action, AuditEntry, AuditQuery, EntityKind, Millis};

/// The scope that lists the audit trail.
pub const SCOPE: &str = "audit_logs.list";

/// Lists audit entries by time (`start_time`, `end_time`: ISO-8601, inclusive), actor (key id),
/// resource (`resource_type`, `resource_id`), `action` and `workspace_id`, a page at a time.
pub async fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    caller.require(SCOPE)?;
    let query = query_of(ctl, caller, q)?;
    ctl.ledger.await_audit().await;
    let (total, rows) = ctl.store.audit(query).await?;
    let data: Vec<Value> = rows.iter().map(view).collect();
    Ok(json!({"object": "list", "total": total, "data": data}))
}

/// A query parameter, by its snake_case or camelCase name; empty means absent.
fn param<'a>(q: &'a HashMap<String, String>, snake: &str, camel: &str) -> Option<&'a str> {
    q.get(snake)
        .or_else(|| q.get(camel))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn time(q: &HashMap<String, String>, snake: &str, camel: &str) -> Result<Option<Millis>> {
    param(q, snake, camel)
        .map(|v| {
            Millis::parse_iso(v).ok_or_else(|| {
                invalid(format!(
                    "{snake} must be an ISO-8601 time, e.g. 2025-01-31T00:00:00Z"
                ))
            })
        })
        .transpose()
}

fn query_of(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<AuditQuery> {
    let page = Page::from_query(q, 50)?;
    let resource_type = param(q, "resource_type", "resourceType")
        .map(|v| {
            EntityKind::parse(v).ok_or_else(|| {
                invalid(format!(
                    "resource_type must be one of {}",
                    EntityKind::ALL.map(EntityKind::as_str).join(", ")
                ))
            })
        })
        .transpose()?;
    let action = param(q, "action", "action")
        .map(|v| {
            Action::parse(v).ok_or_else(|| invalid("action must be created, updated or deleted"))
        })
        .transpose()?;
    let from = time(q, "start_time", "startTime")?;
    let to = time(q, "end_time", "endTime")?;
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(invalid("start_time must not be after end_time"));
        }
    }
    Ok(AuditQuery {
        from,
        to,
        actor: param(q, "actor", "actor").map(str::to_owned),
        resource_type,
        resource_id: param(q, "resource_id", "resourceId").map(str::to_owned),
        action,
        workspace_id: workspace_of(ctl, caller, param(q, "workspace_id", "workspaceId"))?,
        offset: (page.current as u64).saturating_mul(page.size as u64),
        limit: page.size as u64,
    })
}

/// A workspace key is pinned to its own workspace (asking for another is refused); an
/// organisation key names any workspace by id or slug, including one since deleted (by id).
fn workspace_of(ctl: &Control, caller: &Caller, requested: Option<&str>) -> Result<Option<String>> {
    let state = ctl.ledger.state();
    if caller.key.workspace_id.is_some() {
        return caller.workspace_for(&state, requested).map(Some);
    }
    Ok(requested.map(|r| {
        state
            .workspace(r)
            .map_or_else(|| r.to_owned(), |w| w.id.clone())
    }))
}

fn view(e: &AuditEntry) -> Value {
    let actor = e.actor.as_ref().map(|a| {
        json!({"key_id": a.key_id, "name": a.key_name, "created_by": a.created_by,
            "workspace_id": a.workspace_id})
    });
    json!({
        "id": e.id,
        "object": "audit-log",
        "timestamp": e.at.to_iso(),
        "actor": actor,
        "action": e.action.as_str(),
        "resource_type": e.resource_type.as_str(),
        "resource_id": e.resource_id,
        "resource_name": e.resource_name,
        "workspace_id": e.workspace_id,
        "changed_fields": e.changed_fields,
    })
}
