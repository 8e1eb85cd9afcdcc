//! Governance at admission and settlement: budgets (reserve the request's maximum, settle to the
//! actual cost) and rate limits (requests through `governor`; tokens through a debit bucket that
//! takes the estimate up front and is corrected by the actual usage).
//!
//! Exactness: admission checks and reserves inside one critical section of the ledger lock (taken
//! before the state lock). Settlement first folds the usage into the state, then releases the
//! reservation: in between, an admission sees the cost twice (counted and reserved), never zero
//! times, so it can only be more cautious. Hence in strict mode spend never passes a limit, and in
//! default mode it passes it by at most what was in flight. Settlement holds the ledger lock only
//! for the release, which keeps admissions from queueing behind the state update.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::{Mutex, RwLock};
use reqwest::StatusCode;
use rust_decimal::Decimal;

use super::DataError;
use crate::domain::budget::{self, BudgetRef, Exhausted, RequestPath};
use crate::domain::limits::{BudgetKind, RateKind, RateLimit, RateUnit, UsageLimit};
use crate::domain::state::FastHash;
use crate::domain::{alerts, Event, LimitEvent, Millis, State, UsageEvent};

/// A token-rate bucket: refills continuously to `capacity`; admission needs a positive level and
/// takes the estimate; settlement takes the difference to the actual tokens (it may go negative,
/// which delays the next admission).
struct TokenBucket {
    capacity: f64,
    per_ms: f64,
    level: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(l: &RateLimit) -> Self {
        let capacity = l.value as f64;
        TokenBucket {
            capacity,
            per_ms: capacity / l.unit.window_ms() as f64,
            level: capacity,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let ms = now.duration_since(self.at).as_secs_f64() * 1000.0;
        self.level = (self.level + ms * self.per_ms).min(self.capacity);
        self.at = now;
    }

    fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.level) / self.per_ms).max(0.0) / 1000.0)
    }
}

#[derive(Default)]
struct Ledger {
    /// Cost and tokens reserved per budget by admitted requests not yet settled.
    reserved: HashMap<BudgetRef, (Decimal, u64), FastHash>,
    /// One limiter per (owner, unit); replaced when the limit's value changes.
    requests: HashMap<(BudgetRef, RateUnit), (u64, Arc<DefaultDirectRateLimiter>), FastHash>,
    tokens: HashMap<(BudgetRef, RateUnit), (u64, TokenBucket), FastHash>,
}

/// The gateway's governance state (in memory; rebuilt from configuration and the log).
#[derive(Default)]
pub struct Governor {
    ledger: Mutex<Ledger>,
}

/// What an admitted request holds until its attempt is settled. Dropping it unsettled (a crash
/// of the task, a cancelled request) releases the reservation.
pub struct Reservation {
    governor: Arc<Governor>,
    /// The budgets admission checked, reused at settlement (computed once per attempt).
    budgets: Vec<(BudgetRef, UsageLimit)>,
    cost: Decimal,
    tokens: u64,
    token_limits: Vec<(BudgetRef, RateUnit)>,
    settled: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut ledger = self.governor.ledger.lock();
            release(&mut ledger, self);
        }
    }
}

fn release(ledger: &mut Ledger, r: &Reservation) {
    for (b, _) in &r.budgets {
        if let Some(e) = ledger.reserved.get_mut(b) {
            e.0 -= r.cost;
            e.1 = e.1.saturating_sub(r.tokens);
            if e.0.is_zero() && e.1 == 0 {
                ledger.reserved.remove(b);
            }
        }
    }
}

/// A refused admission.
pub struct Refusal {
    pub error: DataError,
    /// The limit belongs to the target (provider, integration access, policy), not the key or
    /// workspace: a fallback may move on to the next target.
    pub target_specific: bool,
}

impl Refusal {
    fn new(r: &BudgetRef, error: DataError) -> Self {
        let target_specific = !matches!(r, BudgetRef::ApiKey(_) | BudgetRef::Workspace(_));
        Refusal {
            error,
            target_specific,
        }
    }
}

/// The most a request may cost and use, for reservation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Estimate {
    pub max_cost: Decimal,
    pub max_tokens: u64,
}

fn exhausted(e: &Exhausted) -> DataError {
    let amount = |d: Decimal| match e.kind {
        BudgetKind::Cost => format!("${}", d.round_dp(6).normalize()),
        BudgetKind::Tokens => format!("{} tokens", d.normalize()),
    };
    let reset = e
        .next_reset
        .map_or("it does not reset by itself".to_owned(), |t| {
            format!("it resets at {}", t.to_iso())
        });
    let what = if e.would_exceed {
        "budget would be exceeded: this request's maximum cost does not fit in"
    } else {
        "budget exhausted:"
    };
    DataError::new(
        StatusCode::PRECONDITION_FAILED,
        "budget_exceeded",
        Some("budget_exhausted"),
        format!(
            "{what} the {} budget ({}), used {} of {}; {reset}",
            e.budget.owner_kind(),
            e.budget.key(),
            amount(e.used),
            amount(e.limit),
        ),
    )
}

fn rate_limited(r: &BudgetRef, l: &RateLimit, wait: Duration) -> DataError {
    let kind = match l.kind {
        RateKind::Requests => "requests",
        RateKind::Tokens => "tokens",
    };
    let mut e = DataError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        Some("rate_limit_exceeded"),
        if l.value == 0 {
            format!("{} {} is disabled (rate limit 0)", r.owner_kind(), r.key())
        } else {
            format!(
                "rate limit exceeded: {} {} allows {} {kind} per {:?}",
                r.owner_kind(),
                r.key(),
                l.value,
                l.unit
            )
            .to_lowercase()
        },
    );
    e.retry_after_secs = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    e
}

fn limiter(l: &RateLimit) -> Option<DefaultDirectRateLimiter> {
    let value = NonZeroU32::new(u32::try_from(l.value).unwrap_or(u32::MAX))?;
    let per = Duration::from_nanos(
        (l.unit.window_ms() as u128 * 1_000_000 / u128::from(value.get())) as u64,
    );
    Some(RateLimiter::direct(
        Quota::with_period(per)?.allow_burst(value),
    ))
}

/// The threshold and exhaustion events due for `budgets` after usage on `path` was folded,
/// marked emitted in the state so nothing else claims them. Crossings are rare: they are looked
/// for under the read lock and marked under the write lock only when there are some, checking
/// again so a concurrent settlement can't also.
pub fn claim_crossings(
    state: &RwLock<State>,
    budgets: &[(BudgetRef, UsageLimit)],
    path: &crate::domain::budget::RequestPath<'_>,
) -> Vec<LimitEvent> {
    let mut due = alerts::crossings(&state.read(), budgets, path, Millis::now());
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
    /// Checks every budget and rate limit on `path` and reserves the request's maximum.
    /// A refusal says whether it came from the target's own limits (provider, integration access,
    /// policy), where a fallback may try the next target, or from the key or workspace.
    pub fn admit(
        self: &Arc<Self>,
        state: &RwLock<State>,
        path: &RequestPath<'_>,
        est: Estimate,
        now: Millis,
    ) -> Result<Reservation, Refusal> {
        // What applies depends only on configuration: gather it before taking the ledger lock,
        // which then covers just the checks and the reservation.
        let (budgets, rate_limits) = {
            let state = state.read();
            let budgets: Vec<(BudgetRef, UsageLimit)> = state
                .budgets_on(path)
                .into_iter()
                .map(|(r, l)| (r, l.clone()))
                .collect();
            let rates: Vec<(BudgetRef, Vec<RateLimit>)> = state
                .rate_limits_on(path)
                .into_iter()
                .map(|(r, l)| (r, l.to_vec()))
                .collect();
            (budgets, rates)
        };
        let mut ledger = self.ledger.lock();
        let state = state.read();
        for (r, l) in &budgets {
            let used = state.budget_used(r, l, now);
            let reserved = ledger
                .reserved
                .get(r)
                .map_or(Decimal::ZERO, |(c, t)| match l.kind {
                    BudgetKind::Cost => *c,
                    BudgetKind::Tokens => Decimal::from(*t),
                });
            let max = match l.kind {
                BudgetKind::Cost => est.max_cost,
                BudgetKind::Tokens => Decimal::from(est.max_tokens),
            };
            budget::admit(r, l, used, reserved, max, now)
                .map_err(|e| Refusal::new(r, exhausted(&e)))?;
        }
        let mut token_limits = Vec::new();
        drop(state);
        for (r, limits) in &rate_limits {
            for l in limits {
                let key = (r.clone(), l.unit);
                match l.kind {
                    RateKind::Requests => {
                        let fresh = || {
                            (
                                l.value,
                                Arc::new(limiter(l).unwrap_or_else(|| {
                                    RateLimiter::direct(Quota::per_hour(NonZeroU32::MIN))
                                })),
                            )
                        };
                        let entry = ledger.requests.entry(key).or_insert_with(fresh);
                        if entry.0 != l.value {
                            *entry = fresh();
                        }
                        if l.value == 0 {
                            return Err(Refusal::new(r, rate_limited(r, l, l.unit.window())));
                        }
                        if let Err(not_until) = entry.1.check() {
                            let wait = not_until.wait_time_from(DefaultClock::default().now());
                            return Err(Refusal::new(r, rate_limited(r, l, wait)));
                        }
                    }
                    RateKind::Tokens => {
                        let entry = ledger
                            .tokens
                            .entry(key.clone())
                            .or_insert_with(|| (l.value, TokenBucket::new(l)));
                        if entry.0 != l.value {
                            *entry = (l.value, TokenBucket::new(l));
                        }
                        if l.value == 0 {
                            return Err(Refusal::new(r, rate_limited(r, l, l.unit.window())));
                        }
                        entry.1.refill();
                        if entry.1.level < 1.0 {
                            return Err(Refusal::new(r, rate_limited(r, l, entry.1.wait())));
                        }
                        entry.1.level -= est.max_tokens as f64;
                        token_limits.push(key);
                    }
                }
            }
        }
        for (b, _) in &budgets {
            let e = ledger.reserved.entry(b.clone()).or_default();
            e.0 += est.max_cost;
            e.1 += est.max_tokens;
        }
        Ok(Reservation {
            governor: self.clone(),
            budgets,
            cost: est.max_cost,
            tokens: est.max_tokens,
            token_limits,
            settled: false,
        })
    }

    /// Drops the limiters of limits that no longer exist (deleted keys, changed limits), so the
    /// ledger's size follows the configuration, not the history.
    pub fn prune(&self, state: &State) {
        let mut ledger = self.ledger.lock();
        let exists = |(r, unit): &(BudgetRef, RateUnit), kind: RateKind| {
            state
                .rate_limits_of(r)
                .iter()
                .any(|l| l.unit == *unit && l.kind == kind)
        };
        ledger.requests.retain(|k, _| exists(k, RateKind::Requests));
        ledger.tokens.retain(|k, _| exists(k, RateKind::Tokens));
    }

    /// How many limiters are held (a metric).
    pub fn limiters(&self) -> usize {
        let ledger = self.ledger.lock();
        ledger.requests.len() + ledger.tokens.len()
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
            claim_crossings(state, budgets, &event.path())
        } else {
            Vec::new()
        };
        if let Some(mut r) = reservation {
            let mut ledger = self.ledger.lock();
            release(&mut ledger, &r);
            for key in &r.token_limits {
                if let Some((_, bucket)) = ledger.tokens.get_mut(key) {
                    bucket.level -= actual as f64 - r.tokens as f64;
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
                    .map_err(|r| r.error)
                    .unwrap(),
            );
        }
        let refused = gov
            .admit(&state, &path, Estimate::default(), Millis(1))
            .err()
            .unwrap();
        assert_eq!(refused.error.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(!refused.target_specific);
        assert_eq!(gov.limiters(), 1);
        gov.prune(&state.read());
        assert_eq!(gov.limiters(), 1, "still configured");
        state.write().apply(&Event::Config(ConfigEvent {
            event_id: "d".into(),
            at: Millis(0),
            change: Change::Delete {
                kind: EntityKind::ApiKey,
                id: "k".into(),
            },
        }));
        gov.prune(&state.read());
        assert_eq!(gov.limiters(), 0);
    }
}
