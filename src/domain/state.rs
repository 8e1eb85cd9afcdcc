//! The reducer. `State` is the fold of every config and usage event; [`State::apply`] only
//! changes state (no decisions, no I/O), so replaying the log from the start rebuilds it exactly.
//!
//! The reads of the state live beside it: `state/queries.rs` (entities by id or slug, key
//! chains, totals) and `state/budgets.rs` (the budgets and rate limits on a request's path);
//! `state/dedupe.rs` holds the memory of recent usage event ids.

mod budgets;
mod dedupe;
mod queries;

use std::collections::HashMap;
use std::sync::Arc;

use rust_decimal::Decimal;

use super::budget::{self, BudgetRef, Counter};
use super::entities::*;
use super::events::*;
use super::limits::UsageLimit;
use super::routing::Node;
use super::time::Millis;

use super::hash::FastHash;
pub use dedupe::{RecentIds, DEDUPE_MAX_IDS, DEDUPE_WINDOW_MS};

/// Running usage of one entity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub tokens: u64,
    pub cost_usd: Decimal,
}

impl Totals {
    /// Adds totals counted elsewhere (another time range of the same entity).
    /// Sums saturate: a total never wraps, whatever an upstream reported.
    pub fn merge(&mut self, other: Totals) {
        self.requests = self.requests.saturating_add(other.requests);
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.cost_usd = self.cost_usd.saturating_add(other.cost_usd);
    }

    fn add(&mut self, e: &UsageEvent) {
        self.merge(Totals {
            requests: 1,
            tokens: e.total_tokens(),
            cost_usd: e.cost_usd,
        });
    }
}

/// Everything the control plane knows plus usage totals per entity.
#[derive(Clone, Debug, Default)]
pub struct State {
    pub organisation: Option<Organisation>,
    // Entities are shared (`Arc`) so a request holds what it needs by reference count, not by copy.
    pub workspaces: HashMap<String, Arc<Workspace>>,
    pub integrations: HashMap<String, Arc<Integration>>,
    pub providers: HashMap<String, Arc<Provider>>,
    pub configs: HashMap<String, RouteConfig>,
    /// Each saved config parsed once, when its event is applied (by config id): requests share
    /// the plan instead of parsing it again. An invalid config (saved by an older version) keeps
    /// its error, which its requests get.
    config_plans: HashMap<String, Result<Arc<Node>, String>>,
    pub api_keys: HashMap<String, Arc<ApiKey>>,
    pub policies: HashMap<String, UsagePolicy>,
    key_by_hash: HashMap<String, String>,
    // The per-event maps use foldhash (seeded per process): SipHash showed up in profiles, and
    // their keys are server-made ids, not attacker-chosen strings.
    budgets: HashMap<BudgetRef, Counter, FastHash>,
    /// The limit events emitted, per budget: (window start, kind), for at most its last two
    /// windows (see `forget_old_windows`).
    limit_events: HashMap<String, Vec<(Millis, LimitKind)>, FastHash>,
    usage: HashMap<(EntityKind, String), Totals, FastHash>,
    seen_usage: RecentIds,
}

impl State {
    /// Folds one event in. Duplicate usage events (same `event_id`) change nothing.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Config(c) => self.apply_config(c),
            Event::Usage(u) => self.apply_usage(u),
            Event::Limit(l) => self.apply_limit(l),
        }
    }

    fn apply_limit(&mut self, l: &LimitEvent) {
        if l.kind == LimitKind::Reset {
            self.forget_old_windows(&l.budget, l.window_start);
        }
        if l.kind != LimitKind::Usage {
            let emitted = self.limit_events.entry(l.budget.clone()).or_default();
            if !emitted.contains(&(l.window_start, l.kind)) {
                emitted.push((l.window_start, l.kind));
            }
        }
        let Some(r) = BudgetRef::parse(&l.budget) else {
            return;
        };
        if l.kind == LimitKind::Reset {
            // A counter of a window that has ended counts nothing: forgetting it keeps
            // the counters to current windows (one per group of a grouped policy).
            if self
                .budgets
                .get(&r)
                .is_some_and(|c| c.window_start < l.window_start)
            {
                self.budgets.remove(&r);
            }
        } else {
            budget::raise(&mut self.budgets, r, l.window_start, l.budget_type, l.used);
        }
    }

    /// A budget started the window at `start`: what was emitted for its windows before the one
    /// just ended is forgotten, so the record of emitted events stays at two windows per budget
    /// instead of growing with every period. The window just ended is kept: usage that was in
    /// flight across the reset still settles into it, and must not claim its crossings again.
    fn forget_old_windows(&mut self, budget: &str, start: Millis) {
        let Some(emitted) = self.limit_events.get_mut(budget) else {
            return;
        };
        let previous = emitted.iter().map(|(w, _)| *w).filter(|w| *w < start).max();
        if let Some(previous) = previous {
            emitted.retain(|(w, _)| *w >= previous);
        }
    }

    fn apply_config(&mut self, event: &ConfigEvent) {
        match &event.change {
            Change::Upsert(entity) => self.upsert(entity.clone()),
            Change::Delete { kind, id } => self.delete(*kind, id),
        }
    }

    fn upsert(&mut self, entity: Entity) {
        match entity {
            Entity::Organisation(o) => self.organisation = Some(o),
            Entity::Workspace(w) => {
                self.workspaces.insert(w.id.clone(), Arc::new(w));
            }
            Entity::Integration(i) => {
                self.integrations.insert(i.id.clone(), Arc::new(i));
            }
            Entity::Provider(p) => {
                self.providers.insert(p.id.clone(), Arc::new(p));
            }
            Entity::Config(c) => {
                let plan = Node::parse(&c.config).map(Arc::new);
                self.config_plans.insert(c.id.clone(), plan);
                self.configs.insert(c.id.clone(), c);
            }
            Entity::Policy(p) => {
                self.policies.insert(p.id.clone(), p);
            }
            Entity::ApiKey(mut k) => {
                // A key recorded before its chain was: derive the chain from the keys known.
                if k.ancestors.is_empty() {
                    k.ancestors = self.chain_from(k.created_by.as_deref());
                }
                if let Some(old) = self.api_keys.get(&k.id) {
                    self.key_by_hash.remove(&old.key_hash);
                }
                self.key_by_hash.insert(k.key_hash.clone(), k.id.clone());
                self.api_keys.insert(k.id.clone(), Arc::new(k));
            }
        }
    }

    fn delete(&mut self, kind: EntityKind, id: &str) {
        match kind {
            EntityKind::Organisation => self.organisation = None,
            EntityKind::Workspace => {
                self.workspaces.remove(id);
            }
            EntityKind::Integration => {
                self.integrations.remove(id);
            }
            EntityKind::Provider => {
                self.providers.remove(id);
            }
            EntityKind::Config => {
                self.configs.remove(id);
                self.config_plans.remove(id);
            }
            EntityKind::Policy => {
                self.policies.remove(id);
            }
            EntityKind::ApiKey => {
                if let Some(k) = self.api_keys.remove(id) {
                    self.key_by_hash.remove(&k.key_hash);
                }
            }
        }
    }

    /// Folds one usage event (what `apply` does for `Event::Usage`, without wrapping it).
    pub fn apply_usage(&mut self, e: &UsageEvent) {
        let budgets = self.budgets_of_event(e);
        self.fold_usage(e, &budgets);
    }

    /// Folds a usage event into the totals and the given budgets (see [`State::budgets_of_event`]).
    /// A duplicate `event_id` changes nothing.
    pub fn fold_usage(&mut self, e: &UsageEvent, budgets: &[(BudgetRef, UsageLimit)]) {
        if !self.seen_usage.insert_event_id(&e.event_id, e.at) {
            return;
        }
        let targets = [
            (EntityKind::ApiKey, &e.api_key_id),
            (EntityKind::Provider, &e.provider_id),
            (EntityKind::Workspace, &e.workspace_id),
            (EntityKind::Integration, &e.integration_id),
        ];
        for (kind, id) in targets {
            if !id.is_empty() {
                self.usage.entry((kind, id.clone())).or_default().add(e);
            }
        }
        for (r, l) in budgets {
            budget::count(&mut self.budgets, r, l, e.at, e.cost_usd, e.total_tokens());
        }
    }

    /// Replaces every entity's usage totals (distributed gateways: with the global totals read
    /// from the usage store; usage they settle afterwards adds on top until the next refresh).
    pub fn replace_usage_totals(
        &mut self,
        totals: impl IntoIterator<Item = (EntityKind, String, Totals)>,
    ) {
        self.usage = totals.into_iter().map(|(k, id, t)| ((k, id), t)).collect();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::budget::RequestPath;
    use crate::domain::limits::RateLimit;
    use crate::domain::time::Millis;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// A workspace service key `k` in workspace `ws` with the given budget.
    pub(crate) fn api_key_fixture(
        usage_limits: Option<crate::domain::limits::UsageLimit>,
    ) -> ApiKey {
        ApiKey {
            id: "k".into(),
            key_hash: "h".into(),
            masked: "m".into(),
            name: "n".into(),
            description: None,
            kind: ApiKeyType::WorkspaceService,
            workspace_id: Some("ws".into()),
            user_id: None,
            scopes: vec![],
            defaults: Default::default(),
            usage_limits,
            rate_limits: vec![],
            limits_set_by: Default::default(),
            alert_emails: vec![],
            rotation_policy: None,
            expires_at: None,
            creation_mode: "api".into(),
            created_by: None,
            ancestors: vec![],
            created_at: Millis(0),
            updated_at: Millis(0),
        }
    }

    pub(crate) fn usage(id: u128, key: &str, tokens: u64, cost_millicents: i64) -> UsageEvent {
        UsageEvent {
            event_id: uuid::Uuid::from_u128(id).to_string(),
            at: Millis(1_700_000_000_000),
            organisation_id: "org".into(),
            workspace_id: "ws".into(),
            api_key_id: key.into(),
            provider_id: "prov".into(),
            provider_slug: "p".into(),
            integration_id: "int".into(),
            ai_provider: "openai".into(),
            department: None,
            user: None,
            metadata: Metadata::new(),
            model: "gpt-4o".into(),
            endpoint: Endpoint::ChatCompletions,
            status_code: 200,
            prompt_tokens: tokens / 2,
            completion_tokens: tokens - tokens / 2,
            cached_tokens: 0,
            cost_usd: Decimal::new(cost_millicents, 5),
            priced: true,
            usage_source: UsageSource::Provider,
            latency_ms: 1,
            upstream_latency_ms: 1,
            streamed: false,
            attempt_index: 0,
            trace_id: "t".into(),
            config_id: None,
            cache_write_tokens: 0,
        }
    }

    fn fold(events: &[UsageEvent]) -> State {
        let mut s = State::default();
        for e in events {
            s.apply(&Event::Usage(e.clone()));
        }
        s
    }

    fn snapshot(s: &State) -> Vec<((EntityKind, String), Totals)> {
        let mut v: Vec<_> = s.usage.iter().map(|(k, t)| (k.clone(), *t)).collect();
        v.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        v
    }

    proptest! {
        /// Duplicates, reordering and splitting the stream into separately folded runs all give
        /// the totals of the distinct events.
        #[test]
        fn fold_is_exact_under_duplicates_and_reordering(
            table in prop::collection::vec((0usize..3, 0u64..5000, 0i64..10_000_000), 40),
            ids in prop::collection::vec(0usize..40, 1..120),
            seed in any::<u64>(),
        ) {
            // An event id always names the same event: contents are a function of the id.
            let keys = ["k1", "k2", "k3"];
            let events: Vec<UsageEvent> = ids
                .iter()
                .map(|&id| { let (k, t, c) = table[id]; usage(id as u128, keys[k], t, c) })
                .collect();
            // The distinct events (first occurrence of each id wins, as in the log).
            let mut distinct = Vec::new();
            let mut ids = HashSet::new();
            for e in &events {
                if ids.insert(e.event_id.clone()) { distinct.push(e.clone()); }
            }
            let expected = fold(&distinct);
            for k in keys {
                let want = distinct.iter().filter(|e| e.api_key_id == k);
                let cost: Decimal = want.clone().map(|e| e.cost_usd).sum();
                let tokens: u64 = want.clone().map(|e| e.total_tokens()).sum();
                let got = expected.usage_of(EntityKind::ApiKey, k);
                prop_assert_eq!(got.cost_usd, cost);
                prop_assert_eq!(got.tokens, tokens);
                prop_assert_eq!(got.requests, want.count() as u64);
            }
            // Duplicate every event and shuffle deterministically.
            let mut noisy: Vec<UsageEvent> = events.iter().chain(events.iter()).cloned().collect();
            let n = noisy.len();
            let mut x = seed | 1;
            for i in (1..n).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                noisy.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(snapshot(&fold(&noisy)), snapshot(&expected));
            // Split into two halves folded by the same state in two runs (a restart mid-stream).
            let mut s = fold(&noisy[..n / 2]);
            for e in &noisy[n / 2..] { s.apply(&Event::Usage(e.clone())); }
            prop_assert_eq!(snapshot(&s), snapshot(&expected));
        }
    }

    fn config_event(id: &str, config: serde_json::Value) -> Event {
        Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: format!("e-{id}"),
            at: Millis(0),
            change: Change::Upsert(Entity::Config(RouteConfig {
                id: id.into(),
                slug: format!("pc-{id}"),
                name: id.into(),
                workspace_id: "ws".into(),
                config,
                is_default: false,
                status: "active".into(),
                version_id: "v".into(),
                owner_id: None,
                created_at: Millis(0),
                updated_at: Millis(0),
            })),
        })
    }

    /// A saved config is parsed when its event is applied; lookups share that one plan.
    #[test]
    fn the_record_of_emitted_limit_events_keeps_two_windows_per_budget() {
        let limit = |kind: LimitKind, window: i64| {
            Event::Limit(LimitEvent {
                event_id: format!("{kind:?}{window}"),
                at: Millis(window),
                kind,
                budget: "api_key:k".into(),
                owner_kind: "api_key".into(),
                workspace_id: None,
                api_key_id: Some("k".into()),
                window_start: Millis(window),
                budget_type: crate::domain::limits::BudgetKind::Cost,
                credit_limit: rust_decimal::Decimal::TEN,
                alert_threshold: None,
                used: rust_decimal::Decimal::ONE,
                next_reset: None,
            })
        };
        let mut s = State::default();
        for w in [0, 100, 200, 300] {
            s.apply(&limit(LimitKind::Reset, w));
            s.apply(&limit(LimitKind::ThresholdCrossed, w));
            s.apply(&limit(LimitKind::Exhausted, w));
        }
        let emitted = |s: &State, w: i64| {
            [
                LimitKind::Reset,
                LimitKind::ThresholdCrossed,
                LimitKind::Exhausted,
            ]
            .map(|k| s.limit_event_emitted("api_key:k", Millis(w), k))
        };
        assert_eq!(emitted(&s, 300), [true; 3], "the current window");
        assert_eq!(emitted(&s, 200), [true; 3], "the window just ended");
        assert_eq!(emitted(&s, 100), [false; 3], "older windows are forgotten");
        assert_eq!(emitted(&s, 0), [false; 3]);
        assert_eq!(s.limit_events["api_key:k"].len(), 6);
        // A duplicate changes nothing; other budgets keep theirs.
        s.apply(&limit(LimitKind::ThresholdCrossed, 300));
        assert_eq!(s.limit_events["api_key:k"].len(), 6);
    }

    #[test]
    fn saved_configs_are_parsed_once_when_applied() {
        let mut s = State::default();
        s.apply(&config_event(
            "c1",
            serde_json::json!({"provider": "@team"}),
        ));
        let first = s.config_plan("c1").unwrap().clone().unwrap();
        let again = s.config_plan("c1").unwrap().clone().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        // An invalid config (saved before a rule existed) keeps its error for its requests.
        s.apply(&config_event(
            "c2",
            serde_json::json!({"provider": "@team", "custom_host": "http://127.0.0.1:9/v1"}),
        ));
        let e = s.config_plan("c2").unwrap().clone().unwrap_err();
        assert!(e.contains("custom_host"), "{e}");
        s.apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "d".into(),
            at: Millis(0),
            change: Change::Delete {
                kind: EntityKind::Config,
                id: "c1".into(),
            },
        }));
        assert!(s.config_plan("c1").is_none());
    }

    #[test]
    fn dedupe_memory_follows_the_window_not_the_history() {
        let mut s = State::default();
        let minute = 60_000;
        for i in 0..10_000u128 {
            let mut e = usage(i, "k1", 10, 1);
            e.at = Millis(i as i64 * minute / 50); // 50 events a minute for 200 minutes
            s.apply(&Event::Usage(e));
        }
        assert!(
            s.usage_ids_remembered() <= 16 * 50,
            "{}",
            s.usage_ids_remembered()
        );
        // A redelivery within the window is still dropped.
        let mut dup = usage(9_999, "k1", 10, 1);
        dup.at = Millis(9_999 * minute / 50);
        s.apply(&Event::Usage(dup));
        assert_eq!(s.usage_of(EntityKind::ApiKey, "k1").requests, 10_000);
    }

    fn upsert_key(s: &mut State, k: &ApiKey) {
        s.apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "e".into(),
            at: Millis(0),
            change: Change::Upsert(Entity::ApiKey(k.clone())),
        }));
    }

    /// A minted key's requests cross its minter's budget and rate limits; a key recorded
    /// without its chain gets it from its creator; a deleted minter leaves the chain broken.
    #[test]
    fn a_minted_key_carries_its_minters_limits() {
        let mut s = State::default();
        let limit = crate::domain::limits::parse_usage_limit(
            &serde_json::json!({"type": "tokens", "credit_limit": 100}),
        )
        .unwrap();
        let mut w = api_key_fixture(limit);
        w.id = "w".into();
        w.key_hash = "hw".into();
        w.rate_limits = vec![RateLimit {
            kind: crate::domain::limits::RateKind::Requests,
            unit: crate::domain::limits::RateUnit::Rpm,
            value: 1,
        }];
        upsert_key(&mut s, &w);
        let mut m = api_key_fixture(None);
        m.id = "m".into();
        m.created_by = Some("w".into());
        upsert_key(&mut s, &m);
        assert_eq!(s.api_keys["m"].ancestors, vec!["w".to_owned()]);
        let path = RequestPath {
            api_key_id: "m",
            workspace_id: "ws",
            ..Default::default()
        };
        let budgets: Vec<_> = s.budgets_on(&path).into_iter().map(|(r, _)| r).collect();
        assert_eq!(budgets, vec![BudgetRef::ApiKey("w".into())]);
        let rates: Vec<_> = s
            .rate_limits_on(&path)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        assert_eq!(rates, vec![BudgetRef::ApiKey("w".into())]);
        assert_eq!(
            s.chain_from(Some("m")),
            vec!["m".to_owned(), "w".to_owned()]
        );
        s.apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "d".into(),
            at: Millis(0),
            change: Change::Delete {
                kind: EntityKind::ApiKey,
                id: "w".into(),
            },
        }));
        let m = s.api_keys["m"].clone();
        assert!(s.key_ancestors(&m).is_none());
    }

    #[test]
    fn api_key_rehash_moves_the_index() {
        let mut s = State::default();
        let mut k = api_key_fixture(None);
        k.key_hash = "h1".into();
        let up = |k: &ApiKey| {
            Event::Config(ConfigEvent {
                audit: Default::default(),
                event_id: "e".into(),
                at: Millis(0),
                change: Change::Upsert(Entity::ApiKey(k.clone())),
            })
        };
        s.apply(&up(&k));
        k.key_hash = "h2".into();
        s.apply(&up(&k));
        assert!(s.api_key_by_hash("h1").is_none());
        assert_eq!(s.api_key_by_hash("h2").map(|k| k.id.as_str()), Some("k"));
        s.apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "e2".into(),
            at: Millis(0),
            change: Change::Delete {
                kind: EntityKind::ApiKey,
                id: "k".into(),
            },
        }));
        assert!(s.api_key_by_hash("h2").is_none());
    }
}
