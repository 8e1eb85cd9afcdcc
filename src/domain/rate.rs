//! Rate limits, purely: the calendar interval a limit counts in and the admission decision.
//!
//! A rate limit binds per calendar interval in UTC: the second (`rps`), minute (`rpm`), hour
//! (`rph`), day (`rpd`) and week (`rpw`, Sunday 00:00 UTC, as budgets define it in
//! [`super::budget::period`]). Within an interval, a request limit admits at most `value`
//! requests: each counts 1 at admission. A token limit counts the request's token estimate at
//! admission and is corrected to the actual usage at settlement; it admits while the tokens
//! counted in the interval (settled plus reserved by requests in flight) are below `value`, so,
//! as with a default-mode budget, the last request admitted may pass it by at most its own size.
//! A refused request is told to come back when the interval ends, the first moment it can fit.

use super::budget::period;
use super::limits::{PeriodicReset, RateLimit, RateUnit};
use super::time::Millis;

/// The calendar interval `[start, end)` of `unit` that holds `at`.
pub fn interval(unit: RateUnit, at: Millis) -> (Millis, Millis) {
    let fixed = |len: i64| {
        let start = at.0.div_euclid(len) * len;
        (Millis(start), Millis(start + len))
    };
    match unit {
        RateUnit::Rps => fixed(1_000),
        RateUnit::Rpm => fixed(60_000),
        RateUnit::Rph => fixed(3_600_000),
        RateUnit::Rpd => fixed(86_400_000),
        RateUnit::Rpw => match period(Some(PeriodicReset::Weekly), None, Millis(0), at) {
            (start, Some(end)) => (start, end),
            // Weekly periods always have an end; a week from the start is the same thing.
            (start, None) => (start, Millis(start.0 + 7 * 86_400_000)),
        },
    }
}

/// What one rate limit has counted in one interval (requests, or tokens settled plus reserved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub start: Millis,
    pub used: u64,
}

/// A refusal: the limit is full until `until`, the end of its interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub until: Millis,
}

impl Limited {
    /// Seconds from `now` until the request can fit (at least 1): the `Retry-After` value.
    pub fn retry_after_secs(&self, now: Millis) -> u64 {
        let ms = self.until.0.saturating_sub(now.0).max(0) as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// Whether `limit` admits one more request at `now`, given its counted window (a window of an
/// earlier interval counts nothing).
pub fn check(limit: &RateLimit, window: Option<&Window>, now: Millis) -> Result<(), Limited> {
    let (start, end) = interval(limit.unit, now);
    let used = window.filter(|w| w.start == start).map_or(0, |w| w.used);
    if used >= limit.value {
        return Err(Limited { until: end });
    }
    Ok(())
}

/// Counts `amount` (1 request, or a token estimate) in the interval holding `now`, starting the
/// interval afresh if the window is of an earlier one. Returns the interval's start, which
/// settlement needs to correct the same window.
pub fn take(window: &mut Window, unit: RateUnit, now: Millis, amount: u64) -> Millis {
    let (start, _) = interval(unit, now);
    if window.start != start {
        *window = Window { start, used: 0 };
    }
    window.used = window.used.saturating_add(amount);
    start
}

/// Corrects a token window to the actual usage of a request that reserved `reserved` in the
/// interval starting at `start`; a window that has moved on to a later interval is left alone.
pub fn settle(window: &mut Window, start: Millis, reserved: u64, actual: u64) {
    if window.start == start {
        window.used = window.used.saturating_sub(reserved).saturating_add(actual);
    }
}

/// Whether the window's interval has ended by `now` (its counter can be dropped).
pub fn ended(window: &Window, unit: RateUnit, now: Millis) -> bool {
    interval(unit, window.start).1 <= now
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::limits::RateKind;

    fn at(s: &str) -> Millis {
        Millis::parse_iso(s).unwrap()
    }

    fn limit(kind: RateKind, unit: RateUnit, value: u64) -> RateLimit {
        RateLimit { kind, unit, value }
    }

    #[test]
    fn intervals_are_calendar_units() {
        let t = at("2025-01-01T12:34:56.789Z"); // a Wednesday
        let show = |u| {
            let (s, e) = interval(u, t);
            (s.to_iso(), e.to_iso())
        };
        assert_eq!(
            show(RateUnit::Rps),
            (
                "2025-01-01T12:34:56.000Z".into(),
                "2025-01-01T12:34:57.000Z".into()
            )
        );
        assert_eq!(
            show(RateUnit::Rpm),
            (
                "2025-01-01T12:34:00.000Z".into(),
                "2025-01-01T12:35:00.000Z".into()
            )
        );
        assert_eq!(
            show(RateUnit::Rph),
            (
                "2025-01-01T12:00:00.000Z".into(),
                "2025-01-01T13:00:00.000Z".into()
            )
        );
        assert_eq!(
            show(RateUnit::Rpd),
            (
                "2025-01-01T00:00:00.000Z".into(),
                "2025-01-02T00:00:00.000Z".into()
            )
        );
        assert_eq!(
            show(RateUnit::Rpw),
            (
                "2024-12-29T00:00:00.000Z".into(),
                "2025-01-05T00:00:00.000Z".into()
            ),
            "weeks start on Sunday, as budgets' weeks do"
        );
    }

    /// Admits like the gateway does: check, then take `amount`; settles to `actual` at once.
    fn request(
        w: &mut Window,
        l: &RateLimit,
        now: Millis,
        amount: u64,
        actual: u64,
    ) -> Result<(), u64> {
        check(l, Some(w), now).map_err(|e| e.retry_after_secs(now))?;
        let start = take(w, l.unit, now, amount);
        settle(w, start, amount, actual);
        Ok(())
    }

    #[test]
    fn a_token_limit_holds_for_the_whole_hour() {
        let l = limit(RateKind::Tokens, RateUnit::Rph, 1000);
        let mut w = Window::default();
        let t = at("2025-01-01T10:00:05Z");
        for i in 0..5 {
            assert_eq!(
                request(&mut w, &l, Millis(t.0 + i * 1000), 200, 200),
                Ok(())
            );
        }
        let later = at("2025-01-01T10:59:59.200Z");
        assert_eq!(request(&mut w, &l, Millis(t.0 + 6000), 200, 200), Err(3589));
        assert_eq!(
            request(&mut w, &l, later, 200, 200),
            Err(1),
            "still this hour"
        );
        assert_eq!(
            request(&mut w, &l, at("2025-01-01T11:00:00Z"), 200, 200),
            Ok(()),
            "a new hour"
        );
    }

    #[test]
    fn a_request_limit_never_admits_more_in_one_minute() {
        let l = limit(RateKind::Requests, RateUnit::Rpm, 5);
        let mut w = Window::default();
        let t = at("2025-01-01T10:00:00Z");
        let admitted = (0..60_000)
            .step_by(250)
            .filter(|ms| request(&mut w, &l, Millis(t.0 + ms), 1, 1).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(
            request(&mut w, &l, at("2025-01-01T10:00:59.999Z"), 1, 1),
            Err(1)
        );
        assert_eq!(
            request(&mut w, &l, at("2025-01-01T10:00:30Z"), 1, 1),
            Err(30)
        );
        assert!(request(&mut w, &l, at("2025-01-01T10:01:00Z"), 1, 1).is_ok());
    }

    #[test]
    fn reservations_settle_to_actual_usage_in_their_own_window() {
        let l = limit(RateKind::Tokens, RateUnit::Rpm, 100);
        let mut w = Window::default();
        let t = at("2025-01-01T10:00:00Z");
        let start = take(&mut w, l.unit, t, 4000);
        assert!(
            check(&l, Some(&w), t).is_err(),
            "a reservation in flight counts"
        );
        settle(&mut w, start, 4000, 30);
        assert_eq!(w.used, 30);
        let next = at("2025-01-01T10:01:00Z");
        take(&mut w, l.unit, next, 10);
        settle(&mut w, start, 4000, 0);
        assert_eq!(w.used, 10, "a late settlement leaves the new window alone");
        assert!(ended(&w, l.unit, at("2025-01-01T10:02:00Z")));
        assert!(!ended(&w, l.unit, at("2025-01-01T10:01:59Z")));
    }

    #[test]
    fn zero_disables() {
        let l = limit(RateKind::Requests, RateUnit::Rps, 0);
        let now = at("2025-01-01T10:00:00.400Z");
        let e = check(&l, None, now).unwrap_err();
        assert_eq!(e.retry_after_secs(now), 1);
    }
}
