//! Reads of the state: entities by id or slug, API keys by hash and their chains, usage totals.

use std::sync::Arc;

use super::{State, Totals};
use crate::domain::entities::*;
use crate::domain::events::*;
use crate::domain::routing::Node;

impl State {
    /// The entity of `kind` with `id`, if there is one (a copy).
    pub fn entity(&self, kind: EntityKind, id: &str) -> Option<Entity> {
        match kind {
            EntityKind::Organisation => self
                .organisation
                .clone()
                .filter(|o| o.id == id)
                .map(Entity::Organisation),
            EntityKind::Workspace => self
                .workspaces
                .get(id)
                .map(|x| Entity::Workspace((**x).clone())),
            EntityKind::Integration => self
                .integrations
                .get(id)
                .map(|x| Entity::Integration((**x).clone())),
            EntityKind::Provider => self
                .providers
                .get(id)
                .map(|x| Entity::Provider((**x).clone())),
            EntityKind::Config => self.configs.get(id).cloned().map(Entity::Config),
            EntityKind::ApiKey => self.api_keys.get(id).map(|x| Entity::ApiKey((**x).clone())),
            EntityKind::Policy => self.policies.get(id).cloned().map(Entity::Policy),
        }
    }

    /// The chain of a key minted by `minter` (see [`ApiKey::ancestors`]): the minter and its own
    /// chain when it is a workspace key, at most [`MAX_KEY_DEPTH`] long; nothing when it is an
    /// organisation key (the organisation's own grant) or unknown.
    pub fn chain_from(&self, minter: Option<&str>) -> Vec<String> {
        match minter.and_then(|id| self.api_keys.get(id)) {
            Some(m) if m.kind.is_workspace() => std::iter::once(m.id.clone())
                .chain(m.ancestors.iter().cloned())
                .take(MAX_KEY_DEPTH)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The keys above `key` (see [`ApiKey::ancestors`]), nearest first; `None` when one of them
    /// was deleted: a key minted by a deleted key stops with it.
    pub fn key_ancestors(&self, key: &ApiKey) -> Option<Vec<&Arc<ApiKey>>> {
        key.ancestors
            .iter()
            .map(|id| self.api_keys.get(id))
            .collect()
    }

    /// The known keys above the key `id`, nearest first (authentication refuses a key whose
    /// chain lost one, so on a served request these are all of them).
    pub(super) fn ancestors_of(&self, id: &str) -> impl Iterator<Item = &Arc<ApiKey>> {
        self.api_keys
            .get(id)
            .into_iter()
            .flat_map(|k| k.ancestors.iter())
            .filter_map(|a| self.api_keys.get(a))
    }

    /// Usage folded so far for an entity.
    pub fn usage_of(&self, kind: EntityKind, id: &str) -> Totals {
        self.usage
            .get(&(kind, id.to_owned()))
            .copied()
            .unwrap_or_default()
    }

    /// The API key whose secret hashes to `hash`.
    pub fn api_key_by_hash(&self, hash: &str) -> Option<&Arc<ApiKey>> {
        self.key_by_hash
            .get(hash)
            .and_then(|id| self.api_keys.get(id))
    }

    /// A workspace by id or slug.
    pub fn workspace(&self, id_or_slug: &str) -> Option<&Arc<Workspace>> {
        self.workspaces
            .get(id_or_slug)
            .or_else(|| self.workspaces.values().find(|w| w.slug == id_or_slug))
    }

    /// An integration by id or slug. The id is looked up first: a slug (chosen by whoever made
    /// the integration, a workspace included) must never shadow another integration's id.
    pub fn integration(&self, id_or_slug: &str) -> Option<&Arc<Integration>> {
        self.integrations
            .get(id_or_slug)
            .or_else(|| self.integrations.values().find(|i| i.slug == id_or_slug))
    }

    /// A provider (or virtual key) by id or slug (the id first, as for integrations), within a
    /// workspace when one is given.
    pub fn provider(&self, id_or_slug: &str, workspace_id: Option<&str>) -> Option<&Arc<Provider>> {
        let in_scope = |p: &&Arc<Provider>| workspace_id.is_none_or(|w| p.workspace_id == w);
        self.providers.get(id_or_slug).filter(in_scope).or_else(|| {
            self.providers
                .values()
                .filter(in_scope)
                .find(|p| p.slug == id_or_slug)
        })
    }

    /// A config by slug or id.
    pub fn config(&self, slug_or_id: &str) -> Option<&RouteConfig> {
        self.configs
            .values()
            .find(|c| c.slug == slug_or_id)
            .or_else(|| self.configs.get(slug_or_id))
    }

    /// The parsed plan of a saved config (by id), made when the config was applied.
    pub fn config_plan(&self, id: &str) -> Option<&Result<Arc<Node>, String>> {
        self.config_plans.get(id)
    }

    /// How many usage event ids are remembered for deduplication (those of the last window).
    pub fn usage_ids_remembered(&self) -> usize {
        self.seen_usage.remembered()
    }
}
