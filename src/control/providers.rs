//! Providers (model catalog) and virtual keys. A virtual key is a provider backed by an implicit,
//! workspace-scoped integration holding its credential; the slug works as `x-portkey-virtual-key`,
//! as a config `virtual_key`, and as `@slug`.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::crypto::seal_scope;
use crate::domain::limits::{parse_rate_limits, LimitOwner, RateLimit, UsageLimit};
use crate::domain::*;

/// Which API a provider is being managed through (it decides scopes and the response shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Providers,
    VirtualKeys,
}

impl Api {
    fn scope(self, action: &str) -> String {
        match self {
            Api::Providers => format!("providers.{action}"),
            Api::VirtualKeys => format!("virtual_keys.{action}"),
        }
    }

    /// The API an object belongs to by its origin: a virtual key is managed with
    /// `virtual_keys.*` whichever route reaches it, a catalog provider with `providers.*`.
    fn of(p: &Provider) -> Api {
        match p.origin {
            ProviderOrigin::VirtualKey => Api::VirtualKeys,
            ProviderOrigin::Catalog | ProviderOrigin::Provisioned => Api::Providers,
        }
    }
}

fn find(state: &State, caller: &Caller, slug: &str, workspace: Option<&str>) -> Result<Provider> {
    let ws = match workspace {
        Some(w) => Some(caller.workspace_for(state, Some(w))?),
        None => caller.key.workspace_id.clone(),
    };
    state
        .provider(slug, ws.as_deref())
        .filter(|p| caller.sees(Some(&p.workspace_id)))
        .map(|x| (**x).clone())
        .ok_or_else(|| ControlError::NotFound(format!("provider {slug} not found")))
}

fn unique_slug(state: &State, b: &Body, workspace_id: &str, name: &str) -> Result<String> {
    match b.str("slug")? {
        Some(s) => {
            check_new_slug(s, state.providers.contains_key(s))?;
            if state.provider(s, Some(workspace_id)).is_some() {
                return Err(ControlError::Conflict(format!(
                    "provider slug {s} is taken in that workspace"
                )));
            }
            Ok(s.to_owned())
        }
        None => Ok(make_slug("", name)),
    }
}

struct Limits {
    usage: Option<UsageLimit>,
    rate: Vec<RateLimit>,
    expires_at: Option<Millis>,
}

fn limits_of(b: &Body) -> Result<Limits> {
    Ok(Limits {
        usage: new_budget(b.get("usage_limits"), Millis::now())?,
        rate: parse_rate_limits(
            b.get("rate_limits").unwrap_or(&Value::Null),
            LimitOwner::Other,
        )
        .map_err(invalid)?,
        expires_at: b.timestamp("expires_at")?.flatten(),
    })
}

/// A provider's limits and expiry: changing them needs authority ([`Caller::govern`]).
type Governed = (Option<UsageLimit>, Vec<RateLimit>, Option<Millis>);

fn governed(p: &Provider) -> Governed {
    (p.usage_limits.clone(), p.rate_limits.clone(), p.expires_at)
}

fn has_limits(g: &Governed) -> bool {
    g.0.is_some() || !g.1.is_empty() || g.2.is_some()
}

/// Whether the organisation set limits on `p` (which only an organisation key may lift).
fn org_limited(p: &Provider) -> bool {
    has_limits(&governed(p)) && p.limits_set_by == Authority::Organisation
}

/// Refuses a workspace key a new provider on an integration where one of its workspace's
/// providers carries limits the organisation set: the new one would reach the same credential
/// without them. (An organisation key may; it sets limits on the new one as it sees fit.)
fn check_no_org_limited_sibling(
    state: &State,
    caller: &Caller,
    integration_id: &str,
    workspace_id: &str,
) -> Result<()> {
    if caller.authority() == Authority::Organisation {
        return Ok(());
    }
    let limited = state.providers.values().find(|p| {
        p.integration_id == integration_id && p.workspace_id == workspace_id && org_limited(p)
    });
    match limited {
        Some(p) => Err(ControlError::Forbidden(format!(
            "provider {} on this integration has limits set by the organisation: another provider on it needs an organisation key",
            p.slug
        ))),
        None => Ok(()),
    }
}

/// Refuses unless the caller may remove `p` with the limits on it (deleting a provider lifts
/// its limits with it): [`Caller::may_govern`].
pub(super) fn check_removable(caller: &Caller, p: &Provider) -> Result<()> {
    let set_by = has_limits(&governed(p)).then_some(p.limits_set_by);
    caller.may_govern(false, set_by)
}

/// `POST /providers`: a workspace's handle on an integration it has been given.
pub async fn create(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("providers.create")?;
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let integration_ref = b.required_str("integration_id")?;
    let limits = limits_of(&b)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let p = {
        let state = ctl.ledger.state();
        let workspace_id = caller.workspace_for(&state, b.str("workspace_id")?)?;
        let i = state
            .integration(integration_ref)
            .filter(|i| !i.implicit)
            .ok_or_else(|| invalid(format!("integration {integration_ref} not found")))?;
        if !i.serves_workspace(&workspace_id) {
            return Err(ControlError::Forbidden(format!(
                "integration {} is not provisioned to this workspace",
                i.slug
            )));
        }
        check_no_org_limited_sibling(&state, caller, &i.id, &workspace_id)?;
        Provider {
            id: new_id(),
            slug: unique_slug(&state, &b, &workspace_id, &name)?,
            name,
            note: b.str("note")?.map(str::to_owned),
            integration_id: i.id.clone(),
            workspace_id,
            origin: ProviderOrigin::Catalog,
            usage_limits: limits.usage,
            rate_limits: limits.rate,
            limits_set_by: caller.authority(),
            expires_at: limits.expires_at,
            created_at: now,
            updated_at: now,
        }
    };
    let out = json!({"id": p.id, "slug": p.slug, "object": "provider"});
    command
        .commit(
            Some(caller.actor()),
            vec![Change::Upsert(Entity::Provider(p))],
        )
        .await?;
    Ok(out)
}

/// `POST /virtual-keys`: a credential and its provider in one step.
pub async fn create_virtual_key(ctl: &Control, caller: &Caller, body: &Value) -> Result<Value> {
    caller.require("virtual_keys.create")?;
    let b = Body::of(body)?;
    let name = b.required_str("name")?.trim().to_owned();
    let ai_provider = b.required_str("provider")?.to_owned();
    let key = b.required_str("key")?;
    let limits = limits_of(&b)?;
    let mut configurations = Map::new();
    for (from, to) in [
        ("custom_host", "custom_host"),
        ("apiVersion", "api_version"),
        ("resourceName", "resource_name"),
        ("deploymentName", "deployment_name"),
    ] {
        if let Some(v) = b.str(from)? {
            configurations.insert(to.into(), Value::String(v.to_owned()));
        }
    }
    if let Some(h) = configurations.get("custom_host") {
        let url = crate::domain::routing::parse_url(h, "custom_host").map_err(invalid)?;
        let hosts = ctl.settings.upstream_private_hosts;
        crate::domain::routing::check_private_host(&url, hosts, "custom_host").map_err(invalid)?;
        configurations.insert("custom_host".into(), Value::String(url));
    }
    super::integrations::check_azure_names(&configurations)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (integration, provider) = {
        let state = ctl.ledger.state();
        let workspace_id = caller.workspace_for(&state, b.str("workspace_id")?)?;
        let slug = unique_slug(&state, &b, &workspace_id, &name)?;
        let mut i = Integration {
            id: new_id(),
            slug: format!("vk-{slug}"),
            name: name.clone(),
            description: None,
            ai_provider_id: ai_provider,
            workspace_id: Some(workspace_id.clone()),
            key: None,
            configurations,
            allow_all_models: true,
            models: Default::default(),
            workspaces: Default::default(),
            global_workspace_access: None,
            implicit: true,
            credential_set_by: caller.authority(),
            created_at: now,
            updated_at: now,
        };
        i.key = Some(ctl.sealer.seal(key, seal_scope(&i), &i.id));
        let p = Provider {
            id: new_id(),
            slug,
            name,
            note: b.str("note")?.map(str::to_owned),
            integration_id: i.id.clone(),
            workspace_id,
            origin: ProviderOrigin::VirtualKey,
            usage_limits: limits.usage,
            rate_limits: limits.rate,
            limits_set_by: caller.authority(),
            expires_at: limits.expires_at,
            created_at: now,
            updated_at: now,
        };
        (i, p)
    };
    let out = json!({"id": provider.id, "slug": provider.slug, "object": "virtual-key", "success": true, "data": {"slug": provider.slug}});
    command
        .commit(
            Some(caller.actor()),
            vec![
                Change::Upsert(Entity::Integration(integration)),
                Change::Upsert(Entity::Provider(provider)),
            ],
        )
        .await?;
    Ok(out)
}

pub fn list(
    ctl: &Control,
    caller: &Caller,
    api: Api,
    q: &HashMap<String, String>,
) -> Result<Value> {
    caller.require(&api.scope("list"))?;
    let page = Page::from_query(q, if api == Api::Providers { 50 } else { 1000 })?;
    let state = ctl.ledger.state();
    let ws = caller.workspace_filter(&state, q.get("workspace_id").map(String::as_str))?;
    let now = Millis::now();
    let mut items: Vec<&std::sync::Arc<Provider>> = state
        .providers
        .values()
        .filter(|p| ws.as_ref().is_none_or(|w| &p.workspace_id == w))
        .collect();
    items.sort_by_key(|p| (p.created_at, p.id.clone()));
    let render = |p: &Provider| match api {
        Api::Providers => views::provider(p, &state, now, true),
        Api::VirtualKeys => views::virtual_key(p, &state, now),
    };
    Ok(page.list(items.into_iter().map(|p| render(p)).collect()))
}

pub fn retrieve(
    ctl: &Control,
    caller: &Caller,
    api: Api,
    slug: &str,
    workspace: Option<&str>,
) -> Result<Value> {
    caller.require(&api.scope("read"))?;
    let state = ctl.ledger.state();
    let p = find(&state, caller, slug, workspace)?;
    Ok(match api {
        Api::Providers => views::provider(&p, &state, Millis::now(), false),
        Api::VirtualKeys => views::virtual_key(&p, &state, Millis::now()),
    })
}

pub async fn update(
    ctl: &Control,
    caller: &Caller,
    api: Api,
    slug: &str,
    workspace: Option<&str>,
    body: &Value,
) -> Result<Value> {
    caller.require(&api.scope("update"))?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (p, integration) = {
        let state = ctl.ledger.state();
        let mut p = find(&state, caller, slug, workspace)?;
        caller.require(&Api::of(&p).scope("update"))?;
        let before = governed(&p);
        if let Some(n) = b.str("name")? {
            p.name = n.to_owned();
        }
        if let Some(n) = b.str("note")? {
            p.note = Some(n.to_owned());
        }
        update_rate_limits(&mut p.rate_limits, b.get("rate_limits"), LimitOwner::Other)?;
        let reset = b.bool("reset_usage")?.unwrap_or(false);
        update_budget(
            &mut p.usage_limits,
            b.0.get("usage_limits"),
            reset,
            Millis::now(),
        )?;
        if let Some(e) = b.timestamp("expires_at")? {
            p.expires_at = e;
        }
        p.limits_set_by = caller.govern(
            false,
            p.limits_set_by,
            has_limits(&before),
            &before,
            &governed(&p),
        )?;
        p.updated_at = now;
        // A virtual key's credential lives on its implicit integration.
        let integration = match (
            b.str("key")?.filter(|k| !k.is_empty()),
            state.integrations.get(&p.integration_id),
        ) {
            (Some(k), Some(i)) if i.implicit => {
                let mut i = Integration::clone(i);
                i.key = Some(ctl.sealer.seal(k, seal_scope(&i), &i.id));
                i.updated_at = now;
                Some(i)
            }
            (Some(_), _) => {
                return Err(invalid(
                    "a catalog provider's key is set on its integration",
                ))
            }
            (None, _) => None,
        };
        (p, integration)
    };
    let out = match api {
        Api::Providers => json!({"id": p.id, "slug": p.slug}),
        Api::VirtualKeys => json!({}),
    };
    let mut changes = vec![Change::Upsert(Entity::Provider(p))];
    changes.extend(integration.map(|i| Change::Upsert(Entity::Integration(i))));
    command.commit(Some(caller.actor()), changes).await?;
    Ok(out)
}

pub async fn delete(
    ctl: &Control,
    caller: &Caller,
    api: Api,
    slug: &str,
    workspace: Option<&str>,
) -> Result<Value> {
    caller.require(&api.scope("delete"))?;
    let command = ctl.ledger.command().await;
    let changes = {
        let state = ctl.ledger.state();
        let p = find(&state, caller, slug, workspace)?;
        caller.require(&Api::of(&p).scope("delete"))?;
        check_removable(caller, &p)?;
        let mut changes = vec![Change::Delete {
            kind: EntityKind::Provider,
            id: p.id.clone(),
        }];
        if state
            .integrations
            .get(&p.integration_id)
            .is_some_and(|i| i.implicit)
        {
            changes.push(Change::Delete {
                kind: EntityKind::Integration,
                id: p.integration_id,
            });
        }
        changes
    };
    command.commit(Some(caller.actor()), changes).await?;
    Ok(json!({}))
}
