//! `GET /v1/models`: the `@provider/model` ids a workspace key may call, per its workspace's
//! providers and their integrations' model provisioning.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::domain::pricing::PriceTable;
use crate::domain::{Integration, State};

/// The models an integration serves: its enabled entries, plus the price table's models for its
/// provider when it allows all models.
fn models_of(prices: &PriceTable, i: &Integration) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = i
        .models
        .values()
        .filter(|m| m.enabled)
        .map(|m| m.slug.clone())
        .collect();
    if i.allow_all_models {
        out.extend(prices.models_of(&i.ai_provider_id).map(str::to_owned));
    }
    out
}

/// The list for a workspace, optionally only one provider slug.
pub fn list(
    state: &State,
    prices: &PriceTable,
    workspace_id: &str,
    provider: Option<&str>,
) -> Vec<Value> {
    let mut providers: Vec<_> = state
        .providers
        .values()
        .filter(|p| p.workspace_id == workspace_id)
        .filter(|p| provider.is_none_or(|s| s.trim_start_matches('@') == p.slug))
        .collect();
    providers.sort_by(|a, b| a.slug.cmp(&b.slug));
    let mut out = Vec::new();
    for p in providers {
        let Some(i) = state
            .integrations
            .get(&p.integration_id)
            .filter(|i| i.serves_workspace(workspace_id))
        else {
            continue;
        };
        for m in models_of(prices, i) {
            out.push(json!({
                "id": format!("@{}/{}", p.slug, m),
                "slug": m,
                "canonical_slug": m,
                "object": "model",
                "created": i.created_at.0 / 1000,
                "owned_by": i.ai_provider_id,
                "provider": {"slug": p.slug},
            }));
        }
    }
    out
}
