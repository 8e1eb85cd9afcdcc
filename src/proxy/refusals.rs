//! The refusals of admission ([`Denial`]s of the governor), as the data plane answers them: which
//! budget or limit refused, what it counted and when the request can fit.

use reqwest::StatusCode;
use rust_decimal::Decimal;

use crate::domain::budget::{BudgetRef, Exhausted};
use crate::domain::limits::{BudgetKind, RateKind, RateLimit, RateUnit};
use crate::ledger::governor::{Denial, Reason};
use crate::proxy::DataError;

/// A refused admission, as answered.
pub struct Refusal {
    pub error: DataError,
    /// A fallback may move on to the next target ([`Denial::target_specific`]).
    pub target_specific: bool,
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Self {
        let r = &d.budget;
        let error = match &d.reason {
            Reason::Exhausted(e) => exhausted(e),
            Reason::RateLimited {
                limit,
                retry_after_secs,
            } => rate_limited(r, limit, *retry_after_secs),
            Reason::TooManyGroups { cap } => too_many_groups(r, *cap),
            Reason::Unpriced { model } => unpriced(r, model),
        };
        Refusal {
            error,
            target_specific: d.target_specific(),
        }
    }
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
        "budget would be exceeded: what is in flight and this request do not fit in"
    } else {
        "budget exhausted:"
    };
    let in_flight = if e.reserved.is_zero() {
        String::new()
    } else {
        format!(
            " ({} more reserved by requests in flight)",
            amount(e.reserved)
        )
    };
    DataError::new(
        StatusCode::PRECONDITION_FAILED,
        "budget_exceeded",
        Some("budget_exhausted"),
        format!(
            "{what} the {} budget ({}), used {}{in_flight} of {}; {reset}",
            e.budget.owner_kind(),
            e.budget.key(),
            amount(e.used),
            amount(e.limit),
        ),
    )
}

fn rate_limited(r: &BudgetRef, l: &RateLimit, retry_after_secs: u64) -> DataError {
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
                "rate limit exceeded: {} {} allows {} {kind} per {}; the interval ends in {retry_after_secs} s",
                r.owner_kind(),
                r.key(),
                l.value,
                interval_name(l.unit),
            )
        },
    );
    e.retry_after_secs = Some(retry_after_secs);
    e
}

fn interval_name(unit: RateUnit) -> &'static str {
    match unit {
        RateUnit::Rps => "second",
        RateUnit::Rpm => "minute (UTC)",
        RateUnit::Rph => "hour (UTC)",
        RateUnit::Rpd => "day (UTC)",
        RateUnit::Rpw => "week (from Sunday 00:00 UTC)",
    }
}

/// An unpriced model on a path with a cost budget. The price belongs to the target's model, so
/// a fallback may move on to a target whose model is priced.
fn unpriced(r: &BudgetRef, model: &str) -> DataError {
    DataError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some("model_unpriced"),
        format!(
            "model {} has no price, and the {} budget ({}) counts cost, so it could never count \
             this request; an admin must set the model's pricing (pricing_config or \
             base_model_slug in PUT /v1/integrations/{{slug}}/models), or opt the integration in \
             to metering unpriced models at zero (configurations.meter_unpriced_at_zero: true)",
            model,
            r.owner_kind(),
            r.key()
        ),
    )
}

fn too_many_groups(r: &BudgetRef, cap: usize) -> DataError {
    let id = match r {
        BudgetRef::Policy { id, .. } => id.as_str(),
        _ => "",
    };
    DataError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        Some("policy_groups_exhausted"),
        format!(
            "usage policy {id} already counts {cap} groups (its group_by values), the most it \
             may; this request would start another. Groups are forgotten once idle"
        ),
    )
}
