//! Workspace provisioning of organisation integrations: which workspaces an integration serves,
//! with which per-workspace limits, "All Workspaces" (`global_workspace_access`, also applied to
//! workspaces created later) and "apply to every workspace", and the default providers it creates.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::*;
use crate::domain::limits::{LimitOwner, RateLimit, UsageLimit};

/// Checks `global_workspace_access` (`{enabled, usage_limits[≤1], rate_limits[≤1]}`) and returns
/// it normalised, budgets stamped with `now`.
pub(super) fn global_access_of(v: Option<&Value>, now: Millis) -> Result<Option<Value>> {
    let Some(v) = v else { return Ok(None) };
    let g = Body::of(v).map_err(|_| invalid("global_workspace_access must be an object"))?;
    let enabled = g
        .bool("enabled")?
        .ok_or_else(|| invalid("global_workspace_access.enabled is required"))?;
    let usage = new_budget(g.get("usage_limits"), now)
        .map_err(|e| invalid(format!("global_workspace_access.{e}")))?;
    let rate = new_rate_limits(g.get("rate_limits"), LimitOwner::Other)
        .map_err(|e| invalid(format!("global_workspace_access.{e}")))?;
    Ok(Some(
        json!({"enabled": enabled, "usage_limits": usage.map(|u| vec![u]).unwrap_or_default(), "rate_limits": rate}),
    ))
}

/// `global_workspace_access` when "All Workspaces" is on.
fn global_enabled(i: &Integration) -> Option<&Value> {
    i.global_workspace_access
        .as_ref()
        .filter(|g| g["enabled"] == true)
}

/// The limits `global_workspace_access` gives a workspace at `now` (a budget counts from then).
fn global_limits(g: &Value, now: Millis) -> Result<(Option<UsageLimit>, Vec<RateLimit>)> {
    let usage = g["usage_limits"]
        .get(0)
        .map(|u| serde_json::from_value::<UsageLimit>(u.clone()))
        .transpose()
        .map_err(|e| invalid(format!("global_workspace_access.usage_limits: {e}")))?
        .map(|mut u| {
            u.set_at = now;
            u.reset_at = None;
            u
        });
    let rate = serde_json::from_value(g["rate_limits"].clone())
        .map_err(|e| invalid(format!("global_workspace_access.rate_limits: {e}")))?;
    Ok((usage, rate))
}

/// Grants `workspace_id` access with the global limits; returns its default provider, unless
/// `with_provider` is off or the slug is taken there (access is granted all the same: the
/// workspace can add a provider of its own).
fn grant_global(
    state: &State,
    i: &mut Integration,
    workspace_id: &str,
    g: &Value,
    with_provider: bool,
    now: Millis,
) -> Result<Option<Provider>> {
    let (usage_limits, rate_limits) = global_limits(g, now)?;
    let created_at = i.workspaces.get(workspace_id).map_or(now, |a| a.created_at);
    let access = WorkspaceAccess {
        workspace_id: workspace_id.to_owned(),
        enabled: true,
        usage_limits,
        rate_limits,
        created_at,
        updated_at: now,
    };
    i.workspaces.insert(workspace_id.to_owned(), access);
    if !with_provider {
        return Ok(None);
    }
    match default_provider(state, i, workspace_id, None, now) {
        Err(ControlError::Conflict(_)) => Ok(None),
        other => other,
    }
}

/// "All Workspaces": grants every existing workspace not yet enabled (except those in `skip`,
/// which the same call sets itself) access with the global limits.
pub(super) fn grant_all_existing(
    state: &State,
    i: &mut Integration,
    skip: &BTreeSet<String>,
    with_provider: bool,
    now: Millis,
) -> Result<Vec<Provider>> {
    let Some(g) = global_enabled(i).cloned() else {
        return Ok(Vec::new());
    };
    let mut providers = Vec::new();
    for ws in state.workspaces.keys() {
        if skip.contains(ws) || i.serves_workspace(ws) {
            continue;
        }
        providers.extend(grant_global(state, i, ws, &g, with_provider, now)?);
    }
    Ok(providers)
}

/// "Apply to every workspace where this integration is enabled": sets the global limits on
/// each (except those in `skip`). An identical budget is kept, so its count does not restart.
fn override_existing(i: &mut Integration, skip: &BTreeSet<String>, now: Millis) -> Result<()> {
    let g = i.global_workspace_access.clone().ok_or_else(|| {
        invalid("override_existing_workspaces_access needs global_workspace_access with the limits to apply")
    })?;
    let (usage, rate) = global_limits(&g, now)?;
    for a in i.workspaces.values_mut() {
        if !a.enabled || skip.contains(&a.workspace_id) {
            continue;
        }
        let same = match (&usage, &a.usage_limits) {
            (Some(new), Some(old)) => {
                let mut new = new.clone();
                new.set_at = old.set_at;
                new.reset_at = old.reset_at;
                &new == old
            }
            (None, None) => true,
            _ => false,
        };
        if !same {
            a.usage_limits = usage.clone();
        }
        a.rate_limits = rate.clone();
        a.updated_at = now;
    }
    Ok(())
}

/// Provisioning for a workspace created just now: every organisation integration whose
/// `global_workspace_access` is enabled grants it access with those limits and a default provider.
pub fn provision_new_workspace(
    state: &State,
    workspace_id: &str,
    now: Millis,
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    for i in state
        .integrations
        .values()
        .filter(|i| i.workspace_id.is_none() && !i.implicit)
    {
        let Some(g) = global_enabled(i).cloned() else {
            continue;
        };
        let mut i = Integration::clone(i);
        let provider = grant_global(state, &mut i, workspace_id, &g, true, now)?;
        changes.extend(provider.map(|p| Change::Upsert(Entity::Provider(p))));
        changes.push(Change::Upsert(Entity::Integration(i)));
    }
    Ok(changes)
}

/// A provider auto-created for a workspace that was given an integration.
pub(super) fn default_provider(
    state: &State,
    i: &Integration,
    workspace_id: &str,
    slug: Option<&str>,
    now: Millis,
) -> Result<Option<Provider>> {
    let slug = slug.unwrap_or(&i.slug);
    check_new_slug(slug, state.providers.contains_key(slug))?;
    if let Some(existing) = state.provider(slug, Some(workspace_id)) {
        if existing.integration_id == i.id {
            return Ok(None);
        }
        return Err(ControlError::Conflict(format!(
            "provider slug {slug} is taken in that workspace"
        )));
    }
    Ok(Some(Provider {
        id: new_id(),
        slug: slug.to_owned(),
        name: i.name.clone(),
        note: Some(format!("Created by provisioning integration {}", i.slug)),
        integration_id: i.id.clone(),
        workspace_id: workspace_id.to_owned(),
        origin: ProviderOrigin::Provisioned,
        usage_limits: None,
        rate_limits: vec![],
        limits_set_by: Authority::Organisation,
        expires_at: None,
        created_at: now,
        updated_at: now,
    }))
}

/// `PUT /integrations/{slug}/workspaces`: grant or revoke workspaces, with their limits.
pub async fn update_workspaces(
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    body: &Value,
) -> Result<Value> {
    caller.require("organisation_integrations.update")?;
    caller.require_organisation("changing an integration's workspace provisioning")?;
    let b = Body::of(body)?;
    execute(ctl, caller, |state| {
        let now = Millis::now();
        let mut i = find(state, caller, slug)?;
        if i.workspace_id.is_some() {
            return Err(invalid(
                "a workspace-scoped integration cannot be provisioned to other workspaces",
            ));
        }
        let mut p = Provisioning {
            state,
            b: &b,
            create_default: b.bool("create_default_provider")?.unwrap_or(true),
            now,
            explicit: BTreeSet::new(),
            providers: Vec::new(),
        };
        for (n, item) in b.array("workspaces")?.iter().enumerate() {
            p.workspace(&mut i, n, item)?;
        }
        p.global(&mut i)?;
        i.updated_at = now;
        Ok(with_providers(i, p.providers))
    })
    .await
}

/// A `PUT /integrations/{slug}/workspaces` request being applied to an integration.
struct Provisioning<'a> {
    state: &'a State,
    b: &'a Body<'a>,
    /// The request's `create_default_provider` (each workspace may say otherwise).
    create_default: bool,
    now: Millis,
    /// The workspaces the request lists: "All Workspaces" and "apply to every workspace" leave
    /// them as the request sets them.
    explicit: BTreeSet<String>,
    /// The default providers made.
    providers: Vec<Provider>,
}

impl Provisioning<'_> {
    /// `workspaces[n]`: grants or revokes the workspace, with its limits, and makes its default
    /// provider if asked.
    fn workspace(&mut self, i: &mut Integration, n: usize, item: &Value) -> Result<()> {
        let now = self.now;
        let w =
            Body::of(item).map_err(|_| invalid(format!("workspaces[{n}] must be an object")))?;
        let ws_ref = w
            .required_str("id")
            .map_err(|_| invalid(format!("workspaces[{n}].id is required")))?;
        let ws = self
            .state
            .workspace(ws_ref)
            .ok_or_else(|| ControlError::NotFound(format!("workspace {ws_ref} not found")))?;
        let enabled = w.bool("enabled")?.unwrap_or(true);
        self.explicit.insert(ws.id.clone());
        let prev = i.workspaces.get(&ws.id).cloned();
        let mut usage_limits = prev.as_ref().and_then(|p| p.usage_limits.clone());
        let reset = w.bool("reset_usage")?.unwrap_or(false);
        update_budget(&mut usage_limits, w.0.get("usage_limits"), reset, now)
            .map_err(|e| invalid(format!("workspaces[{n}]: {e}")))?;
        let mut rate_limits = prev
            .as_ref()
            .map(|p| p.rate_limits.clone())
            .unwrap_or_default();
        update_rate_limits(&mut rate_limits, w.get("rate_limits"), LimitOwner::Other)
            .map_err(|e| invalid(format!("workspaces[{n}]: {e}")))?;
        let access = WorkspaceAccess {
            workspace_id: ws.id.clone(),
            enabled,
            usage_limits,
            rate_limits,
            created_at: prev.map_or(now, |p| p.created_at),
            updated_at: now,
        };
        i.workspaces.insert(ws.id.clone(), access);
        if enabled
            && w.bool("create_default_provider")?
                .unwrap_or(self.create_default)
        {
            let slug = w
                .str("default_provider_slug")?
                .or(self.b.str("default_provider_slug")?);
            let made = default_provider(self.state, i, &ws.id, slug, now)?;
            self.providers.extend(made);
        }
        Ok(())
    }

    /// `global_workspace_access` ("All Workspaces", granting every other workspace) and
    /// `override_existing_workspaces_access` ("apply to every workspace").
    fn global(&mut self, i: &mut Integration) -> Result<()> {
        let (b, now) = (self.b, self.now);
        let global = global_access_of(b.get("global_workspace_access"), now)?;
        let all_on = global.as_ref().is_some_and(|g| g["enabled"] == true);
        if let Some(g) = global {
            i.global_workspace_access = Some(g);
        }
        if all_on {
            let made = grant_all_existing(self.state, i, &self.explicit, self.create_default, now)?;
            self.providers.extend(made);
        }
        let override_flag = match b.bool("override_existing_workspaces_access")? {
            Some(f) => Some(f),
            None => b.bool("override_existing_workspace_access")?,
        };
        if override_flag == Some(true) {
            override_existing(i, &self.explicit, now)?;
        }
        Ok(())
    }
}

/// `GET /integrations/{slug}/workspaces`: the workspaces it serves that the caller sees.
pub fn list_workspaces(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let state = ctl.ledger.state();
    let i = find_to_read(&state, caller, slug)?;
    let items: Vec<Value> = i
        .workspaces
        .values()
        .filter(|a| caller.sees(Some(&a.workspace_id)))
        .map(|a| views::workspace_access(&i, a, &state))
        .collect();
    Ok(json!({
        "object": "list", "total": items.len(), "workspaces": items, "data": [],
        "global_workspace_access": i.global_workspace_access,
    }))
}
