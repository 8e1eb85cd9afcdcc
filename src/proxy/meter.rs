//! Metering: token usage from the provider's answer (or an estimate when it gave none), exact
//! cost from the integration's custom pricing or the shipped price table, and the usage event.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::route::Target;
use super::RequestCtx;
use crate::domain::pricing::{Price, PriceTable, TokenUsage};
use crate::domain::{Millis, UsageEvent, UsageSource};

#[derive(Deserialize)]
struct Envelope {
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Details {
    cached_tokens: Option<u64>,
}

/// The provider's `usage` object (OpenAI shape).
#[derive(Deserialize)]
pub struct WireUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
}

impl WireUsage {
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

/// Estimated prompt tokens: the text of `messages` / `prompt` / `input`, plus a few per message.
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
    let text: usize = ["messages", "prompt", "input"]
        .iter()
        .filter_map(|k| body.get(*k))
        .map(text_len)
        .sum();
    tokens_for_chars(text) + 4 * messages
}

/// An upper bound on the prompt's tokens, for reservations: byte-level tokenizers never make more
/// tokens than bytes, plus a generous per-message and per-request overhead.
pub fn max_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let mut bytes = ByteCount(0);
    for v in ["messages", "prompt", "input", "tools", "functions"]
        .iter()
        .filter_map(|k| body.get(*k))
    {
        // Writing into a counter cannot fail; the prompt is measured, never copied.
        let _ = serde_json::to_writer(&mut bytes, v);
    }
    bytes.0 + 8 * messages + 8
}

/// An `io::Write` that only counts.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
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

/// The price of `model` through `target`: the integration's custom pricing first, then the table.
pub fn price_of(prices: &PriceTable, target: &Target, model: &str) -> Option<Price> {
    target
        .integration
        .models
        .get(model)
        .and_then(|m| m.pricing_config.as_ref())
        .and_then(Price::from_pricing_config)
        .or_else(|| prices.lookup(&target.integration.ai_provider_id, model))
}

/// What one attempt measured.
pub struct Attempt<'a> {
    pub target: &'a Target,
    pub model: &'a str,
    pub status: u16,
    pub usage: TokenUsage,
    pub source: UsageSource,
    pub upstream_ms: u32,
    pub streamed: bool,
    pub index: u32,
    pub event_id: String,
}

/// The usage event of an attempt.
pub fn usage_event(prices: &PriceTable, ctx: &RequestCtx, a: Attempt<'_>) -> UsageEvent {
    let price = price_of(prices, a.target, a.model);
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
        metadata: ctx.metadata.clone(),
        model: a.model.to_owned(),
        endpoint: ctx.endpoint,
        status_code: a.status,
        prompt_tokens: a.usage.prompt,
        completion_tokens: a.usage.completion,
        cached_tokens: a.usage.cached,
        cost_usd: price.map_or(rust_decimal::Decimal::ZERO, |p| p.cost_usd(a.usage)),
        priced: price.is_some(),
        usage_source: a.source,
        latency_ms: ctx.started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        upstream_latency_ms: a.upstream_ms,
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
                cached: 5
            }
        );
        let e = usage_of_body(br#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#).unwrap();
        assert_eq!(
            e,
            TokenUsage {
                prompt: 8,
                completion: 0,
                cached: 0
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
