//! Governance at admission and settlement: budgets (reserve the request's maximum, settle to the
//! actual cost) and rate limits (one counter per limit and calendar interval, see
//! [`crate::domain::rate`]: requests count 1, token limits take the estimate up front and are
//! corrected to the actual usage).
//!
//! Exactness: admission checks and reserves inside one critical section of the books lock (taken
//! before the state lock). Settlement first folds the usage into the state, then releases the
//! reservation: in between, an admission sees the cost twice (counted and reserved), never zero
//! times, so it can only be more cautious. Hence in strict mode spend never passes a limit, and in
//! default mode it passes it by at most one request's maximum. Settlement holds the books lock
//! only for the release, which keeps admissions from queueing behind the state update.
//!
//! Memory: rate counters of ended intervals and of limits that no longer exist are dropped by
//! [`Governor::prune`]; a grouped policy counts at most [`MAX_POLICY_GROUPS`] groups at once.

mod books;

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rust_decimal::Decimal;

use crate::domain::budget::{BudgetRef, Exhausted, RequestPath};
use crate::domain::limits::{RateKind, RateLimit, RateUnit, UsageLimit};
use crate::domain::pricing::Pricing;
use crate::domain::rate;
use crate::domain::{alerts, Event, LimitEvent, Millis, State, UsageEvent};
use books::{applicable, group_active, release, Books};

/// The most distinct groups (`group_by` values) one grouped policy counts at once. A request that
/// would start one more is refused (429) until groups go idle: a group is idle once its rate
/// intervals have ended, nothing of it is in flight and its budget has counted nothing in the
/// current window; idle groups are forgotten by [`Governor::prune`] (every 30 s).
pub const MAX_POLICY_GROUPS: usize = 10_000;

/// Why admission refused a request: which budget or limit, and what it counted. The data plane
/// turns it into its answer (`crate::proxy::refusals`).
#[derive(Clone, Debug)]
pub struct Denial {
    pub budget: BudgetRef,
    pub reason: Reason,
}

/// What refused.
#[derive(Clone, Debug)]
pub enum Reason {
    /// A budget is used up, or this request's maximum does not fit in what is left.
    Exhausted(Box<Exhausted>),
    /// A rate limit's interval is full; it ends in `retry_after_secs`.
    RateLimited {
        limit: RateLimit,
        retry_after_secs: u64,
    },
    /// A grouped policy already counts `cap` groups and this request would start another.
    TooManyGroups { cap: usize },
    /// The model has no price and the budget counts cost.
    Unpriced { model: String },
}

impl Denial {
    /// Whether the limit belongs to the target (provider, integration access, policy, or the
    /// target model's missing price) rather than the key or workspace: a fallback may move on
    /// to the next target.
    pub fn target_specific(&self) -> bool {
        matches!(self.reason, Reason::Unpriced { .. })
            || !matches!(self.budget, BudgetRef::ApiKey(_) | BudgetRef::Workspace(_))
    }

    fn new(budget: &BudgetRef, reason: Reason) -> Self {
        Denial {
            budget: budget.clone(),
            reason,
        }
    }
}

/// A rate limit's counter key: its owner, what it counts and its interval.
type RateKey = (BudgetRef, RateKind, RateUnit);

/// The gateway's governance state (in memory; rebuilt from configuration and the log).
pub struct Governor {
    books: Mutex<Books>,
    group_cap: usize,
}

impl Default for Governor {
    fn default() -> Self {
        Governor::with_group_cap(MAX_POLICY_GROUPS)
    }
}

/// What an admitted request holds until its attempt is settled. Dropping it unsettled (a crash
/// of the task, a cancelled request) releases the budget reservation; token rate counters keep
/// the estimate (the request may have been billed).
pub struct Reservation {
    governor: Arc<Governor>,
    /// The budgets admission checked, reused at settlement (computed once per attempt).
    budgets: Vec<(BudgetRef, UsageLimit)>,
    cost: Decimal,
    tokens: u64,
    /// The token rate counters that took the estimate, with the interval they took it in.
    token_windows: Vec<(RateKey, Millis)>,
    settled: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut books = self.governor.books.lock();
            release(&mut books, self);
        }
    }
}

/// The most a request may cost and use, for reservation, and how its model is priced.
#[derive(Clone, Copy, Debug, Default)]
pub struct Estimate {
    pub max_cost: Decimal,
    pub max_tokens: u64,
    pub pricing: Pricing,
}

/// The threshold and exhaustion events due for `budgets` after usage on `path` was folded,
/// marked emitted in the state so nothing else claims them. Crossings are rare: they are looked
/// for under the read lock and marked under the write lock only when there are some, checking
/// again so a concurrent settlement can't also.
pub fn claim_crossings(
    state: &RwLock<State>,
    budgets: &[(BudgetRef, UsageLimit)],
    path: &crate::domain::budget::RequestPath<'_>,
    now: Millis,
) -> Vec<LimitEvent> {
    let mut due = alerts::crossings(&state.read(), budgets, path, now);
    if !due.is_empty() {
        let mut state = state.write();
        due.retain(|e| !state.limit_event_emitted(&e.budget, e.window_start, e.kind));
        for e in &due {
            state.apply(&Event::Limit(e.clone()));
        }
    }
    due
}

impl Governor {
    /// A governor whose grouped policies count at most `group_cap` groups each.
    pub fn with_group_cap(group_cap: usize) -> Self {
        Governor {
            books: Mutex::new(Books::default()),
            group_cap,
        }
    }

    /// Checks every budget and rate limit on `path` and reserves the request's maximum.
    /// A refusal says whether it came from the target's own limits (provider, integration access,
    /// policy), where a fallback may try the next target, or from the key or workspace.
    pub fn admit(
        self: &Arc<Self>,
        state: &RwLock<State>,
        path: &RequestPath<'_>,
        est: Estimate,
        now: Millis,
    ) -> Result<Reservation, Denial> {
        // What applies depends only on configuration: gather it before taking the books lock,
        // which then covers just the checks and the reservation.
        let (budgets, rates) = applicable(&state.read(), path);
        let mut books = self.books.lock();
        books.check_budgets(&state.read(), &budgets, path, est, now)?;
        books.check_rates(&rates, now)?;
        let refs = budgets
            .iter()
            .map(|(r, _)| r)
            .chain(rates.iter().map(|(r, _)| r));
        for (id, g) in books.new_groups(refs, self.group_cap)? {
            books.groups.entry(id).or_default().insert(g);
        }
        // Every check passed: only now is anything counted, so a refusal takes nothing.
        let token_windows = books.take_rates(&rates, est.max_tokens, now);
        for (b, _) in &budgets {
            let e = books.reserved.entry(b.clone()).or_default();
            e.0 = e.0.saturating_add(est.max_cost);
            e.1 = e.1.saturating_add(est.max_tokens);
        }
        Ok(Reservation {
            governor: self.clone(),
            budgets,
            cost: est.max_cost,
            tokens: est.max_tokens,
            token_windows,
            settled: false,
        })
    }

    /// Drops rate counters of ended intervals and of limits that no longer exist (deleted keys,
    /// changed limits), and forgets idle policy groups, so the books's size follows the
    /// configuration and the current intervals, not the history.
    pub fn prune(&self, state: &State, now: Millis) {
        let mut guard = self.books.lock();
        let books = &mut *guard;
        books.rates.retain(|(r, kind, unit), w| {
            !rate::ended(w, *unit, now)
                && state
                    .rate_limits_of(r)
                    .iter()
                    .any(|l| l.unit == *unit && l.kind == *kind)
        });
        let held: HashSet<&BudgetRef> = (books.rates.keys().map(|(r, _, _)| r))
            .chain(books.reserved.keys())
            .collect();
        for (id, set) in &mut books.groups {
            set.retain(|g| group_active(state, &held, id, g, now));
        }
        books
            .groups
            .retain(|id, set| !set.is_empty() && state.policies.contains_key(id));
    }

    /// How many rate counters are held (a metric).
    pub fn limiters(&self) -> usize {
        self.books.lock().rates.len()
    }

    /// Folds a settled attempt's usage into the state, then releases its reservation. Returns the
    /// limit events the usage made due, already marked as emitted in the state under its write
    /// lock (so concurrent settlements never emit one twice).
    pub fn settle(
        &self,
        state: &RwLock<State>,
        event: UsageEvent,
        reservation: Option<Reservation>,
        claim_crossings_here: bool,
        now: Millis,
    ) -> Vec<LimitEvent> {
        let actual = event.total_tokens();
        // The budgets admission checked for this attempt; only an unreserved settlement looks
        // them up again.
        let looked_up;
        let budgets: &[(BudgetRef, UsageLimit)] = match &reservation {
            Some(r) => &r.budgets,
            None => {
                looked_up = state.read().budgets_of_event(&event);
                &looked_up
            }
        };
        state.write().fold_usage(&event, budgets);
        // In distributed mode the aggregators claim crossings from global totals.
        let due = if claim_crossings_here {
            claim_crossings(state, budgets, &event.path(), now)
        } else {
            Vec::new()
        };
        if let Some(mut r) = reservation {
            let mut books = self.books.lock();
            release(&mut books, &r);
            for (key, start) in &r.token_windows {
                if let Some(w) = books.rates.get_mut(key) {
                    rate::settle(w, *start, r.tokens, actual);
                }
            }
            r.settled = true;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;

    #[test]
    fn limiters_of_deleted_keys_are_pruned() {
        let state = RwLock::new(State::default());
        let mut key = crate::domain::state::tests::api_key_fixture(None);
        key.rate_limits = vec![RateLimit {
            kind: RateKind::Requests,
            unit: RateUnit::Rpm,
            value: 10,
        }];
        let upsert = |k: &ApiKey| {
            Event::Config(ConfigEvent {
                audit: Default::default(),
                event_id: "c".into(),
                at: Millis(0),
                change: Change::Upsert(Entity::ApiKey(k.clone())),
            })
        };
        state.write().apply(&upsert(&key));
        let gov = Arc::new(Governor::default());
        let path = RequestPath {
            api_key_id: "k",
            workspace_id: "ws",
            ..Default::default()
        };
        for _ in 0..10 {
            drop(
                gov.admit(&state, &path, Estimate::default(), Millis(1))
                    .unwrap(),
            );
        }
        let refused = gov
            .admit(&state, &path, Estimate::default(), Millis(1))
            .err()
            .unwrap();
        assert!(matches!(refused.reason, Reason::RateLimited { .. }));
        assert!(!refused.target_specific());
        assert_eq!(gov.limiters(), 1);
        gov.prune(&state.read(), Millis(59_999));
        assert_eq!(gov.limiters(), 1, "still configured, in its minute");
        gov.prune(&state.read(), Millis(60_000));
        assert_eq!(gov.limiters(), 0, "the minute ended");
        drop(gov.admit(&state, &path, Estimate::default(), Millis(60_000)));
        state.write().apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "d".into(),
            at: Millis(0),
            change: Change::Delete {
                kind: EntityKind::ApiKey,
                id: "k".into(),
            },
        }));
        gov.prune(&state.read(), Millis(60_001));
        assert_eq!(gov.limiters(), 0);
    }

    /// A 1000-tokens-per-hour key on an injected clock: five 200-token requests, then refused
    /// (Retry-After: the rest of the hour) until the hour ends.
    #[test]
    fn a_token_rate_limit_binds_for_the_hour() {
        let state = RwLock::new(State::default());
        let mut key = crate::domain::state::tests::api_key_fixture(None);
        key.rate_limits = vec![RateLimit {
            kind: RateKind::Tokens,
            unit: RateUnit::Rph,
            value: 1000,
        }];
        state.write().apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "c".into(),
            at: Millis(0),
            change: Change::Upsert(Entity::ApiKey(key)),
        }));
        let gov = Arc::new(Governor::default());
        let path = RequestPath {
            api_key_id: "k",
            workspace_id: "ws",
            ..Default::default()
        };
        let est = Estimate {
            max_tokens: 200,
            ..Default::default()
        };
        let hour = 3_600_000;
        let request = |id: u128, now: i64| {
            let r = gov.admit(&state, &path, est, Millis(now))?;
            let mut e = crate::domain::state::tests::usage(id, "k", 200, 0);
            e.at = Millis(now);
            gov.settle(&state, e, Some(r), false, Millis(now));
            Ok::<(), Denial>(())
        };
        for i in 0..5 {
            assert!(request(i, 10 * hour + 1000 * i as i64).is_ok(), "{i}");
        }
        let refused = request(5, 10 * hour + 60_000).unwrap_err();
        assert!(
            matches!(
                refused.reason,
                Reason::RateLimited {
                    retry_after_secs: 3540,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(
            request(6, 11 * hour - 1).is_err(),
            "the last millisecond of the hour"
        );
        assert!(request(7, 11 * hour).is_ok(), "a new hour");
    }

    fn grouped_policy(cap_test_id: &str) -> Event {
        let policy: UsagePolicy = serde_json::from_value(serde_json::json!({
            "id": cap_test_id, "name": "per team", "workspace_id": null, "conditions": [],
            "group_by": "metadata.team", "usage_limits": null,
            "rate_limits": [{"type": "requests", "unit": "rpd", "value": 100}],
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "p".into(),
            at: Millis(0),
            change: Change::Upsert(Entity::Policy(policy)),
        })
    }

    #[test]
    fn a_grouped_policy_counts_a_bounded_number_of_groups() {
        let state = RwLock::new(State::default());
        state.write().apply(&grouped_policy("pol"));
        let gov = Arc::new(Governor::with_group_cap(3));
        let call = |team: &str, now: i64| {
            let metadata: Metadata = [("team".to_owned(), team.to_owned())].into();
            let path = RequestPath {
                api_key_id: "k",
                workspace_id: "ws",
                metadata: Some(&metadata),
                ..Default::default()
            };
            gov.admit(&state, &path, Estimate::default(), Millis(now))
                .map(drop)
        };
        for team in ["a", "b", "c", "a"] {
            assert!(call(team, 1).is_ok(), "{team}");
        }
        let refused = call("d", 1).unwrap_err();
        assert!(
            matches!(refused.reason, Reason::TooManyGroups { cap: 3 }),
            "{refused:?}"
        );
        assert!(call("b", 1).is_ok(), "known groups are still served");
        gov.prune(&state.read(), Millis(1));
        assert!(call("d", 1).is_err(), "the groups are active today");
        gov.prune(&state.read(), Millis(86_400_000));
        assert!(call("d", 86_400_000).is_ok(), "idle groups were forgotten");
    }
}
