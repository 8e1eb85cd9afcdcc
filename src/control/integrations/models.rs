//! Model provisioning of an integration: the allow-list and custom pricing, which decide what
//! is metered and at what price.

use serde_json::{json, Value};

use super::*;
use crate::domain::pricing::Price;

/// What of an integration's model provisioning decides what is metered and at what price (the
/// allow-list and every entry without its timestamps): changed with an organisation key only
/// ([`require_pricing_authority`]).
fn metered_models(i: &Integration) -> impl PartialEq {
    let entries: Vec<_> = i
        .models
        .values()
        .map(|m| {
            (
                m.slug.clone(),
                m.enabled,
                m.is_custom,
                m.is_finetune,
                m.base_model_slug.clone(),
                m.pricing_config.clone(),
            )
        })
        .collect();
    (i.allow_all_models, entries)
}

/// Refuses a workspace key's change of the allow-list or pricing (`before` → `after`): zero
/// prices, a cheaper base model or a lifted allow-list would stop organisation-set cost budgets
/// counting. Simplest and safe: these are the organisation's, on every integration.
fn require_pricing_authority(
    caller: &Caller,
    before: &Integration,
    after: &Integration,
) -> Result<()> {
    if metered_models(before) == metered_models(after) {
        return Ok(());
    }
    caller.require_organisation("changing an integration's allowed models or pricing")
}

/// `PUT /integrations/{slug}/models`: the allow-list and custom pricing.
pub async fn update_models(
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    body: &Value,
) -> Result<Value> {
    let b = Body::of(body)?;
    change_models(ctl, caller, slug, |i, now| {
        if let Some(all) = b.bool("allow_all_models")? {
            i.allow_all_models = all;
        }
        for (n, item) in b.array("models")?.iter().enumerate() {
            let entry = model_entry(i, n, item, now)?;
            i.models.insert(entry.slug.clone(), entry);
        }
        Ok(())
    })
    .await
}

/// `models[n]` of a `PUT /integrations/{slug}/models`, as an entry of `i` (keeping the pricing
/// and creation time of the entry it replaces).
fn model_entry(i: &Integration, n: usize, item: &Value, now: Millis) -> Result<ModelEntry> {
    let m = Body::of(item).map_err(|_| invalid(format!("models[{n}] must be an object")))?;
    let slug = m
        .required_str("slug")
        .map_err(|_| invalid(format!("models[{n}].slug is required")))?;
    let enabled = m
        .bool("enabled")?
        .ok_or_else(|| invalid(format!("models[{n}].enabled is required")))?;
    let pricing_config = m.get("pricing_config").cloned();
    if let Some(p) = &pricing_config {
        if let Err(why) = Price::parse_pricing_config(p) {
            return Err(invalid(format!("models[{n}].pricing_config: {why}")));
        }
    }
    let prev = i.models.get(slug);
    Ok(ModelEntry {
        slug: slug.to_owned(),
        enabled,
        is_custom: m.bool("is_custom")?.unwrap_or(false),
        is_finetune: m.bool("is_finetune")?.unwrap_or(false),
        base_model_slug: m.str("base_model_slug")?.map(str::to_owned),
        pricing_config: pricing_config.or_else(|| prev.and_then(|p| p.pricing_config.clone())),
        created_at: prev.map_or(now, |p| p.created_at),
        updated_at: now,
    })
}

/// `GET /integrations/{slug}/models`.
pub fn list_models(ctl: &Control, caller: &Caller, slug: &str) -> Result<Value> {
    let state = ctl.ledger.state();
    let i = find_to_read(&state, caller, slug)?;
    let models: Vec<Value> = i.models.values().map(views::model_entry).collect();
    Ok(
        json!({"object": "list", "total": models.len(), "allow_all_models": i.allow_all_models, "models": models, "data": []}),
    )
}

/// `DELETE /integrations/{slug}/models?slugs=a,b`.
pub async fn delete_models(
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    slugs: &str,
) -> Result<Value> {
    change_models(ctl, caller, slug, |i, _| {
        for s in slugs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            i.models.remove(s);
        }
        Ok(())
    })
    .await
}

/// Changes integration `slug`'s model provisioning with `edit` (given the time of the change),
/// if the caller may change the integration and, where metering changes, has the authority.
async fn change_models(
    ctl: &Control,
    caller: &Caller,
    slug: &str,
    edit: impl FnOnce(&mut Integration, Millis) -> Result<()>,
) -> Result<Value> {
    let command = ctl.ledger.command().await;
    let mut i = find(&ctl.ledger.state(), caller, slug)?;
    require_write(caller, &i, "update")?;
    let before = i.clone();
    let now = Millis::now();
    edit(&mut i, now)?;
    require_pricing_authority(caller, &before, &i)?;
    i.updated_at = now;
    upsert(command, caller, Entity::Integration(i)).await?;
    Ok(json!({}))
}
