//! The governor's books: what admitted requests hold (reservations per budget), the rate
//! counters of the current intervals and the groups each grouped policy counts; the checks an
//! admission makes against them. All of it under the governor's one lock.

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;

use super::{Denial, Estimate, RateKey, Reason, Reservation};
use crate::domain::budget::{self, BudgetRef, RequestPath};
use crate::domain::hash::FastHash;
use crate::domain::limits::{BudgetKind, RateKind, RateLimit, UsageLimit};
use crate::domain::rate::{self, Window};
use crate::domain::{Millis, State};

#[derive(Default)]
pub(super) struct Books {
    /// Cost and tokens reserved per budget by admitted requests not yet settled.
    pub(super) reserved: HashMap<BudgetRef, (Decimal, u64), FastHash>,
    /// One counter per rate limit, for its current interval.
    pub(super) rates: HashMap<RateKey, Window, FastHash>,
    /// The groups each grouped policy counts (bounded by the group cap).
    pub(super) groups: HashMap<String, HashSet<String>, FastHash>,
}

pub(super) fn release(books: &mut Books, r: &Reservation) {
    for (b, _) in &r.budgets {
        if let Some(e) = books.reserved.get_mut(b) {
            e.0 = (e.0 - r.cost).max(Decimal::ZERO);
            e.1 = e.1.saturating_sub(r.tokens);
            if e.0.is_zero() && e.1 == 0 {
                books.reserved.remove(b);
            }
        }
    }
}

/// The budgets and rate limits on a path, with their definitions (read from configuration).
pub(super) type Applicable = (
    Vec<(BudgetRef, UsageLimit)>,
    Vec<(BudgetRef, Vec<RateLimit>)>,
);

pub(super) fn applicable(state: &State, path: &RequestPath<'_>) -> Applicable {
    let budgets = state
        .budgets_on(path)
        .into_iter()
        .map(|(r, l)| (r, l.clone()))
        .collect();
    let rates = state
        .rate_limits_on(path)
        .into_iter()
        .map(|(r, l)| (r, l.to_vec()))
        .collect();
    (budgets, rates)
}

impl Books {
    /// Checks every budget on the path against settled usage plus what is in flight.
    pub(super) fn check_budgets(
        &self,
        state: &State,
        budgets: &[(BudgetRef, UsageLimit)],
        path: &RequestPath<'_>,
        est: Estimate,
        now: Millis,
    ) -> Result<(), Denial> {
        for (r, l) in budgets {
            let unpriced = |_| {
                let model = path.model.to_owned();
                Denial::new(r, Reason::Unpriced { model })
            };
            let counts = budget::counts(l.kind, est.pricing).map_err(unpriced)?;
            if !counts {
                continue;
            }
            let (cost, tokens) = self.reserved.get(r).copied().unwrap_or_default();
            let (reserved, max) = match l.kind {
                BudgetKind::Cost => (cost, est.max_cost),
                BudgetKind::Tokens => (Decimal::from(tokens), Decimal::from(est.max_tokens)),
            };
            let used = state.budget_used(r, l, now);
            budget::admit(r, l, used, reserved, max, now)
                .map_err(|e| Denial::new(r, Reason::Exhausted(e)))?;
        }
        Ok(())
    }

    /// Checks every rate limit on the path in its current interval.
    pub(super) fn check_rates(
        &self,
        rates: &[(BudgetRef, Vec<RateLimit>)],
        now: Millis,
    ) -> Result<(), Denial> {
        for (r, limits) in rates {
            for l in limits {
                let window = self.rates.get(&(r.clone(), l.kind, l.unit));
                rate::check(l, window, now).map_err(|e| {
                    let retry_after_secs = e.retry_after_secs(now);
                    let limit = *l;
                    Denial::new(
                        r,
                        Reason::RateLimited {
                            limit,
                            retry_after_secs,
                        },
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The grouped-policy groups on the path this request would add, refusing past the cap.
    pub(super) fn new_groups<'a>(
        &self,
        refs: impl Iterator<Item = &'a BudgetRef>,
        cap: usize,
    ) -> Result<Vec<(String, String)>, Denial> {
        let mut fresh: Vec<(String, String)> = Vec::new();
        for r in refs {
            let BudgetRef::Policy { id, group: Some(g) } = r else {
                continue;
            };
            let known = self.groups.get(id);
            if known.is_some_and(|k| k.contains(g)) || fresh.iter().any(|(i, f)| i == id && f == g)
            {
                continue;
            }
            if known.map_or(0, HashSet::len) >= cap {
                return Err(Denial::new(r, Reason::TooManyGroups { cap }));
            }
            fresh.push((id.clone(), g.clone()));
        }
        Ok(fresh)
    }

    /// Counts the request in every rate limit; returns the token counters that took `tokens`.
    pub(super) fn take_rates(
        &mut self,
        rates: &[(BudgetRef, Vec<RateLimit>)],
        tokens: u64,
        now: Millis,
    ) -> Vec<(RateKey, Millis)> {
        let mut held = Vec::new();
        for (r, limits) in rates {
            for l in limits {
                let key = (r.clone(), l.kind, l.unit);
                let amount = match l.kind {
                    RateKind::Requests => 1,
                    RateKind::Tokens => tokens,
                };
                let start = rate::take(
                    self.rates.entry(key.clone()).or_default(),
                    l.unit,
                    now,
                    amount,
                );
                if l.kind == RateKind::Tokens {
                    held.push((key, start));
                }
            }
        }
        held
    }
}

/// Whether a grouped policy's group still holds anything: a rate counter or a reservation
/// (`held`), or budget usage in the current window.
pub(super) fn group_active(
    state: &State,
    held: &HashSet<&BudgetRef>,
    id: &str,
    group: &str,
    now: Millis,
) -> bool {
    let r = BudgetRef::Policy {
        id: id.to_owned(),
        group: Some(group.to_owned()),
    };
    held.contains(&r)
        || state
            .budget_limit(&r)
            .is_some_and(|l| !state.budget_used(&r, l, now).is_zero())
}
