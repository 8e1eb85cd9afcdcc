//! The JSON objects the SDK reads, rendered from entities. Timestamps are ISO strings, ints stay
//! ints, secrets appear only masked, and the SDK-strict shapes of §2.7 are honoured.

use serde_json::{json, Value};

use crate::domain::budget::{BudgetRef, Windowed};
use crate::domain::limits::{RateLimit, UsageLimit};
use crate::domain::pricing::decimal_json;
use crate::domain::*;

/// A budget as the API shows it (exact decimals as JSON numbers), with what it has counted in
/// its current window and when that window ends.
pub fn usage_limit(state: &State, r: BudgetRef, l: &Option<UsageLimit>, now: Millis) -> Value {
    let Some(l) = l else { return Value::Null };
    let mut v = serde_json::to_value(l).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("set_at");
        o.remove("reset_at");
        let used = state.budget_used(&r, l, now);
        o.insert(
            "next_usage_reset_at".into(),
            l.next_reset(now).map_or(Value::Null, |t| json!(t.to_iso())),
        );
        o.insert("current_usage".into(), decimal_json(used));
        o.insert(
            "status".into(),
            json!(if used >= l.credit_limit {
                "exhausted"
            } else {
                "active"
            }),
        );
    }
    v
}

/// Budgets as the one-element array used by workspaces and provisioning writes.
pub fn usage_limit_array(
    state: &State,
    r: BudgetRef,
    l: &Option<UsageLimit>,
    now: Millis,
) -> Value {
    match l {
        None => json!([]),
        Some(_) => json!([usage_limit(state, r, l, now)]),
    }
}

/// `exhausted` while a budget is used up, `expired` after `expires_at`, else `active`.
fn entity_status(
    state: &State,
    r: BudgetRef,
    l: &Option<UsageLimit>,
    expires_at: Option<Millis>,
    now: Millis,
) -> &'static str {
    match l {
        Some(l) if state.budget_used(&r, l, now) >= l.credit_limit => "exhausted",
        _ => status(expires_at, now),
    }
}

/// Rate limits as the API shows them (a list).
pub fn rate_limits(r: &[RateLimit]) -> Value {
    serde_json::to_value(r).unwrap_or_else(|_| json!([]))
}

/// The first rate limit as an object, or null (the SDK's `Dict` in list items).
pub fn rate_limit_object(r: &[RateLimit]) -> Value {
    r.first().map_or(Value::Null, |l| {
        serde_json::to_value(l).unwrap_or(Value::Null)
    })
}

fn usage(t: Totals) -> Value {
    json!({"cost": decimal_json(t.cost_usd), "tokens": t.tokens, "requests": t.requests})
}

fn iso(m: Millis) -> Value {
    Value::String(m.to_iso())
}

fn opt_iso(m: Option<Millis>) -> Value {
    m.map_or(Value::Null, iso)
}

/// Active, or expired once `expires_at` has passed.
fn status(expires_at: Option<Millis>, now: Millis) -> &'static str {
    if expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

/// A workspace; `with_users` adds its (empty) `users`, as retrieve answers.
pub fn workspace(w: &Workspace, state: &State, with_users: bool) -> Value {
    let now = Millis::now();
    let r = || BudgetRef::Workspace(w.id.clone());
    let mut v = json!({
        "id": w.id, "slug": w.slug, "name": w.name, "description": w.description,
        "created_at": iso(w.created_at), "last_updated_at": iso(w.updated_at),
        "defaults": w.defaults, "usage_limits": usage_limit_array(state, r(), &w.usage_limits, now),
        "rate_limits": rate_limits(&w.rate_limits),
        "is_default": i32::from(w.slug == crate::domain::DEFAULT_WORKSPACE_SLUG),
        "status": entity_status(state, r(), &w.usage_limits, None, now),
        "current_usage": usage(state.usage_of(EntityKind::Workspace, &w.id)),
        "object": "workspace",
    });
    if with_users {
        v["users"] = json!([]);
    }
    v
}

/// An integration; `full` (retrieve) adds its masked key, model allow-list and type.
pub fn integration(i: &Integration, state: &State, full: bool) -> Value {
    let mut configurations = i.configurations.clone();
    configurations.remove("custom_headers");
    if i.configurations.contains_key("custom_headers") {
        configurations.insert("masked_custom_headers".into(), json!("****"));
    }
    for (name, sealed) in &i.secrets {
        configurations.insert(name.clone(), json!(sealed.masked));
    }
    let mut v = json!({
        "id": i.id, "slug": i.slug, "name": i.name, "description": i.description,
        "ai_provider_id": i.ai_provider_id, "workspace_id": i.workspace_id,
        "organisation_id": state.organisation.as_ref().map(|o| o.id.clone()),
        "configurations": configurations,
        "created_at": iso(i.created_at), "last_updated_at": iso(i.updated_at),
        "status": "active", "object": "integration",
    });
    if full {
        v["masked_key"] = json!(i.key.as_ref().map(|k| k.masked.clone()));
        v["allow_all_models"] = json!(i.allow_all_models);
        v["type"] = json!(if i.workspace_id.is_some() {
            "workspace"
        } else {
            "organisation"
        });
        v["global_workspace_access"] = i.global_workspace_access.clone().unwrap_or(Value::Null);
        v["global_workspace_access_settings"] =
            i.global_workspace_access.clone().unwrap_or(Value::Null);
        v["owner_id"] = Value::Null;
        v["workspace_count"] = json!(i.workspaces.values().filter(|a| a.enabled).count());
        v["current_usage"] = usage(state.usage_of(EntityKind::Integration, &i.id));
    }
    v
}

/// An integration as a workspace key sees it: usage and provisioning of its own workspace only
/// (what its providers on the integration used), never the integration-wide figures that
/// include other workspaces.
pub fn integration_for_workspace(i: &Integration, state: &State, workspace_id: &str) -> Value {
    let mut v = integration(i, state, true);
    let mut t = Totals::default();
    for p in state
        .providers
        .values()
        .filter(|p| p.integration_id == i.id && p.workspace_id == workspace_id)
    {
        t.merge(state.usage_of(EntityKind::Provider, &p.id));
    }
    v["current_usage"] = usage(t);
    v["workspace_count"] = json!(u8::from(i.serves_workspace(workspace_id)));
    v
}

/// One workspace's provisioning; limits as single objects (SDK-strict, §2.7).
pub fn workspace_access(i: &Integration, a: &WorkspaceAccess, state: &State) -> Value {
    let r = BudgetRef::Access {
        integration: i.id.clone(),
        workspace: a.workspace_id.clone(),
    };
    json!({
        "id": a.workspace_id,
        "slug": state.workspaces.get(&a.workspace_id).map(|w| w.slug.clone()),
        "enabled": a.enabled,
        "usage_limits": usage_limit(state, r, &a.usage_limits, Millis::now()),
        "rate_limits": rate_limit_object(&a.rate_limits),
        "created_at": iso(a.created_at), "last_updated_at": iso(a.updated_at),
    })
}

/// An entry of an integration's model provisioning.
pub fn model_entry(m: &ModelEntry) -> Value {
    json!({
        "slug": m.slug, "name": m.slug, "enabled": m.enabled, "is_custom": m.is_custom,
        "is_finetune": m.is_finetune, "base_model_slug": m.base_model_slug,
        "pricing_config": m.pricing_config,
        "created_at": iso(m.created_at), "last_updated_at": iso(m.updated_at),
    })
}

/// A provider / virtual key. `list_item` makes `rate_limits` a single object (SDK-strict).
pub fn provider(p: &Provider, state: &State, now: Millis, list_item: bool) -> Value {
    let integration = state.integrations.get(&p.integration_id);
    let t = state.usage_of(EntityKind::Provider, &p.id);
    json!({
        "id": p.id, "slug": p.slug, "name": p.name, "note": p.note,
        "integration_id": integration.map(|i| i.slug.clone()),
        "workspace_id": p.workspace_id,
        "provider": integration.map(|i| i.ai_provider_id.clone()),
        "status": entity_status(state, BudgetRef::Provider(p.id.clone()), &p.usage_limits, p.expires_at, now),
        "usage_limits": usage_limit(state, BudgetRef::Provider(p.id.clone()), &p.usage_limits, now),
        "rate_limits": if list_item { rate_limit_object(&p.rate_limits) } else { rate_limits(&p.rate_limits) },
        "reset_usage": Value::Null,
        "expires_at": opt_iso(p.expires_at),
        "model_config": Value::Null,
        "current_usage": usage(t),
        "created_at": iso(p.created_at), "last_updated_at": iso(p.updated_at),
        "object": "provider",
    })
}

/// A virtual key: the provider object under its legacy name.
pub fn virtual_key(p: &Provider, state: &State, now: Millis) -> Value {
    let mut v = provider(p, state, now, false);
    v["object"] = json!("virtual-key");
    v
}

/// A config; `full` (retrieve) adds the config itself and its version.
pub fn config(c: &RouteConfig, state: &State, full: bool) -> Value {
    let mut v = json!({
        "id": c.id, "slug": c.slug, "name": c.name,
        "organisation_id": state.organisation.as_ref().map(|o| o.id.clone()),
        "workspace_id": c.workspace_id, "is_default": i32::from(c.is_default),
        "status": c.status, "owner_id": c.owner_id, "updated_by": c.owner_id,
        "created_at": iso(c.created_at), "last_updated_at": iso(c.updated_at),
        "object": "config",
    });
    if full {
        v["config"] = c.config.clone();
        v["format"] = json!("json");
        v["type"] = json!("ORG_CONFIG");
        v["version_id"] = json!(c.version_id);
    }
    v
}

/// An API key (never its secret).
pub fn api_key(k: &ApiKey, state: &State, now: Millis) -> Value {
    json!({
        "id": k.id, "key": k.masked, "name": k.name, "description": k.description,
        "type": k.kind.as_str(),
        "organisation_id": state.organisation.as_ref().map(|o| o.id.clone()),
        "workspace_id": k.workspace_id, "user_id": k.user_id,
        "status": entity_status(state, BudgetRef::ApiKey(k.id.clone()), &k.usage_limits, k.expires_at, now),
        "created_at": iso(k.created_at), "last_updated_at": iso(k.updated_at),
        "creation_mode": k.creation_mode,
        "rate_limits": rate_limits(&k.rate_limits),
        "usage_limits": usage_limit(state, BudgetRef::ApiKey(k.id.clone()), &k.usage_limits, now),
        "reset_usage": Value::Null,
        "scopes": k.scopes, "defaults": k.defaults, "alert_emails": k.alert_emails,
        "rotation_policy": k.rotation_policy,
        "expires_at": opt_iso(k.expires_at),
        "current_usage": usage(state.usage_of(EntityKind::ApiKey, &k.id)),
        "object": "api-key",
    })
}
