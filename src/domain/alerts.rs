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
        event_id: limit_event_id(&r.key(), window_start, kind),
        at: now,
        kind,
        budget: r.key(),
        owner_kind: r.owner_kind().to_owned(),
        workspace_id: path.map(|p| p.workspace_id.to_owned()),
        // A key's budget alerts its owner: a minter's budget crossed by a key it minted
        // alerts the minter (and its creator), not the minted key.
        api_key_id: path.map(|p| match r {
            BudgetRef::ApiKey(id) => id.clone(),
            _ => p.api_key_id.to_owned(),
        }),
        window_start,
        budget_type: l.kind,
        credit_limit: l.credit_limit,
        alert_threshold: l.alert_threshold,
        used,
        next_reset: l.next_reset(now),
    }
}

/// The id of the limit event of a budget, window and kind: the same wherever it is computed, so
/// one emitted twice (by two aggregators at once) is recognisably one event.
pub fn limit_event_id(budget: &str, window_start: Millis, kind: LimitKind) -> String {
    let name = format!("{budget}@{}#{}", window_start.0, kind.as_str());
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()).to_string()
}

/// Threshold and exhaustion events due for `budgets` (those of a request on `path`) after the
/// request's usage was folded.
pub fn crossings(
    state: &State,
    budgets: &[(BudgetRef, UsageLimit)],
    path: &RequestPath<'_>,
    now: Millis,
) -> Vec<LimitEvent> {
    let mut out = Vec::new();
    for (r, l) in budgets {
        let used = state.budget_used(r, l, now);
        let window = l.window_start(now);
        let checks = [
            (LimitKind::ThresholdCrossed, l.alert_threshold),
            (LimitKind::Exhausted, Some(l.credit_limit)),
        ];
        for (kind, level) in checks {
            if level.is_some_and(|level| used >= level)
                && !state.limit_event_emitted(&r.key(), window, kind)
            {
                out.push(event(r, l, kind, window, used, Some(path), now));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits::{BudgetKind, PeriodicReset};
    use crate::domain::*;

    fn at(s: &str) -> Millis {
        Millis::parse_iso(s).unwrap()
    }

    /// Threshold, exhaustion and the weekly reset, each once, on an injected clock.
    #[test]
    fn crossings_and_resets_are_due_once() {
        let limit = UsageLimit {
            kind: BudgetKind::Tokens,
            credit_limit: Decimal::from(100),
            alert_threshold: Some(Decimal::from(50)),
            periodic_reset: Some(PeriodicReset::Weekly),
            periodic_reset_days: None,
            strict: false,
            set_at: at("2025-01-01T00:00:00Z"),
            reset_at: None,
        };
        let mut s = State::default();
        s.apply(&Event::Config(ConfigEvent {
            audit: Default::default(),
            event_id: "c".into(),
            at: Millis(0),
            change: Change::Upsert(Entity::ApiKey(
                crate::domain::state::tests::api_key_fixture(Some(limit)),
            )),
        }));
        let mut usage = crate::domain::state::tests::usage(1, "k", 60, 0);
        usage.at = at("2025-01-04T10:00:00Z"); // a Saturday
        s.apply_usage(&usage);
        let now = at("2025-01-04T10:00:01Z");
        let due = crossings(&s, &s.budgets_of_event(&usage), &usage.path(), now);
        assert_eq!(
            due.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![LimitKind::ThresholdCrossed]
        );
        for e in &due {
            s.apply(&Event::Limit(e.clone()));
        }
        assert!(
            crossings(&s, &s.budgets_of_event(&usage), &usage.path(), now).is_empty(),
            "emitted once"
        );
        let mut more = crate::domain::state::tests::usage(2, "k", 50, 0);
        more.at = at("2025-01-04T11:00:00Z");
        s.apply_usage(&more);
        let due = crossings(
            &s,
            &s.budgets_of_event(&more),
            &more.path(),
            at("2025-01-04T11:00:01Z"),
        );
        assert_eq!(
            due.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![LimitKind::Exhausted]
        );
        assert_eq!(due[0].used, Decimal::from(110));
        assert_eq!(due[0].next_reset, Some(at("2025-01-05T00:00:00Z")));
        assert!(
            resets(&s, at("2025-01-04T23:59:59Z")).is_empty(),
            "same week"
        );
        let reset = resets(&s, at("2025-01-05T00:00:30Z"));
        assert_eq!(reset.len(), 1);
        assert_eq!(reset[0].window_start, at("2025-01-05T00:00:00Z"));
        s.apply(&Event::Limit(reset[0].clone()));
        assert!(
            resets(&s, at("2025-01-05T00:01:00Z")).is_empty(),
            "reset emitted once"
        );
        assert_eq!(
            s.budget_counters().count(),
            0,
            "the ended window's counter is forgotten"
        );
    }
}
