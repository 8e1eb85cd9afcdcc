//! The budgets and rate limits a request's path crosses, read from the state, and the state of
//! each budget (its definition, what it has counted, the limit events emitted for it).

use super::State;
use crate::domain::budget::{self, BudgetRef, Counter, RequestPath};
use crate::domain::entities::*;
use crate::domain::events::*;
use crate::domain::limits::{RateLimit, UsageLimit};
use crate::domain::time::Millis;

/// Builds a budget's ref from a request path.
type MakeRef = fn(&RequestPath<'_>) -> BudgetRef;

impl State {
    /// The budgets a usage event counts against, with their definitions. It reads only
    /// configuration, so a writer can compute it under a read lock and hold the write lock just
    /// for [`State::fold_usage`].
    pub fn budgets_of_event(&self, e: &UsageEvent) -> Vec<(BudgetRef, UsageLimit)> {
        self.budgets_on(&e.path())
            .into_iter()
            .map(|(r, l)| (r, l.clone()))
            .collect()
    }

    /// Every budget a request on `path` must fit, with its definition: the key's and each of its
    /// ancestors' (a minted key spends its minter's budget too), the provider's, the
    /// integration's for the workspace, the workspace's and the matching policies'.
    pub fn budgets_on(&self, path: &RequestPath<'_>) -> Vec<(BudgetRef, &UsageLimit)> {
        let key = self
            .api_keys
            .get(path.api_key_id)
            .and_then(|k| k.usage_limits.as_ref());
        let provider = self
            .providers
            .get(path.provider_id)
            .and_then(|p| p.usage_limits.as_ref());
        let access = self
            .integrations
            .get(path.integration_id)
            .and_then(|i| i.workspaces.get(path.workspace_id))
            .and_then(|a| a.usage_limits.as_ref());
        let workspace = self
            .workspaces
            .get(path.workspace_id)
            .and_then(|w| w.usage_limits.as_ref());
        // Refs are built only for budgets that exist: most requests cross few or none.
        let refs: [(MakeRef, Option<&UsageLimit>); 4] = [
            (|p| BudgetRef::ApiKey(p.api_key_id.to_owned()), key),
            (|p| BudgetRef::Provider(p.provider_id.to_owned()), provider),
            (
                |p| BudgetRef::Access {
                    integration: p.integration_id.to_owned(),
                    workspace: p.workspace_id.to_owned(),
                },
                access,
            ),
            (
                |p| BudgetRef::Workspace(p.workspace_id.to_owned()),
                workspace,
            ),
        ];
        let mut out: Vec<(BudgetRef, &UsageLimit)> = refs
            .into_iter()
            .filter_map(|(make, l)| l.map(|l| (make(path), l)))
            .collect();
        for a in self.ancestors_of(path.api_key_id) {
            if let Some(l) = &a.usage_limits {
                out.push((BudgetRef::ApiKey(a.id.clone()), l));
            }
        }
        for (r, l) in self.policies_on(path) {
            if let Some(l) = &l.usage_limits {
                out.push((r, l));
            }
        }
        out
    }

    /// Every rate limit a request on `path` must fit (the key's ancestors' included).
    pub fn rate_limits_on(&self, path: &RequestPath<'_>) -> Vec<(BudgetRef, &[RateLimit])> {
        let mut out: Vec<(BudgetRef, &[RateLimit])> = Vec::new();
        if let Some(k) = self.api_keys.get(path.api_key_id) {
            out.push((BudgetRef::ApiKey(k.id.clone()), &k.rate_limits));
        }
        for a in self.ancestors_of(path.api_key_id) {
            out.push((BudgetRef::ApiKey(a.id.clone()), &a.rate_limits));
        }
        if let Some(p) = self.providers.get(path.provider_id) {
            out.push((BudgetRef::Provider(p.id.clone()), &p.rate_limits));
        }
        if let Some(a) = self
            .integrations
            .get(path.integration_id)
            .and_then(|i| i.workspaces.get(path.workspace_id))
        {
            let r = BudgetRef::Access {
                integration: path.integration_id.to_owned(),
                workspace: path.workspace_id.to_owned(),
            };
            out.push((r, &a.rate_limits));
        }
        if let Some(w) = self.workspaces.get(path.workspace_id) {
            out.push((BudgetRef::Workspace(w.id.clone()), &w.rate_limits));
        }
        for (r, p) in self.policies_on(path) {
            out.push((r, &p.rate_limits));
        }
        out.retain(|(_, l)| !l.is_empty());
        out
    }

    /// The policies whose conditions a request on `path` meets, each with its (grouped) budget ref.
    /// An `api_key` condition also matches the keys that key minted (down their chains).
    fn policies_on<'a>(&'a self, path: &RequestPath<'_>) -> Vec<(BudgetRef, &'a UsagePolicy)> {
        let chain: &[String] = self
            .api_keys
            .get(path.api_key_id)
            .map_or(&[], |k| k.ancestors.as_slice());
        let value_of = |key: &str| -> Option<String> {
            match key {
                "workspace_id" | "workspace" => Some(path.workspace_id.to_owned()),
                "api_key" => Some(path.api_key_id.to_owned()),
                "provider" => Some(path.provider_slug.to_owned()),
                "model" => Some(path.model.to_owned()),
                k => k
                    .strip_prefix("metadata.")
                    .and_then(|m| path.metadata?.get(m).cloned()),
            }
        };
        let mut out = Vec::new();
        for p in self.policies.values() {
            if p.workspace_id
                .as_deref()
                .is_some_and(|w| w != path.workspace_id)
            {
                continue;
            }
            let meets = |c: &Condition| match c.key.as_str() {
                "api_key" => c.value == path.api_key_id || chain.contains(&c.value),
                k => value_of(k).is_some_and(|v| v == c.value),
            };
            if !p.conditions.iter().all(meets) {
                continue;
            }
            let group = match &p.group_by {
                None => None,
                Some(k) => match value_of(k) {
                    Some(v) => Some(v),
                    None => continue,
                },
            };
            out.push((
                BudgetRef::Policy {
                    id: p.id.clone(),
                    group,
                },
                p,
            ));
        }
        out
    }

    /// What a budget has counted in the window holding `now`.
    pub fn budget_used(
        &self,
        r: &BudgetRef,
        limit: &UsageLimit,
        now: Millis,
    ) -> rust_decimal::Decimal {
        budget::used(&self.budgets, r, limit, now)
    }

    /// Whether a limit event of this kind was emitted for the budget's window.
    pub fn limit_event_emitted(&self, budget: &str, window_start: Millis, kind: LimitKind) -> bool {
        self.limit_events
            .get(budget)
            .is_some_and(|emitted| emitted.contains(&(window_start, kind)))
    }

    /// The definition of a budget, if it still exists.
    pub fn budget_limit(&self, r: &BudgetRef) -> Option<&UsageLimit> {
        match r {
            BudgetRef::ApiKey(id) => self.api_keys.get(id)?.usage_limits.as_ref(),
            BudgetRef::Provider(id) => self.providers.get(id)?.usage_limits.as_ref(),
            BudgetRef::Access {
                integration,
                workspace,
            } => self
                .integrations
                .get(integration)?
                .workspaces
                .get(workspace)?
                .usage_limits
                .as_ref(),
            BudgetRef::Workspace(id) => self.workspaces.get(id)?.usage_limits.as_ref(),
            BudgetRef::Policy { id, .. } => self.policies.get(id)?.usage_limits.as_ref(),
        }
    }

    /// The rate limits of a budget's owner (empty when it is gone).
    pub fn rate_limits_of(&self, r: &BudgetRef) -> &[RateLimit] {
        let found = match r {
            BudgetRef::ApiKey(id) => self.api_keys.get(id).map(|k| &k.rate_limits),
            BudgetRef::Provider(id) => self.providers.get(id).map(|p| &p.rate_limits),
            BudgetRef::Access {
                integration,
                workspace,
            } => self
                .integrations
                .get(integration)
                .and_then(|i| i.workspaces.get(workspace))
                .map(|a| &a.rate_limits),
            BudgetRef::Workspace(id) => self.workspaces.get(id).map(|w| &w.rate_limits),
            BudgetRef::Policy { id, .. } => self.policies.get(id).map(|p| &p.rate_limits),
        };
        found.map_or(&[], Vec::as_slice)
    }

    /// Every budget counter (for the periodic-reset sweep).
    pub fn budget_counters(&self) -> impl Iterator<Item = (&BudgetRef, &Counter)> {
        self.budgets.iter()
    }
}
