//! Executing a routing plan: targets tried per strategy (single, fallback, loadbalance), retries on
//! the configured statuses, one metered usage event per upstream attempt.
//!
//! This module walks the plan and retries; its parts:
//! - `body`: what a target is sent (the model asked for, the request with `override_params`
//!   laid over it);
//! - `admit`: each attempt's admission, with the most it may use and cost reserved;
//! - `attempt`: one call, and what becomes of its answer (an error in the envelope, or a stream
//!   handed to [`super::stream`]);
//! - `response`: a whole answer read within its bounds and metered.

mod admit;
mod attempt;
mod body;
mod count;
mod each;
mod response;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rand::Rng;

use super::meter;
use super::refusals::Refusal;
use super::route::{self, Plan, Target};
use super::{set_header, DataError, Reply, RequestBody, RequestCtx};
use crate::domain::routing::{check_private_host, Mode, Node};
use crate::domain::Millis;
use crate::proxy::DataPlane;

/// What an attempt sends: one body, or several that make one attempt (Bedrock embeddings of
/// more texts than one InvokeModel call takes: see [`Exec::each`]).
#[derive(Clone)]
enum Payload {
    One(Bytes),
    Each(Vec<Bytes>),
}

/// The answer of one target (possibly after retries): what fallback looks at.
struct Answer {
    status: u16,
    reply: Reply,
}

/// What trying a node came to.
enum Outcome {
    Answer(Answer),
    /// A gateway-side refusal (unknown provider, model not allowed, ...): stops any fallback.
    Stop(DataError),
}

/// One request's execution.
struct Exec {
    plane: Arc<DataPlane>,
    ctx: RequestCtx,
    body: RequestBody,
    /// The current leaf's exchange and path under its base URL.
    wire: wire::Wire,
    path: String,
    attempts: u32,
    /// Estimated prompt tokens, for usage the provider does not report.
    prompt_estimate: u64,
    /// An upper bound of the prompt's tokens, for reservations (measured once per request).
    prompt_max: u64,
    upstream_time: Duration,
    last_option: String,
    last_provider: String,
}

/// Runs the plan and answers the client.
pub async fn run(
    plane: Arc<DataPlane>,
    ctx: RequestCtx,
    plan: Plan,
    body: RequestBody,
) -> Result<Reply, DataError> {
    let mut exec = Exec::new(plane, ctx, body);
    let outcome = exec.try_node(&plan.root).await;
    let overhead = exec
        .ctx
        .started
        .elapsed()
        .saturating_sub(exec.upstream_time);
    exec.plane.metrics.gateway_overhead.observe(overhead);
    match outcome {
        Outcome::Stop(e) => Err(e),
        Outcome::Answer(a) => Ok(exec.decorate(a.reply)),
    }
}

/// Counts the request's input tokens (`/v1/messages/count_tokens`) at the plan's target.
pub async fn count(
    plane: Arc<DataPlane>,
    ctx: RequestCtx,
    plan: Plan,
    body: RequestBody,
) -> Result<Reply, DataError> {
    Exec::new(plane, ctx, body).count(&plan.root).await
}

impl Exec {
    fn new(plane: Arc<DataPlane>, ctx: RequestCtx, body: RequestBody) -> Exec {
        let prompt_estimate = meter::estimate_prompt(&body.json);
        let prompt_max = meter::max_prompt_tokens(&body.json);
        Exec {
            plane,
            ctx,
            body,
            wire: wire::Wire::OpenAi,
            path: String::new(),
            attempts: 0,
            prompt_estimate,
            prompt_max,
            upstream_time: Duration::ZERO,
            last_option: String::new(),
            last_provider: String::new(),
        }
    }

    fn try_node<'a>(&'a mut self, node: &'a Node) -> BoxFuture<'a, Outcome> {
        async move {
            match &node.mode {
                None => self.try_leaf(node).await,
                Some(Mode::Single) => self.try_node(&node.targets[0]).await,
                Some(Mode::Loadbalance) => {
                    let i = Node::pick_weighted(&node.targets, rand::thread_rng().gen::<f64>());
                    self.try_node(&node.targets[i]).await
                }
                Some(Mode::Fallback { on_status_codes }) => {
                    let last = node.targets.len() - 1;
                    for (i, t) in node.targets.iter().enumerate() {
                        match self.try_node(t).await {
                            Outcome::Answer(a)
                                if i < last && Node::falls_back_on(on_status_codes, a.status) =>
                            {
                                continue
                            }
                            other => return other,
                        }
                    }
                    Outcome::Stop(DataError::internal("fallback had no targets"))
                }
            }
        }
        .boxed()
    }

    /// A leaf: its target checked, its body built, then attempts (with the node's retries).
    async fn try_leaf(&mut self, node: &Node) -> Outcome {
        // A temporary, not a named `Result`: a named one would stay in the future beside the
        // target and body moved out of it, through the attempts.
        let (target, model, wire, payload, path) =
            match self.target_for(node).and_then(|(target, model)| {
                let wire = wire::Wire::of(self.ctx.endpoint, target.protocol, &model)?;
                let (payload, path) = self.upstream_body(node, wire, &target, &model)?;
                Ok((target, model, wire, payload, path))
            }) {
                Ok(c) => c,
                Err(e) => return Outcome::Stop(e),
            };
        self.path = path.unwrap_or_else(|| {
            wire.path(self.ctx.endpoint, target.protocol, &model, self.body.stream)
        });
        self.wire = wire;
        self.last_option = node.path.clone();
        self.last_provider = target.integration.ai_provider_id.clone();
        self.attempts_at(node, &target, &model, payload).await
    }

    /// The target of a leaf and the model it is asked for, checked before anything is sent: the
    /// provider may be used now, its host is allowed, the model is given and enabled for it.
    fn target_for(&self, node: &Node) -> Result<(Target, String), DataError> {
        let Some(leaf) = &node.leaf else {
            return Err(DataError::internal("config leaf without a target"));
        };
        let model = self.model_for(node)?;
        let target = {
            let state = self.plane.ledger.state();
            route::resolve(
                &state,
                &self.plane.sealer,
                &self.ctx.workspace_id,
                leaf,
                &model,
                Millis::now(),
            )
        }?;
        let policy = self.plane.settings.upstream_private_hosts;
        check_private_host(&target.base_url, policy, "the provider's host")
            .map_err(private_host_error)?;
        if !target.integration.allows_model(&model) {
            return Err(DataError::forbidden(
                "model_not_allowed",
                format!(
                    "model {model} is not enabled for provider {}",
                    target.provider.slug
                ),
            ));
        }
        Ok((target, model))
    }

    /// Attempts at one target, each admitted first, retried on the node's `retry` statuses with
    /// a growing pause. A refusal of this target alone is its answer (a fallback may move on).
    async fn attempts_at(
        &mut self,
        node: &Node,
        target: &Target,
        model: &str,
        payload: Payload,
    ) -> Outcome {
        let (retries, retry_on) = node
            .retry
            .as_ref()
            .map_or((0, &[][..]), |r| (r.attempts, &r.on_status_codes[..]));
        let mut n = 0;
        loop {
            let reservation = match self.admit(target, model, &node.override_params) {
                Ok(r) => r,
                Err(Refusal {
                    error,
                    target_specific: true,
                }) => {
                    let status = error.status.as_u16();
                    return Outcome::Answer(Answer {
                        status,
                        reply: error.reply(),
                    });
                }
                Err(Refusal { error, .. }) => return Outcome::Stop(error),
            };
            let timeout = node.request_timeout_ms;
            let answer = self
                .attempt(target, model, payload.clone(), timeout, reservation)
                .await;
            match answer {
                Ok(a) if n < retries && retry_on.contains(&a.status) => {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(50 << n.min(5))).await;
                }
                Ok(a) => return Outcome::Answer(a),
                Err(e) => return Outcome::Stop(e),
            }
        }
    }

    /// Adds the trace and routing headers.
    fn decorate(&self, mut reply: Reply) -> Reply {
        let h = match &mut reply {
            Reply::Full { headers, .. } | Reply::Stream { headers, .. } => headers,
        };
        set_header(h, "x-portkey-trace-id", &self.ctx.trace_id);
        set_header(
            h,
            "x-portkey-retry-attempt-count",
            &self.attempts.saturating_sub(1).to_string(),
        );
        set_header(h, "x-portkey-last-used-option-index", &self.last_option);
        set_header(h, "x-portkey-cache-status", "DISABLED");
        set_header(h, "x-portkey-provider", &self.last_provider);
        reply
    }
}

/// A provider host `upstream_private_hosts = deny` refuses (a literal address, or a name that
/// resolved to one): nothing was sent.
fn private_host_error(why: String) -> DataError {
    DataError::forbidden("upstream_host_not_allowed", why)
}
