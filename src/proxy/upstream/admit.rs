//! Admission of one attempt: the governance checks with the most the attempt may use and cost
//! reserved.

use super::Exec;
use crate::domain::budget::RequestPath;
use crate::domain::pricing::TokenUsage;
use crate::domain::{Endpoint, Millis};
use crate::ledger::governor::{Estimate, Reservation};
use crate::proxy::meter;
use crate::proxy::refusals::Refusal;
use crate::proxy::route::Target;
use crate::proxy::DataError;

impl Exec {
    /// Admission for one attempt: every budget and rate limit on the path, with this attempt's
    /// [`Exec::estimate`] reserved.
    pub(super) fn admit(
        &self,
        target: &Target,
        model: &str,
        overrides: &crate::domain::routing::Params,
    ) -> Result<Reservation, Refusal> {
        let estimate = self.estimate(target, model, overrides)?;
        self.admit_with(target, model, estimate)
    }

    /// Admission of a call that costs nothing (`/v1/messages/count_tokens`): refused as any
    /// request is (a disabled key, an exhausted budget, a spent request rate limit), counted
    /// by request rate limits, reserving nothing.
    pub(super) fn admit_free(&self, target: &Target, model: &str) -> Result<Reservation, Refusal> {
        self.admit_with(target, model, Estimate::default())
    }

    fn admit_with(
        &self,
        target: &Target,
        model: &str,
        estimate: Estimate,
    ) -> Result<Reservation, Refusal> {
        let path = RequestPath {
            api_key_id: &self.ctx.key.id,
            workspace_id: &self.ctx.workspace_id,
            provider_id: &target.provider.id,
            provider_slug: &target.provider.slug,
            integration_id: &target.integration.id,
            model,
            metadata: Some(&self.ctx.metadata),
        };
        self.plane
            .ledger
            .admit(&path, estimate, Millis::now())
            .map_err(Refusal::from)
    }

    /// The most an attempt may use and cost, from the body actually sent upstream (the target's
    /// `override_params` laid over the request): an upper bound of its prompt plus the most output
    /// it may bill (every choice), priced as the target prices the model. A 400 when the body's
    /// output fields pass their bounds ([`meter::check_output_bounds`]).
    fn estimate(
        &self,
        target: &Target,
        model: &str,
        overrides: &crate::domain::routing::Params,
    ) -> Result<Estimate, Refusal> {
        meter::check_output_bounds(&self.body.json, overrides).map_err(|why| Refusal {
            error: DataError::bad_request(why),
            target_specific: false,
        })?;
        let completion = match self.ctx.endpoint {
            Endpoint::Embeddings => 0,
            _ => meter::max_output_tokens(&self.body.json, overrides, DEFAULT_MAX_OUTPUT_TOKENS),
        };
        let prompt = if meter::overrides_prompt(overrides) {
            meter::max_prompt_tokens_sent(&self.body.json, overrides)
        } else {
            self.prompt_max
        };
        let usage = TokenUsage {
            prompt,
            completion,
            cached: 0,
            cache_write: 0,
        };
        let (price, pricing) = meter::pricing_of(&self.plane.prices, target, model);
        // The prompt may all be written to the provider's cache, billed at its own rate (above
        // plain input's at Anthropic): the bound is the dearer of the two.
        let written = TokenUsage {
            cache_write: prompt,
            ..usage
        };
        Ok(Estimate {
            max_cost: price.map_or(rust_decimal::Decimal::ZERO, |p| {
                p.cost_usd(usage).max(p.cost_usd(written))
            }),
            max_tokens: prompt.saturating_add(completion),
            pricing,
        })
    }
}

/// The output allowance reserved for a request that sets no `max_tokens`.
const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 4096;
