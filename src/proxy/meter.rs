//! Metering: token usage from the provider's answer (or an estimate when it gave none), exact
//! cost from the integration's custom pricing or the shipped price table, and the usage event.

use std::future::Future;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::route::Target;
use super::RequestCtx;
use crate::domain::pricing::{Price, PriceTable, Pricing, TokenUsage, METER_UNPRICED_AT_ZERO};
use crate::domain::routing::Params;
use crate::domain::{Millis, UsageEvent, UsageSource};
use crate::ledger::governor::Reservation;
use crate::ledger::LedgerError;
use crate::proxy::DataPlane;

#[derive(Deserialize)]
struct Envelope {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
}

/// The provider's `usage` object (OpenAI shape; the Responses API's names are read too).
#[derive(Deserialize)]
pub struct WireUsage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    #[serde(alias = "input_tokens_details")]
    prompt_tokens_details: Option<Details>,
}

impl WireUsage {
    /// The tokens it reports; completion tokens from the total when only that is given.
    pub fn tokens(&self) -> TokenUsage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let completion = self
            .completion_tokens
            .unwrap_or_else(|| self.total_tokens.unwrap_or(prompt).saturating_sub(prompt));
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0);
        TokenUsage {
            prompt,
            completion,
            cached,
            cache_write: 0,
        }
    }
}

/// The `usage` of a JSON response body, if it has one (an explicit zero is a real zero).
pub fn usage_of_body(body: &[u8]) -> Option<TokenUsage> {
    serde_json::from_slice::<Envelope>(body)
        .ok()?
        .usage
        .map(|u| u.tokens())
}

/// About four characters per token: the usual rule of thumb, used only when the provider is silent.
pub fn tokens_for_chars(chars: usize) -> u64 {
    chars.div_ceil(4) as u64
}

/// Estimated prompt tokens: the text of `messages` / `prompt` / `input` (and Anthropic's `system`,
/// the Responses API's `instructions`), plus a few per message.
pub fn estimate_prompt(body: &Map<String, Value>) -> u64 {
    fn text_len(v: &Value) -> usize {
        match v {
            Value::String(s) => s.chars().count(),
            Value::Array(a) => a.iter().map(text_len).sum(),
            Value::Object(o) => o
                .iter()
                .filter(|(k, _)| *k != "role")
                .map(|(_, v)| text_len(v))
                .sum(),
            _ => 0,
        }
    }
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let text: usize = ["messages", "prompt", "input", "system", "instructions"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(text_len)
        .sum();
    tokens_for_chars(text).saturating_add(4 * messages)
}

/// An upper bound on the prompt's tokens, for reservations: byte-level tokenizers never make more
/// tokens than bytes, plus a generous per-message and per-request overhead.
pub fn max_prompt_tokens(body: &Map<String, Value>) -> u64 {
    max_prompt_tokens_of(|k| body.get(k))
}

/// [`max_prompt_tokens`] of the body actually sent: a config's `override_params` laid over the
/// client's body (override winning).
pub fn max_prompt_tokens_sent(body: &Map<String, Value>, overrides: &Params) -> u64 {
    max_prompt_tokens_of(|k| overrides.get(k).or_else(|| body.get(k)))
}

/// Whether `override_params` replace part of the prompt (so the client's bound does not hold).
pub fn overrides_prompt(overrides: &Params) -> bool {
    PROMPT_FIELDS.iter().any(|k| overrides.contains_key(k))
}

/// The body fields that make up the prompt (OpenAI's, Anthropic's `system`, the Responses API's
/// `instructions`).
const PROMPT_FIELDS: [&str; 7] = [
    "messages",
    "prompt",
    "input",
    "tools",
    "functions",
    "system",
    "instructions",
];

fn max_prompt_tokens_of<'a>(field: impl Fn(&str) -> Option<&'a Value>) -> u64 {
    let messages = field("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let mut bytes = ByteCount(0);
    for v in PROMPT_FIELDS.iter().filter_map(|k| field(k)) {
        // Writing into a counter cannot fail; the prompt is measured, never copied.
        let _ = serde_json::to_writer(&mut bytes, v);
    }
    bytes.0.saturating_add(8 * messages).saturating_add(8)
}

/// The most output tokens a request may ask for per choice (`max_tokens`,
/// `max_completion_tokens`): the bound on plausible usage, a hundred times the largest output
/// any model offers today.
pub const MAX_OUTPUT_TOKENS: u64 = crate::domain::pricing::MAX_PLAUSIBLE_TOKENS;

/// The most choices a request may ask for (`n`, `best_of`); providers allow far fewer.
pub const MAX_CHOICES: u64 = 128;

/// Checks the output fields of the body actually sent (a config's `override_params` laid over
/// the client's): each of `max_tokens` and `max_completion_tokens` given must be a whole number
/// of at most [`MAX_OUTPUT_TOKENS`], each of `n` and `best_of` one of at most [`MAX_CHOICES`].
/// Otherwise the reservation would be absurd, or (for a value that is not a whole number, which
/// a lenient upstream may still read) not bound what the provider generates. The error names
/// the field and its bound.
pub fn check_output_bounds(body: &Map<String, Value>, overrides: &Params) -> Result<(), String> {
    let bounds = [
        ("max_tokens", MAX_OUTPUT_TOKENS),
        ("max_completion_tokens", MAX_OUTPUT_TOKENS),
        ("max_output_tokens", MAX_OUTPUT_TOKENS),
        ("n", MAX_CHOICES),
        ("best_of", MAX_CHOICES),
    ];
    for (field, max) in bounds {
        let sent = overrides.get(field).or_else(|| body.get(field));
        match sent {
            None | Some(Value::Null) => {}
            Some(v) if v.as_u64().is_some_and(|n| n <= max) => {}
            Some(_) => return Err(format!("{field} must be a whole number from 0 to {max}")),
        }
    }
    Ok(())
}

/// The most output tokens one upstream call may bill, from the body actually sent (a config's
/// `override_params` laid over the client's, override winning): the larger of
/// `max_completion_tokens`, `max_tokens` and `max_output_tokens` (the Responses API's), or `default` when neither is set, times the
/// choices generated (`n`, and `best_of`, which completions generate and bill server-side).
pub fn max_output_tokens(body: &Map<String, Value>, overrides: &Params, default: u64) -> u64 {
    let sent = |k: &str| {
        overrides
            .get(k)
            .or_else(|| body.get(k))
            .and_then(Value::as_u64)
    };
    let per_choice = ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .into_iter()
        .filter_map(sent)
        .max()
        .unwrap_or(default);
    let choices = ["n", "best_of"]
        .into_iter()
        .filter_map(sent)
        .max()
        .unwrap_or(1)
        .max(1);
    per_choice.saturating_mul(choices)
}

/// An `io::Write` that only counts.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The generated text of a JSON response (for estimates when usage is missing).
pub fn completion_chars(body: &[u8]) -> usize {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return body.len();
    };
    v.get("choices")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let msg = c
                        .get("message")
                        .and_then(|m| m.get("content"))
                        .and_then(Value::as_str);
                    msg.or_else(|| c.get("text").and_then(Value::as_str))
                        .map_or(0, |s| s.chars().count())
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The price of `model` through `target`: the integration's custom pricing first, then the
/// table; a model with a `base_model_slug` and no pricing of its own is priced as its base model
/// (the base's custom pricing on the same integration, then the table).
pub fn price_of(prices: &PriceTable, target: &Target, model: &str) -> Option<Price> {
    let models = &target.integration.models;
    let custom = |m: &str| {
        models
            .get(m)
            .and_then(|e| e.pricing_config.as_ref())
            .and_then(Price::from_pricing_config)
    };
    let table = |m: &str| prices.lookup(&target.integration.ai_provider_id, m);
    custom(model).or_else(
        || match models.get(model).and_then(|e| e.base_model_slug.as_deref()) {
            Some(base) => custom(base).or_else(|| table(base)),
            None => table(model),
        },
    )
}
/// The price of `model` through `target` and how cost budgets see it.
pub fn pricing_of(prices: &PriceTable, target: &Target, model: &str) -> (Option<Price>, Pricing) {
    let price = price_of(prices, target, model);
    let at_zero = target
        .integration
        .configurations
        .get(METER_UNPRICED_AT_ZERO)
        .and_then(Value::as_bool)
        .unwrap_or(false);
    (price, Pricing::of(price.as_ref(), at_zero))
}

/// What one attempt measured.
pub struct Attempt<'a> {
    pub target: &'a Target,
    pub model: &'a str,
    pub status: u16,
    pub usage: TokenUsage,
    pub source: UsageSource,
    /// From the call to the end of the answer.
    pub upstream: Duration,
    pub streamed: bool,
    pub index: u32,
    pub event_id: String,
}

/// Records an attempt: its upstream time observed and its usage event made at once; the future
/// appends the event (durable when it resolves) and settles the reservation. Callers await it at
/// once. Not an `async fn`: its future would keep the attempt and the reservation (moved on to the
/// event and the ledger) for the whole append, and it is inside every request's future.
pub fn record<'a>(
    plane: &'a DataPlane,
    ctx: &RequestCtx,
    attempt: Attempt<'_>,
    reservation: Reservation,
) -> impl Future<Output = Result<(), LedgerError>> + 'a {
    plane.metrics.upstream_time.observe(attempt.upstream);
    let event = usage_event(&plane.prices, ctx, attempt);
    plane.ledger.record_usage(event, Some(reservation))
}

/// The metadata key that flags an event whose reported usage was implausible and clamped; its
/// value is what the upstream reported. Clients cannot set it.
pub const USAGE_CLAMPED_KEY: &str = "_usage_clamped";

/// The usage event of an attempt. Implausible usage is clamped and the event flagged.
pub fn usage_event(prices: &PriceTable, ctx: &RequestCtx, mut a: Attempt<'_>) -> UsageEvent {
    let price = price_of(prices, a.target, a.model);
    let (usage, clamped) = a.usage.plausible();
    let mut metadata = ctx.metadata.clone();
    if clamped {
        let reported = format!(
            "prompt_tokens={} completion_tokens={} cached_tokens={}",
            a.usage.prompt, a.usage.completion, a.usage.cached
        );
        tracing::warn!(trace_id = %ctx.trace_id, provider = %a.target.provider.slug, %reported,
            "implausible usage reported upstream; clamped to the plausibility bound");
        metadata.insert(USAGE_CLAMPED_KEY.to_owned(), reported);
    }
    a.usage = usage;
    UsageEvent {
        event_id: a.event_id,
        at: Millis::now(),
        organisation_id: ctx.organisation_id.clone(),
        workspace_id: ctx.workspace_id.clone(),
        api_key_id: ctx.key.id.clone(),
        provider_id: a.target.provider.id.clone(),
        provider_slug: a.target.provider.slug.clone(),
        integration_id: a.target.integration.id.clone(),
        ai_provider: a.target.integration.ai_provider_id.clone(),
        department: ctx.metadata.get("department").cloned(),
        user: ctx.metadata.get("_user").cloned(),
        metadata,
        model: a.model.to_owned(),
        endpoint: ctx.endpoint,
        status_code: a.status,
        prompt_tokens: a.usage.prompt,
        completion_tokens: a.usage.completion,
        cached_tokens: a.usage.cached,
        cache_write_tokens: a.usage.cache_write,
        cost_usd: price.map_or(rust_decimal::Decimal::ZERO, |p| p.cost_usd(a.usage)),
        priced: price.is_some(),
        usage_source: a.source,
        latency_ms: ctx.started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        upstream_latency_ms: a.upstream.as_millis().min(u128::from(u32::MAX)) as u32,
        streamed: a.streamed,
        attempt_index: a.index,
        trace_id: ctx.trace_id.clone(),
        config_id: ctx.config_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn usage_shapes() {
        let u = usage_of_body(br#"{"usage":{"prompt_tokens":25,"completion_tokens":24,"total_tokens":49,"prompt_tokens_details":{"cached_tokens":5}}}"#).unwrap();
        assert_eq!(
            u,
            TokenUsage {
                prompt: 25,
                completion: 24,
                cached: 5,
                cache_write: 0
            }
        );
        let e = usage_of_body(br#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!(
            e,
            TokenUsage {
                prompt: 8,
                completion: 0,
                cached: 0,
                cache_write: 0
            }
        );
        let zero =
            usage_of_body(br#"{"usage":{"prompt_tokens":0,"completion_tokens":0}}"#).unwrap();
        assert_eq!(zero, TokenUsage::default());
        assert_eq!(usage_of_body(br#"{"usage":null}"#), None);
        assert_eq!(usage_of_body(b"not json"), None);
    }

    #[test]
    fn prompt_upper_bound_covers_the_estimate() {
        let body = json!({"messages":[{"role":"user","content":"hi"}]});
        let b = body.as_object().unwrap();
        assert!(max_prompt_tokens(b) >= estimate_prompt(b));
        assert!(max_prompt_tokens(b) >= 12);
        let over = json!({"messages":[{"role":"system","content":"x".repeat(1000)}]});
        let o = &Params::from(over.as_object().unwrap().clone());
        assert!(overrides_prompt(o) && !overrides_prompt(&Params::default()));
        assert!(
            max_prompt_tokens_sent(b, o) > 1000,
            "the override's prompt is what is sent"
        );
    }

    #[test]
    fn output_maximum_is_what_is_sent_upstream() {
        let body = json!({"max_tokens": 10, "n": 3});
        let b = body.as_object().unwrap();
        let none = Params::default();
        let params = |v: Value| Params::from(v.as_object().unwrap().clone());
        assert_eq!(max_output_tokens(b, &none, 4096), 30);
        let over = json!({"max_tokens": 200});
        assert_eq!(
            max_output_tokens(b, &params(over), 4096),
            600,
            "the config's override wins, per choice"
        );
        let both = json!({"max_completion_tokens": 50, "best_of": 5});
        assert_eq!(max_output_tokens(b, &params(both), 4096), 250);
        assert_eq!(max_output_tokens(&Map::new(), &none, 4096), 4096);
        let absurd = json!({"max_tokens": u64::MAX, "n": 2});
        assert_eq!(
            max_output_tokens(absurd.as_object().unwrap(), &none, 1),
            u64::MAX
        );
    }

    /// A reservation never wraps to about nothing: 2^64 − P output tokens, times any `n`, plus any
    /// prompt, saturates. And the bounds refuse such bodies before anything is reserved.
    #[test]
    fn output_reservations_saturate_and_are_bounded() {
        let none = Params::default();
        for (max_tokens, n) in [
            (u64::MAX - 5, 1),
            (u64::MAX - 5, 3),
            (1 << 33, 1 << 31),
            (2, u64::MAX),
        ] {
            let body = json!({"max_tokens": max_tokens, "n": n});
            let b = body.as_object().unwrap();
            let out = max_output_tokens(b, &none, 4096);
            assert!(out >= max_tokens && out >= n, "{max_tokens} × {n}: {out}");
            assert_eq!(out.saturating_add(max_prompt_tokens(b)), u64::MAX);
            let err = check_output_bounds(b, &none).unwrap_err();
            assert!(
                err.starts_with("max_tokens") || err.starts_with("n "),
                "{err}"
            );
        }
        let at_bounds = json!({"max_tokens": MAX_OUTPUT_TOKENS, "max_completion_tokens": 1,
                               "n": MAX_CHOICES, "best_of": 1});
        let b = at_bounds.as_object().unwrap();
        assert_eq!(check_output_bounds(b, &none), Ok(()));
        assert_eq!(
            max_output_tokens(b, &none, 4096),
            MAX_OUTPUT_TOKENS * MAX_CHOICES
        );
        let params = |v: Value| Params::from(v.as_object().unwrap().clone());
        for (field, bad) in [
            ("max_tokens", json!(MAX_OUTPUT_TOKENS + 1)),
            ("max_completion_tokens", json!("1000")),
            ("max_completion_tokens", json!(-1)),
            ("n", json!(MAX_CHOICES + 1)),
            ("best_of", json!(2.5)),
        ] {
            let err = check_output_bounds(&Map::new(), &params(json!({ field: bad }))).unwrap_err();
            assert!(
                err.starts_with(&format!("{field} must be a whole number")),
                "{err}"
            );
        }
        let ok = json!({"max_tokens": null, "n": 0});
        assert_eq!(check_output_bounds(ok.as_object().unwrap(), &none), Ok(()));
        let overridden = params(json!({"max_tokens": 10}));
        let client = json!({"max_tokens": u64::MAX});
        assert_eq!(
            check_output_bounds(client.as_object().unwrap(), &overridden),
            Ok(()),
            "the override is what is sent"
        );
    }

    #[test]
    fn estimates() {
        let body = json!({"model":"m","messages":[{"role":"user","content":"12345678"}]});
        assert_eq!(estimate_prompt(body.as_object().unwrap()), 2 + 4);
        assert_eq!(
            completion_chars(br#"{"choices":[{"message":{"content":"abcd"}},{"text":"ef"}]}"#),
            6
        );
        assert_eq!(tokens_for_chars(0), 0);
        assert_eq!(tokens_for_chars(5), 2);
    }
}
