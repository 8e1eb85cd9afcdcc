//! Usage-limit policies (`/policies/usage-limits`): a budget over every request matching some
//! conditions (e.g. `metadata.department = engineering`), optionally one budget per value of a
//! `group_by` key. The budget fields may be at the top level (Portkey's shape) or under
//! `usage_limits`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::domain::budget::BudgetRef;
use crate::domain::limits::LimitOwner;
use crate::domain::*;

const KEYS: &[&str] = &["workspace_id", "api_key", "provider", "model"];

fn check_key(k: &str, at: &str) -> Result<()> {
    let ok = KEYS.contains(&k) || k.strip_prefix("metadata.").is_some_and(|m| !m.is_empty());
    ok.then_some(()).ok_or_else(|| {
        invalid(format!(
            "{at}: {k:?} is not one of workspace_id, api_key, provider, model, metadata.<key>"
        ))
    })
}

fn conditions_of(b: &Body) -> Result<Vec<Condition>> {
    let Some(items) = b.get("conditions") else {
        return Ok(Vec::new());
    };
    let items = items
        .as_array()
        .ok_or_else(|| invalid("conditions must be an array"))?;
    items
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let c =
                Body::of(c).map_err(|_| invalid(format!("conditions[{n}] must be an object")))?;
            let key = c.required_str("key")?.to_owned();
            check_key(&key, &format!("conditions[{n}].key"))?;
            let value = c.required_str("value")?.to_owned();
            Ok(Condition { key, value })
        })
        .collect()
}

fn group_by_of(b: &Body) -> Result<Option<String>> {
    let key = match b.get("group_by") {
        None => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(Value::Array(a)) if a.len() == 1 => a[0]
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("group_by[0].key is required"))?
            .to_owned(),
        Some(_) => return Err(invalid("group_by must be one key")),
    };
    check_key(&key, "group_by")?;
    Ok(Some(key))
}

fn budget_value<'a>(b: &Body<'a>) -> Option<&'a Value> {
    b.get("usage_limits")
        .or_else(|| b.get("credit_limit").map(|_| &Value::Null))
}

fn budget_of(
    body: &Value,
    b: &Body,
    now: Millis,
) -> Result<Option<crate::domain::limits::UsageLimit>> {
    match budget_value(b) {
        Some(Value::Null) => new_budget(Some(body), now),
        other => new_budget(other, now),
    }
}

fn find(state: &State, caller: &Caller, id: &str) -> Result<UsagePolicy> {
    state
        .policies
        .get(id)
        .filter(|p| caller.key.workspace_id.is_none() || p.workspace_id == caller.key.workspace_id)
        .cloned()
        .ok_or_else(|| ControlError::NotFound(format!("policy {id} not found")))
}

fn view(p: &UsagePolicy, state: &State) -> Value {
    let now = Millis::now();
    let budget = views::usage_limit(
        state,
        BudgetRef::Policy {
            id: p.id.clone(),
            group: None,
        },
        &p.usage_limits,
        now,
    );
    json!({
        "id": p.id, "name": p.name, "workspace_id": p.workspace_id,
        "conditions": p.conditions, "group_by": p.group_by.as_ref().map(|k| json!([{"key": k}])),
        "usage_limits": budget, "rate_limits": views::rate_limits(&p.rate_limits),
        "created_at": p.created_at.to_iso(), "last_updated_at": p.updated_at.to_iso(),
        "object": "usage-limits-policy",
    })
}

/// `POST /policies/usage-limits`.
pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("workspaces.update")?;
    let b = Body::of(body)?;
    let now = Millis::now();
    let usage_limits = budget_of(body, &b, now)?;
    let rate_limits = new_rate_limits(b.get("rate_limits"), LimitOwner::Other)?;
    if usage_limits.is_none() && rate_limits.is_empty() {
        return Err(invalid(
            "a policy needs a budget (credit_limit) or rate_limits",
        ));
    }
    let command = ctl.ledger.command().await;
    let p = {
        let state = ctl.ledger.state();
        let workspace_id = match b.str("workspace_id")? {
            Some(w) => Some(caller.workspace_for(&state, Some(w))?),
            None => caller.key.workspace_id.clone(),
        };
        UsagePolicy {
            id: new_id(),
            name: b.str("name")?.unwrap_or("policy").to_owned(),
            workspace_id,
            conditions: conditions_of(&b)?,
            group_by: group_by_of(&b)?,
            usage_limits,
            rate_limits,
            limits_set_by: caller.authority(),
            created_at: now,
            updated_at: now,
        }
    };
    let out = json!({"id": p.id, "object": "usage-limits-policy"});
    upsert(command, caller, Entity::Policy(p)).await?;
    Ok(out)
}

/// `GET /policies/usage-limits`: the policies the caller sees, in creation order.
pub fn list(ctl: &Control, caller: &Caller, q: &HashMap<String, String>) -> Result<Value> {
    caller.require("workspaces.read")?;
    let page = Page::from_query(q, 100)?;
    let state = ctl.ledger.state();
    let mut items: Vec<&UsagePolicy> = state
        .policies
        .values()
        .filter(|p| caller.key.workspace_id.is_none() || p.workspace_id == caller.key.workspace_id)
        .collect();
    items.sort_by_key(|p| (p.created_at, p.id.clone()));
    Ok(page.render(items, |p| view(p, &state)))
}

/// `GET /policies/usage-limits/{id}`.
pub fn retrieve(ctl: &Control, caller: &Caller, id: &str) -> Result<Value> {
    caller.require("workspaces.read")?;
    let state = ctl.ledger.state();
    Ok(view(&find(&state, caller, id)?, &state))
}

/// `PUT /policies/usage-limits/{id}`: its limits (its conditions never change).
pub async fn update(ctl: &Control, caller: &Caller, id: &str, body: &Value) -> Result<Value> {
    caller.require("workspaces.update")?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let mut p = find(&ctl.ledger.state(), caller, id)?;
    let before = (p.usage_limits.clone(), p.rate_limits.clone());
    let now = Millis::now();
    if let Some(n) = b.str("name")? {
        p.name = n.to_owned();
    }
    if b.get("conditions").is_some() || b.get("group_by").is_some() {
        return Err(invalid(
            "a policy's conditions and group_by cannot change; create a new policy",
        ));
    }
    let given = match budget_value(&b) {
        Some(Value::Null) if b.get("credit_limit").is_some() => Some(body),
        _ => b.0.get("usage_limits"),
    };
    update_budget(
        &mut p.usage_limits,
        given,
        b.bool("reset_usage")?.unwrap_or(false),
        now,
    )?;
    update_rate_limits(&mut p.rate_limits, b.get("rate_limits"), LimitOwner::Other)?;
    let after = (p.usage_limits.clone(), p.rate_limits.clone());
    // A policy always has limits (it is made of them).
    p.limits_set_by = caller.govern(false, p.limits_set_by, true, &before, &after)?;
    p.updated_at = now;
    upsert(command, caller, Entity::Policy(p)).await?;
    Ok(json!({}))
}

/// `DELETE /policies/usage-limits/{id}`.
pub async fn delete(ctl: &Control, caller: &Caller, id: &str) -> Result<Value> {
    caller.require("workspaces.update")?;
    let command = ctl.ledger.command().await;
    let p = find(&ctl.ledger.state(), caller, id)?;
    caller.may_govern(false, Some(p.limits_set_by))?;
    remove(command, caller, EntityKind::Policy, p.id).await?;
    Ok(json!({}))
}
