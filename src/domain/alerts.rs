//! Which limit events are due: a budget on a settled request's path that has crossed its alert
//! threshold or its limit in the current window, or a budget whose period rolled over. Each is
//! due once per budget, window and kind; the state knows which were emitted by folding them.

use rust_decimal::Decimal;

use super::budget::{BudgetRef, RequestPath, Windowed};
use super::events::{LimitEvent, LimitKind};
use super::limits::UsageLimit;
use super::state::State;
use super::time::Millis;

fn event(
    r: &BudgetRef,
    l: &UsageLimit,
    kind: LimitKind,
    window_start: Millis,
    used: Decimal,
    path: Option<&RequestPath<'_>>,
    now: Millis,
) -> LimitEvent {
    LimitEvent {
        event_id: uuid::Uuid::new_v4().to_string(),
        at: now,
        kind,
        budget: r.key(),
        owner_kind: r.owner_kind().to_owned(),
        workspace_id: path.map(|p| p.workspace_id.to_owned()),
        api_key_id: path.map(|p| p.api_key_id.to_owned()),
        window_start,
        budget_type: l.kind,
        credit_limit: l.credit_limit,
        alert_threshold: l.alert_threshold,
        used,
        next_reset: l.next_reset(now),
    }
}

/// Threshold and exhaustion events due for the budgets on `path` after its usage was folded.
pub fn crossings(state: &State, path: &RequestPath<'_>, now: Millis) -> Vec<LimitEvent> {
    let mut out = Vec::new();
    for (r, l) in state.budgets_on(path) {
        let used = state.budget_used(&r, l, now);
        let window = l.window_start(now);
        let checks = [
            (LimitKind::ThresholdCrossed, l.alert_threshold),
            (LimitKind::Exhausted, Some(l.credit_limit)),
        ];
        for (kind, level) in checks {
            if level.is_some_and(|level| used >= level)
                && !state.limit_event_emitted(&r.key(), window, kind)
            {
                out.push(event(&r, l, kind, window, used, Some(path), now));
            }
        }
    }
    out
}

/// Reset events due at `now`: budgets that counted usage in a window that has since ended.
pub fn resets(state: &State, now: Millis) -> Vec<LimitEvent> {
    let mut out = Vec::new();
    for (r, counter) in state.budget_counters() {
        let Some(l) = state.budget_limit(r) else {
            continue;
        };
        let window = l.window_start(now);
        let rolled_over = l.periodic_reset.is_some() || l.periodic_reset_days.is_some();
        if rolled_over
            && counter.window_start < window
            && !state.limit_event_emitted(&r.key(), window, LimitKind::Reset)
        {
            out.push(event(
                r,
                l,
                LimitKind::Reset,
                window,
                Decimal::ZERO,
                None,
                now,
            ));
        }
    }
    out
}
