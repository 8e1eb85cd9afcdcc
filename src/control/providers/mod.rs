//! Providers (model catalog) and virtual keys. A virtual key is a provider backed by an implicit,
//! workspace-scoped integration holding its credential; the slug works as `x-portkey-virtual-key`,
//! as a config `virtual_key`, and as `@slug`.
//!
//! Reading, updating and deleting are here; creating (a catalog provider, or a virtual key with
//! its credential) is in `create.rs`.

mod create;

use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;
use crate::crypto::seal_scope;
use crate::domain::limits::{LimitOwner, RateLimit, UsageLimit};
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

    /// `p` as this API shows it; `list_item` for an item of a list.
    fn view(self, p: &Provider, state: &State, now: Millis, list_item: bool) -> Value {
        match self {
            Api::Providers => views::provider(p, state, now, list_item),
            Api::VirtualKeys => views::virtual_key(p, state, now),
        }
    }
}

/// A provider a request names: its slug, in `workspace` (or the caller's own), and the API it
/// is managed through.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub api: Api,
    pub slug: &'a str,
    pub workspace: Option<&'a str>,
}

fn find(state: &State, caller: &Caller, slug: &str, workspace: Option<&str>) -> Result<Provider> {
    let ws = caller.named_workspace(state, workspace)?;
    state
        .provider(slug, ws.as_deref())
        .filter(|p| caller.sees(Some(&p.workspace_id)))
        .map(|x| (**x).clone())
        .ok_or_else(|| ControlError::NotFound(format!("provider {slug} not found")))
}

/// The provider `t` names, to change with `action`: that also needs the scope of the API the
/// provider belongs to (the caller's `t.api` scope is checked before).
fn find_to(state: &State, caller: &Caller, action: &str, t: Target) -> Result<Provider> {
    let p = find(state, caller, t.slug, t.workspace)?;
    caller.require(&Api::of(&p).scope(action))?;
    Ok(p)
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

/// `POST /providers` (a catalog provider) or `POST /virtual-keys` (a credential and its provider).
pub async fn create(ctl: &Control, caller: &Caller, api: Api, body: &Value) -> Result<Value> {
    match api {
        Api::Providers => create::provider(ctl, caller, body).await,
        Api::VirtualKeys => create::virtual_key(ctl, caller, body).await,
    }
}

/// `GET /providers` or `GET /virtual-keys`: the providers the caller sees, in creation order.
pub fn list(
    ctl: &Control,
    caller: &Caller,
    api: Api,
    q: &HashMap<String, String>,
) -> Result<Value> {
    caller.require(&api.scope("list"))?;
    let page = Page::from_query(q, if api == Api::Providers { 50 } else { 1000 })?;
    let state = ctl.ledger.state();
    let ws = caller.listed_workspace(&state, q)?;
    let now = Millis::now();
    let mut items: Vec<_> = state
        .providers
        .values()
        .filter(|p| ws.as_ref().is_none_or(|w| &p.workspace_id == w))
        .filter(|p| page.matches(&[&p.name, &p.slug]))
        .collect();
    items.sort_by_key(|p| (p.created_at, p.id.clone()));
    Ok(page.render(items, |p| api.view(p, &state, now, true)))
}

/// `GET /providers/{slug}` or `GET /virtual-keys/{slug}`.
pub fn retrieve(ctl: &Control, caller: &Caller, t: Target) -> Result<Value> {
    caller.require(&t.api.scope("read"))?;
    let state = ctl.ledger.state();
    let p = find(&state, caller, t.slug, t.workspace)?;
    Ok(t.api.view(&p, &state, Millis::now(), false))
}

/// `PUT /providers/{slug}` or `PUT /virtual-keys/{slug}`: names, limits (with authority) and
/// a virtual key's credential.
pub async fn update(ctl: &Control, caller: &Caller, t: Target<'_>, body: &Value) -> Result<Value> {
    caller.require(&t.api.scope("update"))?;
    let b = Body::of(body)?;
    let command = ctl.ledger.command().await;
    let now = Millis::now();
    let (p, integration) = {
        let state = ctl.ledger.state();
        let mut p = find_to(&state, caller, "update", t)?;
        if let Some(n) = b.str("name")? {
            p.name = n.to_owned();
        }
        if let Some(n) = b.str("note")? {
            p.note = Some(n.to_owned());
        }
        govern_limits(caller, &b, &mut p)?;
        p.updated_at = now;
        let integration = new_credential(ctl, &state, &b, &p, now)?;
        (p, integration)
    };
    let out = match t.api {
        Api::Providers => json!({"id": p.id, "slug": p.slug}),
        Api::VirtualKeys => json!({}),
    };
    let mut changes = vec![Change::Upsert(Entity::Provider(p))];
    changes.extend(integration.map(|i| Change::Upsert(Entity::Integration(i))));
    commit(command, caller, changes).await?;
    Ok(out)
}

/// Applies an update's `rate_limits`, `usage_limits`, `reset_usage` and `expires_at` to `p`, if
/// the caller has authority over them ([`Caller::govern`]).
fn govern_limits(caller: &Caller, b: &Body, p: &mut Provider) -> Result<()> {
    let before = governed(p);
    update_limits(
        b,
        &mut p.usage_limits,
        &mut p.rate_limits,
        LimitOwner::Other,
    )?;
    if let Some(e) = b.timestamp("expires_at")? {
        p.expires_at = e;
    }
    p.limits_set_by = caller.govern(
        false,
        p.limits_set_by,
        has_limits(&before),
        &before,
        &governed(p),
    )?;
    Ok(())
}

/// An update's new `key`: a virtual key's credential lives on its implicit integration, which
/// is returned sealed anew; a catalog provider's key is set on its integration.
fn new_credential(
    ctl: &Control,
    state: &State,
    b: &Body,
    p: &Provider,
    now: Millis,
) -> Result<Option<Integration>> {
    match (
        b.str("key")?.filter(|k| !k.is_empty()),
        state.integrations.get(&p.integration_id),
    ) {
        (Some(k), Some(i)) if i.implicit => {
            let mut i = Integration::clone(i);
            i.key = Some(ctl.sealer.seal(k, seal_scope(&i), &i.id));
            i.updated_at = now;
            Ok(Some(i))
        }
        (Some(_), _) => Err(invalid(
            "a catalog provider's key is set on its integration",
        )),
        (None, _) => Ok(None),
    }
}

/// `DELETE /providers/{slug}` or `DELETE /virtual-keys/{slug}`, with a virtual key's implicit
/// integration.
pub async fn delete(ctl: &Control, caller: &Caller, t: Target<'_>) -> Result<Value> {
    caller.require(&t.api.scope("delete"))?;
    execute(ctl, caller, |state| {
        let p = find_to(state, caller, "delete", t)?;
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
        Ok(changes)
    })
    .await
}
