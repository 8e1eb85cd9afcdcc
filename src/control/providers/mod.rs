//! Providers (model catalog) and virtual keys. A virtual key is a provider backed by an implicit,
//! workspace-scoped integration holding its credential; the slug works as `x-portkey-virtual-key`,
//! as a config `virtual_key`, and as `@slug`.
//!
//! Reading, updating and deleting are here; creating (a catalog provider, or a virtual key with
//! its credential) is in [`create`].

mod create;

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::crypto::seal_scope;
use crate::domain::limits::{LimitOwner, RateLimit, UsageLimit};
use crate::domain::*;

pub use create::{create, create_virtual_key};

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

/// Refuses unless the caller may remove `p` with the limits on it (deleting a provider lifts
/// its limits with it): [`Caller::may_govern`].
pub(super) fn check_removable(caller: &Caller, p: &Provider) -> Result<()> {
    let set_by = has_limits(&governed(p)).then_some(p.limits_set_by);
    caller.may_govern(false, set_by)
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
