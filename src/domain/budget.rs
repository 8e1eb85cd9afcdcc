//! Budgets, purely: which budgets a request's path crosses, the window a budget counts in
//! (period boundaries computed by one function), and the admission decision.
//!
//! A budget counts usage in its *window*: from the latest of the start of its current period
//! (weekly: Sunday 00:00 UTC; monthly: the 1st, 00:00 UTC; every N days from when it was set),
//! the moment it was set, and its last `reset_usage`. Windows depend only on event timestamps,
//! so folding usage in any order gives the same counters.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::entities::Metadata;
use super::hash::FastHash;
use super::limits::{BudgetKind, PeriodicReset, UsageLimit};
use super::pricing::Pricing;
use super::time::Millis;

/// Which budget: the entity it sits on (and, for a grouped policy, the group's value).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetRef {
    ApiKey(String),
    Provider(String),
    /// An integration's limit for one workspace.
    Access {
        integration: String,
        workspace: String,
    },
    Workspace(String),
    Policy {
        id: String,
        group: Option<String>,
    },
}

impl BudgetRef {
    /// A stable text form, used as the key of limit events.
    pub fn key(&self) -> String {
        match self {
            BudgetRef::ApiKey(id) => format!("api_key:{id}"),
            BudgetRef::Provider(id) => format!("provider:{id}"),
            BudgetRef::Access {
                integration,
                workspace,
            } => format!("integration:{integration}:workspace:{workspace}"),
            BudgetRef::Workspace(id) => format!("workspace:{id}"),
            BudgetRef::Policy { id, group: None } => format!("policy:{id}"),
            BudgetRef::Policy { id, group: Some(g) } => format!("policy:{id}:{g}"),
        }
    }

    /// The inverse of [`BudgetRef::key`] (ids never contain `:`; a policy group may).
    pub fn parse(key: &str) -> Option<BudgetRef> {
        let (kind, rest) = key.split_once(':')?;
        Some(match kind {
            "api_key" => BudgetRef::ApiKey(rest.to_owned()),
            "provider" => BudgetRef::Provider(rest.to_owned()),
            "workspace" => BudgetRef::Workspace(rest.to_owned()),
            "integration" => {
                let (integration, workspace) = rest.split_once(":workspace:")?;
                BudgetRef::Access {
                    integration: integration.to_owned(),
                    workspace: workspace.to_owned(),
                }
            }
            "policy" => match rest.split_once(':') {
                Some((id, g)) => BudgetRef::Policy {
                    id: id.to_owned(),
                    group: Some(g.to_owned()),
                },
                None => BudgetRef::Policy {
                    id: rest.to_owned(),
                    group: None,
                },
            },
            _ => return None,
        })
    }

    /// The kind of owner, for messages and events.
    pub fn owner_kind(&self) -> &'static str {
        match self {
            BudgetRef::ApiKey(_) => "api_key",
            BudgetRef::Provider(_) => "provider",
            BudgetRef::Access { .. } => "integration_workspace",
            BudgetRef::Workspace(_) => "workspace",
            BudgetRef::Policy { .. } => "policy",
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil (year, month) of a day number.
fn civil_from_days(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m)
}

/// The start of the reset period holding `at`, and the next reset after it (`None`: never resets).
/// Weekly periods start Sunday 00:00 UTC, monthly ones on the 1st at 00:00 UTC; `every_days`
/// periods count whole days from `anchor` (when the budget was set). Integer arithmetic only: it
/// runs several times per governed request.
pub fn period(
    reset: Option<PeriodicReset>,
    every_days: Option<u16>,
    anchor: Millis,
    at: Millis,
) -> (Millis, Option<Millis>) {
    let day = at.0.div_euclid(DAY_MS);
    match (reset, every_days) {
        (Some(PeriodicReset::Weekly), _) => {
            // 1970-01-01 was a Thursday: day 0 is 4 days after a Sunday.
            let start = day - (day + 4).rem_euclid(7);
            (Millis(start * DAY_MS), Some(Millis((start + 7) * DAY_MS)))
        }
        (Some(PeriodicReset::Monthly), _) => {
            let (y, m) = civil_from_days(day);
            let start = days_from_civil(y, m, 1);
            let next = if m == 12 {
                days_from_civil(y + 1, 1, 1)
            } else {
                days_from_civil(y, m + 1, 1)
            };
            (Millis(start * DAY_MS), Some(Millis(next * DAY_MS)))
        }
        (None, Some(n)) if n > 0 => {
            let len = i64::from(n) * DAY_MS;
            let k = (at.0 - anchor.0).div_euclid(len);
            let start = Millis(anchor.0 + k * len);
            (start, Some(Millis(start.0 + len)))
        }
        _ => (Millis(i64::MIN), None),
    }
}

/// A budget's definition with the server-side facts that decide its window.
pub trait Windowed {
    fn limit(&self) -> &UsageLimit;

    /// Where the budget's counting starts for usage at `at`.
    fn window_start(&self, at: Millis) -> Millis {
        let l = self.limit();
        let (start, _) = period(l.periodic_reset, l.periodic_reset_days, l.set_at, at);
        start
            .max(l.set_at)
            .max(l.reset_at.unwrap_or(Millis(i64::MIN)))
    }

    /// When the current window ends by itself.
    fn next_reset(&self, now: Millis) -> Option<Millis> {
        let l = self.limit();
        period(l.periodic_reset, l.periodic_reset_days, l.set_at, now).1
    }
}

impl Windowed for UsageLimit {
    fn limit(&self) -> &UsageLimit {
        self
    }
}

/// Usage counted by one budget in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub window_start: Millis,
    pub cost: Decimal,
    pub tokens: u64,
}

impl Counter {
    /// The amount the budget's type counts.
    pub fn used(&self, kind: BudgetKind) -> Decimal {
        match kind {
            BudgetKind::Cost => self.cost,
            BudgetKind::Tokens => Decimal::from(self.tokens),
        }
    }
}

/// Folds usage at `at` into a budget's counter; usage from an earlier window is not counted.
/// Returns whether it counted.
pub fn count(
    counters: &mut HashMap<BudgetRef, Counter, FastHash>,
    r: &BudgetRef,
    limit: &UsageLimit,
    at: Millis,
    cost: Decimal,
    tokens: u64,
) -> bool {
    let start = limit.window_start(at);
    if at < start {
        return false; // before the budget was set or reset
    }
    let Some(c) = window_counter(counters, r.clone(), start) else {
        return false; // a late event of a window that has ended
    };
    // Saturating: a counter never wraps back under its limit.
    c.cost = c.cost.saturating_add(cost);
    c.tokens = c.tokens.saturating_add(tokens);
    true
}

/// Raises a budget's counter for `window_start` to at least `used` (of the budget's type): the
/// fold of a limit-state event, which reports usage counted elsewhere (all gateways, in
/// distributed mode). Never lowers a counter, so local usage folded since is not lost.
pub fn raise(
    counters: &mut HashMap<BudgetRef, Counter, FastHash>,
    r: BudgetRef,
    window_start: Millis,
    kind: BudgetKind,
    used: Decimal,
) {
    let Some(c) = window_counter(counters, r, window_start) else {
        return;
    };
    match kind {
        BudgetKind::Cost => c.cost = c.cost.max(used),
        BudgetKind::Tokens => {
            let t = u64::try_from(used.trunc().mantissa()).unwrap_or(u64::MAX);
            c.tokens = c.tokens.max(t);
        }
    }
}

/// The counter of `r` for the window starting at `start`: a new one, or the current one started
/// over when it counted an earlier window; `None` when it already counts a later window.
fn window_counter(
    counters: &mut HashMap<BudgetRef, Counter, FastHash>,
    r: BudgetRef,
    start: Millis,
) -> Option<&mut Counter> {
    let c = counters.entry(r).or_insert(Counter {
        window_start: start,
        ..Default::default()
    });
    if start > c.window_start {
        *c = Counter {
            window_start: start,
            ..Default::default()
        };
    } else if start < c.window_start {
        return None;
    }
    Some(c)
}

/// The usage a budget has counted in the window holding `now`.
pub fn used(
    counters: &HashMap<BudgetRef, Counter, FastHash>,
    r: &BudgetRef,
    limit: &UsageLimit,
    now: Millis,
) -> Decimal {
    match counters.get(r) {
        Some(c) if c.window_start == limit.window_start(now) => c.used(limit.kind),
        _ => Decimal::ZERO,
    }
}

/// What a request's path looks like to governance.
#[derive(Clone, Debug, Default)]
pub struct RequestPath<'a> {
    pub api_key_id: &'a str,
    pub workspace_id: &'a str,
    pub provider_id: &'a str,
    pub provider_slug: &'a str,
    pub integration_id: &'a str,
    pub model: &'a str,
    pub metadata: Option<&'a Metadata>,
}

/// A budget that refused a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Exhausted {
    pub budget: BudgetRef,
    pub kind: BudgetKind,
    pub used: Decimal,
    /// Held by admitted requests still in flight.
    pub reserved: Decimal,
    pub limit: Decimal,
    pub next_reset: Option<Millis>,
    /// True when settled usage alone is below the limit: what is in flight (and, in strict
    /// mode, this request's maximum) would not fit.
    pub would_exceed: bool,
}

/// The request is for a model with no price, which a cost budget could never count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unpriced;

/// Whether a budget of `kind` counts a request priced as `pricing`: token budgets always do;
/// cost budgets skip a model explicitly priced at zero (it is free) and refuse an unpriced one,
/// unless its integration meters unpriced models at zero.
pub fn counts(kind: BudgetKind, pricing: Pricing) -> Result<bool, Unpriced> {
    match (kind, pricing) {
        (BudgetKind::Tokens, _) => Ok(true),
        (BudgetKind::Cost, Pricing::Free) => Ok(false),
        (BudgetKind::Cost, Pricing::Unpriced) => Err(Unpriced),
        (BudgetKind::Cost, Pricing::Priced | Pricing::UnpricedAtZero) => Ok(true),
    }
}

/// The admission decision for one budget: `used` so far, `reserved` by requests in flight,
/// `request_max` this request's maximum. Default mode admits while settled plus in-flight usage
/// is below the limit, so spend passes it by at most one request's maximum; strict mode refuses
/// a request whose maximum does not fit beside what is in flight, so spend never passes it.
pub fn admit(
    r: &BudgetRef,
    limit: &UsageLimit,
    used: Decimal,
    reserved: Decimal,
    request_max: Decimal,
    now: Millis,
) -> Result<(), Box<Exhausted>> {
    // Boxed: a refusal is rare and the decision's happy path stays a small value.
    let refuse = |would_exceed| {
        Box::new(Exhausted {
            budget: r.clone(),
            kind: limit.kind,
            used,
            reserved,
            limit: limit.credit_limit,
            next_reset: limit.next_reset(now),
            would_exceed,
        })
    };
    if used >= limit.credit_limit {
        return Err(refuse(false));
    }
    let in_flight = used.saturating_add(reserved);
    if !limit.strict && in_flight >= limit.credit_limit {
        return Err(refuse(true));
    }
    if limit.strict && in_flight.saturating_add(request_max) > limit.credit_limit {
        return Err(refuse(true));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::{OffsetDateTime, Weekday};

    fn datetime(m: Millis) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(m.0) * 1_000_000).unwrap()
    }

    fn at(s: &str) -> Millis {
        Millis::parse_iso(s).unwrap()
    }

    #[test]
    fn budget_keys_parse_back() {
        let refs = [
            BudgetRef::ApiKey("k1".into()),
            BudgetRef::Provider("p1".into()),
            BudgetRef::Access {
                integration: "i1".into(),
                workspace: "w1".into(),
            },
            BudgetRef::Workspace("w1".into()),
            BudgetRef::Policy {
                id: "pol".into(),
                group: None,
            },
            BudgetRef::Policy {
                id: "pol".into(),
                group: Some("dept:eng".into()),
            },
        ];
        for r in refs {
            assert_eq!(BudgetRef::parse(&r.key()), Some(r));
        }
        assert_eq!(BudgetRef::parse("nonsense"), None);
    }

    #[test]
    fn limit_state_raises_counters_and_never_lowers_them() {
        let mut c = HashMap::default();
        let r = BudgetRef::ApiKey("k".into());
        // (report: window start, kind, value) -> (window start, cost, tokens) afterwards.
        let steps = [
            (
                (100, BudgetKind::Tokens, Decimal::from(50)),
                (100, Decimal::ZERO, 50),
                "raised",
            ),
            (
                (100, BudgetKind::Tokens, Decimal::from(30)),
                (100, Decimal::ZERO, 50),
                "an older report does not lower it",
            ),
            (
                (50, BudgetKind::Tokens, Decimal::from(99)),
                (100, Decimal::ZERO, 50),
                "a past window's report is ignored",
            ),
            (
                (200, BudgetKind::Cost, Decimal::new(15, 1)),
                (200, Decimal::new(15, 1), 0),
                "a new window starts afresh",
            ),
        ];
        for ((at, kind, value), (start, cost, tokens), why) in steps {
            raise(&mut c, r.clone(), Millis(at), kind, value);
            assert_eq!(
                (c[&r].window_start, c[&r].cost, c[&r].tokens),
                (Millis(start), cost, tokens),
                "{why}"
            );
        }
    }

    #[test]
    fn weekly_and_monthly_boundaries() {
        // 2025-01-01 is a Wednesday.
        let (s, n) = period(
            Some(PeriodicReset::Weekly),
            None,
            Millis(0),
            at("2025-01-01T12:00:00Z"),
        );
        assert_eq!(
            (s.to_iso(), n.unwrap().to_iso()),
            (
                "2024-12-29T00:00:00.000Z".into(),
                "2025-01-05T00:00:00.000Z".into()
            )
        );
        let (s, _) = period(
            Some(PeriodicReset::Weekly),
            None,
            Millis(0),
            at("2025-01-05T00:00:00Z"),
        );
        assert_eq!(
            s.to_iso(),
            "2025-01-05T00:00:00.000Z",
            "Sunday midnight starts a new week"
        );
        let (s, n) = period(
            Some(PeriodicReset::Monthly),
            None,
            Millis(0),
            at("2024-12-31T23:59:59.999Z"),
        );
        assert_eq!(
            (s.to_iso(), n.unwrap().to_iso()),
            (
                "2024-12-01T00:00:00.000Z".into(),
                "2025-01-01T00:00:00.000Z".into()
            )
        );
        let (s, n) = period(
            Some(PeriodicReset::Monthly),
            None,
            Millis(0),
            at("2024-02-29T10:00:00Z"),
        );
        assert_eq!(
            (s.to_iso(), n.unwrap().to_iso()),
            (
                "2024-02-01T00:00:00.000Z".into(),
                "2024-03-01T00:00:00.000Z".into()
            )
        );
        let anchor = at("2025-01-01T06:00:00Z");
        let (s, _) = period(None, Some(3), anchor, at("2025-01-07T07:00:00Z"));
        assert_eq!(s.to_iso(), "2025-01-07T06:00:00.000Z");
        assert_eq!(period(None, None, anchor, anchor).1, None);
    }

    proptest! {
        /// Every instant lies in its period; the period starts on the right weekday or day of the
        /// month at midnight; the next period starts where this one ends.
        #[test]
        fn periods_tile_time(t in 0i64..4_102_444_800_000, weekly in any::<bool>(), days in 0u16..400) {
            let reset = match (weekly, days % 3) {
                (true, _) => Some(PeriodicReset::Weekly),
                (false, 0) => Some(PeriodicReset::Monthly),
                _ => None,
            };
            let every = (reset.is_none() && days > 0).then_some(days.min(365));
            let anchor = Millis(1_600_000_000_000);
            let (start, next) = period(reset, every, anchor, Millis(t));
            let Some(next) = next else { return Ok(()) };
            prop_assert!(start <= Millis(t) && Millis(t) < next);
            let (again, _) = period(reset, every, anchor, start);
            prop_assert_eq!(again, start);
            let (after, _) = period(reset, every, anchor, next);
            prop_assert_eq!(after, next);
            let d = datetime(start);
            if reset.is_some() {
                prop_assert_eq!((d.hour(), d.minute(), d.second(), d.millisecond()), (0, 0, 0, 0));
            }
            match reset {
                Some(PeriodicReset::Weekly) => prop_assert_eq!(d.weekday(), Weekday::Sunday),
                Some(PeriodicReset::Monthly) => prop_assert_eq!(d.day(), 1),
                None => prop_assert_eq!((start.0 - anchor.0).rem_euclid(i64::from(every.unwrap_or(1)) * 86_400_000), 0),
            }
        }
    }

    fn limit(credit: i64, strict: bool) -> UsageLimit {
        UsageLimit {
            kind: BudgetKind::Cost,
            credit_limit: Decimal::from(credit),
            alert_threshold: None,
            periodic_reset: Some(PeriodicReset::Monthly),
            periodic_reset_days: None,
            strict,
            set_at: at("2025-01-10T00:00:00Z"),
            reset_at: None,
        }
    }

    #[test]
    fn counting_respects_set_at_reset_and_periods() {
        let l = limit(10, false);
        let r = BudgetRef::ApiKey("k".into());
        let mut c = HashMap::default();
        assert!(
            !count(&mut c, &r, &l, at("2025-01-09T00:00:00Z"), Decimal::ONE, 1),
            "before the budget was set"
        );
        assert!(count(
            &mut c,
            &r,
            &l,
            at("2025-01-20T00:00:00Z"),
            Decimal::from(3),
            5
        ));
        assert_eq!(
            used(&c, &r, &l, at("2025-01-31T00:00:00Z")),
            Decimal::from(3)
        );
        assert_eq!(
            used(&c, &r, &l, at("2025-02-01T00:00:00Z")),
            Decimal::ZERO,
            "a new month"
        );
        assert!(count(
            &mut c,
            &r,
            &l,
            at("2025-02-02T00:00:00Z"),
            Decimal::ONE,
            1
        ));
        assert!(
            !count(&mut c, &r, &l, at("2025-01-30T00:00:00Z"), Decimal::ONE, 1),
            "late event of an ended window"
        );
        let mut reset = l.clone();
        reset.reset_at = Some(at("2025-02-03T00:00:00Z"));
        assert_eq!(
            used(&c, &r, &reset, at("2025-02-04T00:00:00Z")),
            Decimal::ZERO
        );
    }

    #[test]
    fn default_and_strict_admission() {
        let r = BudgetRef::Workspace("w".into());
        let now = at("2025-01-20T00:00:00Z");
        let d = Decimal::from;
        assert!(
            admit(&r, &limit(10, false), d(9), d(0), d(50), now).is_ok(),
            "default mode admits one request past the limit"
        );
        assert!(
            admit(&r, &limit(10, false), d(4), d(5), d(50), now).is_ok(),
            "in flight counts in default mode too"
        );
        let e = admit(&r, &limit(10, false), d(4), d(6), d(1), now).unwrap_err();
        assert!(e.would_exceed, "settled plus in flight reached the limit");
        assert!(admit(&r, &limit(10, false), d(10), d(0), d(0), now).is_err());
        assert!(admit(&r, &limit(10, true), d(5), d(3), d(2), now).is_ok());
        let e = admit(&r, &limit(10, true), d(5), d(3), d(3), now).unwrap_err();
        assert!(e.would_exceed);
        assert_eq!(e.next_reset.unwrap().to_iso(), "2025-02-01T00:00:00.000Z");
    }
}
